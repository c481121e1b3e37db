//! The real `cubbyhole unwrap` binary against a real OpenBao.
//!
//! Every run's stdout, stderr and receipt are checked for every token the test knows.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use cubbyhole::agent::receipt::{Receipt, result};
use cubbyhole::vault::SecretString;
use cubbyhole_testkit::leaks::assert_no_secrets;
use cubbyhole_testkit::openbao::{Bao, ROLE_PATH};
use cubbyhole_testkit::process::{closed_addr, scratch_dir, write_private};

/// What one run of `cubbyhole unwrap` left behind.
struct Run {
    code: Option<i32>,
    stdout: String,
    stderr: String,
    receipt: Option<String>,
}

impl Run {
    /// The parsed receipt; panics when there is none.
    fn receipt(&self) -> Receipt {
        let line = self.receipt.as_deref().expect("a receipt was written");
        Receipt::parse(line).expect("the receipt parses")
    }

    /// Asserts that no output of this run contains any of `secrets`.
    fn assert_clean(&self, secrets: &[&str]) {
        assert_no_secrets("stdout", &self.stdout, secrets);
        assert_no_secrets("stderr", &self.stderr, secrets);
        assert_no_secrets("receipt", self.receipt.as_deref().unwrap_or(""), secrets);
    }
}

/// Paths one test's runs use.
struct Files {
    wrap: PathBuf,
    out: PathBuf,
    receipt: PathBuf,
}

impl Files {
    fn in_dir(dir: &Path) -> Files {
        let out_dir = dir.join("out");
        std::fs::create_dir_all(&out_dir).unwrap();
        Files {
            wrap: dir.join("wrap-token"),
            out: out_dir.join("token"),
            receipt: dir.join("termination-log"),
        }
    }
}

/// Runs `cubbyhole unwrap` with the test's files, Vault at `addr` and `extra` flags.
fn unwrap(addr: &str, files: &Files, extra: &[&str]) -> Run {
    let _ = std::fs::remove_file(&files.receipt);
    let output = Command::new(env!("CARGO_BIN_EXE_cubbyhole"))
        .arg("unwrap")
        .arg("--token-file")
        .arg(&files.wrap)
        .arg("--out")
        .arg(&files.out)
        .arg("--receipt-file")
        .arg(&files.receipt)
        .args(["--vault-addr", addr])
        .args(extra)
        .env_remove("VAULT_ADDR")
        .env_remove("VAULT_TOKEN")
        .env_remove("VAULT_CACERT")
        .env_remove("VAULT_NAMESPACE")
        .output()
        .expect("run cubbyhole unwrap");
    let run = Run {
        code: output.status.code(),
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
        receipt: std::fs::read_to_string(&files.receipt).ok(),
    };
    eprintln!("exit {:?}; stderr:\n{}", run.code, run.stderr);
    run
}

/// The flags a pod spec would use.
const EXPECT: [&str; 2] = ["--expect-path", ROLE_PATH];

/// A wrap made by root at `auth/token/create` (not through the role).
fn wrap_at_plain_create(bao: &Bao) -> SecretString {
    let out = bao.cli_json(&["token", "create", "-wrap-ttl=60s", "-policy=default"]);
    assert_eq!(out["wrap_info"]["creation_path"], "auth/token/create");
    SecretString::new(out["wrap_info"]["token"].as_str().unwrap())
}

#[tokio::test]
async fn unwraps_into_a_0400_file_and_names_the_accessor() {
    let bao = Bao::start();
    let files = Files::in_dir(&bao.dir);
    let wrap = bao.mint_to_file(&files.wrap).await;

    let run = unwrap(&bao.addr, &files, &EXPECT);
    assert_eq!(run.code, Some(0));
    assert_eq!(run.receipt(), Receipt::unwrapped(&wrap.wrapped_accessor));
    assert!(run.stderr.contains(&wrap.wrapped_accessor));

    let mode = std::fs::metadata(&files.out).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o400);
    let token = std::fs::read_to_string(&files.out).unwrap();
    let me = bao.cli(&token, &["token", "lookup", "-format=json"]);
    assert!(me.status.success(), "the written token does not work");
    let me: serde_json::Value = serde_json::from_slice(&me.stdout).unwrap();
    assert_eq!(me["data"]["accessor"], wrap.wrapped_accessor.as_str());
    assert_eq!(
        std::fs::read_dir(files.out.parent().unwrap())
            .unwrap()
            .count(),
        1
    );

    run.assert_clean(&[wrap.token.expose(), &token, &bao.root_token]);
}

