//! `cubbyhole unwrap`: the agent side, run as an init container (or by hand).
//!
//! It is the one auditable step between the wrapping token in the pod's Secret and the agent's
//! token: it checks where the wrap was created *before* consuming it (a wrap made elsewhere is
//! left intact for the operator to detect), unwraps it, writes the token to a file that is
//! never readable by anyone else, and leaves a [`Receipt`] naming the token's accessor so the
//! operator can tell a genuine unwrap from someone else's. Tokens never reach a log line.
//!
//! Exit codes and receipts:
//!
//! | code | meaning                                                       | receipt                    |
//! |------|---------------------------------------------------------------|----------------------------|
//! | 0    | unwrapped, token written                                      | `unwrapped` + accessor     |
//! | 2    | usage or configuration error (flags, CA, address, namespace)  | none                       |
//! | 3    | the wrap is not valid (consumed, expired or revoked)          | `invalid-wrapping-token`   |
//! | 4    | the wrap was created at an unexpected path; NOT consumed      | `unexpected-creation-path` |
//! | 5    | Vault unreachable after the retries, or no answer to unwrap   | `vault-unreachable`        |
//! | 6    | Vault answered with another error                             | `vault-error`              |
//! | 7    | the wrapping token file is unreadable or empty                | `token-file-unreadable`    |
//! | 8    | the token cannot be written (checked before unwrapping, too)  | `write-failed`             |
//! | 9    | on request: the operator refused the ask (reason printed)     | `request-refused`          |
//! | 10   | on request: the operator's endpoint unreachable after retries | `operator-unreachable`     |
//!
//! With `--request` the wrap is not read from a file: the agent asks the operator's endpoint
//! for it with the pod's projected service-account token ([`crate::agent::ask`]), and reports
//! its receipt there as well as in the termination message.
//!
//! Network errors are retried with exponential backoff (`--retries`), except an unwrap that
//! may have reached Vault: its wrap may be consumed, so that is reported, never retried.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use crate::agent::ask::{AskError, Asker};
use crate::agent::receipt::{Receipt, result};
use crate::backoff::Backoff;
use crate::vault::{SecretString, VaultClient, VaultEndpoint, VaultError, WrapLookup};

/// Every wrap the operator mints is created under this prefix (`auth/token/create/<role>`).
pub const CREATE_PREFIX: &str = "auth/token/create/";

/// Longest delay before the first retry; doubled per retry up to [`MAX_BACKOFF`].
const FIRST_BACKOFF: Duration = Duration::from_millis(500);
/// Longest delay between two retries.
const MAX_BACKOFF: Duration = Duration::from_secs(8);
/// How often `--wait-for-fresh` re-reads the token file.
const POLL: Duration = Duration::from_millis(500);

/// Flags of `cubbyhole unwrap`.
#[derive(Clone, Debug, clap::Args)]
pub struct UnwrapArgs {
    /// Ask the operator's endpoint at this base URL for the wrap (request delivery) instead of
    /// reading `--token-file`.
    #[arg(long)]
    pub request: Option<String>,
    /// With `--request`: the pod's projected service-account token (audience `cubbyhole`).
    #[arg(long, default_value = "/var/run/cubbyhole/identity/token")]
    pub identity_token: PathBuf,
    /// With `--request`: the PEM CA bundle (the text itself) to trust for the endpoint.
    #[arg(long, env = "CUBBYHOLE_REQUEST_CA", hide_env_values = true)]
    pub request_ca: Option<String>,
    /// File holding the wrapping token (the operator's per-pod Secret, mounted).
    #[arg(long, default_value = "/var/run/cubbyhole/wrap/token")]
    pub token_file: PathBuf,
    /// Where to write the unwrapped token (mode 0400; use an in-memory volume).
    #[arg(long)]
    pub out: PathBuf,
    /// Vault address.
    #[arg(long, env = "VAULT_ADDR")]
    pub vault_addr: String,
    /// PEM CA bundle to trust for Vault's TLS certificate.
    #[arg(long, env = "VAULT_CACERT")]
    pub ca_cert: Option<PathBuf>,
    /// Vault Enterprise / OpenBao namespace.
    #[arg(long, env = "VAULT_NAMESPACE")]
    pub namespace: Option<String>,
    /// The only creation path to accept, `auth/token/create/<role>`. Required: without it a
    /// wrap substituted by someone who may mint elsewhere would be consumed.
    #[arg(long)]
    pub expect_path: String,
    /// Where to write the receipt (the container's termination message).
    #[arg(long, default_value = "/dev/termination-log")]
    pub receipt_file: PathBuf,
    /// Retries on network errors before giving up (exponential backoff from 0.5 s).
    #[arg(long, default_value_t = 5)]
    pub retries: u32,
    /// When the wrap is invalid, wait this long for the token file to change (e.g. `30s`).
    #[arg(long, default_value = "0s", value_parser = humantime::parse_duration)]
    pub wait_for_fresh: Duration,
}

