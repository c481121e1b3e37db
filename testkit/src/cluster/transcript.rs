//! Everything the cluster showed during a test, for the leak scan: watches of bindings
//! (statuses over time, deleted bindings included), Events of both APIs and Secret metadata,
//! each written as JSON lines into a file of the test's directory. The Secret watch asks the
//! API server for metadata only, so no Secret data is ever fetched, and a tenant's hundreds of
//! 1 MiB Secrets cost it nothing. The watches run on a thread and runtime of their own, so a test
//! that blocks cannot make them fall behind; a watch the API server closes is resumed (kube's
//! watcher, with back-off) and the error written to its `.err` file.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::thread::JoinHandle;

use cubbyhole::crd::AgentSecretBinding;
use futures::{Stream, StreamExt};
use k8s_openapi::api::core::v1::{Event as CoreEvent, Secret};
use k8s_openapi::api::events::v1::Event;
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::core::PartialObjectMeta;
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client, Config};
use serde::Serialize;
use tokio::sync::watch;

/// What is watched: the name of its files.
pub(super) const WATCHES: [&str; 4] = [
    "agentsecretbindings.cubbyhole.dev",
    "events",
    "events.events.k8s.io",
    "secrets",
];

/// The running watches; stopped on drop.
pub struct Transcript {
    stop: watch::Sender<bool>,
    thread: Option<JoinHandle<()>>,
    files: Vec<PathBuf>,
}

impl Transcript {
    /// Starts the watches across all namespaces, as admin.
    pub fn start(kubeconfig: &Path, dir: &Path) -> Transcript {
        let files: Vec<PathBuf> = WATCHES
            .iter()
            .map(|kind| dir.join(format!("transcript-{kind}.log")))
            .collect();
        let (stop, stopped) = watch::channel(false);
        let kubeconfig = kubeconfig.to_path_buf();
        let paths = files.clone();
        let thread = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("transcript runtime");
            runtime.block_on(watch_all(kubeconfig, paths, stopped));
        });
        Transcript {
            stop,
            thread: Some(thread),
            files,
        }
    }

    /// Panics unless the watches still run (one that stopped missed what came after) and the
    /// Secrets transcript is non-empty.
    pub fn assert_alive(&self) {
        let running = self.thread.as_ref().is_some_and(|t| !t.is_finished());
        assert!(
            running,
            "the transcript's watches stopped: {}",
            self.errors()
        );
        // The record key's Secret exists in every test: an empty Secrets transcript means the
        // watch never delivered (a test may have no binding, so that one may be empty).
        let secrets = std::fs::metadata(&self.files[3]).map_or(0, |m| m.len());
        assert!(secrets > 0, "the watch of Secrets printed nothing");
    }

    /// How many times a watch failed or was closed and was resumed.
    pub fn restarts(&self) -> usize {
        self.errors().lines().count()
    }

    fn errors(&self) -> String {
        self.files
            .iter()
            .map(|f| std::fs::read_to_string(f.with_extension("err")).unwrap_or_default())
            .collect()
    }

    /// The Secret metadata written so far: one `PartialObjectMetadata` per line.
    pub fn secrets(&self) -> String {
        std::fs::read_to_string(&self.files[3]).unwrap_or_default()
    }
}

impl Drop for Transcript {
    fn drop(&mut self) {
        self.stop.send_replace(true);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// Runs every watch until `stop` turns true.
async fn watch_all(kubeconfig: PathBuf, files: Vec<PathBuf>, mut stop: watch::Receiver<bool>) {
    let kc = Kubeconfig::read_from(&kubeconfig).expect("read kubeconfig");
    let config = Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default())
        .await
        .expect("kubeconfig");
    let client = Client::try_from(config).expect("client");
    let wc = watcher::Config::default;
    let all = futures::future::join4(
        record(
            watcher(Api::<AgentSecretBinding>::all(client.clone()), wc()),
            &files[0],
        ),
        record(
            watcher(Api::<CoreEvent>::all(client.clone()), wc()),
            &files[1],
        ),
        record(watcher(Api::<Event>::all(client.clone()), wc()), &files[2]),
        record(
            watcher(Api::<PartialObjectMeta<Secret>>::all(client.clone()), wc())
                .map(|e| e.map(|e| e.modify(|m| m.metadata.managed_fields = None))),
            &files[3],
        ),
    );
    tokio::select! {
        _ = all => {}
        _ = stop.wait_for(|s| *s) => {}
    }
}

/// Writes every object a watch shows as one JSON line into `file`, and every error (the watch
/// is then resumed after a back-off) into `file` with the extension `.err`.
async fn record<K: Serialize + Clone + Send + 'static>(
    stream: impl Stream<Item = Result<watcher::Event<K>, watcher::Error>> + Send,
    file: &Path,
) {
    let mut out = std::fs::File::create(file).expect("transcript file");
    let mut err = std::fs::File::create(file.with_extension("err")).expect("transcript errors");
    let stream = stream.default_backoff();
    futures::pin_mut!(stream);
    while let Some(event) = stream.next().await {
        match event {
            Ok(
                watcher::Event::Apply(o) | watcher::Event::InitApply(o) | watcher::Event::Delete(o),
            ) => {
                let line = serde_json::to_string(&o).expect("an object is JSON");
                let _ = writeln!(out, "{line}");
            }
            Ok(_) => {}
            Err(e) => {
                let _ = writeln!(err, "watch error, resumed: {e}");
            }
        }
    }
}
