//! cubbyhole: one response-wrapped Vault token per pod start, delivered in a per-pod Secret.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod config;
pub mod crd;
pub mod metrics;
pub mod receipt;
pub mod spec;
pub mod status;
pub mod vault;
pub mod model;
pub mod plan;
pub mod unwrap;
