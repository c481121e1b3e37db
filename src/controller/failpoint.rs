//! Fault points for the end-to-end tests. `CUBBYHOLE_FAILPOINT=<name>` makes the operator abort
//! at that line (as SIGKILL would end it), so a test can prove recovery from a kill at the worst
//! moment; `CUBBYHOLE_FAILPOINT=<name>:pause` holds every pass over that line for
//! [`PAUSE`], so a test can change the world in between (e.g. take a pod's Secret name between
//! its mint and the record write). Unset in production, where [`hit`] is a cheap no-op.

use std::time::Duration;

/// How long a `<name>:pause` failpoint holds.
pub const PAUSE: Duration = Duration::from_secs(5);

/// Aborts the process at `name` when armed so, or pauses there for [`PAUSE`].
pub async fn hit(name: &str) {
    static ARMED: std::sync::OnceLock<Option<String>> = std::sync::OnceLock::new();
    let armed = ARMED.get_or_init(|| std::env::var("CUBBYHOLE_FAILPOINT").ok());
    let Some(armed) = armed.as_deref() else {
        return;
    };
    if armed == name {
        eprintln!("failpoint {name}: aborting");
        std::process::abort();
    }
    if armed.strip_suffix(":pause") == Some(name) {
        eprintln!("failpoint {name}: pausing for {PAUSE:?}");
        tokio::time::sleep(PAUSE).await;
    }
}
