//! Leader election on a `coordination.k8s.io/v1` Lease, so several replicas can run for
//! availability while only one reconciles. Crash-only: a leader that cannot renew in time exits
//! and lets Kubernetes restart it, rather than risk two active replicas.

use std::time::Duration;

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use kube::api::{ObjectMeta, PostParams};
use kube::{Api, Client};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

/// Lease timing.
#[derive(Clone, Debug)]
pub struct LeaseConfig {
    /// Lease name.
    pub name: String,
    /// Namespace of the Lease.
    pub namespace: String,
    /// This replica's identity.
    pub identity: String,
    /// How long a lease is valid without renewal.
    pub duration: Duration,
    /// How often the holder renews (and candidates retry).
    pub renew_every: Duration,
}

/// What a candidate should do with the Lease it read.
#[derive(Debug, PartialEq, Eq)]
enum Decision {
    /// Ours or free or expired: write it with us as holder.
    Take,
    /// Someone else holds a valid lease.
    Wait,
}

fn decide(lease: Option<&LeaseSpec>, me: &str, now: Timestamp) -> Decision {
    let Some(spec) = lease else {
        return Decision::Take;
    };
    let holder = spec.holder_identity.as_deref().unwrap_or("");
    if holder.is_empty() || holder == me {
        return Decision::Take;
    }
    let duration = SignedDuration::from_secs(spec.lease_duration_seconds.unwrap_or(15).into());
    let renewed = spec
        .renew_time
        .as_ref()
        .map(|t| t.0)
        .unwrap_or(Timestamp::UNIX_EPOCH);
    match renewed.checked_add(duration) {
        Ok(expiry) if expiry > now => Decision::Wait,
        _ => Decision::Take,
    }
}

/// The Lease to write so that `cfg.identity` holds it at `now`, or `None` while someone else
/// holds a valid one: renewing our own keeps its acquire time and transition count, taking a
/// free or expired one counts a transition, and the write is guarded by the resourceVersion
/// read.
fn claim(current: Option<&Lease>, cfg: &LeaseConfig, now: Timestamp) -> Option<Lease> {
    let previous = current.and_then(|l| l.spec.clone()).unwrap_or_default();
    if decide(current.and_then(|l| l.spec.as_ref()), &cfg.identity, now) == Decision::Wait {
        return None;
    }
    let held_before = previous.holder_identity.as_deref() == Some(cfg.identity.as_str());
    let spec = LeaseSpec {
        holder_identity: Some(cfg.identity.clone()),
        lease_duration_seconds: Some(cfg.duration.as_secs() as i32),
        acquire_time: if held_before {
            previous.acquire_time
        } else {
            Some(MicroTime(now))
        },
        renew_time: Some(MicroTime(now)),
        lease_transitions: Some(
            previous.lease_transitions.unwrap_or(0) + i32::from(!held_before && current.is_some()),
        ),
        ..Default::default()
    };
    Some(Lease {
        metadata: ObjectMeta {
            name: Some(cfg.name.clone()),
            namespace: Some(cfg.namespace.clone()),
            resource_version: current.and_then(|l| l.metadata.resource_version.clone()),
            ..Default::default()
        },
        spec: Some(spec),
    })
}

/// Tries once to hold the lease; `Ok(true)` when we hold it now.
async fn try_hold(api: &Api<Lease>, cfg: &LeaseConfig) -> Result<bool, kube::Error> {
    let current = api.get_opt(&cfg.name).await?;
    let Some(lease) = claim(current.as_ref(), cfg, Timestamp::now()) else {
        return Ok(false);
    };
    let written = match current {
        None => api.create(&PostParams::default(), &lease).await,
        Some(_) => api.replace(&cfg.name, &PostParams::default(), &lease).await,
    };
    match written {
        Ok(_) => Ok(true),
        // Another candidate wrote first.
        Err(kube::Error::Api(s)) if s.code == 409 => Ok(false),
        Err(e) => Err(e),
    }
}