/// Why an unwrap did not succeed; each maps to one exit code and one receipt word.
#[derive(Debug, thiserror::Error)]
pub enum Failure {
    /// Bad flags or configuration.
    #[error("configuration error: {0}")]
    Usage(String),
    /// Vault says the wrapping token is not valid.
    #[error("the wrapping token is not valid (already used, expired or revoked)")]
    InvalidWrap,
    /// The wrap was created somewhere else; left unconsumed.
    #[error("the wrap was created at {found:?}, expected {expected}; not unwrapping it")]
    UnexpectedPath {
        /// The path Vault reports.
        found: String,
        /// What we accept.
        expected: String,
    },
    /// Vault could not be reached, or the unwrap got no answer.
    #[error("{0}")]
    Unreachable(VaultError),
    /// Vault answered with another error.
    #[error("{0}")]
    Vault(VaultError),
    /// The token file could not be read.
    #[error("cannot read the wrapping token: {0}")]
    TokenFile(String),
    /// The token could not be written.
    #[error("unwrapped, but cannot write the token: {0}")]
    Write(String),
    /// The operator's endpoint refused the ask.
    #[error("the operator refused to hand out a wrap: {} (reason {})", .0.message, .0.reason)]
    Refused(crate::request::protocol::Refusal),
    /// The operator's endpoint could not be reached.
    #[error("{0}")]
    OperatorUnreachable(String),
}

impl From<AskError> for Failure {
    fn from(e: AskError) -> Self {
        match e {
            AskError::Usage(m) => Failure::Usage(m),
            AskError::Identity(m) => Failure::TokenFile(m),
            AskError::Refused(r) => Failure::Refused(r),
            e @ AskError::Unreachable(_) => Failure::OperatorUnreachable(e.to_string()),
        }
    }
}

impl Failure {
    /// The process exit code (see the module table).
    pub fn exit_code(&self) -> u8 {
        match self {
            Failure::Usage(_) => 2,
            Failure::InvalidWrap => 3,
            Failure::UnexpectedPath { .. } => 4,
            Failure::Unreachable(_) => 5,
            Failure::Vault(_) => 6,
            Failure::TokenFile(_) => 7,
            Failure::Write(_) => 8,
            Failure::Refused(_) => 9,
            Failure::OperatorUnreachable(_) => 10,
        }
    }

    /// The receipt word; `None` for configuration errors, which never reached Vault.
    pub fn result(&self) -> Option<&'static str> {
        match self {
            Failure::Usage(_) => None,
            Failure::InvalidWrap => Some(result::INVALID_WRAPPING_TOKEN),
            Failure::UnexpectedPath { .. } => Some(result::UNEXPECTED_CREATION_PATH),
            Failure::Unreachable(_) => Some(result::VAULT_UNREACHABLE),
            Failure::Vault(_) => Some(result::VAULT_ERROR),
            Failure::TokenFile(_) => Some(result::TOKEN_FILE_UNREADABLE),
            Failure::Write(_) => Some(result::WRITE_FAILED),
            Failure::Refused(_) => Some(result::REQUEST_REFUSED),
            Failure::OperatorUnreachable(_) => Some(result::OPERATOR_UNREACHABLE),
        }
    }

    /// True when the run got no wrap at all (nothing to report to the endpoint).
    fn before_wrap(&self) -> bool {
        matches!(
            self,
            Failure::Usage(_)
                | Failure::TokenFile(_)
                | Failure::Refused(_)
                | Failure::OperatorUnreachable(_)
        )
    }
}

