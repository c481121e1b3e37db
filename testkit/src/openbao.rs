//! A private OpenBao dev server per test, set up with `config/vault/setup.sh`.
//!
//! Each [`Bao`] gets its own port pair (the dev server also listens on port + 1 for cluster
//! traffic), root token and directory under `target/test-tmp/`, so tests run in parallel under
//! cargo-nextest. The directory (with the server log) is kept when the test panics.

use std::collections::BTreeMap;
use std::io::Read;
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use cubbyhole::vault::{TokenRequest, VaultAuth, VaultClient, VaultEndpoint, WrapInfo};

use crate::process::{
    free_port_pair, process_state, random_hex, scratch_dir, signal, write_private,
};

/// The token role (and agent policy) `setup.sh` creates by default.
pub const ROLE: &str = "cubbyhole-agent";
/// The creation path of wraps minted through [`ROLE`].
pub const ROLE_PATH: &str = "auth/token/create/cubbyhole-agent";

/// A running OpenBao dev server, killed on drop.
pub struct Bao {
    /// Base address, `http://127.0.0.1:<port>`.
    pub addr: String,
    /// Root token of this server.
    pub root_token: String,
    /// File holding a token with only the `cubbyhole-operator` policy.
    pub operator_token_file: PathBuf,
    /// This server's scratch directory (log, token files, test outputs).
    pub dir: PathBuf,
    /// The server process; `None` for an external Vault (see [`Bao::external`]).
    pub(crate) child: Option<Child>,
}

impl Bao {
    /// Starts a server and runs `setup.sh` against it. Panics when that fails.
    pub fn start() -> Bao {
        let dir = scratch_dir();
        let root_token = format!("root-{}", random_hex(12));
        for _ in 0..5 {
            let port = free_port_pair();
            if let Some(bao) = Bao::try_start(&dir, port, &root_token) {
                bao.setup();
                return bao;
            }
        }
        panic!(
            "OpenBao did not start; see {}",
            dir.join("bao.log").display()
        );
    }

    /// Uses an existing Vault/OpenBao at `addr` with an admin `token` instead of starting one,
    /// set up with `setup.sh` like a private server. It has no log, no audit log and cannot be
    /// paused.
    pub fn external(addr: &str, token: &str) -> Bao {
        let dir = scratch_dir();
        let bao = Bao {
            addr: addr.trim_end_matches('/').to_string(),
            root_token: token.to_string(),
            operator_token_file: dir.join("operator-token"),
            dir,
            child: None,
        };
        bao.setup();
        bao
    }

    /// True for an external Vault.
    pub fn is_external(&self) -> bool {
        self.child.is_none()
    }

    /// Starts the server on `port`; `None` when it exits early (e.g. a port was taken).
    fn try_start(dir: &Path, port: u16, root_token: &str) -> Option<Bao> {
        // A failed attempt's drop removed the directory.
        std::fs::create_dir_all(dir).expect("create scratch dir");
        // An audit log in clear (accessors and, with `log_raw`, tokens) lets tests count Vault
        // calls, find every wrap and scan the output for every token the server issued.
        let audit = format!(
            "audit \"file\" \"file\" {{\n  options {{\n    file_path = \"{}\"\n    hmac_accessor = \"false\"\n    log_raw = \"true\"\n  }}\n}}\n",
            dir.join("audit.log").display()
        );
        std::fs::write(dir.join("audit.hcl"), audit).expect("write audit config");
        let config = format!("-config={}", dir.join("audit.hcl").display());
        let mut bao = spawn_dev_server(dir, port, root_token, "http", &[&config]);
        bao.wait_healthy(port).then_some(bao)
    }

