//! Everything the cluster showed during a test, for the leak scan: `kubectl --watch` of
//! bindings (statuses over time, deleted bindings included), Events of both APIs and Secret
//! metadata (never Secret data), each into a file of the test's directory.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

/// What is watched, and how it is printed.
const WATCHES: [(&str, &str); 4] = [
    ("agentsecretbindings.cubbyhole.dev", "json"),
    ("events", "json"),
    ("events.events.k8s.io", "json"),
    ("secrets", "jsonpath={.metadata}{\"\\n\"}"),
];

/// The running watchers; stopped on drop.
pub struct Transcript {
    watchers: Vec<Child>,
    files: Vec<PathBuf>,
}

impl Transcript {
    /// Starts one `kubectl get --watch` per kind, across all namespaces, as admin.
    pub fn start(kubeconfig: &Path, dir: &Path) -> Transcript {
        let mut watchers = vec![];
        let mut files = vec![];
        for (kind, output) in WATCHES {
            let file = dir.join(format!("transcript-{kind}.log"));
            let out = std::fs::File::create(&file).expect("transcript file");
            let child = Command::new("kubectl")
                .args(["get", kind, "-A", "--watch", "-o", output])
                .env("KUBECONFIG", kubeconfig)
                .stdout(out)
                .stderr(Stdio::null())
                .stdin(Stdio::null())
                .spawn()
                .expect("start kubectl --watch");
            watchers.push(child);
            files.push(file);
        }
        Transcript { watchers, files }
    }

    /// All that was written so far.
    pub fn text(&self) -> String {
        self.files
            .iter()
            .map(|f| std::fs::read_to_string(f).unwrap_or_default())
            .collect()
    }
}

impl Drop for Transcript {
    fn drop(&mut self) {
        for w in &mut self.watchers {
            let _ = w.kill();
            let _ = w.wait();
        }
    }
}