/// Runs the command: unwrap, write the token, leave a receipt, return the exit code.
pub async fn run(args: UnwrapArgs) -> ExitCode {
    let asker = match &args.request {
        Some(url) => match Asker::new(url, args.request_ca.as_deref(), &args.identity_token) {
            Ok(a) => Some(a),
            Err(e) => {
                let failure = Failure::from(e);
                log(&format!("failed: {failure}"));
                return ExitCode::from(failure.exit_code());
            }
        },
        None => None,
    };
    let outcome = unwrap_to_file(&args, asker.as_ref()).await;
    let (receipt, code) = match &outcome {
        Ok(accessor) => {
            log(&format!("done: token with accessor {accessor} written"));
            (Some(Receipt::unwrapped(accessor)), 0)
        }
        Err(failure) => {
            log(&format!("failed: {failure}"));
            (failure.result().map(Receipt::failed), failure.exit_code())
        }
    };
    if let Some(receipt) = receipt {
        write_receipt(&args.receipt_file, &receipt);
        let had_wrap = outcome.as_ref().err().is_none_or(|f| !f.before_wrap());
        if let Some(asker) = asker.as_ref().filter(|_| had_wrap) {
            match asker.report(&receipt).await {
                Ok(()) => log("receipt reported to the operator"),
                Err(e) => log(&format!(
                    "could not report the receipt to the operator: {e}"
                )),
            }
        }
    }
    ExitCode::from(code)
}

/// The whole procedure; returns the accessor of the token written to `--out`.
async fn unwrap_to_file(args: &UnwrapArgs, asker: Option<&Asker>) -> Result<String, Failure> {
    let expected = expected_path(&args.expect_path)?;
    let client = client(args)?;
    let token = match asker {
        Some(asker) => {
            let (token, facts) = asker.ask(args.retries, log).await?;
            log(&format!(
                "the operator handed out wrap {} (binding {}, start {}, valid {} s)",
                facts.wrap_accessor, facts.binding, facts.start, facts.wrap_ttl_seconds
            ));
            match lookup(&client, &token, args.retries).await? {
                Some(found) => check_path(&found, &expected)?,
                None => return Err(Failure::InvalidWrap),
            }
            token
        }
        None => valid_wrap(&client, args, &expected).await?,
    };
    // A wrap is single-use: make sure the token can be delivered before consuming it.
    check_writable(&args.out).map_err(|e| {
        Failure::Write(format!(
            "{e} (checked before unwrapping: the wrap is unused)"
        ))
    })?;
    let inner = unwrap_once(&client, &token, args.retries).await?;
    log(&format!(
        "unwrapped: token accessor {}, policies {:?}",
        inner.accessor, inner.policies
    ));
    write_token(&args.out, &inner.token).map_err(|e| Failure::Write(e.to_string()))?;
    Ok(inner.accessor)
}

/// Validates `--expect-path`: it must name a token role. Returns the path to accept.
pub fn expected_path(flag: &str) -> Result<String, Failure> {
    let path = flag.trim().trim_matches('/');
    if is_role_path(path) {
        Ok(path.to_string())
    } else {
        Err(Failure::Usage(format!(
            "--expect-path {path:?} is not of the form {CREATE_PREFIX}<role>"
        )))
    }
}

/// True for `auth/token/create/<role>` with a non-empty role.
fn is_role_path(path: &str) -> bool {
    path.strip_prefix(CREATE_PREFIX)
        .is_some_and(|role| !role.is_empty() && !role.contains('/'))
}

/// Checks Vault's answer about the wrap against the one path we accept.
pub fn check_path(lookup: &WrapLookup, expected: &str) -> Result<(), Failure> {
    if lookup.creation_path.trim_matches('/') == expected {
        Ok(())
    } else {
        Err(Failure::UnexpectedPath {
            found: lookup.creation_path.clone(),
            expected: expected.to_string(),
        })
    }
}

/// The agent's delays between retries: 0.5 s doubling up to 8 s, each a random point in the
/// upper half of that ([`Backoff`]), so agents that failed together (an outage ending) do not
/// all ask again at the same instant.
pub fn backoff() -> Backoff {
    Backoff::new(FIRST_BACKOFF, MAX_BACKOFF)
}

/// True for errors where Vault never got (lookup: never acted on) the request.
fn retriable_lookup(err: &VaultError) -> bool {
    matches!(
        err,
        VaultError::Unreachable { .. } | VaultError::NoAnswer { .. }
    )
}

/// Sorts a Vault error into a failure: network trouble is "unreachable", a request that could
/// not be built is a configuration error, the rest is Vault's.
pub fn classify(err: VaultError) -> Failure {
    match err {
        VaultError::NotSent { .. } => Failure::Usage(err.to_string()),
        VaultError::Unreachable { .. } | VaultError::NoAnswer { .. } => Failure::Unreachable(err),
        VaultError::Refused { ref message, .. } if is_invalid_wrap(message) => Failure::InvalidWrap,
        other => Failure::Vault(other),
    }
}

