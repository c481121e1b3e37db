//! The pure decision core: the planner, the status, spec validation, the pod view and label
//! selection. No I/O, no clock of its own; depends on `crd`, `config` types, the record's pure
//! parts, Vault's request and answer types and the agent's receipt only (ARCHITECTURE.md's
//! Modules table, checked by `tests/layers.rs`).

pub mod labels;
pub mod plan;
pub mod pod;
pub mod reason;
pub mod selection;
pub mod spec;
pub mod status;
