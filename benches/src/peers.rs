//! The peers measured against (wrk drives them; nftables is the XDP
//! bench's peer): which are missing, and installing them when asked.

use std::process::Command;

use anyhow::{Context as _, Result, bail};

/// The peers and the Debian package of each.
const PEERS: [(&str, &str); 5] = [
    ("wrk", "wrk"),
    ("haproxy", "haproxy"),
    ("nginx", "nginx-light"),
    ("nft", "nftables"),
    // HTTP/2's load generator (`bench h2`, and `bench all`'s h2 section).
    ("h2load", "nghttp2-client"),
];

/// Whether `tool` is on PATH.
pub fn installed(tool: &str) -> bool {
    Command::new("sh")
        .arg("-c")
        .arg(format!("command -v {tool}"))
        .output()
        .is_ok_and(|o| o.status.success())
}

/// The peers still missing, after installing them when asked to.
pub fn missing(install: bool) -> Result<Vec<(&'static str, &'static str)>> {
    let missing: Vec<_> = PEERS.into_iter().filter(|(t, _)| !installed(t)).collect();
    if install && !missing.is_empty() {
        let pkgs: Vec<&str> = missing.iter().map(|(_, p)| *p).collect();
        eprintln!("installing {}", pkgs.join(" "));
        let status = Command::new("apt-get")
            .args(["install", "-y", "-q"])
            .args(&pkgs)
            .env("DEBIAN_FRONTEND", "noninteractive")
            .status()
            .context("running apt-get")?;
        if !status.success() {
            bail!("apt-get install {} failed ({status})", pkgs.join(" "));
        }
        return Ok(PEERS.into_iter().filter(|(t, _)| !installed(t)).collect());
    }
    Ok(missing)
}