    /// Waits up to 30 s for `/v1/sys/health` to answer 200; false when the server died.
    fn wait_healthy(&mut self, port: u16) -> bool {
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if let Some(Ok(Some(_))) = self.child.as_mut().map(|c| c.try_wait()) {
                return false;
            }
            if health_ok(port) {
                return true;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!("OpenBao not healthy after 30 s:\n{}", self.log());
    }

    /// Runs the documented setup, writing the operator token file.
    fn setup(&self) {
        let out = self.setup_with(&[]);
        assert!(
            out.status.success(),
            "setup.sh failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// Runs `config/vault/setup.sh --dev-operator-token-file <operator_token_file>` again as
    /// admin, with extra environment `envs` (e.g. `KUBERNETES_HOST`).
    pub fn setup_with(&self, envs: &[(&str, &str)]) -> Output {
        let script = crate::paths::repo().join("config/vault/setup.sh");
        Command::new("bash")
            .arg(script)
            .arg("--dev-operator-token-file")
            .arg(&self.operator_token_file)
            .env("VAULT_BIN", bao_bin())
            .env("VAULT_ADDR", &self.addr)
            .env("VAULT_TOKEN", &self.root_token)
            .env_remove("KUBERNETES_HOST")
            .env_remove("KUBERNETES_CA_CERT")
            .env_remove("TOKEN_REVIEWER_JWT_FILE")
            .env_remove("CUBBYHOLE_VAULT_AUDIENCE")
            .env_remove("CUBBYHOLE_ROLE")
            .env_remove("CUBBYHOLE_OPERATOR_POLICY")
            .envs(envs.iter().copied())
            .stdin(Stdio::null())
            .output()
            .expect("run setup.sh")
    }

    /// The operator's token, as `setup.sh` wrote it.
    pub fn operator_token(&self) -> String {
        std::fs::read_to_string(&self.operator_token_file)
            .expect("operator token file")
            .trim()
            .to_string()
    }

    /// The server's process id.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("a private server").id()
    }

    /// Freezes the server (SIGSTOP): connections are accepted by the kernel but never answered.
    pub fn pause(&self) {
        assert!(signal(self.pid(), "-STOP"), "could not pause OpenBao");
        // The stop is asynchronous: wait until the kernel reports the process stopped.
        let deadline = Instant::now() + Duration::from_secs(5);
        while process_state(self.pid()) != Some('T') {
            assert!(Instant::now() < deadline, "OpenBao did not stop");
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Thaws a paused server (SIGCONT).
    pub fn resume(&self) {
        assert!(signal(self.pid(), "-CONT"), "could not resume OpenBao");
    }

    /// Everything the server printed so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("bao.log")).unwrap_or_default()
    }

    /// Runs the `bao` CLI against this server with `token` as `VAULT_TOKEN`.
    pub fn cli(&self, token: &str, args: &[&str]) -> Output {
        Command::new(bao_bin())
            .args(args)
            .env("VAULT_ADDR", &self.addr)
            .env("VAULT_TOKEN", token)
            .stdin(Stdio::null())
            .output()
            .expect("run bao CLI")
    }

    /// Runs the CLI with the root token, asserts success and parses its JSON output.
    pub fn cli_json(&self, args: &[&str]) -> serde_json::Value {
        let out = Command::new(bao_bin())
            .args(args)
            .env("VAULT_ADDR", &self.addr)
            .env("VAULT_TOKEN", &self.root_token)
            .env("VAULT_FORMAT", "json")
            .env("BAO_FORMAT", "json")
            .stdin(Stdio::null())
            .output()
            .expect("run bao CLI");
        assert!(
            out.status.success(),
            "bao {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).expect("bao printed JSON")
    }

    /// The endpoint of this server.
    pub fn endpoint(&self) -> VaultEndpoint {
        VaultEndpoint {
            address: self.addr.clone(),
            ..Default::default()
        }
    }

    /// A client authenticated as the operator (only the `cubbyhole-operator` policy).
    pub fn operator_client(&self) -> VaultClient {
        let auth = VaultAuth::TokenFile(self.operator_token_file.clone());
        VaultClient::new(self.endpoint(), Some(auth)).expect("client")
    }

    /// A client authenticated with the root token (for checks the operator may not make).
    pub fn root_client(&self) -> VaultClient {
        let file = self.dir.join("root-token");
        write_private(&file, &self.root_token);
        VaultClient::new(self.endpoint(), Some(VaultAuth::TokenFile(file))).expect("client")
    }

    /// An unauthenticated client, as the agent uses.
    pub fn agent_client(&self) -> VaultClient {
        VaultClient::new(self.endpoint(), None).expect("client")
    }

    /// Mints a wrapped agent token the way the operator does.
    pub async fn mint(&self, wrap_ttl_secs: u64) -> WrapInfo {
        self.operator_client()
            .create_wrapped_token(&agent_request(wrap_ttl_secs))
            .await
            .expect("mint a wrapped token")
    }

    /// Mints a wrap (30 s) and writes its token to `path`, as the operator's Secret would.
    pub async fn mint_to_file(&self, path: &Path) -> WrapInfo {
        let wrap = self.mint(30).await;
        write_private(path, wrap.token.expose());
        wrap
    }

    /// A path in this server's scratch directory.
    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }
}

impl Drop for Bao {
    fn drop(&mut self) {
        if let Some(child) = self.child.as_mut() {
            signal(child.id(), "-CONT");
            let _ = child.kill();
            let _ = child.wait();
        }
        if !std::thread::panicking() {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

/// Spawns `bao server -dev` on `port` with `extra` flags, its output in `dir/bao.log`.
pub(crate) fn spawn_dev_server(
    dir: &Path,
    port: u16,
    root_token: &str,
    scheme: &str,
    extra: &[&str],
) -> Bao {
    let log = std::fs::File::create(dir.join("bao.log")).expect("create log");
    let child = Command::new(bao_bin())
        .args([
            "server",
            "-dev",
            &format!("-dev-root-token-id={root_token}"),
            &format!("-dev-listen-address=127.0.0.1:{port}"),
        ])
        .args(extra)
        .env_remove("VAULT_TOKEN")
        .env_remove("VAULT_ADDR")
        .stdin(Stdio::null())
        .stdout(log.try_clone().expect("clone log"))
        .stderr(log)
        .spawn()
        .expect("spawn bao server (is `bao` on PATH?)");
    Bao {
        addr: format!("{scheme}://127.0.0.1:{port}"),
        root_token: root_token.to_string(),
        operator_token_file: dir.join("operator-token"),
        dir: dir.to_path_buf(),
        child: Some(child),
    }
}

/// The request the operator sends for one pod start of binding `b` in namespace `ns`.
pub fn agent_request(wrap_ttl_secs: u64) -> TokenRequest {
    let meta = BTreeMap::from([
        ("namespace".to_string(), "ns".to_string()),
        ("pod".to_string(), "agent-0".to_string()),
        ("pod_uid".to_string(), "uid-1234".to_string()),
        ("binding".to_string(), "b".to_string()),
    ]);
    TokenRequest {
        role: ROLE.to_string(),
        policies: vec![],
        ttl: Some("1h".to_string()),
        explicit_max_ttl: None,
        num_uses: None,
        meta,
        wrap_ttl_secs,
    }
}

/// The CLI binary; `BAO_BIN` overrides `bao` from PATH.
pub(crate) fn bao_bin() -> String {
    std::env::var("BAO_BIN").unwrap_or_else(|_| "bao".to_string())
}

/// True when `/v1/sys/health` answers 200 (plain HTTP/1.0, std only).
fn health_ok(port: u16) -> bool {
    let Ok(mut stream) = TcpStream::connect(("127.0.0.1", port)) else {
        return false;
    };
    let _ = stream.set_read_timeout(Some(Duration::from_secs(2)));
    let request = "GET /v1/sys/health HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n";
    if std::io::Write::write_all(&mut stream, request.as_bytes()).is_err() {
        return false;
    }
    let mut answer = String::new();
    let _ = stream.read_to_string(&mut answer);
    answer.starts_with("HTTP/1.0 200") || answer.starts_with("HTTP/1.1 200")
}

impl Bao {
    /// Every entry of the audit log so far (only servers from [`Bao::start`] have one). A
    /// last line without its newline is one OpenBao is still writing: left for the next read.
    pub fn audit_entries(&self) -> Vec<serde_json::Value> {
        let text = std::fs::read_to_string(self.dir.join("audit.log")).unwrap_or_default();
        let complete = text.rfind('\n').map_or("", |end| &text[..end]);
        complete
            .lines()
            .filter(|l| !l.trim().is_empty())
            .map(|l| serde_json::from_str(l).expect("audit line is JSON"))
            .collect()
    }

    /// Audit responses to requests at `path` (e.g. `auth/kubernetes/login`), in order.
    pub fn audit_responses(&self, path: &str) -> Vec<serde_json::Value> {
        self.audit_entries()
            .into_iter()
            .filter(|e| e["type"] == "response" && e["request"]["path"] == path)
            .collect()
    }

    /// `(wrap accessor, accessor of the token inside)` of every wrapped token create, in order.
    pub fn minted_accessors(&self) -> Vec<(String, String)> {
        self.audit_entries()
            .iter()
            .filter(|e| e["type"] == "response")
            .filter(|e| {
                e["request"]["path"]
                    .as_str()
                    .is_some_and(|p| p.starts_with("auth/token/create/"))
            })
            .filter_map(|e| {
                let wrap = &e["response"]["wrap_info"];
                Some((
                    wrap["accessor"].as_str()?.to_string(),
                    wrap["wrapped_accessor"].as_str()?.to_string(),
                ))
            })
            .collect()
    }

    /// Every token and wrapping token this server handed out (logins, creates, wraps, unwraps),
    /// from its raw audit log, except the dev server's root token (which it prints itself);
    /// empty for an external Vault.
    pub fn issued_tokens(&self) -> Vec<String> {
        let mut tokens: Vec<String> = self
            .audit_entries()
            .iter()
            .filter(|e| e["type"] == "response")
            .flat_map(|e| {
                [
                    e["response"]["auth"]["client_token"].as_str(),
                    e["response"]["wrap_info"]["token"].as_str(),
                ]
            })
            .flatten()
            .filter(|t| *t != self.root_token)
            .map(str::to_string)
            .collect();
        tokens.sort();
        tokens.dedup();
        tokens
    }

    /// Panics unless every successful response that handed out a token (a login, a create, a
    /// wrap) shows it raw in the audit log, so [`Bao::issued_tokens`] has them all: a hashed or
    /// missing one would leave a token the leak scan never looks for.
    pub fn assert_every_token_captured(&self) {
        let entries = self.audit_entries();
        let mut handed_out = 0;
        for e in entries.iter().filter(|e| e["type"] == "response") {
            let path = e["request"]["path"].as_str().unwrap_or_default();
            // Renewals by accessor answer with the token blanked: nothing handed out.
            let hands_out = path.starts_with("auth/token/create") || path.ends_with("/login");
            let response = &e["response"];
            let tokens = [
                (
                    response["wrap_info"]["token"].as_str(),
                    response["wrap_info"]["accessor"].is_string(),
                ),
                (
                    response["auth"]["client_token"].as_str(),
                    hands_out && response["auth"]["accessor"].is_string(),
                ),
            ];
            for (token, required) in tokens {
                let token = token.unwrap_or_default();
                if token.is_empty() && !required {
                    continue;
                }
                handed_out += 1;
                assert!(
                    token.len() >= 8 && !token.starts_with("hmac-"),
                    "a token handed out at {path} is not in the audit log raw"
                );
            }
        }
        assert!(handed_out > 0, "the audit log shows no token handed out");
    }

    /// Accessors of the tokens successful logins at `auth/kubernetes/login` handed out, in order.
    pub fn login_accessors(&self) -> Vec<String> {
        self.audit_responses("auth/kubernetes/login")
            .iter()
            .filter_map(|e| e["auth"]["accessor"].as_str().map(str::to_string))
            .collect()
    }
}

/// Requests in the audit log (from `entries`) at `path`.
pub fn audit_requests_at<'a>(
    entries: &'a [serde_json::Value],
    path: &'a str,
) -> impl Iterator<Item = &'a serde_json::Value> + 'a {
    entries
        .iter()
        .filter(move |e| e["type"] == "request" && e["request"]["path"] == path)
}

/// Accessors named by revoke-accessor requests in `entries`.
pub fn revoked_accessors(entries: &[serde_json::Value]) -> Vec<String> {
    accessors_at(entries, "auth/token/revoke-accessor")
}

/// Accessors named by renew-accessor requests in `entries`.
pub fn renewed_accessors(entries: &[serde_json::Value]) -> Vec<String> {
    accessors_at(entries, "auth/token/renew-accessor")
}

/// Accessors named by requests at `path` in `entries`.
fn accessors_at(entries: &[serde_json::Value], path: &str) -> Vec<String> {
    audit_requests_at(entries, path)
        .filter_map(|e| {
            e["request"]["data"]["accessor"]
                .as_str()
                .map(str::to_string)
        })
        .collect()
}