/// Vault's one answer for a consumed, expired or revoked wrapping token.
fn is_invalid_wrap(message: &str) -> bool {
    message.contains("wrapping token is not valid or does not exist")
}

/// Builds the unauthenticated agent client.
fn client(args: &UnwrapArgs) -> Result<VaultClient, Failure> {
    if args.vault_addr.trim().is_empty() {
        return Err(Failure::Usage("--vault-addr (VAULT_ADDR) is empty".into()));
    }
    let endpoint = VaultEndpoint {
        address: args.vault_addr.trim().to_string(),
        ca_cert: args.ca_cert.clone(),
        namespace: args.namespace.clone().filter(|ns| !ns.is_empty()),
    };
    VaultClient::new(endpoint, None).map_err(Failure::Usage)
}

/// Reads the token file and looks the wrap up until it is valid and made at the right path.
/// An invalid wrap, and a missing or empty file, are waited on (the file re-read) for up to
/// `--wait-for-fresh`.
async fn valid_wrap(
    client: &VaultClient,
    args: &UnwrapArgs,
    expected: &str,
) -> Result<SecretString, Failure> {
    let deadline = Instant::now() + args.wait_for_fresh;
    let mut token = first_token(&args.token_file, deadline).await?;
    loop {
        match lookup(client, &token, args.retries).await? {
            Some(found) => {
                log(&format!(
                    "wrap is valid: created at {} on {}, TTL {} s",
                    found.creation_path, found.creation_time, found.creation_ttl
                ));
                check_path(&found, expected)?;
                return Ok(token);
            }
            None if Instant::now() < deadline => {
                log("wrap is not valid; waiting for a fresh one in the token file");
                token = wait_for_change(&args.token_file, &token, deadline)
                    .await
                    .ok_or(Failure::InvalidWrap)?;
                log("the token file changed; checking the new wrap");
            }
            None => return Err(Failure::InvalidWrap),
        }
    }
}

/// `sys/wrapping/lookup` with retries on network errors (it never consumes the wrap).
async fn lookup(
    client: &VaultClient,
    token: &SecretString,
    retries: u32,
) -> Result<Option<WrapLookup>, Failure> {
    let mut retry = 0;
    let mut delays = backoff();
    loop {
        match client.lookup_wrap(token).await {
            Ok(found) => return Ok(found),
            Err(err) if retriable_lookup(&err) && retry < retries => {
                log(&format!("{err}; retry {} of {retries}", retry + 1));
                tokio::time::sleep(delays.next_delay()).await;
                retry += 1;
            }
            Err(err) => return Err(classify(err)),
        }
    }
}

/// `sys/wrapping/unwrap`, retried only when the request never reached Vault: after a lost
/// answer the wrap may be consumed, and trying again would only hide that.
async fn unwrap_once(
    client: &VaultClient,
    token: &SecretString,
    retries: u32,
) -> Result<crate::vault::UnwrappedToken, Failure> {
    let mut retry = 0;
    let mut delays = backoff();
    loop {
        match client.unwrap(token).await {
            Ok(inner) => return Ok(inner),
            Err(err @ VaultError::Unreachable { .. }) if retry < retries => {
                log(&format!("{err}; retry {} of {retries}", retry + 1));
                tokio::time::sleep(delays.next_delay()).await;
                retry += 1;
            }
            Err(err) => {
                if err.may_have_been_processed() {
                    log("the unwrap may have reached Vault: not retrying, the wrap may be used");
                }
                return Err(classify(err));
            }
        }
    }
}

/// Reads and trims the wrapping token.
fn read_token(path: &Path) -> Result<SecretString, Failure> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| Failure::TokenFile(format!("{}: {e}", path.display())))?;
    let token = text.trim();
    if token.is_empty() {
        return Err(Failure::TokenFile(format!("{} is empty", path.display())));
    }
    Ok(SecretString::new(token))
}

/// Reads the token file, waiting until `deadline` while it is missing or empty: after a new
/// pod sandbox the init container may run before the kubelet has put the new start's wrap
/// into the Secret volume (the operator removed the previous, consumed one).
async fn first_token(path: &Path, deadline: Instant) -> Result<SecretString, Failure> {
    let mut said = false;
    loop {
        match read_token(path) {
            Ok(token) => return Ok(token),
            Err(e) if Instant::now() < deadline => {
                if !said {
                    log(&format!("{e}; waiting for a wrap in the token file"));
                    said = true;
                }
                tokio::time::sleep(POLL.min(deadline.saturating_duration_since(Instant::now())))
                    .await;
            }
            Err(e) => return Err(e),
        }
    }
}

