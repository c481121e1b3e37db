//! `src/vault.rs` parts the other tests do not reach, against a real OpenBao: the Kubernetes
//! login (`VaultAuth::Kubernetes`) with its one re-login on 403, TLS with a CA bundle
//! (`VaultEndpoint::ca_cert`) and `X-Vault-Namespace` (`VaultEndpoint::namespace`).
//!
//! There is no Kubernetes API here, so the login goes to OpenBao's JWT auth method mounted at
//! `auth/kubernetes`: same path, same `{"role", "jwt"}` body, same `auth.client_token` answer.
//! It checks the JWT against a public key the test made instead of a TokenReview.

use std::path::PathBuf;
use std::time::Duration;

use cubbyhole::vault::{SecretString, VaultClient, VaultEndpoint, VaultError};
use cubbyhole_testkit::jwt::{JWT_AUDIENCE, JwtKey, base64url, service_account_claims};
use cubbyhole_testkit::leaks::assert_error_clean;
use cubbyhole_testkit::openbao::{Bao, ROLE_PATH, agent_request};
use cubbyhole_testkit::process::{closed_addr, write_private};

/// The Kubernetes auth role `setup.sh` creates for the operator.
const OPERATOR_ROLE: &str = "cubbyhole-operator";
/// The operator's policy.
const OPERATOR_POLICY: &str = "cubbyhole-operator";
/// The operator's service account, as the `sub` of its token.
const OPERATOR_SA: &str = "system:serviceaccount:cubbyhole-system:cubbyhole";