/// Waits until this replica holds the lease (`None`: `shutdown` came first), then keeps renewing
/// it in a task that cancels `lost` when leadership is lost (the caller must then stop) and
/// releases the lease on shutdown; await the task before exiting.
pub async fn acquire(
    client: Client,
    cfg: LeaseConfig,
    shutdown: CancellationToken,
    lost: CancellationToken,
) -> Option<tokio::task::JoinHandle<()>> {
    let api: Api<Lease> = Api::namespaced(client, &cfg.namespace);
    info!(lease = %cfg.name, identity = %cfg.identity, "waiting for leadership");
    loop {
        match try_hold(&api, &cfg).await {
            Ok(true) => break,
            Ok(false) => {}
            Err(e) => warn!(error = %e, "leader election: cannot read or write the lease"),
        }
        tokio::select! {
            _ = tokio::time::sleep(cfg.renew_every) => {}
            _ = shutdown.cancelled() => return None,
        }
    }
    info!(lease = %cfg.name, identity = %cfg.identity, "leading");
    Some(tokio::spawn(renew(api, cfg, shutdown, lost)))
}

async fn renew(
    api: Api<Lease>,
    cfg: LeaseConfig,
    shutdown: CancellationToken,
    lost: CancellationToken,
) {
    let mut last_renewal = tokio::time::Instant::now();
    loop {
        tokio::select! {
            _ = tokio::time::sleep(cfg.renew_every) => {}
            _ = shutdown.cancelled() => {
                release(&api, &cfg).await;
                return;
            }
        }
        // A frozen or unreachable API server may not answer at all: a renewal is given only
        // until the time to step down.
        let step_down_at = last_renewal + cfg.duration.saturating_sub(cfg.renew_every);
        match tokio::time::timeout_at(step_down_at, try_hold(&api, &cfg)).await {
            Ok(Ok(true)) => last_renewal = tokio::time::Instant::now(),
            Ok(Ok(false)) => {
                warn!("leader election: another replica took the lease");
                lost.cancel();
                return;
            }
            Ok(Err(e)) => warn!(error = %e, "leader election: renewal failed"),
            Err(_) => warn!("leader election: renewal got no answer in time"),
        }
        if must_step_down(last_renewal.elapsed(), &cfg) {
            warn!("leader election: could not renew in time");
            lost.cancel();
            return;
        }
    }
}

/// Whether a leader whose last successful renewal was `since_renewal` ago must stop: before its
/// lease can expire under it, leaving a margin of one renewal period.
fn must_step_down(since_renewal: Duration, cfg: &LeaseConfig) -> bool {
    since_renewal + cfg.renew_every >= cfg.duration
}