/// Polls `path` until it holds a token other than `old`; `None` at the deadline.
async fn wait_for_change(
    path: &Path,
    old: &SecretString,
    deadline: Instant,
) -> Option<SecretString> {
    while Instant::now() < deadline {
        tokio::time::sleep(POLL.min(deadline.saturating_duration_since(Instant::now()))).await;
        // The file may be mid-replacement: an unreadable or empty file is "not changed yet".
        if let Ok(token) = read_token(path)
            && token != *old
        {
            return Some(token);
        }
    }
    None
}

/// Writes the token to `out` atomically: a new 0400 temp file in the same directory, then
/// rename. The file is never readable by anyone else, not even for a moment.
pub fn write_token(out: &Path, token: &SecretString) -> std::io::Result<()> {
    let tmp = temp_path(out);
    let written = write_new_private(&tmp, token.expose().as_bytes())
        .and_then(|()| std::fs::rename(&tmp, out));
    if written.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    written
}

/// Creates and removes the temp file [`write_token`] will use, to find an unwritable
/// `--out` directory while the wrap is still unused.
fn check_writable(out: &Path) -> std::io::Result<()> {
    let tmp = temp_path(out);
    write_new_private(&tmp, b"")?;
    std::fs::remove_file(&tmp)
}

/// `<dir>/.<name>.tmp-<pid>` next to `out`, so the rename stays on one file system.
fn temp_path(out: &Path) -> PathBuf {
    let name = out
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "token".into());
    out.with_file_name(format!(".{name}.tmp-{}", std::process::id()))
}

/// Creates `path` (which must not exist) with mode 0400 and writes `bytes` to disk.
fn write_new_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    let _ = std::fs::remove_file(path); // a leftover of a crashed earlier run
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o400)
        .open(path)?;
    file.write_all(bytes)?;
    file.sync_all()
}

/// Best effort: outside Kubernetes there may be no termination-log file; say so and go on.
fn write_receipt(path: &Path, receipt: &Receipt) {
    match std::fs::write(path, receipt.to_line()) {
        Ok(()) => log(&format!("receipt written to {}", path.display())),
        Err(e) => log(&format!(
            "could not write the receipt to {}: {e}",
            path.display()
        )),
    }
}

