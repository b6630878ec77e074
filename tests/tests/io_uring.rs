//! Where io_uring is refused (a container's seccomp profile, here a real
//! seccomp filter on the gateway process): the gateway says why in one line
//! and exits 1 before it binds a port or attaches XDP; and where only the
//! workers' rings are refused, the process ends non-zero instead of
//! listening with workers that cannot serve.

use std::{
    net::{SocketAddr, TcpStream},
    os::unix::process::CommandExt,
    process::Command,
    time::{Duration, Instant},
};

use gateway_tests::{NetNs, gateway_bin, require_root};

/// `io_uring_setup(2)` on x86-64 and aarch64 alike.
const NR_IO_URING_SETUP: u32 = 425;

/// A seccomp filter answering EPERM to `io_uring_setup` asking for more
/// than `max_entries` entries (0: to every call), allowing all else.
fn deny_io_uring(max_entries: u32) -> Vec<libc::sock_filter> {
    let stmt = |code: u16, k: u32| libc::sock_filter {
        code,
        jt: 0,
        jf: 0,
        k,
    };
    let jump = |code: u16, k: u32, jt: u8, jf: u8| libc::sock_filter { code, jt, jf, k };
    const LD_W_ABS: u16 = (libc::BPF_LD | libc::BPF_W | libc::BPF_ABS) as u16;
    const JEQ: u16 = (libc::BPF_JMP | libc::BPF_JEQ | libc::BPF_K) as u16;
    const JGT: u16 = (libc::BPF_JMP | libc::BPF_JGT | libc::BPF_K) as u16;
    const RET: u16 = (libc::BPF_RET | libc::BPF_K) as u16;
    let arch = if cfg!(target_arch = "aarch64") {
        0xC000_00B7
    } else {
        0xC000_003E
    };
    vec![
        stmt(LD_W_ABS, 4), // seccomp_data.arch
        jump(JEQ, arch, 0, 4),
        stmt(LD_W_ABS, 0), // seccomp_data.nr
        jump(JEQ, NR_IO_URING_SETUP, 0, 2),
        stmt(LD_W_ABS, 16), // args[0] (entries), low half
        jump(JGT, max_entries, 1, 0),
        stmt(RET, libc::SECCOMP_RET_ALLOW),
        stmt(RET, libc::SECCOMP_RET_ERRNO | libc::EPERM as u32),
    ]
}

/// `gateway run` in `ns` under the filter; its exit code and stderr, or
/// `None` if it still runs after `within` (then it is killed).
fn run_filtered(
    ns: &NetNs,
    config: &str,
    max_entries: u32,
    within: Duration,
) -> Option<(i32, String)> {
    let dir = std::env::temp_dir().join(format!(
        "gateway-uring-{}-{max_entries}",
        std::process::id()
    ));
    std::fs::create_dir_all(&dir).expect("dir");
    let path = dir.join("gateway.toml");
    std::fs::write(&path, config).expect("config");
    let filter = deny_io_uring(max_entries);
    let mut cmd = Command::new("ip");
    cmd.args(["netns", "exec", ns.name()])
        .arg(gateway_bin())
        .args(["run", "--config"])
        .arg(&path)
        .env("GATEWAY_STATE_DIR", dir.join("state"))
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped());
    // SAFETY: only async-signal-safe calls (prctl) between fork and exec;
    // the filter vector outlives the spawn.
    unsafe {
        cmd.pre_exec(move || {
            let prog = libc::sock_fprog {
                len: filter.len() as u16,
                filter: filter.as_ptr().cast_mut(),
            };
            if libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0
                || libc::prctl(
                    libc::PR_SET_SECCOMP,
                    libc::SECCOMP_MODE_FILTER,
                    &prog as *const libc::sock_fprog,
                ) != 0
            {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let mut child = cmd.spawn().expect("spawn gateway");
    let deadline = Instant::now() + within;
    loop {
        if let Some(status) = child.try_wait().expect("wait") {
            let mut err = String::new();
            if let Some(mut e) = child.stderr.take() {
                let _ = std::io::Read::read_to_string(&mut e, &mut err);
            }
            return Some((status.code().unwrap_or(-1), err));
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            return None;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn config() -> String {
    "[listen]\nhttps = \"127.0.0.1:8443\"\n[xdp]\ninterface = \"lo\"\n".into()
}

fn xdp_left(ns: &NetNs) -> bool {
    ns.exec(&["ip", "link", "show", "dev", "lo"])
        .expect("ip link")
        .contains("xdp")
}

#[test]
fn without_io_uring_the_gateway_says_why_and_exits_before_binding() {
    require_root();
    let ns = NetNs::new(&format!("gwt-uring-{}", std::process::id() % 10_000)).expect("namespace");
    let (code, err) = run_filtered(&ns, &config(), 0, Duration::from_secs(10))
        .expect("the gateway kept running without io_uring");
    assert_eq!(code, 1, "{err}");
    let line = err
        .lines()
        .find(|l| l.contains("io_uring"))
        .unwrap_or_else(|| panic!("no line names io_uring: {err}"));
    assert!(line.contains("refused (EPERM)"), "{line}");
    assert!(line.contains("seccomp"), "{line}");
    assert!(!err.contains("panicked"), "{err}");
    assert!(!err.contains("serving https"), "it bound first: {err}");
    assert!(!xdp_left(&ns), "XDP left attached");
}

#[test]
fn a_worker_that_cannot_run_ends_the_process_non_zero() {
    require_root();
    let ns =
        NetNs::new(&format!("gwt-uring-w-{}", std::process::id() % 10_000)).expect("namespace");
    // The probe's small ring is allowed, the workers' large ones are not.
    let (code, err) = run_filtered(&ns, &config(), 64, Duration::from_secs(15))
        .expect("the gateway kept running with dead workers");
    assert_ne!(code, 0, "{err}");
    assert!(
        err.contains("worker-0 stopped") || err.contains("worker-1 stopped"),
        "{err}"
    );
    assert!(!xdp_left(&ns), "XDP left attached: {err}");
    let refused = ns.run(|| {
        TcpStream::connect_timeout(
            &SocketAddr::from(([127, 0, 0, 1], 8443)),
            Duration::from_millis(300),
        )
    });
    assert!(refused.is_err(), "still listening");
}
