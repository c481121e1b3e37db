//! Fault points for the end-to-end tests. `CUBBYHOLE_FAILPOINT=<name>` makes the operator abort
//! at that line (as SIGKILL would end it), so a test can prove recovery from a kill at the worst
//! moment; `CUBBYHOLE_FAILPOINT=<name>:pause` holds every pass over that line for
//! [`PAUSE`], so a test can change the world in between (e.g. take a pod's Secret name between
//! its mint and the record write); `<name>:lag` delays every item of a stream by [`LAG`] (a
//! watch falling behind). Unset in production, where [`hit`] is a cheap no-op and [`lagged`]
//! returns its stream.

use std::time::Duration;

use futures::stream::{BoxStream, Stream, StreamExt};

/// How long a `<name>:pause` failpoint holds.
pub const PAUSE: Duration = Duration::from_secs(5);

/// How late a `<name>:lag` failpoint delivers each item.
pub const LAG: Duration = Duration::from_millis(500);

fn armed() -> Option<&'static str> {
    static ARMED: std::sync::OnceLock<Option<String>> = std::sync::OnceLock::new();
    ARMED
        .get_or_init(|| std::env::var("CUBBYHOLE_FAILPOINT").ok())
        .as_deref()
}

/// `stream`, each item delivered [`LAG`] after it came (in order) when `<name>:lag` is armed.
pub fn lagged<S>(name: &str, stream: S) -> BoxStream<'static, S::Item>
where
    S: Stream + Send + 'static,
    S::Item: Send + 'static,
{
    if armed().and_then(|a| a.strip_suffix(":lag")) != Some(name) {
        return stream.boxed();
    }
    eprintln!("failpoint {name}: every item {LAG:?} late");
    stream
        .map(|item| async move {
            tokio::time::sleep(LAG).await;
            item
        })
        .buffered(usize::MAX)
        .boxed()
}

/// Aborts the process at `name` when armed so, or pauses there for [`PAUSE`].
pub async fn hit(name: &str) {
    let Some(armed) = armed() else {
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
