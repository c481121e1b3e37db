//! The one owner of the per-pod Secret format: its keys (`schema`), how it is read (`state`),
//! signed (`seal`, `signing_keys`), written (`writes`, the only module that patches it) and
//! cached (`cached`). `schema`, `state`, `seal` and `cached` are pure; `writes` and
//! `signing_keys` talk to the API server.

#[cfg(test)]
mod api_tests;
pub mod cached;
pub mod schema;
pub mod seal;
pub mod signing_keys;
pub mod state;
pub mod writes;

pub use cached::CachedRecord;
pub use schema::{
    BINDING_FINALIZER, BINDING_LABEL, MANAGED_BY, MANAGED_BY_LABEL, SECRET_FINALIZER,
    SECRET_NAME_ANNOTATION, ann,
};
pub use state::{Phase, WrapState};

/// One binding's record Secrets by name, shared with the cache they were read from (never
/// copied): for reading wrapping tokens and vetting unsigned records.
pub type SecretsByName =
    std::collections::BTreeMap<String, std::sync::Arc<k8s_openapi::api::core::v1::Secret>>;
