//! The dependency check: cargo-deny against `deny.toml` (licenses, banned
//! and duplicate crates, sources), and RustSec's advisories when the
//! database can be fetched.

use std::{path::Path, process::Command};

use anyhow::{Context as _, Result, bail};

use crate::{build, toolchain};

/// Runs the check on the workspace with its `deny.toml`; an advisory
/// database that cannot be fetched is said in one line, not failed on.
pub fn check() -> Result<()> {
    let root = build::workspace_root();
    let deny = toolchain::ensure_cargo_deny()?;
    if !policy_holds(&deny, &root, &root.join("deny.toml"))? {
        bail!(
            "the dependency tree breaks deny.toml (above: the crate, the rule and the fix); README: Dependencies"
        );
    }
    let fetched = Command::new(&deny)
        .current_dir(&root)
        .args(["fetch", "db"])
        .output()
        .context("running cargo-deny")?;
    if !fetched.status.success() {
        let why = String::from_utf8_lossy(&fetched.stderr);
        let why = why
            .lines()
            .rev()
            .find(|l| !l.trim().is_empty())
            .unwrap_or("no output");
        println!(
            "xtask: advisories NOT checked: RustSec's advisory database (github.com/RustSec/advisory-db) cannot be fetched here ({})",
            why.trim()
        );
        return Ok(());
    }
    crate::exec(Command::new(&deny).current_dir(&root).args([
        "check",
        "--disable-fetch",
        "advisories",
    ]))
    .context("a dependency has a security advisory (above); README: Dependencies")
}

/// Whether the tree of the workspace at `root` passes the licenses, bans
/// and sources rules of the policy file `config` (cargo-deny says why not).
fn policy_holds(deny: &Path, root: &Path, config: &Path) -> Result<bool> {
    let status = Command::new(deny)
        .current_dir(root)
        .args(["--locked", "--config"])
        .arg(config)
        .args([
            "check",
            "--hide-inclusion-graph",
            "licenses",
            "bans",
            "sources",
        ])
        .status()
        .context("running cargo-deny")?;
    Ok(status.success())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The policy passes the tree as it is, and the same policy with one
    /// crate of the tree banned fails it: the check can fail.
    #[test]
    fn the_policy_passes_the_tree_and_a_ban_fails_it() {
        let deny = toolchain::installed_cargo_deny().expect(
            "cargo-deny is not installed: `cargo xtask test` runs the dependency check (which builds it) first; alone, run `cargo xtask deps`",
        );
        let root = build::workspace_root();
        let policy = std::fs::read_to_string(root.join("deny.toml")).expect("deny.toml");
        assert!(policy_holds(&deny, &root, &root.join("deny.toml")).expect("run"));
        let banned = policy.replace(
            "deny = [\n",
            "deny = [\n    { crate = \"httparse\", reason = \"test\" },\n",
        );
        assert_ne!(banned, policy, "deny.toml has no `deny = [` list");
        let dir = std::env::temp_dir().join(format!("xtask-deny-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let path = dir.join("deny.toml");
        std::fs::write(&path, banned).expect("write");
        let held = policy_holds(&deny, &root, &path).expect("run");
        let _ = std::fs::remove_dir_all(&dir);
        assert!(!held, "a banned crate in the tree passed the check");
    }
}
