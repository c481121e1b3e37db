//! cubbyhole: one response-wrapped Vault token per pod start, delivered in a per-pod Secret or
//! handed to the pod's agent when it asks.
//!
//! Layout by role: [`core`] decides (pure), [`record`] owns the per-pod Secret format,
//! [`controller`] observes and acts, [`vault`] talks to Vault, [`webhook`] injects the agent,
//! [`request`] answers agents that ask for their wraps, [`agent`] runs in the pod; `config`, `crd`, `metrics`, `server` and `telemetry` are plumbing.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod agent;
pub mod backoff;
pub mod config;
pub mod controller;
pub mod core;
pub mod crd;
pub mod crd_check;
pub mod doctor;
pub mod listener;
pub mod metrics;
pub mod record;
pub mod request;
#[cfg(test)]
mod rng;
pub mod server;
pub mod telemetry;
pub mod tls;
pub mod uninstall;
pub mod vault;
pub mod webhook;
