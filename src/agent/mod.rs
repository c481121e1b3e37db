//! The agent side, run in the pod as `cubbyhole unwrap`: get the wrap (from the mounted Secret,
//! or by asking the operator's endpoint), check, unwrap, store the token and leave a receipt.
//! Depends only on `vault`, the receipt format and the request protocol it shares with the
//! operator.

pub mod ask;
pub mod receipt;
pub mod unwrap;
