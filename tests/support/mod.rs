//! Test harness: a private OpenBao dev server per test, set up with `config/vault/setup.sh`.
//!
//! Each [`Bao`] gets its own port pair (the dev server also listens on port + 1 for cluster
//! traffic), root token and directory under `target/test-tmp/`, so tests run in parallel under
//! cargo-nextest. The directory (with the server log) is kept when the test panics.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::io::Read;
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use cubbyhole::vault::{TokenRequest, VaultAuth, VaultClient, VaultEndpoint, WrapInfo};

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
    child: Option<Child>,
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
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("config/vault/setup.sh");
        Command::new("bash")
            .arg(script)
            .arg("--dev-operator-token-file")
            .arg(&self.operator_token_file)
            .env("VAULT_BIN", bao_bin())
            .env("VAULT_ADDR", &self.addr)
            .env("VAULT_TOKEN", &self.root_token)
            .env_remove("KUBERNETES_HOST")
            .env_remove("KUBERNETES_CA_CERT")
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
fn spawn_dev_server(dir: &Path, port: u16, root_token: &str, scheme: &str, extra: &[&str]) -> Bao {
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
        num_uses: None,
        meta,
        wrap_ttl_secs,
    }
}

/// An address where nothing listens (a port we bound and released).
pub fn closed_addr() -> String {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = listener.local_addr().expect("addr").port();
    drop(listener);
    format!("http://127.0.0.1:{port}")
}

/// Panics when `text` (named `what` in the message) contains any of `secrets`.
pub fn assert_no_secrets(what: &str, text: &str, secrets: &[&str]) {
    for (i, secret) in secrets.iter().enumerate() {
        assert!(secret.len() >= 8, "secret #{i} is too short to check for");
        assert!(!text.contains(secret), "{what} leaks secret #{i}");
    }
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

/// The CLI binary; `BAO_BIN` overrides `bao` from PATH.
fn bao_bin() -> String {
    std::env::var("BAO_BIN").unwrap_or_else(|_| "bao".to_string())
}

/// A fresh directory under `target/test-tmp/` (not removed: for tests without a server).
pub fn scratch_dir() -> PathBuf {
    let base = Path::new(env!("CARGO_TARGET_TMPDIR"))
        .parent()
        .expect("target dir")
        .join("test-tmp");
    let dir = base.join(format!("bao-{}-{}", std::process::id(), random_hex(6)));
    std::fs::create_dir_all(&dir).expect("create scratch dir");
    dir
}

/// A port P with P and P + 1 free right now (the dev server's API and cluster listeners).
fn free_port_pair() -> u16 {
    loop {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let port = listener.local_addr().expect("addr").port();
        if port < u16::MAX && TcpListener::bind(("127.0.0.1", port + 1)).is_ok() {
            return port;
        }
    }
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

/// Sends a signal with `kill(1)` (the crate forbids unsafe code, so no libc); true on success.
fn signal(pid: u32, sig: &str) -> bool {
    Command::new("kill")
        .args([sig, &pid.to_string()])
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// The state letter of process `pid` from `/proc/<pid>/stat` (`T` when stopped).
fn process_state(pid: u32) -> Option<char> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // "pid (comm) S ...": the command may contain spaces, so split after the last ')'.
    stat.rsplit_once(')')?.1.trim_start().chars().next()
}

/// `2 * bytes` random hex digits from the kernel.
fn random_hex(bytes: usize) -> String {
    let mut buf = vec![0u8; bytes];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut buf))
        .expect("read /dev/urandom");
    hex::encode(buf)
}

// --- Kubernetes-style JWT login and TLS (used by tests/vault_auth.rs) ---

/// An RSA key pair (files in a scratch directory) that signs RS256 JWTs with the `openssl`
/// CLI: a stand-in for the Kubernetes service account token issuer.
pub struct JwtKey {
    private: PathBuf,
    public: PathBuf,
}

