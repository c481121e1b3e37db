//! The webhook's own CA and serving certificate: what is stored, when to rotate (pure), and
//! issuing (rcgen). The CA is replaced in two steps so the API server always trusts the cert
//! being served: its successor first joins the `caBundle`, and only after an overlap signs.

use std::time::Duration;

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose,
};
use serde::{Deserialize, Serialize};

/// One CA: certificate, key, and its lifetime (unix seconds).
#[derive(Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct CaCert {
    /// PEM certificate.
    pub cert: String,
    /// PEM private key.
    pub key: String,
    /// Subject common name (to sign with it again).
    pub common_name: String,
    /// Issued at.
    pub issued_at: u64,
    /// Expires at.
    pub not_after: u64,
    /// When it joined the bundle as a successor (`None` once it signs).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub added_at: Option<u64>,
}

impl std::fmt::Debug for CaCert {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CaCert")
            .field("common_name", &self.common_name)
            .field("issued_at", &self.issued_at)
            .field("not_after", &self.not_after)
            .finish_non_exhaustive()
    }
}

/// Everything stored in the shared Secret (key `state.json`).
#[derive(Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct CertState {
    /// The CA that signs the serving certificate.
    pub ca: CaCert,
    /// Its successor, in the bundle but not yet signing.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_ca: Option<CaCert>,
    /// The CA it replaced (certificate only), kept in the bundle until it expires.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub previous_ca: Option<CaCert>,
    /// PEM serving certificate.
    pub serving_cert: String,
    /// PEM serving key.
    pub serving_key: String,
    /// Serving certificate issued at.
    pub serving_issued_at: u64,
    /// Serving certificate expiry.
    pub serving_not_after: u64,
    /// Its names.
    pub sans: Vec<String>,
}

impl std::fmt::Debug for CertState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CertState")
            .field("ca", &self.ca)
            .field("next_ca", &self.next_ca)
            .field("previous_ca", &self.previous_ca)
            .field("serving_issued_at", &self.serving_issued_at)
            .field("serving_not_after", &self.serving_not_after)
            .field("sans", &self.sans)
            .finish_non_exhaustive()
    }
}

/// Lifetimes and names wanted.
#[derive(Clone, Debug, PartialEq)]
pub struct CertSettings {
    /// Names of the serving certificate (DNS names or IP addresses).
    pub sans: Vec<String>,
    /// Serving certificate lifetime.
    pub serving_validity: Duration,
    /// CA lifetime.
    pub ca_validity: Duration,
}

impl CertSettings {
    /// How long a successor CA sits in the bundle before it signs: a tenth of the CA's life,
    /// between 5 s and 1 h.
    pub fn overlap(&self) -> u64 {
        (self.ca_validity.as_secs() / 10).clamp(5, 3600)
    }

    /// How often to look at the certificates and the `caBundle`: a tenth of the serving
    /// lifetime, 1 s..5 s (so a webhook configuration applied after the operator gets its
    /// `caBundle` within seconds; two GETs per look).
    pub fn check_every(&self) -> Duration {
        (self.serving_validity / 10).clamp(Duration::from_secs(1), Duration::from_secs(5))
    }
}

/// What is due now.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Rotation {
    /// Nothing.
    None,
    /// No state yet: a CA and a serving certificate.
    Create,
    /// The CA is two thirds through its life: a successor joins the bundle.
    AddNextCa,
    /// The successor has been in the bundle long enough: it signs a new serving certificate,
    /// the old CA stays in the bundle.
    PromoteNextCa,
    /// The previous CA expired: drop it from the bundle.
    DropPreviousCa,
    /// The serving certificate is two thirds through its life, or its names changed.
    RenewServing,
}

fn two_thirds(issued: u64, not_after: u64) -> u64 {
    issued + not_after.saturating_sub(issued) * 2 / 3
}

