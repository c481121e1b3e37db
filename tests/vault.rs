//! `src/vault.rs` against a real OpenBao set up by `config/vault/setup.sh`.

mod support;

use cubbyhole::vault::{Revoked, SecretString, VaultError};
use support::{Bao, ROLE_PATH, agent_request, assert_no_secrets, closed_addr};

/// Asserts that neither `Debug` nor `Display` of `err` shows any of `secrets`.
fn assert_error_clean(err: &VaultError, secrets: &[&str]) {
    assert_no_secrets("error Debug", &format!("{err:?}"), secrets);
    assert_no_secrets("error Display", &err.to_string(), secrets);
}

#[tokio::test]
async fn wrap_unwraps_exactly_once_into_the_role_token() {
    let bao = Bao::start();
    let wrap = bao.mint(30).await;
    assert_eq!(wrap.creation_path, ROLE_PATH);
    assert_eq!(wrap.ttl, 30);

    let agent = bao.agent_client();
    let lookup = agent
        .lookup_wrap(&wrap.token)
        .await
        .unwrap()
        .expect("valid");
    assert_eq!(lookup.creation_path, ROLE_PATH);
    assert_eq!(lookup.creation_ttl, 30);

    let inner = agent.unwrap(&wrap.token).await.expect("first unwrap");
    assert_eq!(inner.accessor, wrap.wrapped_accessor);
    assert!(inner.policies.contains(&"cubbyhole-agent".to_string()));
    assert!(!inner.policies.contains(&"cubbyhole-operator".to_string()));

    let info = bao.cli_json(&["token", "lookup", "-accessor", &inner.accessor]);
    let data = &info["data"];
    assert_eq!(data["meta"]["namespace"], "ns");
    assert_eq!(data["meta"]["pod"], "agent-0");
    assert_eq!(data["meta"]["pod_uid"], "uid-1234");
    assert_eq!(data["meta"]["binding"], "b");
    assert_eq!(data["orphan"], true);
    assert_eq!(data["type"], "service");

    let again = agent.unwrap(&wrap.token).await.expect_err("second unwrap");
    assert!(matches!(again, VaultError::Refused { .. }), "{again:?}");
    assert_eq!(agent.lookup_wrap(&wrap.token).await.unwrap(), None);

    let secrets = [wrap.token.expose(), inner.token.expose()];
    assert_error_clean(&again, &secrets);
    assert_no_secrets("WrapInfo Debug", &format!("{wrap:?}"), &secrets);
    assert_no_secrets("UnwrappedToken Debug", &format!("{inner:?}"), &secrets);
    assert_no_secrets("WrapLookup Debug", &format!("{lookup:?}"), &secrets);
}

#[tokio::test]
async fn role_refuses_policies_outside_its_allowed_set() {
    let bao = Bao::start();
    let mut req = agent_request(30);
    req.policies = vec!["root".to_string()];
    let err = bao
        .operator_client()
        .create_wrapped_token(&req)
        .await
        .expect_err("root must be refused");
    match &err {
        VaultError::Refused {
            status, message, ..
        } => {
            assert_eq!(*status, 400);
            assert!(message.contains("must be subset"), "{message}");
        }
        other => panic!("expected Refused, got {other:?}"),
    }
}

#[tokio::test]
async fn operator_policy_bounds_the_wrap_ttl() {
    let bao = Bao::start();
    let op = bao.operator_client();
    for ttl in [2, 2 * 3600] {
        let err = op
            .create_wrapped_token(&agent_request(ttl))
            .await
            .expect_err("wrap TTL outside 5s..1h");
        assert!(
            matches!(
                err,
                VaultError::Refused {
                    status: 400 | 403,
                    ..
                }
            ),
            "wrap TTL {ttl}: {err:?}"
        );
    }
}

#[tokio::test]
async fn operator_never_receives_a_plain_token() {
    let bao = Bao::start();
    let operator_token = &bao.operator_token();
    for path in [ROLE_PATH, "auth/token/create", "auth/token/create-orphan"] {
        let out = bao.cli(operator_token, &["write", "-force", path]);
        assert!(!out.status.success(), "plain create at {path} succeeded");
    }
    let out = bao.cli(operator_token, &["token", "lookup"]);
    assert!(
        !out.status.success(),
        "operator token has more than its policy"
    );
}

