//! Everything the executor does to the world, behind two traits: [`VaultOps`], the Vault calls
//! it makes, and [`RecordOps`], its record writes, the one read before a retried mint, its
//! Events and its clock. The operator runs it over the Vault client and the API server
//! ([`LiveRecords`]); the crash simulation over its models of both, so the simulation drives the
//! real executor, not a copy of it.

use std::future::Future;
use std::sync::Mutex;
use std::time::Duration;

use k8s_openapi::api::core::v1::ObjectReference;
use k8s_openapi::jiff::Timestamp;
use kube::ResourceExt;
use kube::runtime::events::{Event, EventType, Recorder, Reporter};

use crate::controller::cache::IndexedCache;
use crate::core::plan::Issue;
use crate::record::cached::version_reached;
use crate::record::writes::{self, Change, Records, WrapData, WriteError};
use crate::record::{BINDING_LABEL, CachedRecord, Phase, WrapState};
use crate::vault::{
    Renewed, Revoked, SecretString, TokenFacts, TokenRequest, VaultClient, VaultError, WrapInfo,
};

/// The Vault calls the executor makes.
pub trait VaultOps: Sync {
    /// Mints a response-wrapped token (`auth/token/create/<role>` with a wrap TTL).
    fn create_wrapped_token(
        &self,
        request: &TokenRequest,
    ) -> impl Future<Output = Result<WrapInfo, VaultError>> + Send;
    /// True while the wrapping token is valid (not consumed, expired or revoked).
    fn wrap_is_live(
        &self,
        token: &SecretString,
    ) -> impl Future<Output = Result<bool, VaultError>> + Send;
    /// Revokes a token or wrap by accessor.
    fn revoke_accessor(
        &self,
        accessor: &str,
    ) -> impl Future<Output = Result<Revoked, VaultError>> + Send;
    /// Extends a token's life by accessor, `increment_secs` from now.
    fn renew_accessor(
        &self,
        accessor: &str,
        increment_secs: u64,
    ) -> impl Future<Output = Result<Renewed, VaultError>> + Send;
    /// The token role's `token_explicit_max_ttl` in seconds (`None`: it sets none, or the role
    /// cannot be read).
    fn role_explicit_max(
        &self,
        role: &str,
    ) -> impl Future<Output = Result<Option<u64>, VaultError>> + Send;
    /// What Vault says about the token behind an accessor (`None`: no such token).
    fn token_facts(
        &self,
        accessor: &str,
    ) -> impl Future<Output = Result<Option<TokenFacts>, VaultError>> + Send;
}

impl VaultOps for VaultClient {
    async fn create_wrapped_token(&self, request: &TokenRequest) -> Result<WrapInfo, VaultError> {
        VaultClient::create_wrapped_token(self, request).await
    }

    async fn wrap_is_live(&self, token: &SecretString) -> Result<bool, VaultError> {
        Ok(self.lookup_wrap(token).await?.is_some())
    }

    async fn revoke_accessor(&self, accessor: &str) -> Result<Revoked, VaultError> {
        VaultClient::revoke_accessor(self, accessor).await
    }

    async fn renew_accessor(
        &self,
        accessor: &str,
        increment_secs: u64,
    ) -> Result<Renewed, VaultError> {
        VaultClient::renew_accessor(self, accessor, increment_secs).await
    }

    async fn role_explicit_max(&self, role: &str) -> Result<Option<u64>, VaultError> {
        match self.token_role(role).await {
            Ok(found) => Ok(found
                .map(|r| r.token_explicit_max_ttl)
                .filter(|&max| max > 0)),
            // A policy without read on the role (set up before it was asked for): unknown.
            Err(VaultError::Refused { status: 403, .. }) => Ok(None),
            Err(e) => Err(e),
        }
    }

    async fn token_facts(&self, accessor: &str) -> Result<Option<TokenFacts>, VaultError> {
        self.lookup_accessor::<TokenFacts>(accessor).await
    }
}

/// Who holds a Secret name: nobody, or a Secret with this binding label (`None`: unlabelled).
pub type Holder = Option<Option<String>>;

