//! Everything the cluster showed during a test, for the leak scan: `kubectl --watch` of
//! bindings (statuses over time, deleted bindings included), Events of both APIs and Secret
//! metadata (never Secret data), each into a file of the test's directory.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;

/// What is watched, and how it is printed.
const WATCHES: [(&str, &str); 4] = [
    ("agentsecretbindings.cubbyhole.dev", "json"),
    ("events", "json"),
    ("events.events.k8s.io", "json"),
    ("secrets", "jsonpath={.metadata}{\"\\n\"}"),
];

/// The running watchers; stopped on drop.
pub struct Transcript {
    watchers: Mutex<Vec<Child>>,
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
            let err = std::fs::File::create(dir.join(format!("transcript-{kind}.err")))
                .expect("transcript error file");
            let child = Command::new("kubectl")
                .args(["get", kind, "-A", "--watch", "-o", output])
                .env("KUBECONFIG", kubeconfig)
                .stdout(out)
                .stderr(err)
                .stdin(Stdio::null())
                .spawn()
                .expect("start kubectl --watch");
            watchers.push(child);
            files.push(file);
        }
        Transcript {
            watchers: Mutex::new(watchers),
            files,
        }
    }

    /// Panics unless every watcher still runs (one that stopped missed what came after) and
    /// the bindings and Secrets transcripts are non-empty (a test has at least one of each).
    pub fn assert_alive(&self) {
        for (w, (kind, _)) in self.watchers.lock().unwrap().iter_mut().zip(WATCHES) {
            if let Ok(Some(status)) = w.try_wait() {
                let file = self.files[0].with_file_name(format!("transcript-{kind}.err"));
                let err = std::fs::read_to_string(file).unwrap_or_default();
                panic!("the watch of {kind} stopped ({status}): {err}");
            }
        }
        for (file, (kind, _)) in self.files.iter().zip(WATCHES) {
            let empty = std::fs::metadata(file).map_or(true, |m| m.len() == 0);
            let must_show = kind.starts_with("agentsecretbindings") || kind == "secrets";
            assert!(!(must_show && empty), "the watch of {kind} printed nothing");
        }
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
        for w in self.watchers.lock().unwrap().iter_mut() {
            let _ = w.kill();
            let _ = w.wait();
        }
    }
}
