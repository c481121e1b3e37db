//! Processes, files and ports for the harness: scratch directories, private files, free
//! ports, signals, random names.

use std::io::Read;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// An address where nothing listens (a port we bound and released).
pub fn closed_addr() -> String {
    format!("http://127.0.0.1:{}", free_port())
}

/// Writes `content` to a new file readable only by us.
pub fn write_private(path: &Path, content: &str) {
    use std::os::unix::fs::OpenOptionsExt;
    let tmp = path.with_extension("tmp");
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)
        .expect("create private file");
    std::io::Write::write_all(&mut file, content.as_bytes()).expect("write private file");
    std::fs::rename(&tmp, path).expect("rename private file");
}

/// A fresh directory under `target/test-tmp/` (not removed: for tests without a server).
pub fn scratch_dir() -> PathBuf {
    let base = crate::paths::target_dir().join("test-tmp");
    let dir = base.join(format!("bao-{}-{}", std::process::id(), random_hex(6)));
    std::fs::create_dir_all(&dir).expect("create scratch dir");
    dir
}

/// A port P with P and P + 1 free right now (the dev server's API and cluster listeners).
pub fn free_port_pair() -> u16 {
    loop {
        let port = free_port();
        if port < u16::MAX && TcpListener::bind(("127.0.0.1", port + 1)).is_ok() {
            return port;
        }
    }
}

/// A TCP port on 127.0.0.1 free right now, drawn below the kernel's ephemeral range: a port
/// the kernel hands out (bind to 0) is also what it gives the next outgoing connection, which
/// can take it before the server we start binds it.
pub fn free_port() -> u16 {
    let ephemeral_low = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|range| range.split_whitespace().next()?.parse::<u16>().ok())
        .unwrap_or(32768);
    let (low, high) = (10_000u16, ephemeral_low.max(20_000));
    loop {
        let draw = u16::from_str_radix(&random_hex(2), 16).expect("hex");
        let port = low + draw % (high - low);
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
}

/// Sends a signal with `kill(1)` (the crate forbids unsafe code, so no libc); true on success.
pub fn signal(pid: u32, sig: &str) -> bool {
    Command::new("kill")
        .args([sig, &pid.to_string()])
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// The state letter of process `pid` from `/proc/<pid>/stat` (`T` when stopped).
pub fn process_state(pid: u32) -> Option<char> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // "pid (comm) S ...": the command may contain spaces, so split after the last ')'.
    stat.rsplit_once(')')?.1.trim_start().chars().next()
}

/// `2 * bytes` random hex digits from the kernel.
pub fn random_hex(bytes: usize) -> String {
    let mut buf = vec![0u8; bytes];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut buf))
        .expect("read /dev/urandom");
    hex::encode(buf)
}

/// Runs `cmd`, panicking with its stderr when it fails.
pub fn run_ok(cmd: &mut Command) {
    let out = cmd.stdin(Stdio::null()).output().expect("run command");
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}