/// The executor's writes and reads of one binding's records, its Events and its clock.
pub trait RecordOps: Sync {
    /// Now, as the executor stamps records and judges expiry.
    fn now(&self) -> Timestamp;
    /// Writes a pod start's record (`writes::write_issue`).
    fn write_issue(
        &self,
        issue: &Issue,
        changes: &[Change],
        data: WrapData<'_>,
    ) -> impl Future<Output = Result<(), WriteError>> + Send;
    /// Records a final phase and removes the wrapping token (`writes::settle`).
    fn settle(
        &self,
        wrap: &WrapState,
        phase: Phase,
        verified: bool,
        message: &str,
        start: u32,
    ) -> impl Future<Output = Result<(), WriteError>> + Send;
    /// Releases and deletes the record (`writes::remove`); `false`: it changed since read.
    fn remove(&self, wrap: &WrapState) -> impl Future<Output = Result<bool, kube::Error>> + Send;
    /// Who holds the Secret name `secret` now (read fresh).
    fn holder(&self, secret: &str) -> impl Future<Output = Result<Holder, kube::Error>> + Send;
    /// Publishes an Event on `reference` (best effort). `repeats`: it may repeat, so it is
    /// kept a while and a repeat counted on it; otherwise it is sent once and forgotten.
    fn publish(
        &self,
        reference: ObjectReference,
        event: Event,
        repeats: bool,
    ) -> impl Future<Output = ()> + Send;
}

/// The operator's records: the API server, Events through kube's recorder, the wall clock.
pub struct LiveRecords<'a> {
    /// The binding's Secrets and how writes are signed.
    pub records: Records<'a>,
    /// The recorder that keeps repeating Events.
    pub recorder: &'a Recorder,
    /// The client and reporter for Events sent once.
    pub client: &'a kube::Client,
    /// Who publishes Events.
    pub reporter: &'a Reporter,
    /// The writes made through it (see [`until_cached`]).
    pub written: Mutex<Vec<OwnWrite>>,
}

/// A record write: the Secret's name and the resourceVersion it left (`None`: removed).
pub type OwnWrite = (String, Option<String>);

impl LiveRecords<'_> {
    fn wrote(&self, secret: &str, resource_version: Option<String>) {
        self.written
            .lock()
            .expect("written lock")
            .push((secret.to_string(), resource_version));
    }
}

/// Waits (at most `within`) until the record cache shows every write in `written` of
/// namespace `ns`, so the next round does not plan from records older than its own writes (a
/// record created but not yet watched reads as missing: its pod would be minted for again,
/// and the mint revoked when the create finds the name taken). Says whether it does.
pub async fn until_cached(
    cache: &IndexedCache<CachedRecord>,
    ns: &str,
    written: &[OwnWrite],
    within: Duration,
) -> bool {
    let shows = |cache: &IndexedCache<CachedRecord>| {
        written.iter().all(|(name, version)| {
            let cached = cache.get(ns, name);
            match (version, cached) {
                (None, cached) => cached.is_none(),
                (Some(_), None) => false,
                (Some(version), Some(r)) => version_reached(&r.resource_version, version),
            }
        })
    };
    cache.wait_until(shows, within).await
}

impl RecordOps for LiveRecords<'_> {
    fn now(&self) -> Timestamp {
        Timestamp::now()
    }

    async fn write_issue(
        &self,
        issue: &Issue,
        changes: &[Change],
        data: WrapData<'_>,
    ) -> Result<(), WriteError> {
        let version = writes::write_issue(&self.records, issue, changes, data).await?;
        self.wrote(&issue.secret, Some(version));
        Ok(())
    }

    async fn settle(
        &self,
        wrap: &WrapState,
        phase: Phase,
        verified: bool,
        message: &str,
        start: u32,
    ) -> Result<(), WriteError> {
        let version = writes::settle(&self.records, wrap, phase, verified, message, start).await?;
        self.wrote(&wrap.secret, Some(version));
        Ok(())
    }

    async fn remove(&self, wrap: &WrapState) -> Result<bool, kube::Error> {
        let removed = writes::remove(self.records.api, wrap).await?;
        if removed {
            self.wrote(&wrap.secret, None);
        }
        Ok(removed)
    }

    async fn holder(&self, secret: &str) -> Result<Holder, kube::Error> {
        let found = self.records.api.get_metadata_opt(secret).await?;
        Ok(found.map(|s| s.labels().get(BINDING_LABEL).cloned()))
    }

    async fn publish(&self, reference: ObjectReference, event: Event, repeats: bool) {
        let result = if repeats {
            self.recorder.publish(&event, &reference).await
        } else {
            let once = Recorder::new(self.client.clone(), self.reporter.clone());
            once.publish(&event, &reference).await
        };
        if let Err(e) = result {
            tracing::debug!(error = %e, "event not published");
        }
    }
}

/// An Event of `type_` with `reason`, `action` and `note`.
pub fn event(type_: EventType, reason: &str, action: &str, note: &str) -> Event {
    Event {
        type_,
        reason: reason.into(),
        note: Some(note.into()),
        action: action.into(),
        secondary: None,
    }
}
