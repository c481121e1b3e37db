//! Where things are: the repository (scripts, manifests) and the build's target directory
//! (the operator binary, scratch space).

use std::path::{Path, PathBuf};

/// The repository root.
pub fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("testkit lives in the repository")
}

/// The target directory the running test binary was built into (`target/` by default).
pub fn target_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("test binary path");
    // <target>/<profile>/deps/<test binary>
    exe.ancestors()
        .nth(3)
        .expect("test binary under <target>/<profile>/deps")
        .to_path_buf()
}

/// The `cubbyhole` binary of the same build (`CUBBYHOLE_BIN` overrides it). Integration
/// tests of the cubbyhole package make cargo build it first.
pub fn cubbyhole_bin() -> PathBuf {
    if let Some(bin) = std::env::var_os("CUBBYHOLE_BIN") {
        return bin.into();
    }
    let exe = std::env::current_exe().expect("test binary path");
    exe.ancestors()
        .nth(2)
        .expect("test binary under <target>/<profile>/deps")
        .join("cubbyhole")
}

/// The `helm` binary of this checkout's `e2e/controlplane/build.sh` (run here: a warm run
/// only hashes, and its printed paths belong to this checkout even when another one shares the
/// cache).
pub fn helm_bin() -> PathBuf {
    let out = std::process::Command::new(repo().join("e2e/controlplane/build.sh"))
        .output()
        .expect("run e2e/controlplane/build.sh");
    assert!(
        out.status.success(),
        "build.sh failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(PathBuf::from)
        .find(|p| p.file_name().is_some_and(|n| n == "helm"))
        .expect("build.sh printed the helm binary's path")
}

/// The previous release of the upgrade test (`e2e/previous-release.sh`: the binary and chart of
/// an earlier commit, built once): the directory holding `bin/cubbyhole` and `chart/`.
pub fn previous_release() -> PathBuf {
    let out = std::process::Command::new(repo().join("e2e/previous-release.sh"))
        .output()
        .expect("run e2e/previous-release.sh");
    assert!(
        out.status.success(),
        "previous-release.sh failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    PathBuf::from(String::from_utf8(out.stdout).unwrap().trim())
}