#[tokio::test]
async fn revoking_the_wrap_leaves_the_inner_token_until_revoked_itself() {
    let bao = Bao::start();
    let op = bao.operator_client();
    let root = bao.root_client();
    let wrap = bao.mint(30).await;

    assert_eq!(
        op.revoke_accessor(&wrap.accessor).await.unwrap(),
        Revoked::Existed
    );
    assert_eq!(
        op.revoke_accessor(&wrap.accessor).await.unwrap(),
        Revoked::NotFound
    );
    assert_eq!(
        bao.agent_client().lookup_wrap(&wrap.token).await.unwrap(),
        None
    );

    assert!(root.accessor_is_live(&wrap.wrapped_accessor).await.unwrap());
    assert_eq!(
        op.revoke_accessor(&wrap.wrapped_accessor).await.unwrap(),
        Revoked::Existed
    );
    assert!(!root.accessor_is_live(&wrap.wrapped_accessor).await.unwrap());
    assert_eq!(
        op.revoke_accessor(&wrap.wrapped_accessor).await.unwrap(),
        Revoked::NotFound
    );
}

#[tokio::test]
async fn unreachable_address_is_unreachable() {
    let agent = cubbyhole::vault::VaultClient::new(
        cubbyhole::vault::VaultEndpoint {
            address: closed_addr(),
            ..Default::default()
        },
        None,
    )
    .unwrap();
    let token = SecretString::new("s.not-a-real-wrapping-token");
    let err = agent
        .lookup_wrap(&token)
        .await
        .expect_err("nothing listens");
    assert!(matches!(err, VaultError::Unreachable { .. }), "{err:?}");
    assert!(!err.may_have_been_processed());
    assert_error_clean(&err, &[token.expose()]);
    let err = agent.unwrap(&token).await.expect_err("nothing listens");
    assert!(matches!(err, VaultError::Unreachable { .. }), "{err:?}");
    assert_error_clean(&err, &[token.expose()]);
}

/// Takes as long as the client's request timeout (15 s).
#[tokio::test]
async fn paused_server_gives_no_answer() {
    let bao = Bao::start();
    let wrap = bao.mint(30).await;
    let agent = bao.agent_client();
    bao.pause();
    let err = agent
        .unwrap(&wrap.token)
        .await
        .expect_err("server is frozen");
    bao.resume();
    assert!(matches!(err, VaultError::NoAnswer { .. }), "{err:?}");
    assert!(err.may_have_been_processed());
    assert_error_clean(&err, &[wrap.token.expose()]);
    // The request reached the server's socket: after thawing, Vault may or may not have
    // consumed the wrap, which is exactly why the agent must not retry an unwrap.
}

#[tokio::test]
async fn setup_is_idempotent_and_configures_kubernetes_auth() {
    use std::os::unix::fs::PermissionsExt;
    let bao = Bao::start();
    let ca = bao.path("ca.pem");
    let openssl = std::process::Command::new("openssl")
        .args([
            "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
        ])
        .args(["-subj", "/CN=test-ca", "-keyout"])
        .arg(bao.path("ca.key"))
        .arg("-out")
        .arg(&ca)
        .output()
        .expect("run openssl");
    assert!(openssl.status.success(), "openssl failed");
    let envs = [
        ("KUBERNETES_HOST", "https://127.0.0.1:6443"),
        ("KUBERNETES_CA_CERT", ca.to_str().unwrap()),
        ("CUBBYHOLE_ROLE", "cubbyhole-agent team-b"),
    ];
    let first_token = bao.operator_token();
    let mut secrets = vec![bao.root_token.clone(), first_token];
    for _ in 0..2 {
        let out = bao.setup_with(&envs);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "setup.sh failed: {stderr}");
        secrets.push(bao.operator_token());
        let printed = format!("{}{stderr}", String::from_utf8_lossy(&out.stdout));
        let secrets: Vec<&str> = secrets.iter().map(String::as_str).collect();
        assert_no_secrets("setup.sh output", &printed, &secrets);
    }
    let mode = std::fs::metadata(&bao.operator_token_file)
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);

    let role = bao.cli_json(&["read", "auth/kubernetes/role/cubbyhole-operator"]);
    assert_eq!(role["data"]["bound_service_account_names"][0], "cubbyhole");
    assert_eq!(
        role["data"]["bound_service_account_namespaces"][0],
        "cubbyhole-system"
    );
    assert_eq!(role["data"]["token_policies"][0], "cubbyhole-operator");

    // Both roles can be minted through; the first role still works after the rerun.
    let mut req = agent_request(30);
    req.role = "team-b".to_string();
    let wrap = bao
        .operator_client()
        .create_wrapped_token(&req)
        .await
        .unwrap();
    assert_eq!(wrap.creation_path, "auth/token/create/team-b");
    assert_eq!(bao.mint(30).await.creation_path, ROLE_PATH);
}
