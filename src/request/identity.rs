//! Who is asking: the API server reviews the agent's projected service-account token
//! (TokenReview, audience `cubbyhole`), and a token bound to a pod names that pod's name and
//! uid. The token itself is never logged or kept.

use k8s_openapi::api::authentication::v1::{TokenReview, TokenReviewSpec, TokenReviewStatus};
use kube::api::PostParams;
use kube::{Api, Client};

use crate::request::protocol::{AUDIENCE, Refusal, reason};
use crate::vault::SecretString;

/// `extra` key of a pod-bound token's review naming the pod.
pub const POD_NAME_EXTRA: &str = "authentication.kubernetes.io/pod-name";
/// `extra` key of a pod-bound token's review naming the pod's uid.
pub const POD_UID_EXTRA: &str = "authentication.kubernetes.io/pod-uid";

/// The pod a reviewed token is bound to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PodIdentity {
    /// The service account's (and pod's) namespace.
    pub namespace: String,
    /// The service account.
    pub service_account: String,
    /// Pod name.
    pub pod: String,
    /// Pod uid.
    pub pod_uid: String,
}

/// Reads a TokenReview's answer: authenticated for [`AUDIENCE`], a service account, bound to
/// a pod.
pub fn identity(status: &TokenReviewStatus) -> Result<PodIdentity, Refusal> {
    if status.authenticated != Some(true) {
        let why = status
            .error
            .as_deref()
            .map(|e| format!(" ({e})"))
            .unwrap_or_default();
        return Err(Refusal::new(
            reason::NOT_AUTHENTICATED,
            format!(
                "the API server does not accept this token for audience {AUDIENCE:?}{why}: use the pod's projected service-account token with audience {AUDIENCE:?}, still valid, of a pod that still exists"
            ),
        ));
    }
    if !status
        .audiences
        .as_ref()
        .is_some_and(|a| a.iter().any(|a| a == AUDIENCE))
    {
        return Err(Refusal::new(
            reason::NOT_AUTHENTICATED,
            format!("the token is not for audience {AUDIENCE:?}"),
        ));
    }
    let user = status.user.as_ref();
    let username = user.and_then(|u| u.username.as_deref()).unwrap_or_default();
    let Some((namespace, service_account)) = username
        .strip_prefix("system:serviceaccount:")
        .and_then(|rest| rest.split_once(':'))
    else {
        return Err(Refusal::new(
            reason::NOT_BOUND_TO_POD,
            format!("the token belongs to {username:?}, not to a service account"),
        ));
    };
    let extra = |key: &str| {
        user.and_then(|u| u.extra.as_ref())
            .and_then(|e| e.get(key))
            .and_then(|v| v.first())
            .filter(|v| !v.is_empty())
            .cloned()
    };
    let (Some(pod), Some(pod_uid)) = (extra(POD_NAME_EXTRA), extra(POD_UID_EXTRA)) else {
        return Err(Refusal::new(
            reason::NOT_BOUND_TO_POD,
            "the token is not bound to a pod (a legacy Secret token, or one requested without a pod): mount a projected service-account token volume with audience \"cubbyhole\"",
        ));
    };
    Ok(PodIdentity {
        namespace: namespace.to_string(),
        service_account: service_account.to_string(),
        pod,
        pod_uid,
    })
}

/// Asks the API server who `token` is, for [`AUDIENCE`]. `Err(Ok)`: a refusal for the agent;
/// `Err(Err)`: the API server failed.
pub async fn review(
    client: &Client,
    token: &SecretString,
) -> Result<PodIdentity, Result<Refusal, kube::Error>> {
    let review = TokenReview {
        spec: TokenReviewSpec {
            token: Some(token.expose().to_string()),
            audiences: Some(vec![AUDIENCE.to_string()]),
        },
        ..Default::default()
    };
    let answer = Api::<TokenReview>::all(client.clone())
        .create(&PostParams::default(), &review)
        .await
        .map_err(Err)?;
    let status = answer.status.unwrap_or_default();
    identity(&status).map_err(Ok)
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::authentication::v1::UserInfo;
    use std::collections::BTreeMap;

    fn status(user: &str, extra: &[(&str, &str)], audiences: &[&str]) -> TokenReviewStatus {
        TokenReviewStatus {
            authenticated: Some(true),
            audiences: Some(audiences.iter().map(|a| a.to_string()).collect()),
            user: Some(UserInfo {
                username: Some(user.into()),
                extra: Some(
                    extra
                        .iter()
                        .map(|(k, v)| (k.to_string(), vec![v.to_string()]))
                        .collect::<BTreeMap<_, _>>(),
                ),
                ..Default::default()
            }),
            error: None,
        }
    }

    #[test]
    fn a_pod_bound_token_names_its_pod() {
        let s = status(
            "system:serviceaccount:agents:runner",
            &[(POD_NAME_EXTRA, "web-1"), (POD_UID_EXTRA, "u-1")],
            &["cubbyhole"],
        );
        assert_eq!(
            identity(&s).unwrap(),
            PodIdentity {
                namespace: "agents".into(),
                service_account: "runner".into(),
                pod: "web-1".into(),
                pod_uid: "u-1".into(),
            }
        );
    }

    #[test]
    fn unauthenticated_other_audiences_users_and_unbound_tokens_are_refused() {
        let bound = [(POD_NAME_EXTRA, "web-1"), (POD_UID_EXTRA, "u-1")];
        let mut failed = status("system:serviceaccount:a:b", &bound, &["cubbyhole"]);
        failed.authenticated = Some(false);
        failed.error = Some("token has expired".into());
        let refused = identity(&failed).unwrap_err();
        assert_eq!(refused.reason, reason::NOT_AUTHENTICATED);
        assert!(refused.message.contains("token has expired"));
        for (s, want) in [
            (
                status("system:serviceaccount:a:b", &bound, &["vault"]),
                reason::NOT_AUTHENTICATED,
            ),
            (
                status("alice", &bound, &["cubbyhole"]),
                reason::NOT_BOUND_TO_POD,
            ),
            (
                status("system:serviceaccount:a:b", &[], &["cubbyhole"]),
                reason::NOT_BOUND_TO_POD,
            ),
            (
                status(
                    "system:serviceaccount:a:b",
                    &[(POD_NAME_EXTRA, "web-1")],
                    &["cubbyhole"],
                ),
                reason::NOT_BOUND_TO_POD,
            ),
        ] {
            assert_eq!(identity(&s).unwrap_err().reason, want, "{s:?}");
        }
    }
}
