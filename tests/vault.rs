//! `src/vault.rs` against a real OpenBao set up by `config/vault/setup.sh`.

use cubbyhole::vault::{Renewed, Revoked, SecretString, VaultError};
use cubbyhole_testkit::leaks::{assert_error_clean, assert_no_secrets};
use cubbyhole_testkit::openbao::{Bao, ROLE_PATH, agent_request};
use cubbyhole_testkit::process::{closed_addr, write_private};

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
    // Vault outside the cluster reviews logins with a token of its own: without one, setup
    // stops and says so (the operator's login token is for audience `vault` only).
    let without_reviewer = bao.setup_with(&[
        ("KUBERNETES_HOST", "https://127.0.0.1:6443"),
        ("KUBERNETES_CA_CERT", ca.to_str().unwrap()),
    ]);
    assert!(!without_reviewer.status.success());
    assert!(String::from_utf8_lossy(&without_reviewer.stderr).contains("TOKEN_REVIEWER_JWT_FILE"));
    let reviewer = bao.path("reviewer-jwt");
    std::fs::write(&reviewer, "reviewer.jwt.stand-in").unwrap();
    let envs = [
        ("KUBERNETES_HOST", "https://127.0.0.1:6443"),
        ("KUBERNETES_CA_CERT", ca.to_str().unwrap()),
        ("TOKEN_REVIEWER_JWT_FILE", reviewer.to_str().unwrap()),
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
    assert_eq!(role["data"]["token_no_default_policy"], true);
    // Only a token for audience `vault` logs in.
    assert_eq!(role["data"]["audience"], "vault");
    // Every token role a binding may use bounds renewals by accessor (its explicit max).
    for r in ["cubbyhole-agent", "team-b"] {
        let token_role = bao.cli_json(&["read", &format!("auth/token/roles/{r}")]);
        assert!(
            token_role["data"]["token_explicit_max_ttl"]
                .as_u64()
                .unwrap()
                > 0,
            "{r}"
        );
    }

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

/// Paths of the rules in policy `name`, with each rule's text.
fn policy_rules(bao: &Bao, name: &str) -> Vec<(String, String)> {
    let policy = bao.cli_json(&["read", &format!("sys/policy/{name}")]);
    let rules = policy["data"]["rules"].as_str().expect("rules").to_string();
    rules
        .split("path \"")
        .skip(1)
        .map(|rule| {
            let (path, body) = rule.split_once('"').expect("quoted path");
            (
                path.to_string(),
                body.split_whitespace().collect::<Vec<_>>().join(" "),
            )
        })
        .collect()
}

/// What `token` may do at `path`, as Vault says (`deny` when nothing).
fn capabilities(bao: &Bao, token: &str, path: &str) -> Vec<String> {
    let out = bao.cli_json(&[
        "write",
        "sys/capabilities",
        &format!("token={token}"),
        &format!("paths={path}"),
    ]);
    serde_json::from_value(out["data"]["capabilities"].clone()).expect("capabilities")
}

#[tokio::test]
async fn operator_policy_grants_exactly_the_calls_the_client_makes() {
    let bao = Bao::start();
    let rules = policy_rules(&bao, "cubbyhole-operator");
    let paths: Vec<&str> = rules.iter().map(|(p, _)| p.as_str()).collect();
    assert_eq!(
        paths,
        [
            ROLE_PATH,
            "auth/token/roles/cubbyhole-agent",
            "auth/token/revoke-accessor",
            "auth/token/renew-accessor",
            "auth/token/lookup-accessor",
            "sys/capabilities-self",
        ],
        "{rules:#?}"
    );
    assert_eq!(
        rules[0].1,
        "{ capabilities = [\"update\"] min_wrapping_ttl = \"5s\" max_wrapping_ttl = \"1h\" }"
    );

    let operator = bao.operator_token();
    let only_update = [
        ROLE_PATH,
        "auth/token/revoke-accessor",
        "auth/token/renew-accessor",
        "auth/token/lookup-accessor",
    ];
    for path in only_update {
        assert_eq!(capabilities(&bao, &operator, path), ["update"], "{path}");
    }
    // For `cubbyhole doctor`: its roles' definitions and its own capabilities, nothing more.
    assert_eq!(
        capabilities(&bao, &operator, "auth/token/roles/cubbyhole-agent"),
        ["read"]
    );
    assert_eq!(
        capabilities(&bao, &operator, "sys/capabilities-self"),
        ["update"]
    );
    for path in [
        "sys/wrapping/lookup",
        "sys/wrapping/unwrap",
        "sys/wrapping/wrap",
        "auth/token/create",
        "auth/token/create-orphan",
        "auth/token/lookup",
        "auth/token/lookup-self",
        "auth/token/renew-self",
        "auth/token/roles/another-role",
        "auth/token/roles",
        "cubbyhole/anything",
        "secret/data/agents/x",
    ] {
        assert_eq!(capabilities(&bao, &operator, path), ["deny"], "{path}");
    }
}

#[tokio::test]
async fn wrap_lookup_is_sent_without_a_token_and_needs_no_grant() {
    let bao = Bao::start();
    let wrap = bao.mint(30).await;
    // The operator's own client: its policy has no sys/wrapping/lookup.
    let lookup = bao
        .operator_client()
        .lookup_wrap(&wrap.token)
        .await
        .expect("lookup without a grant")
        .expect("valid");
    assert_eq!(lookup.creation_path, ROLE_PATH);

    let lookups = bao.audit_responses("sys/wrapping/lookup");
    assert_eq!(lookups.len(), 1, "{lookups:#?}");
    let auth = &lookups[0]["auth"];
    assert!(
        auth["accessor"].is_null(),
        "the lookup carried a token: {auth}"
    );
    assert!(
        auth["client_token"].is_null(),
        "the lookup carried a token: {auth}"
    );
    assert!(lookups[0]["error"].is_null(), "{:#?}", lookups[0]);
}

#[tokio::test]
async fn operator_looks_up_token_metadata_by_accessor_never_the_token() {
    let bao = Bao::start();
    let wrap = bao.mint(30).await;
    let op = bao.operator_client();
    let facts: serde_json::Value = op
        .lookup_accessor(&wrap.wrapped_accessor)
        .await
        .expect("the operator policy allows lookup-accessor")
        .expect("the token exists");
    assert_eq!(facts["meta"]["pod_uid"], "uid-1234");
    assert_eq!(facts["meta"]["binding"], "b");
    assert_eq!(facts["path"], ROLE_PATH);
    assert_eq!(facts["id"], "", "lookup-accessor must not reveal the token");
    let wrap_facts: serde_json::Value = op.lookup_accessor(&wrap.accessor).await.unwrap().unwrap();
    assert_eq!(wrap_facts["policies"][0], "response-wrapping");
    assert_eq!(wrap_facts["id"], "");

    let inner = bao.agent_client().unwrap(&wrap.token).await.unwrap();
    let printed = format!("{facts}{wrap_facts}");
    assert_no_secrets(
        "lookup-accessor answers",
        &printed,
        &[wrap.token.expose(), inner.token.expose()],
    );
    // Gone tokens and unknown accessors are `None`, not errors. Vault revokes a used wrapping
    // token just after the unwrap answer: give it a moment.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    while op
        .lookup_accessor::<serde_json::Value>(&wrap.accessor)
        .await
        .unwrap()
        .is_some()
    {
        assert!(
            std::time::Instant::now() < deadline,
            "wrap used but its token stays"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert!(op.accessor_is_live(&wrap.wrapped_accessor).await.unwrap());
    op.revoke_accessor(&wrap.wrapped_accessor).await.unwrap();
    assert!(!op.accessor_is_live(&wrap.wrapped_accessor).await.unwrap());
    assert!(!op.accessor_is_live("no-such-accessor").await.unwrap());
}

#[tokio::test]
async fn requests_that_cannot_be_built_are_never_sent() {
    let bao = Bao::start();
    // A namespace no header may carry: refused before any connection.
    let endpoint = cubbyhole::vault::VaultEndpoint {
        namespace: Some("team\na".to_string()),
        ..bao.endpoint()
    };
    let wrap = bao.mint(30).await;
    let agent = cubbyhole::vault::VaultClient::new(endpoint, None).unwrap();
    let err = agent.unwrap(&wrap.token).await.expect_err("bad namespace");
    assert!(matches!(err, VaultError::NotSent { .. }), "{err:?}");
    assert!(!err.may_have_been_processed());
    assert_error_clean(&err, &[wrap.token.expose()]);

    // A token file with two lines: the login token is no header value.
    let file = bao.path("two-line-token");
    write_private(
        &file,
        &format!("{}\n{}\n", bao.operator_token(), "s.second"),
    );
    let auth = cubbyhole::vault::VaultAuth::TokenFile(file);
    let op = cubbyhole::vault::VaultClient::new(bao.endpoint(), Some(auth)).unwrap();
    let err = op
        .create_wrapped_token(&agent_request(30))
        .await
        .expect_err("bad token header");
    assert!(matches!(err, VaultError::NotSent { .. }), "{err:?}");
    assert!(
        !err.may_have_been_processed(),
        "would wait wrapTTL + 10 s for nothing"
    );
    assert_error_clean(&err, &[&bao.operator_token()]);

    // Vault saw neither: one create (the mint above) and no unwrap.
    assert_eq!(bao.audit_responses(ROLE_PATH).len(), 1);
    assert!(bao.audit_responses("sys/wrapping/unwrap").is_empty());
    assert!(agent_is_valid(&bao, &wrap.token).await);
}

/// True while the wrapping token is unused.
async fn agent_is_valid(bao: &Bao, token: &SecretString) -> bool {
    bao.agent_client()
        .lookup_wrap(token)
        .await
        .unwrap()
        .is_some()
}

/// The token's remaining TTL in seconds, as Vault reports it by accessor.
async fn ttl_of(bao: &Bao, accessor: &str) -> Option<u64> {
    let facts: Option<serde_json::Value> = bao
        .operator_client()
        .lookup_accessor(accessor)
        .await
        .unwrap();
    facts.map(|f| f["ttl"].as_u64().expect("ttl"))
}

#[tokio::test]
async fn a_token_lives_its_minted_ttl_and_renewal_by_accessor_extends_it_up_to_its_max() {
    let bao = Bao::start();
    let op = bao.operator_client();
    // As the operator mints: ttl = wrapTTL + grace, explicit max = the binding's tokenTTL.
    let request = cubbyhole::vault::TokenRequest {
        ttl: Some("20s".into()),
        explicit_max_ttl: Some("90s".into()),
        ..agent_request(10)
    };
    let wrap = op.create_wrapped_token(&request).await.expect("mint");
    let ttl = ttl_of(&bao, &wrap.wrapped_accessor).await.expect("alive");
    assert!((15..=20).contains(&ttl), "minted ttl {ttl}");
    // Renewed by accessor: the answer holds no token, the TTL grows to the increment...
    assert_eq!(
        op.renew_accessor(&wrap.wrapped_accessor, 60).await.unwrap(),
        Renewed::For(60)
    );
    let ttl = ttl_of(&bao, &wrap.wrapped_accessor).await.expect("alive");
    assert!((55..=60).contains(&ttl), "renewed ttl {ttl}");
    // The binding's tokenTTL is recorded as the token's explicit max. OpenBao does not cap a
    // renewal by accessor at it (seen on 2.x: a 600 s increment granted on a 90 s max), so the
    // operator caps its own increments (`core::plan::renewal_increment`).
    let facts: serde_json::Value = op
        .lookup_accessor(&wrap.wrapped_accessor)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(facts["explicit_max_ttl"], 90, "{facts}");
    assert_eq!(
        op.renew_accessor(&wrap.wrapped_accessor, 30).await.unwrap(),
        Renewed::For(30)
    );
    let renewals = bao.audit_responses("auth/token/renew-accessor");
    assert_eq!(renewals.len(), 2);
    let inner = bao.agent_client().unwrap(&wrap.token).await.unwrap();
    assert_no_secrets(
        "renew-accessor answers",
        &format!("{renewals:?}"),
        &[wrap.token.expose(), inner.token.expose()],
    );
    // Gone tokens and unknown accessors renew to NotFound, not an error.
    op.revoke_accessor(&wrap.wrapped_accessor).await.unwrap();
    assert_eq!(
        op.renew_accessor(&wrap.wrapped_accessor, 60).await.unwrap(),
        Renewed::NotFound
    );
    assert_eq!(
        op.renew_accessor("no-such-accessor", 60).await.unwrap(),
        Renewed::NotFound
    );
}

#[tokio::test]
async fn a_token_nobody_renews_dies_at_its_minted_ttl() {
    let bao = Bao::start();
    let op = bao.operator_client();
    let request = cubbyhole::vault::TokenRequest {
        ttl: Some("6s".into()),
        ..agent_request(5)
    };
    let wrap = op.create_wrapped_token(&request).await.expect("mint");
    let inner = bao.agent_client().unwrap(&wrap.token).await.unwrap();
    assert!(op.accessor_is_live(&inner.accessor).await.unwrap());
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while op.accessor_is_live(&inner.accessor).await.unwrap() {
        assert!(
            std::time::Instant::now() < deadline,
            "token outlived its ttl"
        );
        tokio::time::sleep(std::time::Duration::from_millis(250)).await;
    }
    // Vault ended it by itself: nobody revoked it.
    assert!(bao.audit_responses("auth/token/revoke-accessor").is_empty());
}
