//! OpenBao with TLS (`-dev-tls`): a fresh CA and server certificate for 127.0.0.1.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use cubbyhole::vault::VaultEndpoint;

use crate::openbao::{Bao, bao_bin, spawn_dev_server};
use crate::process::{free_port_pair, random_hex, scratch_dir};

impl Bao {
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
