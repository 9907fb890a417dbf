//! First-serve milestones (SPEC §6): the first time this node served each model — a chat that
//! recorded a through-mesh sample — kept in `<data dir>/milestones.json` so it survives restarts
//! and is never overwritten by a later serve.

use crate::native::write_atomically;
use crate::proxy::{Recorder, RecorderEvent};
use mesh_core::peer::ModelName;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use tokio::sync::broadcast::error::RecvError;
use tokio::sync::watch;

/// `<data dir>/milestones.json`.
pub const FILE: &str = "milestones.json";

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
struct MilestonesFile {
    /// Model → Unix seconds of its first serve here.
    first_served: BTreeMap<ModelName, u64>,
}

/// This node's first-serve milestones.
#[derive(Debug, Default)]
pub struct Milestones {
    /// `None`: kept in memory only (tests, nodes without a data dir).
    path: Option<PathBuf>,
    state: Mutex<MilestonesFile>,
}

impl Milestones {
    /// Milestones persisted under `data_dir`, starting from what an earlier run recorded.
    pub fn load(data_dir: &Path) -> Milestones {
        let path = data_dir.join(FILE);
        let state = match fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes).unwrap_or_else(|e| {
                tracing::warn!(path = %path.display(), error = %e, "ignoring an unreadable milestones file");
                MilestonesFile::default()
            }),
            Err(e) => {
                if e.kind() != io::ErrorKind::NotFound {
                    tracing::warn!(path = %path.display(), error = %e, "could not read the milestones file");
                }
                MilestonesFile::default()
            }
        };
        Milestones {
            path: Some(path),
            state: Mutex::new(state),
        }
    }

    pub fn in_memory() -> Milestones {
        Milestones::default()
    }

    /// Records `model`'s first serve at `unix_secs` unless it has one. Returns whether this was
    /// the first.
    pub fn record(&self, model: &str, unix_secs: u64) -> bool {
        let mut state = self.lock();
        if state.first_served.contains_key(model) {
            return false;
        }
        state.first_served.insert(model.to_string(), unix_secs);
        tracing::info!(model, first_served_at = unix_secs, "first-serve milestone");
        if let Some(path) = &self.path {
            let json = serde_json::to_vec_pretty(&*state).expect("a map of numbers serialises");
            if let Err(e) = write_atomically(path, &json) {
                tracing::warn!(path = %path.display(), error = %e, "could not write the milestones file");
            }
        }
        true
    }

    /// Model → Unix seconds of its first serve.
    pub fn first_served(&self) -> BTreeMap<ModelName, u64> {
        self.lock().first_served.clone()
    }

    fn lock(&self) -> MutexGuard<'_, MilestonesFile> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Records a milestone for every model's first recorded sample, until `shutdown` turns true.
pub async fn run(
    milestones: Arc<Milestones>,
    recorder: Arc<Recorder>,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut events = recorder.subscribe();
    loop {
        tokio::select! {
            ev = events.recv() => match ev {
                Ok(RecorderEvent::Concluded { model, sample: Some(sample) }) => {
                    milestones.record(&model, sample.at.as_unix_secs());
                }
                Ok(_) => {}
                // Missed events: any model with samples in the window has been served by now.
                Err(RecvError::Lagged(_)) => {
                    let now = recorder.clock().now().as_unix_secs();
                    for model in recorder.summaries().keys() {
                        milestones.record(model, now);
                    }
                }
                Err(RecvError::Closed) => break,
            },
            _ = shutdown.wait_for(|stop| *stop) => break,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_serve_is_kept_across_restarts_and_never_overwritten() {
        let dir = tempfile::tempdir().unwrap();
        let m = Milestones::load(dir.path());
        assert!(m.first_served().is_empty());
        assert!(m.record("Qwen3-8B-Q4_K_M", 1_000));
        assert!(!m.record("Qwen3-8B-Q4_K_M", 2_000));
        assert!(m.record("Qwen3-32B-Q4_K_M", 3_000));

        let again = Milestones::load(dir.path());
        assert_eq!(
            again.first_served(),
            BTreeMap::from([
                ("Qwen3-32B-Q4_K_M".to_string(), 3_000),
                ("Qwen3-8B-Q4_K_M".to_string(), 1_000),
            ])
        );
        assert!(!again.record("Qwen3-8B-Q4_K_M", 5_000));
    }

    #[test]
    fn a_corrupt_file_starts_empty_and_is_replaced() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(dir.path().join(FILE), b"[1,2").unwrap();
        let m = Milestones::load(dir.path());
        assert!(m.first_served().is_empty());
        m.record("m", 9);
        assert_eq!(Milestones::load(dir.path()).first_served()["m"], 9);
    }
}