impl JwtKey {
    /// Generates a 2048-bit key pair as `<dir>/<name>.key` and `<dir>/<name>.pub` (PEM).
    pub fn generate(dir: &Path, name: &str) -> JwtKey {
        let private = dir.join(format!("{name}.key"));
        let public = dir.join(format!("{name}.pub"));
        run_ok(
            Command::new("openssl")
                .args(["genpkey", "-algorithm", "RSA"])
                .args(["-pkeyopt", "rsa_keygen_bits:2048", "-out"])
                .arg(&private),
        );
        run_ok(
            Command::new("openssl")
                .args(["pkey", "-pubout", "-in"])
                .arg(&private)
                .arg("-out")
                .arg(&public),
        );
        JwtKey { private, public }
    }

    /// The PEM file with the public key (what Vault is told to trust).
    pub fn public_pem(&self) -> &Path {
        &self.public
    }

    /// A compact RS256 JWT carrying `claims`, signed with this key.
    pub fn sign(&self, claims: &serde_json::Value) -> String {
        let header = base64url(br#"{"alg":"RS256","typ":"JWT"}"#);
        let payload = base64url(&serde_json::to_vec(claims).expect("claims to JSON"));
        let input = format!("{header}.{payload}");
        let mut child = Command::new("openssl")
            .args(["dgst", "-sha256", "-sign"])
            .arg(&self.private)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("run openssl dgst");
        // Dropping stdin after the write closes it, so openssl sees the end of the input.
        std::io::Write::write_all(
            &mut child.stdin.take().expect("openssl stdin"),
            input.as_bytes(),
        )
        .expect("write signing input");
        let out = child.wait_with_output().expect("wait for openssl dgst");
        assert!(
            out.status.success() && out.stdout.len() == 256,
            "openssl dgst failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        format!("{input}.{}", base64url(&out.stdout))
    }
}

/// Claims of a projected service account token for `sub` and audience `aud`, valid from a
/// minute ago for ten minutes.
pub fn service_account_claims(sub: &str, aud: &str) -> serde_json::Value {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock after 1970")
        .as_secs();
    serde_json::json!({
        "iss": "https://kubernetes.default.svc.cluster.local",
        "sub": sub,
        "aud": [aud],
        "iat": now - 60,
        "nbf": now - 60,
        "exp": now + 600,
    })
}

/// Base64url without padding (RFC 7515 §2), as JWTs use.
pub fn base64url(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let n = chunk
            .iter()
            .enumerate()
            .fold(0u32, |n, (i, b)| n | (u32::from(*b) << (16 - 8 * i)));
        for i in 0..=chunk.len() {
            out.push(ALPHABET[((n >> (18 - 6 * i)) & 63) as usize] as char);
        }
    }
    out
}

/// The audience the JWT role of [`Bao::enable_jwt_login`] is bound to.
pub const JWT_AUDIENCE: &str = "cubbyhole-test";

impl Bao {
    /// Mounts OpenBao's JWT auth method at `auth/kubernetes` (it takes the same
    /// `{"role", "jwt"}` login as the Kubernetes method, without a TokenReview API), trusting
    /// `key`, with role `role` bound to [`JWT_AUDIENCE`] and giving tokens the `policy` policy
    /// and `token_ttl` (also the max TTL, so the token cannot be renewed past it).
    pub fn enable_jwt_login(&self, key: &JwtKey, role: &str, policy: &str, token_ttl: &str) {
        let pubkey = format!("jwt_validation_pubkeys=@{}", key.public_pem().display());
        let steps: [Vec<String>; 3] = [
            vec![
                "auth".into(),
                "enable".into(),
                "-path=kubernetes".into(),
                "jwt".into(),
            ],
            vec!["write".into(), "auth/kubernetes/config".into(), pubkey],
            vec![
                "write".into(),
                format!("auth/kubernetes/role/{role}"),
                "role_type=jwt".into(),
                format!("bound_audiences={JWT_AUDIENCE}"),
                "user_claim=sub".into(),
                format!("token_policies={policy}"),
                format!("token_ttl={token_ttl}"),
                format!("token_max_ttl={token_ttl}"),
            ],
        ];
        for step in steps {
            let args: Vec<&str> = step.iter().map(String::as_str).collect();
            let out = self.cli(&self.root_token, &args);
            assert!(
                out.status.success(),
                "bao {}: {}",
                args[..2].join(" "),
                String::from_utf8_lossy(&out.stderr)
            );
        }
    }

