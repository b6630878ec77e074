//! The testbed the end-to-end tests and benchmarks share: network
//! namespaces joined by a veth pair, code run inside a namespace, crafted
//! frames, and a bounded raw-socket SYN sender.
//!
//! Every namespace is removed when its guard drops, also when a test
//! panics; every traffic loop is bounded in count and in time.

use std::{
    fs::File,
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpStream},
    process::Command,
    sync::atomic::{AtomicU32, Ordering},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};
use nix::sched::{CloneFlags, setns};
use socket2::{Domain, Protocol, SockAddr, Socket, Type};

/// Panics unless the process can do privileged work (root). Privileged
/// tests never skip: CI runs them as root, and a developer learns at once
/// what is needed.
pub fn require_root() {
    assert!(
        nix::unistd::geteuid().is_root(),
        "this test attaches XDP and creates network namespaces: run `cargo xtask test` as root"
    );
}

/// Runs `cmd`, failing with its stderr when it fails.
pub fn sh(args: &[&str]) -> Result<String> {
    let out = Command::new(args[0])
        .args(&args[1..])
        .output()
        .with_context(|| format!("running {args:?}"))?;
    if !out.status.success() {
        bail!(
            "{args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// A network namespace removed on drop.
pub struct NetNs {
    name: String,
}

impl NetNs {
    /// Creates `name` (replacing a leftover of the same name).
    pub fn new(name: &str) -> Result<Self> {
        let _ = sh(&["ip", "netns", "del", name]);
        sh(&["ip", "netns", "add", name])?;
        let ns = Self {
            name: name.to_owned(),
        };
        ns.exec(&["ip", "link", "set", "lo", "up"])?;
        Ok(ns)
    }

    /// The namespace's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Runs a command inside the namespace.
    pub fn exec(&self, args: &[&str]) -> Result<String> {
        let mut full = vec!["ip", "netns", "exec", &self.name];
        full.extend_from_slice(args);
        sh(&full)
    }

    /// Runs `f` on a thread that has entered this namespace. Sockets made
    /// there stay in the namespace wherever they are used later.
    pub fn run<T: Send>(&self, f: impl FnOnce() -> T + Send) -> T {
        let path = format!("/var/run/netns/{}", self.name);
        std::thread::scope(|s| {
            s.spawn(|| {
                let file = File::open(&path).unwrap_or_else(|e| panic!("opening {path}: {e}"));
                setns(&file, CloneFlags::CLONE_NEWNET)
                    .unwrap_or_else(|e| panic!("entering namespace {path}: {e}"));
                f()
            })
            .join()
            .unwrap_or_else(|p| std::panic::resume_unwind(p))
        })
    }
}

impl Drop for NetNs {
    fn drop(&mut self) {
        // Never panic here: we may already be unwinding from a failed test.
        if let Err(e) = sh(&["ip", "netns", "del", &self.name]) {
            eprintln!("testbed: removing namespace {}: {e:#}", self.name);
        }
    }
}

static NEXT_ID: AtomicU32 = AtomicU32::new(0);

/// Two hosts joined by a veth pair: the gateway host (`server`) and a
/// client host with several source addresses of each family.
pub struct Testbed {
    /// The gateway's namespace.
    pub server: NetNs,
    /// The client's namespace.
    pub client: NetNs,
    /// The gateway-side veth name (inside `server`).
    pub server_if: String,
    /// The client-side veth name (inside `client`).
    pub client_if: String,
    /// Testbed number `n`: addresses are 198.18.n.0/24 and 2001:2:0:n::/64.
    pub n: u8,
}

impl Testbed {
    /// Builds a fresh pair of namespaces. `tag` names them for debugging.
    pub fn new(tag: &str) -> Result<Self> {
        let pid = std::process::id() % 10_000;
        let id = NEXT_ID.fetch_add(1, Ordering::Relaxed);
        let n = ((pid + id * 7) % 200 + 20) as u8;
        let server = NetNs::new(&format!("gwt-{tag}-{pid}-{id}-s"))?;
        let client = NetNs::new(&format!("gwt-{tag}-{pid}-{id}-c"))?;
        let server_if = format!("gws{pid}x{id}");
        let client_if = format!("gwc{pid}x{id}");
        sh(&[
            "ip",
            "link",
            "add",
            &server_if,
            "netns",
            server.name(),
            "type",
            "veth",
            "peer",
            "name",
            &client_if,
            "netns",
            client.name(),
        ])?;
        let bed = Self {
            server,
            client,
            server_if,
            client_if,
            n,
        };
        bed.server.exec(&[
            "ip",
            "addr",
            "add",
            &format!("198.18.{n}.1/24"),
            "dev",
            &bed.server_if,
        ])?;
        bed.server.exec(&[
            "ip",
            "-6",
            "addr",
            "add",
            &format!("2001:2:0:{n:x}::1/64"),
            "dev",
            &bed.server_if,
            "nodad",
        ])?;
        for host in 2..=5 {
            bed.client.exec(&[
                "ip",
                "addr",
                "add",
                &format!("198.18.{n}.{host}/24"),
                "dev",
                &bed.client_if,
            ])?;
            bed.client.exec(&[
                "ip",
                "-6",
                "addr",
                "add",
                &format!("2001:2:0:{n:x}::{host}/64"),
                "dev",
                &bed.client_if,
                "nodad",
            ])?;
        }
        bed.server
            .exec(&["ip", "link", "set", &bed.server_if, "up"])?;
        bed.client
            .exec(&["ip", "link", "set", &bed.client_if, "up"])?;
        Ok(bed)
    }

    /// The id of the XDP program attached to the gateway-side veth, if any
    /// (the same id before and after shows nothing re-attached it).
    pub fn xdp_prog_id(&self) -> Option<String> {
        self.server
            .exec(&["ip", "-details", "link", "show", "dev", &self.server_if])
            .ok()?
            .split_whitespace()
            .skip_while(|w| *w != "prog/xdp")
            .nth(2)
            .map(str::to_owned)
    }

    /// The gateway's address in a family.
    pub fn server_ip(&self, v6: bool) -> IpAddr {
        self.host_ip(v6, 1)
    }

    /// Client address `host` (2..=5) in a family.
    pub fn host_ip(&self, v6: bool, host: u8) -> IpAddr {
        if v6 {
            IpAddr::V6(Ipv6Addr::new(
                0x2001,
                2,
                0,
                u16::from(self.n),
                0,
                0,
                0,
                u16::from(host),
            ))
        } else {
            IpAddr::V4(Ipv4Addr::new(198, 18, self.n, host))
        }
    }
}

/// Connects from `src` to `dst` within `timeout`, inside the caller's namespace.
pub fn connect_from(src: IpAddr, dst: SocketAddr, timeout: Duration) -> std::io::Result<TcpStream> {
    let sock = Socket::new(Domain::for_address(dst), Type::STREAM, Some(Protocol::TCP))?;
    sock.bind(&SockAddr::from(SocketAddr::new(src, 0)))?;
    sock.connect_timeout(&SockAddr::from(dst), timeout)?;
    Ok(sock.into())
}

/// One's-complement sum of 16-bit words.
fn sum16(mut acc: u32, bytes: &[u8]) -> u32 {
    for pair in bytes.chunks(2) {
        acc += u32::from(u16::from_be_bytes([pair[0], *pair.get(1).unwrap_or(&0)]));
    }
    acc
}

/// A TCP SYN header from `sport` to `dst`, checksummed for `src` → `dst`.
pub fn syn_segment(src: IpAddr, dst: SocketAddr, sport: u16, seq: u32) -> [u8; 20] {
    let mut h = [0u8; 20];
    h[0..2].copy_from_slice(&sport.to_be_bytes());
    h[2..4].copy_from_slice(&dst.port().to_be_bytes());
    h[4..8].copy_from_slice(&seq.to_be_bytes());
    h[12] = 0x50;
    h[13] = 0x02;
    h[14..16].copy_from_slice(&64240u16.to_be_bytes());
    let mut acc = match (src, dst.ip()) {
        (IpAddr::V4(s), IpAddr::V4(d)) => sum16(sum16(0, &s.octets()), &d.octets()),
        (IpAddr::V6(s), IpAddr::V6(d)) => sum16(sum16(0, &s.octets()), &d.octets()),
        _ => 0,
    };
    acc += 6 + 20;
    acc = sum16(acc, &h);
    while acc > 0xffff {
        acc = (acc & 0xffff) + (acc >> 16);
    }
    h[16..18].copy_from_slice(&(!(acc as u16)).to_be_bytes());
    h
}

/// Sends up to `count` SYNs from `src` (varying source ports) to `dst`
/// through a raw socket, stopping after `max` in any case; `pace` spaces
/// them. Returns how many were sent and how long it took.
pub fn syn_flood(
    src: IpAddr,
    dst: SocketAddr,
    count: u32,
    pace: Duration,
    max: Duration,
) -> Result<(u32, Duration)> {
    let domain = Domain::for_address(dst);
    let sock = Socket::new(domain, Type::RAW, Some(Protocol::TCP)).context("raw socket")?;
    sock.bind(&SockAddr::from(SocketAddr::new(src, 0)))
        .context("binding raw socket")?;
    let to = SockAddr::from(SocketAddr::new(dst.ip(), 0));
    let start = Instant::now();
    let mut sent = 0;
    while sent < count && start.elapsed() < max {
        let seg = syn_segment(
            src,
            dst,
            20_000 + (sent % 40_000) as u16,
            sent.wrapping_mul(7919),
        );
        sock.send_to(&seg, &to).context("sending SYN")?;
        sent += 1;
        if !pace.is_zero() {
            let due = start + pace * sent;
            let now = Instant::now();
            if due > now {
                std::thread::sleep(due - now);
            }
        }
    }
    Ok((sent, start.elapsed()))
}

pub mod h2;
pub mod harness;

/// Builders of raw Ethernet frames for `BPF_PROG_TEST_RUN`.
pub mod frame {
    use std::net::IpAddr;

    /// TCP flag bytes.
    pub const SYN: u8 = 0x02;
    /// ACK|PSH.
    pub const ACK_PSH: u8 = 0x18;

    /// An Ethernet frame carrying IP/TCP from `src:sport` to `dst:dport`
    /// with `flags` and `payload`, optionally behind one 802.1Q tag.
    pub fn tcp(
        src: IpAddr,
        dst: IpAddr,
        sport: u16,
        dport: u16,
        flags: u8,
        payload: &[u8],
        vlan: Option<u16>,
    ) -> Vec<u8> {
        let mut f = vec![0x02, 0, 0, 0, 0, 0x01, 0x02, 0, 0, 0, 0, 0x02];
        if let Some(tag) = vlan {
            f.extend_from_slice(&0x8100u16.to_be_bytes());
            f.extend_from_slice(&tag.to_be_bytes());
        }
        let mut tcp = vec![0u8; 20];
        tcp[0..2].copy_from_slice(&sport.to_be_bytes());
        tcp[2..4].copy_from_slice(&dport.to_be_bytes());
        tcp[4..8].copy_from_slice(&1000u32.to_be_bytes());
        tcp[8..12].copy_from_slice(&2000u32.to_be_bytes());
        tcp[12] = 0x50;
        tcp[13] = flags;
        tcp.extend_from_slice(payload);
        match (src, dst) {
            (IpAddr::V4(s), IpAddr::V4(d)) => {
                f.extend_from_slice(&0x0800u16.to_be_bytes());
                let total = (20 + tcp.len()) as u16;
                let mut ip = vec![0x45, 0];
                ip.extend_from_slice(&total.to_be_bytes());
                ip.extend_from_slice(&[0, 0, 0x40, 0, 64, 6, 0, 0]);
                ip.extend_from_slice(&s.octets());
                ip.extend_from_slice(&d.octets());
                f.extend_from_slice(&ip);
            }
            (IpAddr::V6(s), IpAddr::V6(d)) => {
                f.extend_from_slice(&0x86ddu16.to_be_bytes());
                let mut ip = vec![0x60, 0, 0, 0];
                ip.extend_from_slice(&(tcp.len() as u16).to_be_bytes());
                ip.extend_from_slice(&[6, 64]);
                ip.extend_from_slice(&s.octets());
                ip.extend_from_slice(&d.octets());
                f.extend_from_slice(&ip);
            }
            _ => panic!("mixed address families"),
        }
        f.extend_from_slice(&tcp);
        f
    }

    /// The IPv6 frame `f` (no VLAN tag) with extension headers of the
    /// given kinds (0 hop-by-hop, 43 routing, 44 fragment, 60 destination
    /// options; 8 bytes each) between its IPv6 header and what follows.
    /// `later_fragment` makes a fragment header say offset 8, not 0.
    pub fn with_ext_headers(mut f: Vec<u8>, kinds: &[u8], later_fragment: bool) -> Vec<u8> {
        const L3: usize = 14;
        let first_next = f[L3 + 6];
        let mut ext = Vec::new();
        for (i, kind) in kinds.iter().enumerate() {
            let next = kinds.get(i + 1).copied().unwrap_or(first_next);
            if *kind == 44 {
                let offset = if later_fragment { 0x08 } else { 0 };
                ext.extend_from_slice(&[next, 0, 0, offset, 0, 0, 0, 1]);
            } else {
                // One PadN option filling the header.
                ext.extend_from_slice(&[next, 0, 1, 4, 0, 0, 0, 0]);
            }
        }
        if let Some(first) = kinds.first() {
            f[L3 + 6] = *first;
        }
        let payload = u16::from_be_bytes([f[L3 + 4], f[L3 + 5]]) + ext.len() as u16;
        f[L3 + 4..L3 + 6].copy_from_slice(&payload.to_be_bytes());
        f.splice(L3 + 40..L3 + 40, ext);
        f
    }

    /// A frame of another EtherType (ARP).
    pub fn arp() -> Vec<u8> {
        let mut f = vec![0xff; 6];
        f.extend_from_slice(&[0x02, 0, 0, 0, 0, 0x02, 0x08, 0x06]);
        f.extend_from_slice(&[0u8; 28]);
        f
    }
}

/// The `gateway` binary built beside this test (target/<profile>/gateway).
pub fn gateway_bin() -> std::path::PathBuf {
    let exe = std::env::current_exe().expect("current_exe");
    // target/<profile>/deps/<test> → target/<profile>/gateway
    let bin = exe
        .parent()
        .and_then(|deps| deps.parent())
        .map(|profile| profile.join("gateway"))
        .expect("test binary lives in target/<profile>/deps");
    assert!(
        bin.is_file(),
        "{} is missing: run the suite with `cargo xtask test`",
        bin.display()
    );
    bin
}

/// Runs the gateway binary in `ns` with `config` (written to `dir`), its
/// state under `dir`; waits until it serves.
pub fn run_gateway_in(ns: &NetNs, dir: &std::path::Path, config: &str) -> Running {
    let path = dir.join("gateway.toml");
    std::fs::write(&path, config).expect("config");
    let mut cmd = Command::new("ip");
    cmd.args(["netns", "exec", ns.name()])
        .arg(gateway_bin())
        .arg("run")
        .arg("--config")
        .arg(&path)
        .env("GATEWAY_STATE_DIR", dir.join("state"));
    let mut gw = Running::spawn(cmd);
    assert!(
        gw.wait_for_line("running;", Duration::from_secs(15))
            .is_some(),
        "the gateway did not start: {:?}",
        gw.seen
    );
    gw
}

/// A running gateway process whose stderr is collected line by line; killed
/// on drop if still running.
pub struct Running {
    child: std::process::Child,
    lines: std::sync::mpsc::Receiver<String>,
    /// Every stderr line seen so far.
    pub seen: Vec<String>,
}

impl Running {
    /// Spawns `cmd` with stderr captured.
    pub fn spawn(mut cmd: Command) -> Self {
        cmd.stderr(std::process::Stdio::piped())
            .stdout(std::process::Stdio::null());
        let mut child = cmd.spawn().expect("spawn gateway");
        let stderr = child.stderr.take().expect("piped stderr");
        let (tx, lines) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            use std::io::BufRead;
            for line in std::io::BufReader::new(stderr)
                .lines()
                .map_while(Result::ok)
            {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Self {
            child,
            lines,
            seen: Vec::new(),
        }
    }

    /// The child's PID.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Waits up to `timeout` for a stderr line containing `needle`.
    pub fn wait_for_line(&mut self, needle: &str, timeout: Duration) -> Option<String> {
        let deadline = Instant::now() + timeout;
        while let Some(left) = deadline.checked_duration_since(Instant::now()) {
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    self.seen.push(line.clone());
                    if line.contains(needle) {
                        return Some(line);
                    }
                }
                Err(_) => return None,
            }
        }
        None
    }

    /// Sends `sig` and waits up to `timeout` for the exit status.
    pub fn stop(
        &mut self,
        sig: nix::sys::signal::Signal,
        timeout: Duration,
    ) -> Option<std::process::ExitStatus> {
        let pid = nix::unistd::Pid::from_raw(self.child.id() as i32);
        let _ = nix::sys::signal::kill(pid, sig);
        let deadline = Instant::now() + timeout;
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                while let Ok(line) = self.lines.recv_timeout(Duration::from_millis(200)) {
                    self.seen.push(line);
                }
                return Some(status);
            }
            if Instant::now() > deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
