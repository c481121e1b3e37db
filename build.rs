//! Sets `CUBBYHOLE_COMMIT` for `cubbyhole --version`: the build environment's
//! `CUBBYHOLE_COMMIT` if set (a Docker build has no `.git`: `--build-arg CUBBYHOLE_COMMIT=...`),
//! else `git rev-parse --short=12 HEAD` with `-dirty` when `git status --porcelain` lists
//! anything, else `unknown`. Reruns when HEAD moves (a commit, a checkout), not on every edit:
//! `-dirty` tells the state of the tree when HEAD last moved or this file changed.

use std::path::Path;
use std::process::Command;

fn git(args: &[&str]) -> Option<String> {
    let out = Command::new("git").args(args).output().ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
}

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-env-changed=CUBBYHOLE_COMMIT");
    let (commit, source) = match std::env::var("CUBBYHOLE_COMMIT") {
        Ok(given) if !given.trim().is_empty() => {
            let given = given.trim().to_ascii_lowercase();
            // A full SHA (CI's GITHUB_SHA) is shortened like git's.
            if given.len() > 12 && given.chars().all(|c| c.is_ascii_hexdigit()) {
                (given[..12].to_string(), "env")
            } else {
                (given, "env")
            }
        }
        // Only this checkout's own repository (not one the sources happen to sit in).
        _ => match Path::new(".git").exists().then(from_git).flatten() {
            Some(commit) => (commit, "git"),
            None => ("unknown".into(), "none"),
        },
    };
    println!("cargo:rustc-env=CUBBYHOLE_COMMIT={commit}");
    // Where it came from (git, env, none), for the test that checks it against git.
    println!("cargo:rustc-env=CUBBYHOLE_COMMIT_SOURCE={source}");
}

fn from_git() -> Option<String> {
    let head = git(&["rev-parse", "--short=12", "HEAD"])?;
    // HEAD itself, the branch file it points to (or packed-refs once git packed it), and
    // HEAD's reflog (every move of HEAD, a commit to a packed branch too).
    for path in [
        git(&["rev-parse", "--git-path", "HEAD"]),
        git(&["rev-parse", "--git-path", "logs/HEAD"]),
        git(&["symbolic-ref", "-q", "HEAD"]).and_then(|r| git(&["rev-parse", "--git-path", &r])),
        git(&["rev-parse", "--git-path", "packed-refs"]),
    ]
    .into_iter()
    .flatten()
    {
        if Path::new(&path).exists() {
            println!("cargo:rerun-if-changed={path}");
        }
    }
    let dirty = git(&["status", "--porcelain"]).is_some_and(|s| !s.is_empty());
    Some(if dirty { format!("{head}-dirty") } else { head })
}
