//! The `gateway` subcommands, one file each; `main.rs` parses the command
//! line and calls them.

pub mod admin;
pub mod audit;
pub mod check;
pub mod keys;
pub mod run;
pub mod top;