#[tokio::test]
async fn wrap_from_another_path_is_refused_and_not_consumed() {
    let bao = Bao::start();
    let files = Files::in_dir(&bao.dir);
    let wrap = wrap_at_plain_create(&bao);
    write_private(&files.wrap, wrap.expose());

    let run = unwrap(&bao.addr, &files, &EXPECT);
    assert_eq!(run.code, Some(4));
    assert_eq!(
        run.receipt(),
        Receipt::failed(result::UNEXPECTED_CREATION_PATH)
    );
    assert!(!files.out.exists());
    run.assert_clean(&[wrap.expose(), &bao.root_token]);
    let still = bao.agent_client().lookup_wrap(&wrap).await.unwrap();
    assert!(still.is_some(), "the refused wrap was consumed");
}

/// Without `--expect-path` a substituted wrap (here one made at `auth/token/create`) would
/// be consumed: the flag is required, and a run without it touches nothing.
#[tokio::test]
async fn expect_path_is_required_and_nothing_is_consumed_without_it() {
    let bao = Bao::start();
    let files = Files::in_dir(&bao.dir);
    for wrap in [
        wrap_at_plain_create(&bao),
        bao.mint_to_file(&files.wrap).await.token,
    ] {
        write_private(&files.wrap, wrap.expose());
        let run = unwrap(&bao.addr, &files, &[]);
        assert_eq!(run.code, Some(2), "a usage error");
        assert!(run.stderr.contains("--expect-path"), "{}", run.stderr);
        assert_eq!(run.receipt, None, "usage errors leave no receipt");
        assert!(!files.out.exists());
        run.assert_clean(&[wrap.expose(), &bao.root_token]);
        let still = bao.agent_client().lookup_wrap(&wrap).await.unwrap();
        assert!(still.is_some(), "the wrap was consumed");
    }
    // Only the test's own two checks reached Vault, never the runs.
    assert_eq!(bao.audit_responses("sys/wrapping/lookup").len(), 2);
    assert!(bao.audit_responses("sys/wrapping/unwrap").is_empty());
}

/// An address no request can be built with is a configuration error: no retries, exit 2,
/// no receipt (Vault was never asked).
#[test]
fn address_without_a_scheme_is_a_usage_error_without_retries() {
    let files = Files::in_dir(&scratch_dir());
    let fake = "s.CCCCCCCCCCCCCCCCCCCCCCCC";
    write_private(&files.wrap, fake);
    let started = Instant::now();
    let run = unwrap("127.0.0.1:8200", &files, &EXPECT);
    assert_eq!(run.code, Some(2));
    assert_eq!(run.receipt, None);
    assert!(
        run.stderr.contains("could not send lookup"),
        "{}",
        run.stderr
    );
    assert_eq!(run.stderr.matches("retry").count(), 0);
    assert!(started.elapsed() < Duration::from_secs(5));
    run.assert_clean(&[fake]);
}

#[tokio::test]
async fn wrap_for_another_role_is_refused() {
    let bao = Bao::start();
    let files = Files::in_dir(&bao.dir);
    let wrap = bao.mint_to_file(&files.wrap).await;
    let run = unwrap(
        &bao.addr,
        &files,
        &["--expect-path", "auth/token/create/someone-else"],
    );
    assert_eq!(run.code, Some(4));
    assert!(
        bao.agent_client()
            .lookup_wrap(&wrap.token)
            .await
            .unwrap()
            .is_some()
    );
    run.assert_clean(&[wrap.token.expose()]);
}

#[tokio::test]
async fn unwritable_output_fails_before_consuming_the_wrap() {
    let bao = Bao::start();
    let mut files = Files::in_dir(&bao.dir);
    files.out = bao.path("no-such-dir/token");
    let wrap = bao.mint_to_file(&files.wrap).await;
    let run = unwrap(&bao.addr, &files, &EXPECT);
    assert_eq!(run.code, Some(8));
    assert_eq!(run.receipt(), Receipt::failed(result::WRITE_FAILED));
    let still = bao.agent_client().lookup_wrap(&wrap.token).await.unwrap();
    assert!(still.is_some(), "the wrap was consumed");
    run.assert_clean(&[wrap.token.expose()]);
}

#[tokio::test]
async fn consumed_wrap_is_reported_invalid() {
    let bao = Bao::start();
    let files = Files::in_dir(&bao.dir);
    let wrap = bao.mint_to_file(&files.wrap).await;
    let inner = bao.agent_client().unwrap(&wrap.token).await.unwrap();

    let run = unwrap(&bao.addr, &files, &EXPECT);
    assert_eq!(run.code, Some(3));
    assert_eq!(
        run.receipt(),
        Receipt::failed(result::INVALID_WRAPPING_TOKEN)
    );
    assert!(!files.out.exists());
    run.assert_clean(&[wrap.token.expose(), inner.token.expose()]);
}