/// A server with the JWT login at `auth/kubernetes` (role [`OPERATOR_ROLE`] giving `policy`
/// for `token_ttl` and, like `setup.sh`'s role, no `default` policy), the issuer key it
/// trusts and a file holding a valid service account JWT.
fn jwt_server(policy: &str, token_ttl: &str) -> (Bao, JwtKey, PathBuf) {
    let bao = Bao::start();
    let key = JwtKey::generate(&bao.dir, "sa-issuer");
    bao.enable_jwt_login(&key, OPERATOR_ROLE, policy, token_ttl);
    // The same role again, without the `default` policy (a role is written whole).
    let out = bao.cli(
        &bao.root_token,
        &[
            "write",
            &format!("auth/kubernetes/role/{OPERATOR_ROLE}"),
            "role_type=jwt",
            &format!("bound_audiences={}", JWT_AUDIENCE),
            "user_claim=sub",
            &format!("token_policies={policy}"),
            &format!("token_ttl={token_ttl}"),
            &format!("token_max_ttl={token_ttl}"),
            "token_no_default_policy=true",
        ],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let jwt_path = bao.path("sa-token");
    let claims = service_account_claims(OPERATOR_SA, JWT_AUDIENCE);
    // With a trailing newline, as files often end: the client trims it.
    write_private(&jwt_path, &format!("{}\n", key.sign(&claims)));
    (bao, key, jwt_path)
}

/// The client the operator builds from `--vault-auth kubernetes`.
fn operator_by_jwt(bao: &Bao, jwt_path: &std::path::Path) -> VaultClient {
    bao.kubernetes_client(bao.endpoint(), OPERATOR_ROLE, jwt_path)
}

/// Policies of the token with `accessor`, looked up as root.
fn policies_of(bao: &Bao, accessor: &str) -> Vec<String> {
    let info = bao.cli_json(&["token", "lookup", "-accessor", accessor]);
    serde_json::from_value(info["data"]["policies"].clone()).expect("policies")
}

/// True when a token with `accessor` is alive (root lookup succeeds).
fn accessor_alive(bao: &Bao, accessor: &str) -> bool {
    let out = bao.cli(&bao.root_token, &["token", "lookup", "-accessor", accessor]);
    out.status.success()
}

#[test]
fn base64url_matches_rfc_4648_vectors() {
    assert_eq!(base64url(b""), "");
    assert_eq!(base64url(b"f"), "Zg");
    assert_eq!(base64url(b"fo"), "Zm8");
    assert_eq!(base64url(b"foo"), "Zm9v");
    assert_eq!(base64url(b"foob"), "Zm9vYg");
    assert_eq!(base64url(b"foobar"), "Zm9vYmFy");
    assert_eq!(base64url(&[0xfb, 0xff, 0xbf]), "-_-_");
}

#[tokio::test]
async fn kubernetes_login_mints_with_the_operator_policy() {
    let (bao, _, jwt_path) = jwt_server(OPERATOR_POLICY, "1h");
    let operator = operator_by_jwt(&bao, &jwt_path);

    let wrap = operator
        .create_wrapped_token(&agent_request(30))
        .await
        .expect("mint after a JWT login");
    assert_eq!(wrap.creation_path, ROLE_PATH);
    assert_eq!(wrap.ttl, 30);
    let inner = bao
        .agent_client()
        .unwrap(&wrap.token)
        .await
        .expect("unwrap");
    assert_eq!(inner.accessor, wrap.wrapped_accessor);
    assert!(inner.policies.contains(&"cubbyhole-agent".to_string()));

    // One login, whose token carries the operator policy only (no `default`).
    let logins = bao.login_accessors();
    assert_eq!(logins.len(), 1, "{logins:?}");
    assert_eq!(policies_of(&bao, &logins[0]), ["cubbyhole-operator"]);
    // The login request carried the role (the JWT itself is HMAC'd in the audit log).
    let login = &bao.audit_responses("auth/kubernetes/login")[0];
    assert_eq!(login["auth"]["metadata"]["role"], OPERATOR_ROLE);

    // The token is kept: further calls, from clones too, do not log in again.
    let clone = operator.clone();
    clone
        .create_wrapped_token(&agent_request(30))
        .await
        .unwrap();
    assert_eq!(
        operator.revoke_accessor(&wrap.accessor).await.unwrap(),
        cubbyhole::vault::Revoked::NotFound
    );
    // Token metadata by accessor, the record-adoption lookup.
    assert!(operator.accessor_is_live(&inner.accessor).await.unwrap());
    assert_eq!(bao.login_accessors().len(), 1);
}

#[tokio::test]
async fn revoked_login_token_is_replaced_by_one_new_login() {
    let (bao, _, jwt_path) = jwt_server(OPERATOR_POLICY, "1h");
    let operator = operator_by_jwt(&bao, &jwt_path);
    operator
        .create_wrapped_token(&agent_request(30))
        .await
        .expect("first mint");
    let first = bao.login_accessors();
    assert_eq!(first.len(), 1);

    let out = bao.cli(
        &bao.root_token,
        &["token", "revoke", "-accessor", &first[0]],
    );
    assert!(out.status.success(), "revoke the login token");
    assert!(!accessor_alive(&bao, &first[0]));

    let wrap = operator
        .create_wrapped_token(&agent_request(30))
        .await
        .expect("mint after the login token was revoked");
    assert_eq!(wrap.creation_path, ROLE_PATH);
    let logins = bao.login_accessors();
    assert_eq!(logins.len(), 2, "exactly one re-login: {logins:?}");
    assert_ne!(logins[0], logins[1]);
    assert!(accessor_alive(&bao, &logins[1]));
    // Two creates were refused/served in between: the 403 and the retry.
    let creates = bao.audit_responses(ROLE_PATH);
    let refused = creates.iter().filter(|e| e["error"].is_string()).count();
    assert_eq!((creates.len(), refused), (3, 1), "{creates:#?}");
}

#[tokio::test]
async fn a_path_the_policy_refuses_is_answered_without_logging_in_again() {
    let (bao, _, jwt_path) = jwt_server(OPERATOR_POLICY, "1h");
    let operator = operator_by_jwt(&bao, &jwt_path);
    operator
        .create_wrapped_token(&agent_request(30))
        .await
        .expect("first mint");
    // A role the operator policy does not name: 403 from a valid token, ten times over.
    let mut forbidden = agent_request(30);
    forbidden.role = "not-granted".into();
    for _ in 0..10 {
        let e = operator
            .create_wrapped_token(&forbidden)
            .await
            .expect_err("the policy refuses it");
        assert!(e.to_string().contains("403"), "{e}");
    }
    assert_eq!(
        bao.login_accessors().len(),
        1,
        "a permission refusal is not an expired login"
    );
    // The login still serves what the policy allows.
    operator
        .create_wrapped_token(&agent_request(30))
        .await
        .expect("mint after the refusals");
    assert_eq!(bao.login_accessors().len(), 1);
}

/// Takes 3 s: waits for the login token's TTL (2 s) to run out.
#[tokio::test]
async fn expired_login_token_is_replaced_transparently() {
    let (bao, _, jwt_path) = jwt_server(OPERATOR_POLICY, "2s");
    let operator = operator_by_jwt(&bao, &jwt_path);
    operator
        .create_wrapped_token(&agent_request(30))
        .await
        .expect("first mint");
    let first = bao.login_accessors();
    assert_eq!(first.len(), 1);

    // Wait out the login token's 2 s TTL.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while accessor_alive(&bao, &first[0]) {
        assert!(
            std::time::Instant::now() < deadline,
            "login token never expired"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    operator
        .create_wrapped_token(&agent_request(30))
        .await
        .expect("mint after the login token expired");
    assert_eq!(bao.login_accessors().len(), 2);
}

#[tokio::test]
async fn login_token_without_the_policy_is_refused_after_one_relogin() {
    // The role hands out tokens that may not mint: the 403 is retried once, not forever.
    let (bao, _, jwt_path) = jwt_server("default", "1h");
    let operator = operator_by_jwt(&bao, &jwt_path);
    let err = operator
        .create_wrapped_token(&agent_request(30))
        .await
        .expect_err("the login token lacks the operator policy");
    assert!(
        matches!(err, VaultError::Refused { status: 403, .. }),
        "{err:?}"
    );
    assert_eq!(bao.login_accessors().len(), 2);
    assert_eq!(bao.audit_responses(ROLE_PATH).len(), 2);
}

#[tokio::test]
async fn jwt_signed_by_another_key_is_an_auth_error_without_the_jwt() {
    let (bao, _, _) = jwt_server(OPERATOR_POLICY, "1h");
    let stranger = JwtKey::generate(&bao.dir, "stranger");
    let jwt = stranger.sign(&service_account_claims(OPERATOR_SA, JWT_AUDIENCE));
    let jwt_path = bao.path("forged-token");
    write_private(&jwt_path, &jwt);
    let operator = operator_by_jwt(&bao, &jwt_path);

    let err = operator
        .create_wrapped_token(&agent_request(30))
        .await
        .expect_err("forged JWT");
    eprintln!("forged JWT: {err}");
    assert!(matches!(err, VaultError::Auth(_)), "{err:?}");
    assert_eq!(err.category(), "auth");
    assert!(!err.may_have_been_processed());
    assert!(err.to_string().contains("login"), "{err}");
    let parts: Vec<&str> = jwt.split('.').collect();
    assert_error_clean(&err, &[&jwt, parts[1], parts[2]]);
    // Refused at login: no token was handed out, no mint was attempted.
    assert!(bao.login_accessors().is_empty());
    assert_eq!(bao.audit_responses("auth/kubernetes/login").len(), 1);
    assert!(bao.audit_responses(ROLE_PATH).is_empty());
}

#[tokio::test]
async fn jwt_for_another_audience_is_an_auth_error() {
    let (bao, key, _) = jwt_server(OPERATOR_POLICY, "1h");
    let jwt = key.sign(&service_account_claims(OPERATOR_SA, "someone-else"));
    let jwt_path = bao.path("other-audience-token");
    write_private(&jwt_path, &jwt);
    let err = operator_by_jwt(&bao, &jwt_path)
        .create_wrapped_token(&agent_request(30))
        .await
        .expect_err("JWT for another audience");
    eprintln!("wrong audience: {err}");
    assert!(matches!(err, VaultError::Auth(_)), "{err:?}");
    assert_error_clean(&err, &[&jwt]);
    assert!(bao.login_accessors().is_empty());
}

#[tokio::test]
async fn missing_jwt_file_is_an_auth_error() {
    let endpoint = VaultEndpoint {
        address: closed_addr(),
        ..Default::default()
    };
    let auth = cubbyhole::vault::VaultAuth::Kubernetes {
        mount: "kubernetes".into(),
        role: OPERATOR_ROLE.into(),
        jwt_path: PathBuf::from("/nonexistent/cubbyhole/token"),
    };
    let client = VaultClient::new(endpoint, Some(auth)).unwrap();
    let err = client
        .create_wrapped_token(&agent_request(30))
        .await
        .expect_err("no JWT file");
    assert!(matches!(err, VaultError::Auth(_)), "{err:?}");
    assert!(
        err.to_string().contains("/nonexistent/cubbyhole/token"),
        "{err}"
    );
}

#[tokio::test]
async fn tls_with_the_ca_bundle_works() {
    let bao = Bao::start_tls();
    assert!(bao.addr.starts_with("https://127.0.0.1:"));
    let agent = VaultClient::new(bao.tls_endpoint(), None).unwrap();
    let garbage = SecretString::new("s.not-a-real-wrapping-token");
    assert_eq!(agent.lookup_wrap(&garbage).await.unwrap(), None);
    agent.health().await.expect("health over https");

    // Authenticated calls too: the operator mints over https, the agent looks up and unwraps.
    let operator = VaultClient::new(
        bao.tls_endpoint(),
        Some(cubbyhole::vault::VaultAuth::TokenFile(
            bao.operator_token_file.clone(),
        )),
    )
    .unwrap();
    let wrap = operator
        .create_wrapped_token(&agent_request(30))
        .await
        .expect("mint over https");
    assert_eq!(wrap.creation_path, ROLE_PATH);
    let lookup = agent
        .lookup_wrap(&wrap.token)
        .await
        .unwrap()
        .expect("valid");
    assert_eq!(lookup.creation_ttl, 30);
    let inner = agent.unwrap(&wrap.token).await.expect("unwrap over https");
    assert_eq!(inner.accessor, wrap.wrapped_accessor);
}

#[tokio::test]
async fn tls_without_the_right_ca_is_unreachable() {
    let bao = Bao::start_tls();
    let garbage = SecretString::new("s.not-a-real-wrapping-token");

    // Only the system roots: the dev CA is not among them.
    let agent = VaultClient::new(bao.endpoint(), None).unwrap();
    let err = agent
        .lookup_wrap(&garbage)
        .await
        .expect_err("untrusted certificate");
    eprintln!("no CA: {err}");
    assert!(matches!(err, VaultError::Unreachable { .. }), "{err:?}");
    assert!(!err.may_have_been_processed());
    assert!(
        err.to_string().to_lowercase().contains("certificate"),
        "{err}"
    );
    assert_error_clean(&err, &[garbage.expose()]);

    // Some other CA: trusting a bundle is not trusting anything.
    let endpoint = VaultEndpoint {
        ca_cert: Some(self_made_ca(&bao, "other-ca")),
        ..bao.endpoint()
    };
    let err = VaultClient::new(endpoint, None)
        .unwrap()
        .lookup_wrap(&garbage)
        .await
        .expect_err("certificate from another CA");
    assert!(matches!(err, VaultError::Unreachable { .. }), "{err:?}");

    // The same server answers when its CA is trusted.
    let agent = VaultClient::new(bao.tls_endpoint(), None).unwrap();
    assert_eq!(agent.lookup_wrap(&garbage).await.unwrap(), None);
}

/// A fresh self-signed CA certificate `<dir>/<name>.pem` (PEM), unrelated to any server.
fn self_made_ca(bao: &Bao, name: &str) -> PathBuf {
    let pem = bao.path(&format!("{name}.pem"));
    let openssl = std::process::Command::new("openssl")
        .args([
            "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
        ])
        .args(["-subj", &format!("/CN={name}"), "-keyout"])
        .arg(bao.path(&format!("{name}.key")))
        .arg("-out")
        .arg(&pem)
        .output()
        .expect("run openssl");
    assert!(openssl.status.success(), "openssl failed");
    pem
}

/// With `caCert` set the client trusts exactly the certificates of that bundle: every one of
/// them (the server's CA may come second), and no other root.
#[tokio::test]
async fn tls_trusts_exactly_the_certificates_of_the_bundle() {
    let bao = Bao::start_tls();
    let garbage = SecretString::new("s.not-a-real-wrapping-token");
    let with_bundle = |pems: &[&std::path::Path], name: &str| {
        let bundle = bao.path(name);
        let text: String = pems
            .iter()
            .map(|p| std::fs::read_to_string(p).expect("read PEM"))
            .collect();
        std::fs::write(&bundle, text).expect("write bundle");
        let endpoint = VaultEndpoint {
            ca_cert: Some(bundle),
            ..bao.endpoint()
        };
        VaultClient::new(endpoint, None).expect("client")
    };
    let first = self_made_ca(&bao, "first-ca");
    let second = self_made_ca(&bao, "second-ca");
    let server_ca = bao.ca_cert();

    // Two unrelated CAs: refused, however many.
    let err = with_bundle(&[&first, &second], "others.pem")
        .lookup_wrap(&garbage)
        .await
        .expect_err("certificate from a CA outside the bundle");
    eprintln!("other CAs: {err}");
    assert!(matches!(err, VaultError::Unreachable { .. }), "{err:?}");
    assert!(
        err.to_string().to_lowercase().contains("certificate"),
        "{err}"
    );
    assert!(!err.may_have_been_processed());

    // The server's CA anywhere in the bundle: accepted.
    for (order, name) in [
        ([&first, &server_ca], "ours-last.pem"),
        ([&server_ca, &second], "ours-first.pem"),
    ] {
        let client = with_bundle(&order.map(PathBuf::as_path), name);
        assert_eq!(client.lookup_wrap(&garbage).await.unwrap(), None, "{name}");
    }

    // A file without any certificate would trust nothing: refused when the client is built.
    let empty = bao.path("empty.pem");
    std::fs::write(&empty, "").unwrap();
    let endpoint = VaultEndpoint {
        ca_cert: Some(empty),
        ..bao.endpoint()
    };
    let err = VaultClient::new(endpoint, None)
        .err()
        .expect("empty bundle");
    assert!(err.contains("holds no PEM certificate"), "{err}");
}

#[tokio::test]
async fn namespace_header_selects_the_namespace() {
    let bao = Bao::start();
    let garbage = SecretString::new("s.not-a-real-wrapping-token");
    let in_ns = |ns: &str| {
        let endpoint = VaultEndpoint {
            namespace: Some(ns.to_string()),
            ..bao.endpoint()
        };
        VaultClient::new(endpoint, None).unwrap()
    };

    // No namespace "x" yet: OpenBao answers 404 "namespace not found".
    let err = in_ns("x")
        .lookup_wrap(&garbage)
        .await
        .expect_err("namespace x does not exist");
    eprintln!("missing namespace: {err}");
    assert!(
        matches!(&err, VaultError::Refused { status: 404, message, .. }
            if message.contains("namespace not found")),
        "{err:?}"
    );
    assert_eq!(err.category(), "refused");
    assert_eq!(
        bao.agent_client().lookup_wrap(&garbage).await.unwrap(),
        None
    );

    // Once "x" exists, requests for it are served; "y" is still unknown.
    let out = bao.cli(&bao.root_token, &["namespace", "create", "x"]);
    assert!(
        out.status.success(),
        "namespace create: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(in_ns("x").lookup_wrap(&garbage).await.unwrap(), None);
    let err = in_ns("y").lookup_wrap(&garbage).await.expect_err("no y");
    assert!(
        matches!(err, VaultError::Refused { status: 404, .. }),
        "{err:?}"
    );
}

/// Concurrent callers share one login (a burst of mints must not leave one login token per
/// caller behind), also after the token is revoked: a 403 clears the cached token only if no
/// other caller has replaced it.
#[tokio::test]
async fn concurrent_callers_share_one_login() {
    let (bao, _, jwt_path) = jwt_server(OPERATOR_POLICY, "1h");
    let operator = operator_by_jwt(&bao, &jwt_path);
    let req = agent_request(30);
    let burst = || futures::future::join_all((0..10).map(|_| operator.create_wrapped_token(&req)));
    assert!(burst().await.iter().all(Result::is_ok));
    let first = bao.login_accessors();
    assert_eq!(first.len(), 1, "logins for a burst on a fresh client");

    let out = bao.cli(
        &bao.root_token,
        &["token", "revoke", "-accessor", &first[0]],
    );
    assert!(out.status.success(), "revoke the login token");
    assert!(burst().await.iter().all(Result::is_ok));
    assert_eq!(
        bao.login_accessors().len(),
        2,
        "re-logins after a revocation"
    );
}
