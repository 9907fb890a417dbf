//! Launching what the election says: a serving node starts `llama-server` for every configured
//! model its election outcome gives a [`Duty::Solo`], now or later (a standby taking over from a
//! host that went away). A healthy server is never stopped here (a running host stays in the
//! plan); one still loading or restarting whose duty moved elsewhere (another host claimed
//! the model first, or launch failures benched this node) is stopped, and starts again if the
//! duty comes back.
//!
//! Split duties (`Duty::SplitHost`, `Duty::SplitWorker`, `run_rpc_server`) are the split
//! launcher's (issue 6); it watches the same [`Mesh::election`](crate::mesh::Mesh::election).

use crate::backend::{BackendState, BackendView, Backends};
use crate::supervise::{LlamaSpec, LocalModel, supervise_llama};
use mesh_core::election::{Duty, NodeElection};
use mesh_core::peer::ModelName;
use std::collections::{BTreeMap, BTreeSet};
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

/// Which started models to stop: no solo duty any more, and not serving (a healthy server keeps
/// its place in the plan, so it is never stopped for a plan change).
pub fn solo_stops(
    election: &NodeElection,
    started: &BTreeSet<ModelName>,
    backend: impl Fn(&str) -> Option<BackendView>,
) -> Vec<ModelName> {
    started
        .iter()
        .filter(|m| !matches!(election.duties.get(*m), Some(Duty::Solo { .. })))
        .filter(|m| !backend(m).is_some_and(|b| matches!(b.state, BackendState::Ready(_))))
        .cloned()
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
    // Each supervisor's own stop: the node's, or its duty moving away.
    let mut stops: BTreeMap<ModelName, watch::Sender<bool>> = BTreeMap::new();
    let mut supervisors = JoinSet::new();
    let mut first = true;
    loop {
        let current = election.borrow_and_update().clone();
        for model in solo_stops(&current, &started, |m| backends.get(m)) {
            tracing::info!(%model, "election: the solo duty moved elsewhere before this server came up; stopping it");
            if let Some(tx) = stops.remove(&model) {
                let _ = tx.send(true);
            }
            started.remove(&model);
        }
        let launches = solo_launches(&current, &configured, &started);
        for (model, spill) in launches {
            if spill {
                tracing::warn!(model = %model.name, "model is larger than 1.1 × fast memory: serving it with weights paged from RAM (mmap spill), expect it to be slow");
            }
            tracing::info!(model = %model.name, spill, "election: serving solo; launching llama-server");
            started.insert(model.name.clone());
            let (own_tx, own_rx) = watch::channel(false);
            stops.insert(model.name.clone(), own_tx);
            supervisors.spawn(supervise_llama(
                spec_for(model, spill),
                backends.clone(),
                own_rx,
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
    for tx in stops.values() {
        let _ = tx.send(true);
    }
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

    #[test]
    fn a_launch_whose_duty_moved_away_stops_unless_it_already_serves() {
        let e = election(&[
            ("kept", Duty::Solo { spill: false }),
            ("moved-loading", Duty::Standby { hosts: vec![] }),
        ]);
        let started = BTreeSet::from([
            "kept".to_string(),
            "moved-loading".to_string(),
            "moved-serving".to_string(),
            "moved-restarting".to_string(),
        ]);
        let state = |m: &str| {
            let state = match m {
                "moved-serving" => BackendState::Ready(crate::dial::Upstream::tcp(
                    "127.0.0.1:1".parse().unwrap(),
                    None,
                )),
                "moved-restarting" => BackendState::Restarting { failures: 2 },
                _ => BackendState::Loading,
            };
            Some(BackendView {
                model: m.to_string(),
                size_bytes: 1,
                state,
            })
        };
        assert_eq!(
            solo_stops(&e, &started, state),
            vec!["moved-loading".to_string(), "moved-restarting".to_string()]
        );
    }
}
