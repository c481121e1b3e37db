//! Crash points for the end-to-end tests: `CUBBYHOLE_FAILPOINT=<name>` makes the operator abort
//! at that line, so a test can prove recovery from a kill at the worst moment. Unset in
//! production, where [`hit`] is a cheap no-op.

/// Aborts the process (as SIGKILL would end it) when the failpoint `name` is armed.
pub fn hit(name: &str) {
    static ARMED: std::sync::OnceLock<Option<String>> = std::sync::OnceLock::new();
    let armed = ARMED.get_or_init(|| std::env::var("CUBBYHOLE_FAILPOINT").ok());
    if armed.as_deref() == Some(name) {
        eprintln!("failpoint {name}: aborting");
        std::process::abort();
    }
}
