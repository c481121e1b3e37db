//! The agent side, run in the pod as `cubbyhole unwrap`: check, unwrap, store the token and
//! leave a receipt. Depends only on `vault` and the receipt format it shares with the operator.

pub mod receipt;
pub mod unwrap;
