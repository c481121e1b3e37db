//! cubbyhole: one response-wrapped Vault token per pod start, delivered in a per-pod Secret.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod children;
pub mod config;
pub mod context;
pub mod crd;
pub mod failpoint;
pub mod leader;
pub mod metrics;
pub mod model;
pub mod operator;
pub mod plan;
pub mod receipt;
pub mod reconcile;
pub mod record_key;
pub mod seal;
pub mod server;
#[cfg(test)]
mod sim;
pub mod spec;
pub mod status;
pub mod steps;
pub mod sweep;
pub mod telemetry;
pub mod trust;
pub mod unwrap;
pub mod vault;
pub mod webhook;
