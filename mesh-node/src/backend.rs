//! The node's local model backends: which models it runs and whether each is routable now.
//!
//! The process supervisor writes these states; the API reads them. The simulator writes them too
//! (a `Ready` upstream whose dialer reaches a simulated llama-server), so it needs no processes.

use crate::dial::Upstream;
use mesh_core::peer::ModelName;
use std::collections::BTreeMap;
use std::sync::{Mutex, RwLock, RwLockReadGuard, RwLockWriteGuard};
use tokio::sync::mpsc;

/// A launch outcome, as the election's backoff counts them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LaunchEvent {
    /// The model's llama-server came up healthy.
    Ready(ModelName),
    /// It exited or failed to come up; the supervisor restarts it after a backoff.
    Failed(ModelName),
}

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
    events: Mutex<Option<mpsc::UnboundedSender<LaunchEvent>>>,
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
        let event = match &state {
            BackendState::Ready(_) => Some(LaunchEvent::Ready(model.to_string())),
            BackendState::Restarting { .. } => Some(LaunchEvent::Failed(model.to_string())),
            BackendState::Loading | BackendState::Stopped => None,
        };
        if let Some(view) = self.write().get_mut(model) {
            view.state = state;
        }
        if let Some(event) = event
            && let Some(tx) = &*self.events.lock().unwrap_or_else(|p| p.into_inner())
        {
            let _ = tx.send(event);
        }
    }

    /// Launch outcomes from now on (one subscriber: a later call replaces the earlier one).
    pub fn launch_events(&self) -> mpsc::UnboundedReceiver<LaunchEvent> {
        let (tx, rx) = mpsc::unbounded_channel();
        *self.events.lock().unwrap_or_else(|p| p.into_inner()) = Some(tx);
        rx
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ready_and_restarting_are_launch_events_loading_and_stopped_are_not() {
        let backends = Backends::new();
        backends.add("m", 1);
        let mut events = backends.launch_events();
        backends.set("m", BackendState::Loading);
        backends.set("m", BackendState::Restarting { failures: 1 });
        backends.set("m", BackendState::Stopped);
        assert_eq!(events.try_recv(), Ok(LaunchEvent::Failed("m".into())));
        assert!(events.try_recv().is_err(), "nothing else happened");
    }
}
