//! Request delivery: the pod's agent asks for its own wrap, proving who it is with its pod's
//! projected service-account token, and the wrap is minted then and returned only in that TLS
//! answer; it never rests in a Secret or in etcd.
//!
//! `protocol` (the wire format, shared with `cubbyhole unwrap`), `identity` (TokenReview and
//! the pod the token is bound to), `gate` (pure: may this pod be served, and by which
//! binding), `limits` (pure token buckets per pod and per namespace), `reviews` (identity tokens
//! reviewed at most once, garbage never), `own_writes` (what this replica
//! last wrote, so the next ask reads its own write), `serve` (the two
//! endpoints, on every replica, beside the admission webhook). The record each ask writes is
//! the same per-pod record as Secret delivery, without a token in it: the controller follows
//! and ends it as any other.

pub mod gate;
pub mod identity;
pub mod limits;
pub mod own_writes;
pub mod protocol;
pub mod reviews;
pub mod serve;
