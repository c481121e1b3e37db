//! The controller: watches and wiring (`wiring`, initial lists by `lists`), one binding's round
//! (`reconcile`: observe, plan, execute, status), the executor (`execute`) and what it does to
//! Vault and the records (`effects`), trust in records (`trust`), Vault's word before acting on
//! an accessor (`vouch`), the sweep of orphaned records, leader election. What it may depend on:
//! ARCHITECTURE.md's Modules table (checked by `tests/layers.rs`).

pub mod budget;
pub mod cache;
pub mod context;
pub mod effects;
pub mod execute;
pub mod failpoint;
pub mod fair;
pub mod leader;
pub mod lists;
pub mod reconcile;
#[cfg(test)]
mod sim;
pub mod sweep;
pub mod trust;
pub mod vouch;
pub mod wiring;

pub use wiring::{OperatorArgs, run};
