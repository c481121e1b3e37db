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

/// The `helm` binary `e2e/controlplane/build.sh` built (from its `current.env`).
pub fn helm_bin() -> PathBuf {
    let cache = std::env::var_os("CUBBYHOLE_CACHE")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(std::env::var("HOME").expect("HOME")).join(".cache/cubbyhole")
        });
    let env = std::fs::read_to_string(cache.join("controlplane/current.env"))
        .expect("run e2e/controlplane/build.sh first (it builds helm)");
    env.lines()
        .find_map(|l| l.strip_prefix("HELM_BIN="))
        .map(PathBuf::from)
        .expect("HELM_BIN in current.env: run e2e/controlplane/build.sh")
}
