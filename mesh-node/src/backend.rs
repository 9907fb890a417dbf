//! The node's local model backends: which models it runs and whether each is routable now.
//!
//! The process supervisor writes these states; the API reads them. The simulator writes them too
//! (a `Ready` upstream whose dialer reaches a simulated llama-server), so it needs no processes.

use crate::dial::Upstream;
use mesh_core::peer::ModelName;
use std::collections::BTreeMap;
use std::sync::{RwLock, RwLockReadGuard, RwLockWriteGuard};

#[derive(Debug, Clone)]
pub enum BackendState {
    /// Launched (or about to be); not answering `/health` yet.
    Loading,
    /// Healthy: chats for the model go here.
    Ready(Upstream),
    /// Exited or failed to come up; restarts after a backoff.
    Restarting { failures: u32 },
    /// Shut down.
    Stopped,
}

impl BackendState {
    pub fn label(&self) -> &'static str {
        match self {
            BackendState::Loading => "loading",
            BackendState::Ready(_) => "ready",
            BackendState::Restarting { .. } => "restarting",
            BackendState::Stopped => "stopped",
        }
    }
}

/// One model as the API sees it.
#[derive(Debug, Clone)]
pub struct BackendView {
    pub model: ModelName,
    /// GGUF size on disk.
    pub size_bytes: u64,
    pub state: BackendState,
}

#[derive(Debug, Default)]
pub struct Backends {
    models: RwLock<BTreeMap<ModelName, BackendView>>,
}

impl Backends {
    pub fn new() -> Self {
        Self::default()
    }

    /// Registers a model this node runs, initially loading.
    pub fn add(&self, model: &str, size_bytes: u64) {
        self.write().insert(
            model.to_string(),
            BackendView {
                model: model.to_string(),
                size_bytes,
                state: BackendState::Loading,
            },
        );
    }

    pub fn set(&self, model: &str, state: BackendState) {
        if let Some(view) = self.write().get_mut(model) {
            view.state = state;
        }
    }

    pub fn get(&self, model: &str) -> Option<BackendView> {
        self.read().get(model).cloned()
    }

    /// Every model, in name order.
    pub fn list(&self) -> Vec<BackendView> {
        self.read().values().cloned().collect()
    }

    fn read(&self) -> RwLockReadGuard<'_, BTreeMap<ModelName, BackendView>> {
        // Writers only replace whole values: a poisoned map is still consistent.
        self.models.read().unwrap_or_else(|p| p.into_inner())
    }

    fn write(&self) -> RwLockWriteGuard<'_, BTreeMap<ModelName, BackendView>> {
        self.models.write().unwrap_or_else(|p| p.into_inner())
    }
}