    /// A client that logs in at `auth/kubernetes` as `role` with the JWT in `jwt_path`.
    pub fn kubernetes_client(
        &self,
        endpoint: VaultEndpoint,
        role: &str,
        jwt_path: &Path,
    ) -> VaultClient {
        let auth = VaultAuth::Kubernetes {
            mount: "kubernetes".to_string(),
            role: role.to_string(),
            jwt_path: jwt_path.to_path_buf(),
        };
        VaultClient::new(endpoint, Some(auth)).expect("client")
    }

    /// Every entry of the audit log so far (only servers from [`Bao::start`] have one).
    pub fn audit_entries(&self) -> Vec<serde_json::Value> {
        let text = std::fs::read_to_string(self.dir.join("audit.log")).unwrap_or_default();
        text.lines()
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

    /// Accessors of the tokens successful logins at `auth/kubernetes/login` handed out, in order.
    pub fn login_accessors(&self) -> Vec<String> {
        self.audit_responses("auth/kubernetes/login")
            .iter()
            .filter_map(|e| e["auth"]["accessor"].as_str().map(str::to_string))
            .collect()
    }

    /// Starts a dev server with TLS (`-dev-tls`: a fresh CA and server certificate for
    /// 127.0.0.1 in `<dir>/tls/`), at an `https://` address, and runs `setup.sh` against it.
    /// No audit log. Use [`Bao::ca_cert`] / [`Bao::tls_endpoint`] to trust it; the CLI needs
    /// `-ca-cert=<ca_cert>`.
    pub fn start_tls() -> Bao {
        let dir = scratch_dir();
        let root_token = format!("root-{}", random_hex(12));
        for _ in 0..5 {
            let port = free_port_pair();
            if let Some(bao) = Bao::try_start_tls(&dir, port, &root_token) {
                let ca = bao.ca_cert();
                let out = bao.setup_with(&[("VAULT_CACERT", ca.to_str().expect("UTF-8 path"))]);
                assert!(
                    out.status.success(),
                    "setup.sh (TLS) failed: {}",
                    String::from_utf8_lossy(&out.stderr)
                );
                return bao;
            }
        }
        panic!(
            "OpenBao (TLS) did not start; see {}",
            dir.join("bao.log").display()
        );
    }

    /// Starts the TLS server on `port`; `None` when it exits early (e.g. a port was taken).
    fn try_start_tls(dir: &Path, port: u16, root_token: &str) -> Option<Bao> {
        let tls_dir = dir.join("tls");
        // A failed attempt's drop removed the directory (and the read-only files bao wrote).
        std::fs::create_dir_all(&tls_dir).expect("create TLS dir");
        let cert_dir = format!("-dev-tls-cert-dir={}", tls_dir.display());
        let mut bao = spawn_dev_server(dir, port, root_token, "https", &["-dev-tls", &cert_dir]);
        bao.wait_healthy_tls().then_some(bao)
    }

    /// Waits up to 30 s for `bao status` (trusting only our CA) to report an unsealed server;
    /// false when the server died.
    fn wait_healthy_tls(&mut self) -> bool {
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if let Some(Ok(Some(_))) = self.child.as_mut().map(|c| c.try_wait()) {
                return false;
            }
            if self.ca_cert().exists() {
                let status = Command::new(bao_bin())
                    .args(["status", &format!("-ca-cert={}", self.ca_cert().display())])
                    .env("VAULT_ADDR", &self.addr)
                    .stdin(Stdio::null())
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .status();
                if status.is_ok_and(|s| s.success()) {
                    return true;
                }
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!("OpenBao (TLS) not healthy after 30 s:\n{}", self.log());
    }

    /// The CA that signed a [`Bao::start_tls`] server's certificate (PEM).
    pub fn ca_cert(&self) -> PathBuf {
        self.dir.join("tls").join("vault-ca.pem")
    }

    /// The endpoint of a [`Bao::start_tls`] server, trusting its CA.
    pub fn tls_endpoint(&self) -> VaultEndpoint {
        VaultEndpoint {
            ca_cert: Some(self.ca_cert()),
            ..self.endpoint()
        }
    }
}

/// Runs `cmd`, panicking with its stderr when it fails.
fn run_ok(cmd: &mut Command) {
    let out = cmd.stdin(Stdio::null()).output().expect("run command");
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}