/// What to do with `state` at `now` (unix seconds).
pub fn due(state: Option<&CertState>, settings: &CertSettings, now: u64) -> Rotation {
    let Some(s) = state else {
        return Rotation::Create;
    };
    if now >= s.ca.not_after {
        // Too late for a graceful change (the operator was down): start over.
        return Rotation::Create;
    }
    if let Some(next) = &s.next_ca {
        if now >= next.added_at.unwrap_or(0) + settings.overlap() {
            return Rotation::PromoteNextCa;
        }
    } else if now >= two_thirds(s.ca.issued_at, s.ca.not_after) {
        return Rotation::AddNextCa;
    }
    if s.previous_ca.as_ref().is_some_and(|p| now >= p.not_after) {
        return Rotation::DropPreviousCa;
    }
    if s.sans != settings.sans || now >= two_thirds(s.serving_issued_at, s.serving_not_after) {
        return Rotation::RenewServing;
    }
    Rotation::None
}

/// Carries out `rotation`, issuing what it needs.
pub fn rotate(
    rotation: Rotation,
    state: Option<&CertState>,
    settings: &CertSettings,
    now: u64,
) -> Result<Option<CertState>, String> {
    let mut s = match (rotation, state) {
        (Rotation::None, _) => return Ok(None),
        (Rotation::Create, _) | (_, None) => {
            let ca = new_ca(settings, now)?;
            let (cert, key, not_after) = serving(&ca, settings, now)?;
            return Ok(Some(CertState {
                ca,
                next_ca: None,
                previous_ca: None,
                serving_cert: cert,
                serving_key: key,
                serving_issued_at: now,
                serving_not_after: not_after,
                sans: settings.sans.clone(),
            }));
        }
        (_, Some(s)) => s.clone(),
    };
    match rotation {
        Rotation::AddNextCa => {
            let mut next = new_ca(settings, now)?;
            next.added_at = Some(now);
            s.next_ca = Some(next);
        }
        Rotation::PromoteNextCa => {
            let mut next = s.next_ca.take().ok_or("no successor CA")?;
            next.added_at = None;
            let mut old = std::mem::replace(&mut s.ca, next);
            old.key = String::new();
            s.previous_ca = Some(old);
            reissue(&mut s, settings, now)?;
        }
        Rotation::DropPreviousCa => s.previous_ca = None,
        Rotation::RenewServing => reissue(&mut s, settings, now)?,
        Rotation::None | Rotation::Create => {}
    }
    Ok(Some(s))
}

fn reissue(s: &mut CertState, settings: &CertSettings, now: u64) -> Result<(), String> {
    let (cert, key, not_after) = serving(&s.ca, settings, now)?;
    s.serving_cert = cert;
    s.serving_key = key;
    s.serving_issued_at = now;
    s.serving_not_after = not_after;
    s.sans = settings.sans.clone();
    Ok(())
}

impl CertState {
    /// The PEM bundle for `caBundle`: the signing CA, its successor, its predecessor.
    pub fn ca_bundle(&self) -> String {
        [
            Some(&self.ca),
            self.next_ca.as_ref(),
            self.previous_ca.as_ref(),
        ]
        .into_iter()
        .flatten()
        .map(|c| c.cert.trim_end().to_string() + "\n")
        .collect()
    }
}

/// Backdating of `notBefore`, for clocks a little behind ours.
const BACKDATE: Duration = Duration::from_secs(300);

/// A certificate's `notBefore` (backdated) and `notAfter` for one issued at `now`.
fn validity(
    now: u64,
    not_after: u64,
) -> Result<(time::OffsetDateTime, time::OffsetDateTime), String> {
    let at = |secs: u64| {
        time::OffsetDateTime::from_unix_timestamp(secs as i64).map_err(|e| e.to_string())
    };
    Ok((at(now.saturating_sub(BACKDATE.as_secs()))?, at(not_after)?))
}

