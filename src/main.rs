//! The `cubbyhole` binary: `operator`, `unwrap`, `doctor`, `uninstall` and `crd`.
#![forbid(unsafe_code)]

use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// jemalloc: under pod churn glibc's allocator kept growing the operator's resident memory
/// (10,000 pods, 10-minute soak: 60.8 -> 68.8 MiB, nothing live growing); jemalloc returns it
/// (61.1 MiB at the start, 59.3 at minute 9).
#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// `--version`: the package version and the commit it was built from (build.rs: 12 hex
/// digits, `-dirty` for a tree with changes, `unknown` without git, e.g. in a Docker build
/// given no `CUBBYHOLE_COMMIT`).
const VERSION: &str = concat!(
    env!("CARGO_PKG_VERSION"),
    " (",
    env!("CUBBYHOLE_COMMIT"),
    ")"
);

/// One response-wrapped Vault token per pod start, delivered in a per-pod Secret.
#[derive(Parser)]
#[command(name = "cubbyhole", version = VERSION, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the operator (controller, metrics and health endpoints).
    Operator(cubbyhole::controller::OperatorArgs),
    /// Unwrap the pod's wrapping token into a 0400 file and leave a receipt (agent side).
    Unwrap(cubbyhole::agent::unwrap::UnwrapArgs),
    /// Check what the operator needs (Vault, its policy, roles, RBAC, webhook), one line each.
    Doctor(cubbyhole::doctor::DoctorArgs),
    /// Before removing the operator: stop it, revoke what it minted, release every finalizer.
    Uninstall(cubbyhole::uninstall::UninstallArgs),
    /// Print the AgentSecretBinding CRD as YAML.
    Crd,
}

#[tokio::main]
async fn main() -> ExitCode {
    match Cli::parse().command {
        Command::Operator(args) => cubbyhole::controller::run(args).await,
        Command::Unwrap(args) => cubbyhole::agent::unwrap::run(args).await,
        Command::Doctor(args) => cubbyhole::doctor::run(args).await,
        Command::Uninstall(args) => cubbyhole::uninstall::run(args).await,
        Command::Crd => {
            print!("{}", cubbyhole::crd::crd_yaml());
            ExitCode::SUCCESS
        }
    }
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    /// `cubbyhole <version> (<commit>)`, the commit as build.rs made it; from git, HEAD's.
    #[test]
    fn version_names_the_package_version_and_the_commit() {
        let version = super::Cli::command().render_version();
        let commit = version
            .trim_end()
            .strip_prefix(concat!("cubbyhole ", env!("CARGO_PKG_VERSION"), " ("))
            .and_then(|rest| rest.strip_suffix(')'))
            .unwrap_or_else(|| panic!("{version:?}"));
        assert!(commit_shaped(commit), "{version:?}");
        if env!("CUBBYHOLE_COMMIT_SOURCE") == "git" {
            let out = std::process::Command::new("git")
                .args(["rev-parse", "--short=12", "HEAD"])
                .current_dir(env!("CARGO_MANIFEST_DIR"))
                .output()
                .unwrap();
            let head = String::from_utf8(out.stdout).unwrap();
            assert_eq!(
                commit.trim_end_matches("-dirty"),
                head.trim(),
                "{version:?}"
            );
        }
    }

    /// 7 to 12 lowercase hex digits, maybe `-dirty`; or `unknown`.
    fn commit_shaped(commit: &str) -> bool {
        let hex = commit.strip_suffix("-dirty").unwrap_or(commit);
        commit == "unknown"
            || ((7..=12).contains(&hex.len())
                && hex
                    .bytes()
                    .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)))
    }

    #[test]
    fn commit_shape() {
        assert!(commit_shaped("0123456789ab"));
        assert!(commit_shaped("0123456789ab-dirty"));
        assert!(commit_shaped("0123456"));
        assert!(commit_shaped("unknown"));
        assert!(!commit_shaped("012345"));
        assert!(!commit_shaped("0123456789AB"));
        assert!(!commit_shaped("0123456789abc"));
        assert!(!commit_shaped(""));
    }
}