/// Gives the lease up on shutdown so a standby takes over at once.
async fn release(api: &Api<Lease>, cfg: &LeaseConfig) {
    if let Ok(Some(mut lease)) = api.get_opt(&cfg.name).await
        && let Some(spec) = lease.spec.as_mut()
        && spec.holder_identity.as_deref() == Some(cfg.identity.as_str())
    {
        spec.holder_identity = None;
        spec.renew_time = None;
        if api
            .replace(&cfg.name, &PostParams::default(), &lease)
            .await
            .is_ok()
        {
            info!("leader election: lease released");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(holder: &str, renewed: i64) -> LeaseSpec {
        LeaseSpec {
            holder_identity: Some(holder.into()),
            lease_duration_seconds: Some(15),
            renew_time: Some(MicroTime(Timestamp::from_second(renewed).unwrap())),
            ..Default::default()
        }
    }

    #[test]
    fn takes_free_own_or_expired_leases_only() {
        let now = Timestamp::from_second(1_000).unwrap();
        assert_eq!(decide(None, "me", now), Decision::Take);
        assert_eq!(decide(Some(&spec("me", 999)), "me", now), Decision::Take);
        assert_eq!(decide(Some(&spec("", 999)), "me", now), Decision::Take);
        assert_eq!(decide(Some(&spec("other", 990)), "me", now), Decision::Wait);
        assert_eq!(decide(Some(&spec("other", 980)), "me", now), Decision::Take);
        // A lease renewed at 985 for 15 s ends at 1,000: free at that instant.
        assert_eq!(decide(Some(&spec("other", 985)), "me", now), Decision::Take);
        assert_eq!(decide(Some(&spec("other", 986)), "me", now), Decision::Wait);
    }

    fn cfg() -> LeaseConfig {
        LeaseConfig {
            name: "cubbyhole-leader".into(),
            namespace: "cubbyhole-system".into(),
            identity: "me".into(),
            duration: Duration::from_secs(15),
            renew_every: Duration::from_secs(5),
        }
    }

    fn lease(spec: LeaseSpec, resource_version: &str) -> Lease {
        Lease {
            metadata: ObjectMeta {
                resource_version: Some(resource_version.into()),
                ..Default::default()
            },
            spec: Some(spec),
        }
    }

    #[test]
    fn a_claim_names_the_lease_holder_and_times_and_is_guarded_by_the_version_read() {
        let now = Timestamp::from_second(1_000).unwrap();
        let at = |s: i64| Some(MicroTime(Timestamp::from_second(s).unwrap()));
        // A first claim: nothing to guard, no transition yet.
        let first = claim(None, &cfg(), now).expect("free");
        assert_eq!(first.metadata.name.as_deref(), Some("cubbyhole-leader"));
        assert_eq!(
            first.metadata.namespace.as_deref(),
            Some("cubbyhole-system")
        );
        assert_eq!(first.metadata.resource_version, None);
        let got = first.spec.unwrap();
        assert_eq!(got.holder_identity.as_deref(), Some("me"));
        assert_eq!(got.lease_duration_seconds, Some(15));
        assert_eq!(
            (got.acquire_time, got.renew_time.clone()),
            (at(1_000), at(1_000))
        );
        assert_eq!(got.lease_transitions, Some(0));

        // Renewing our own: the acquire time and transitions stay, the renew time moves.
        let ours = LeaseSpec {
            acquire_time: at(900),
            lease_transitions: Some(3),
            ..spec("me", 995)
        };
        let renewed = claim(Some(&lease(ours, "41")), &cfg(), now).expect("ours");
        assert_eq!(renewed.metadata.resource_version.as_deref(), Some("41"));
        let got = renewed.spec.unwrap();
        assert_eq!((got.acquire_time, got.renew_time), (at(900), at(1_000)));
        assert_eq!(got.lease_transitions, Some(3));

        // Taking over an expired lease: a transition, acquired now.
        let theirs = LeaseSpec {
            acquire_time: at(100),
            lease_transitions: Some(3),
            ..spec("other", 900)
        };
        let taken = claim(Some(&lease(theirs.clone(), "42")), &cfg(), now).expect("expired");
        assert_eq!(taken.metadata.resource_version.as_deref(), Some("42"));
        let got = taken.spec.unwrap();
        assert_eq!(got.holder_identity.as_deref(), Some("me"));
        assert_eq!(
            (got.acquire_time, got.lease_transitions),
            (at(1_000), Some(4))
        );

        // A valid lease of someone else's is left alone.
        let valid = LeaseSpec {
            renew_time: at(995),
            ..theirs
        };
        assert_eq!(claim(Some(&lease(valid, "43")), &cfg(), now), None);
    }

    #[test]
    fn a_leader_steps_down_one_renewal_period_before_its_lease_could_expire() {
        let cfg = LeaseConfig {
            name: "l".into(),
            namespace: "ns".into(),
            identity: "me".into(),
            duration: Duration::from_secs(6),
            renew_every: Duration::from_secs(2),
        };
        let ms = Duration::from_millis;
        assert!(!must_step_down(ms(0), &cfg));
        assert!(
            !must_step_down(ms(2_000), &cfg),
            "one missed renewal is tolerated"
        );
        assert!(!must_step_down(ms(3_999), &cfg));
        assert!(
            must_step_down(ms(4_000), &cfg),
            "two missed renewals are not"
        );
        assert!(must_step_down(ms(6_000), &cfg));
        assert!(must_step_down(ms(60_000), &cfg));
    }
}
