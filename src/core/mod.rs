//! The pure decision core: the planner, the status, spec validation, the pod view and label
//! selection. No I/O, no clock of its own; depends on `crd`, `config` types and the record's
//! pure parts only.

pub mod labels;
pub mod plan;
pub mod pod;
pub mod reason;
pub mod spec;
pub mod status;