#[test]
fn vault_down_is_unreachable_after_bounded_retries() {
    let files = Files::in_dir(&scratch_dir());
    let fake = "s.AAAAAAAAAAAAAAAAAAAAAAAA";
    write_private(&files.wrap, fake);
    let started = Instant::now();
    let run = unwrap(
        &closed_addr(),
        &files,
        &["--retries", "2", EXPECT[0], EXPECT[1]],
    );
    assert_eq!(run.code, Some(5));
    assert_eq!(run.receipt(), Receipt::failed(result::VAULT_UNREACHABLE));
    // Two retries: 0.25..0.5 s + 0.5..1 s of jittered backoff, and not much more.
    let took = started.elapsed();
    assert!(took >= Duration::from_millis(750), "{took:?}");
    assert!(took < Duration::from_secs(10), "{took:?}");
    assert_eq!(run.stderr.matches("retry").count(), 2);
    run.assert_clean(&[fake]);
}

#[test]
fn unreadable_token_file_and_bad_flags() {
    let files = Files::in_dir(&scratch_dir());
    let run = unwrap(&closed_addr(), &files, &EXPECT);
    assert_eq!(run.code, Some(7));
    assert_eq!(
        run.receipt(),
        Receipt::failed(result::TOKEN_FILE_UNREADABLE)
    );

    write_private(&files.wrap, "s.BBBBBBBBBBBBBBBBBBBBBBBB");
    let run = unwrap(
        &closed_addr(),
        &files,
        &["--expect-path", "sys/wrapping/wrap"],
    );
    assert_eq!(run.code, Some(2));
    assert_eq!(run.receipt, None, "usage errors leave no receipt");
    run.assert_clean(&["s.BBBBBBBBBBBBBBBBBBBBBBBB"]);
}

#[tokio::test]
async fn waits_for_a_fresh_wrap_after_a_consumed_one() {
    let bao = Bao::start();
    let files = Files::in_dir(&bao.dir);
    let old = bao.mint_to_file(&files.wrap).await;
    let old_inner = bao.agent_client().unwrap(&old.token).await.unwrap();
    let fresh = bao.mint(30).await;

    let file = files.wrap.clone();
    let fresh_token = fresh.token.clone();
    let writer = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_secs(1));
        write_private(&file, fresh_token.expose());
    });
    let started = Instant::now();
    let run = unwrap(
        &bao.addr,
        &files,
        &["--wait-for-fresh", "20s", "--expect-path", ROLE_PATH],
    );
    writer.join().unwrap();
    assert_eq!(run.code, Some(0));
    assert_eq!(run.receipt(), Receipt::unwrapped(&fresh.wrapped_accessor));
    assert!(started.elapsed() < Duration::from_secs(10));

    let token = std::fs::read_to_string(&files.out).unwrap();
    let secrets = [
        old.token.expose(),
        old_inner.token.expose(),
        fresh.token.expose(),
        &token,
    ];
    run.assert_clean(&secrets);
}

#[tokio::test]
async fn waits_for_a_wrap_when_the_token_file_is_missing_at_first() {
    // A new pod sandbox: the init container runs before the kubelet refreshed the volume.
    let bao = Bao::start();
    let files = Files::in_dir(&bao.dir);
    let fresh = bao.mint(30).await;
    let file = files.wrap.clone();
    let fresh_token = fresh.token.clone();
    let writer = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_secs(1));
        write_private(&file, fresh_token.expose());
    });
    let run = unwrap(
        &bao.addr,
        &files,
        &["--wait-for-fresh", "20s", "--expect-path", ROLE_PATH],
    );
    writer.join().unwrap();
    assert_eq!(run.code, Some(0));
    assert_eq!(run.receipt(), Receipt::unwrapped(&fresh.wrapped_accessor));
    let token = std::fs::read_to_string(&files.out).unwrap();
    run.assert_clean(&[fresh.token.expose(), &token]);
}

#[tokio::test]
async fn a_missing_token_file_without_wait_for_fresh_fails_at_once() {
    let bao = Bao::start();
    let files = Files::in_dir(&bao.dir);
    let started = Instant::now();
    let run = unwrap(&bao.addr, &files, &[EXPECT[0], EXPECT[1]]);
    assert_ne!(run.code, Some(0));
    assert_eq!(run.receipt().result, "token-file-unreadable");
    assert!(started.elapsed() < Duration::from_secs(5));
}

#[tokio::test]
async fn wait_for_fresh_gives_up_at_the_deadline() {
    let bao = Bao::start();
    let files = Files::in_dir(&bao.dir);
    let old = bao.mint_to_file(&files.wrap).await;
    bao.agent_client().unwrap(&old.token).await.unwrap();
    let started = Instant::now();
    let run = unwrap(
        &bao.addr,
        &files,
        &["--wait-for-fresh", "1500ms", EXPECT[0], EXPECT[1]],
    );
    assert_eq!(run.code, Some(3));
    assert_eq!(
        run.receipt(),
        Receipt::failed(result::INVALID_WRAPPING_TOKEN)
    );
    assert!(started.elapsed() >= Duration::from_millis(1500));
    run.assert_clean(&[old.token.expose()]);
}
