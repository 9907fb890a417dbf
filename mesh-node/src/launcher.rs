//! Launching what the election says: a serving node starts `llama-server` for every configured
//! model its election outcome gives a [`Duty::Solo`], now or later (a standby taking over from a
//! host that went away). Nothing is stopped here: a running host stays in the plan.
//!
//! Split duties (`Duty::SplitHost`, `Duty::SplitWorker`, `run_rpc_server`) are the split
//! launcher's (issue 6); it watches the same [`Mesh::election`](crate::mesh::Mesh::election).

use crate::backend::{BackendState, Backends};
use crate::supervise::{LlamaSpec, LocalModel, supervise_llama};
use mesh_core::election::{Duty, NodeElection};
use mesh_core::peer::ModelName;
use std::collections::BTreeSet;
use std::sync::Arc;
use tokio::sync::watch;
use tokio::task::JoinSet;

/// Builds the launch spec of one model (`spill`: weights partly paged from RAM).
pub type SpecFor = Box<dyn Fn(LocalModel, bool) -> LlamaSpec + Send + Sync>;

/// Which configured models to start now: those with a solo duty, not started yet.
pub fn solo_launches(
    election: &NodeElection,
    configured: &[LocalModel],
    started: &BTreeSet<ModelName>,
) -> Vec<(LocalModel, bool)> {
    configured
        .iter()
        .filter(|m| !started.contains(&m.name))
        .filter_map(|m| match election.duties.get(&m.name) {
            Some(Duty::Solo { spill }) => Some((m.clone(), *spill)),
            _ => None,
        })
        .collect()
}

/// Runs supervisors for the solo duties until `stop`, then waits for every child to stop.
/// Configured models without a solo duty read as stopped (not routable here) until they get one.
pub async fn run_solo_duties(
    configured: Vec<LocalModel>,
    mut election: watch::Receiver<NodeElection>,
    spec_for: SpecFor,
    backends: Arc<Backends>,
    mut stop: watch::Receiver<bool>,
) {
    let mut started: BTreeSet<ModelName> = BTreeSet::new();
    let mut supervisors = JoinSet::new();
    let mut first = true;
    loop {
        let launches = solo_launches(&election.borrow_and_update(), &configured, &started);
        for (model, spill) in launches {
            if spill {
                tracing::warn!(model = %model.name, "model is larger than 1.1 × fast memory: serving it with weights paged from RAM (mmap spill), expect it to be slow");
            }
            tracing::info!(model = %model.name, spill, "election: serving solo; launching llama-server");
            started.insert(model.name.clone());
            supervisors.spawn(supervise_llama(
                spec_for(model, spill),
                backends.clone(),
                stop.clone(),
            ));
        }
        if first {
            first = false;
            for m in configured.iter().filter(|m| !started.contains(&m.name)) {
                tracing::info!(model = %m.name, "election: not serving this model solo here (standby, split or waiting)");
                backends.set(&m.name, BackendState::Stopped);
            }
        }
        tokio::select! {
            changed = election.changed() => if changed.is_err() { break },
            _ = stop.changed() => break,
        }
    }
    let _ = stop.wait_for(|s| *s).await;
    while supervisors.join_next().await.is_some() {}
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;
    use std::path::PathBuf;

    fn model(name: &str) -> LocalModel {
        LocalModel {
            name: name.into(),
            path: PathBuf::from(format!("/m/{name}.gguf")),
            size_bytes: 1,
        }
    }

    fn election(duties: &[(&str, Duty)]) -> NodeElection {
        NodeElection {
            serving_models: vec![],
            duties: duties
                .iter()
                .map(|(m, d)| (m.to_string(), d.clone()))
                .collect(),
            run_rpc_server: false,
            plans: BTreeMap::new(),
        }
    }

    #[test]
    fn only_solo_duties_of_configured_models_not_yet_started_launch() {
        let configured = [model("a"), model("b"), model("c"), model("d")];
        let e = election(&[
            ("a", Duty::Solo { spill: false }),
            ("b", Duty::Solo { spill: true }),
            ("c", Duty::Standby { hosts: vec![] }),
            (
                "d",
                Duty::Waiting {
                    pooled: 0,
                    needed: None,
                },
            ),
            ("not-here", Duty::Solo { spill: false }),
        ]);
        let started = BTreeSet::from(["a".to_string()]);
        let launches = solo_launches(&e, &configured, &started);
        assert_eq!(launches, vec![(model("b"), true)]);
    }
}
