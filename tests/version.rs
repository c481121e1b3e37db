//! `cubbyhole --version`: the package version and the commit it was built from (build.rs).

#[test]
fn the_binary_prints_its_version_and_commit() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_cubbyhole"))
        .arg("--version")
        .output()
        .expect("run cubbyhole --version");
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout).unwrap();
    let commit = text
        .trim_end()
        .strip_prefix(concat!("cubbyhole ", env!("CARGO_PKG_VERSION"), " ("))
        .and_then(|rest| rest.strip_suffix(')'))
        .unwrap_or_else(|| panic!("{text:?}"));
    let hex = commit.strip_suffix("-dirty").unwrap_or(commit);
    assert!(
        commit == "unknown"
            || ((7..=12).contains(&hex.len())
                && hex.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))),
        "{text:?}"
    );
}