/// Progress for humans, on stderr. Never pass a token here.
fn log(message: &str) {
    eprintln!("cubbyhole unwrap: {message}");
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        args: UnwrapArgs,
    }

    fn lookup_at(path: &str) -> WrapLookup {
        WrapLookup {
            creation_path: path.into(),
            creation_time: "2026-01-01T00:00:00Z".into(),
            creation_ttl: 60,
        }
    }

    #[test]
    fn flags_have_the_documented_defaults() {
        let path = "--expect-path=auth/token/create/agents";
        let cli =
            Cli::try_parse_from(["x", "--out", "/o", "--vault-addr", "http://v", path]).unwrap();
        let a = cli.args;
        assert_eq!(a.token_file, Path::new("/var/run/cubbyhole/wrap/token"));
        assert_eq!(a.receipt_file, Path::new("/dev/termination-log"));
        assert_eq!(a.retries, 5);
        assert_eq!(a.wait_for_fresh, Duration::ZERO);
        assert_eq!(a.expect_path, "auth/token/create/agents");
        let cli = Cli::try_parse_from([
            "x",
            "--out=/o",
            "--vault-addr=http://v",
            "--wait-for-fresh=1m30s",
            path,
        ])
        .unwrap();
        assert_eq!(cli.args.wait_for_fresh, Duration::from_secs(90));
        assert!(Cli::try_parse_from(["x", "--vault-addr", "http://v", path]).is_err());
    }

    #[test]
    fn expect_path_is_required() {
        let err = Cli::try_parse_from(["x", "--out", "/o", "--vault-addr", "http://v"])
            .err()
            .expect("--expect-path is required");
        assert_eq!(err.kind(), clap::error::ErrorKind::MissingRequiredArgument);
        assert!(err.to_string().contains("--expect-path"), "{err}");
    }

    #[test]
    fn expected_path_must_name_a_token_role() {
        assert_eq!(
            expected_path("auth/token/create/agents").unwrap(),
            "auth/token/create/agents"
        );
        assert_eq!(
            expected_path("/auth/token/create/agents/").unwrap(),
            "auth/token/create/agents"
        );
        for bad in [
            "",
            "auth/token/create",
            "auth/token/create/",
            "sys/x",
            "auth/token/create/a/b",
        ] {
            let err = expected_path(bad).unwrap_err();
            assert_eq!(err.exit_code(), 2, "{bad}");
        }
    }

    #[test]
    fn creation_path_is_checked_before_unwrapping() {
        let exact = "auth/token/create/agents";
        assert!(check_path(&lookup_at("auth/token/create/agents"), exact).is_ok());
        for other in [
            "auth/token/create/other",
            "auth/token/create",
            "sys/wrapping/wrap",
        ] {
            let err = check_path(&lookup_at(other), exact).unwrap_err();
            assert_eq!(err.exit_code(), 4);
            assert_eq!(err.result(), Some(result::UNEXPECTED_CREATION_PATH));
        }
    }

    #[test]
    fn backoff_doubles_is_capped_and_spreads_agents_apart() {
        // 0.5 s, 1 s, 2 s, 4 s, then MAX_BACKOFF for good.
        let ceilings = [500, 1000, 2000, 4000, 8000, 8000, 8000].map(Duration::from_millis);
        assert_eq!(ceilings[4], MAX_BACKOFF);
        let mut agents: Vec<Backoff> = (0..200).map(|_| backoff()).collect();
        for ceiling in ceilings {
            let delays: Vec<Duration> = agents.iter_mut().map(Backoff::next_delay).collect();
            assert!(delays.iter().all(|d| *d >= ceiling / 2 && *d <= ceiling));
            // Two hundred agents retrying together spread over the upper half of the delay.
            let (min, max) = (delays.iter().min().unwrap(), delays.iter().max().unwrap());
            assert!(*max - *min > ceiling / 4, "{min:?}..{max:?} of {ceiling:?}");
        }
    }

    #[test]
    fn vault_errors_map_to_exit_codes_and_receipts() {
        let refused = |message: &str| VaultError::Refused {
            op: "unwrap",
            status: 400,
            message: message.into(),
        };
        let unreachable = VaultError::Unreachable {
            op: "lookup",
            detail: "refused".into(),
        };
        let no_answer = VaultError::NoAnswer {
            op: "unwrap",
            detail: "timed out".into(),
        };
        let not_sent = VaultError::NotSent {
            op: "lookup",
            detail: "request could not be built".into(),
        };
        let usage = classify(not_sent);
        assert_eq!((usage.exit_code(), usage.result()), (2, None), "{usage}");
        let cases = [
            (classify(unreachable), 5, result::VAULT_UNREACHABLE),
            (classify(no_answer), 5, result::VAULT_UNREACHABLE),
            (
                classify(refused("wrapping token is not valid or does not exist")),
                3,
                result::INVALID_WRAPPING_TOKEN,
            ),
            (
                classify(refused("permission denied")),
                6,
                result::VAULT_ERROR,
            ),
        ];
        for (failure, code, word) in cases {
            assert_eq!(failure.exit_code(), code, "{failure}");
            assert_eq!(failure.result(), Some(word));
        }
        assert_eq!(Failure::Usage("x".into()).result(), None);
        assert_eq!(Failure::TokenFile("x".into()).exit_code(), 7);
        assert_eq!(Failure::Write("x".into()).exit_code(), 8);
    }

    #[test]
    fn token_file_is_written_0400_and_replaced_atomically() {
        use std::os::unix::fs::PermissionsExt;
        let dir = std::env::temp_dir().join(format!("cubbyhole-unwrap-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let out = dir.join("token");
        check_writable(&out).unwrap();
        assert!(check_writable(&dir.join("missing/token")).is_err());
        for value in ["first-token", "second-token"] {
            write_token(&out, &SecretString::new(value)).unwrap();
            assert_eq!(std::fs::read_to_string(&out).unwrap(), value);
            let mode = std::fs::metadata(&out).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o400);
        }
        assert_eq!(
            std::fs::read_dir(&dir).unwrap().count(),
            1,
            "temp file left"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn read_token_trims_and_refuses_empty_files() {
        let dir = std::env::temp_dir().join(format!("cubbyhole-read-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("token");
        std::fs::write(&file, " s.abc\n").unwrap();
        assert_eq!(read_token(&file).unwrap(), SecretString::new("s.abc"));
        std::fs::write(&file, "\n").unwrap();
        assert_eq!(read_token(&file).unwrap_err().exit_code(), 7);
        assert_eq!(read_token(&dir.join("missing")).unwrap_err().exit_code(), 7);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