fn ca_params(common_name: &str) -> CertificateParams {
    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, common_name);
    dn.push(DnType::OrganizationName, "cubbyhole");
    params.distinguished_name = dn;
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    params
}

fn new_ca(settings: &CertSettings, now: u64) -> Result<CaCert, String> {
    let key = KeyPair::generate().map_err(|e| format!("CA key: {e}"))?;
    let common_name = format!("cubbyhole-webhook-ca-{now}");
    let not_after = now + settings.ca_validity.as_secs();
    let mut params = ca_params(&common_name);
    (params.not_before, params.not_after) = validity(now, not_after)?;
    let cert = params
        .self_signed(&key)
        .map_err(|e| format!("CA certificate: {e}"))?;
    Ok(CaCert {
        cert: cert.pem(),
        key: key.serialize_pem(),
        common_name,
        issued_at: now,
        not_after,
        added_at: None,
    })
}

/// A serving certificate signed by `ca`, never outliving it: (cert, key, not_after).
fn serving(
    ca: &CaCert,
    settings: &CertSettings,
    now: u64,
) -> Result<(String, String, u64), String> {
    let ca_key = KeyPair::from_pem(&ca.key).map_err(|e| format!("CA key: {e}"))?;
    let issuer = Issuer::new(ca_params(&ca.common_name), ca_key);
    let key = KeyPair::generate().map_err(|e| format!("serving key: {e}"))?;
    let mut params = CertificateParams::new(settings.sans.clone())
        .map_err(|e| format!("serving certificate names: {e}"))?;
    let mut dn = DistinguishedName::new();
    dn.push(
        DnType::CommonName,
        settings
            .sans
            .first()
            .cloned()
            .unwrap_or_else(|| "cubbyhole".into()),
    );
    params.distinguished_name = dn;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    let not_after = (now + settings.serving_validity.as_secs()).min(ca.not_after);
    (params.not_before, params.not_after) = validity(now, not_after)?;
    let cert = params
        .signed_by(&key, &issuer)
        .map_err(|e| format!("serving certificate: {e}"))?;
    Ok((cert.pem(), key.serialize_pem(), not_after))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings() -> CertSettings {
        CertSettings {
            sans: vec!["svc.ns.svc".into(), "127.0.0.1".into()],
            serving_validity: Duration::from_secs(90),
            ca_validity: Duration::from_secs(900),
        }
    }

    #[test]
    fn lifecycle_rotates_serving_then_ca_in_two_steps() {
        let st = settings();
        let t0 = 1_000_000;
        assert_eq!(due(None, &st, t0), Rotation::Create);
        let s = rotate(Rotation::Create, None, &st, t0).unwrap().unwrap();
        assert_eq!(due(Some(&s), &st, t0 + 59), Rotation::None);
        assert_eq!(due(Some(&s), &st, t0 + 60), Rotation::RenewServing);
        let s = rotate(Rotation::RenewServing, Some(&s), &st, t0 + 60)
            .unwrap()
            .unwrap();
        assert_eq!(s.serving_issued_at, t0 + 60);
        assert_eq!(due(Some(&s), &st, t0 + 100), Rotation::None);
        // Two thirds of the CA's life: a successor joins the bundle, does not sign yet.
        assert_eq!(due(Some(&s), &st, t0 + 600), Rotation::AddNextCa);
        let s = rotate(Rotation::AddNextCa, Some(&s), &st, t0 + 600)
            .unwrap()
            .unwrap();
        assert_eq!(s.ca_bundle().matches("BEGIN CERTIFICATE").count(), 2);
        assert_ne!(due(Some(&s), &st, t0 + 689), Rotation::PromoteNextCa);
        assert_eq!(due(Some(&s), &st, t0 + 690), Rotation::PromoteNextCa);
        let promoted = rotate(Rotation::PromoteNextCa, Some(&s), &st, t0 + 690)
            .unwrap()
            .unwrap();
        assert_eq!(promoted.ca.cert, s.next_ca.as_ref().unwrap().cert);
        assert_eq!(promoted.previous_ca.as_ref().unwrap().cert, s.ca.cert);
        assert!(promoted.previous_ca.as_ref().unwrap().key.is_empty());
        assert_ne!(promoted.serving_cert, s.serving_cert);
        assert_eq!(promoted.ca_bundle().matches("BEGIN CERTIFICATE").count(), 2);
        assert_eq!(
            due(Some(&promoted), &st, t0 + 900),
            Rotation::DropPreviousCa
        );
        let dropped = rotate(Rotation::DropPreviousCa, Some(&promoted), &st, t0 + 900)
            .unwrap()
            .unwrap();
        assert_eq!(dropped.ca_bundle().matches("BEGIN CERTIFICATE").count(), 1);
    }

    #[test]
    fn changed_names_reissue_and_expired_ca_starts_over() {
        let st = settings();
        let s = rotate(Rotation::Create, None, &st, 10).unwrap().unwrap();
        let mut other = st.clone();
        other.sans.push("extra.example".into());
        assert_eq!(due(Some(&s), &other, 11), Rotation::RenewServing);
        assert_eq!(due(Some(&s), &st, 10 + 900), Rotation::Create);
    }

    #[test]
    fn serving_cert_never_outlives_its_ca() {
        let st = CertSettings {
            serving_validity: Duration::from_secs(500),
            ca_validity: Duration::from_secs(600),
            ..settings()
        };
        let s = rotate(Rotation::Create, None, &st, 0).unwrap().unwrap();
        let s = rotate(Rotation::RenewServing, Some(&s), &st, 300)
            .unwrap()
            .unwrap();
        assert_eq!(s.serving_not_after, 600);
    }

    #[test]
    fn certificates_are_backdated_and_end_when_asked() {
        let (from, to) = validity(1_000, 5_000).unwrap();
        assert_eq!(from.unix_timestamp(), 700, "five minutes back");
        assert_eq!(to.unix_timestamp(), 5_000);
        assert_eq!(validity(60, 90).unwrap().0.unix_timestamp(), 0);
    }

    #[test]
    fn the_ca_may_sign_leaf_certificates_only() {
        let params = ca_params("cubbyhole-webhook-ca-1");
        assert_eq!(params.is_ca, IsCa::Ca(BasicConstraints::Constrained(0)));
        assert_eq!(
            params.key_usages,
            vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign]
        );
        let cn = params.distinguished_name.get(&DnType::CommonName);
        assert!(
            format!("{cn:?}").contains("\"cubbyhole-webhook-ca-1\""),
            "{cn:?}"
        );
    }

    #[test]
    fn debug_shows_no_key() {
        let s = rotate(Rotation::Create, None, &settings(), 0)
            .unwrap()
            .unwrap();
        let shown = format!("{s:?}");
        assert!(!shown.contains("PRIVATE KEY"), "{shown}");
        assert!(!shown.contains("CERTIFICATE"), "{shown}");
        // What may be shown is: the CA's name and times, the serving names and times.
        for shown_part in [
            "CertState",
            "CaCert",
            &s.ca.common_name,
            "svc.ns.svc",
            &format!("serving_not_after: {}", s.serving_not_after),
            &format!("not_after: {}", s.ca.not_after),
        ] {
            assert!(shown.contains(shown_part), "{shown_part} in {shown}");
        }
    }

    #[test]
    fn certificates_are_checked_every_tenth_of_the_serving_life_within_1_to_5_s() {
        let every = |secs| {
            CertSettings {
                serving_validity: Duration::from_secs(secs),
                ..settings()
            }
            .check_every()
        };
        assert_eq!(every(30), Duration::from_secs(3));
        assert_eq!(every(5), Duration::from_secs(1));
        assert_eq!(every(86_400), Duration::from_secs(5));
    }
}
