//! cubbyhole's test harness, shared by the integration and end-to-end tests: real servers
//! only. A private OpenBao per test ([`openbao`], with [`tls`] and [`jwt`] login variants), a
//! private Kubernetes control plane with the operator as a separate process ([`cluster`]),
//! and the leak checks ([`leaks`]).

#![warn(missing_docs)]

pub mod cluster;
pub mod jwt;
pub mod leaks;
pub mod openbao;
pub mod paths;
pub mod process;
pub mod tls;
