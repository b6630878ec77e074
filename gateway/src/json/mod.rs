//! JSON as the gateway reads it: documents parsed strictly onto a
//! simd-json tape (`document`: depth, duplicate keys, member counts),
//! jsonschema reading that tape without building values (`tape`), and the
//! schemas a route compiles (`schema`). A leaf: the configuration compiles
//! schemas with it, and the validation and WAF stages read bodies with it.

pub mod document;
pub mod schema;
pub mod tape;

pub use document::{DocumentError, Scratch};
pub use schema::{BodySchema, Kind, Location, Param, compile, compile_reference};
pub use tape::TapeJson;
