//! Carrying out the election's split duties (SPEC §3): the split host's `llama-server` over RPC
//! tunnels, and whether this node's rpc-server runs. The election decides; this only reconciles
//! processes with its latest [`NodeElection`]. Solo duties are [`crate::launcher`]'s.
//!
//! Per model:
//! - `SplitHost` with every worker's rpc-server ready: one [`RpcTunnel`] per worker, then
//!   `llama-server --rpc <tunnel ports> -ngl … --tensor-split …` (layers in proportion to each
//!   member's announced fast memory, host included; `-lv 4` so its log shows where every layer
//!   went). While the workers are not ready yet the model is claimed (`Loading`, so the node
//!   announces itself as a host) with nothing launched;
//! - anything else: no split runs for it (a split whose duty ends is stopped).
//!
//! A split host's chats go through the same [`crate::proxy::ChatProxy`] as a solo host's — the
//! backend is registered in [`Backends`] the same way — so they record through-mesh samples and
//! log the per-request line exactly alike. Whatever runs is announced: [`RunningPipelines`]
//! lists the pipelines whose llama-server is healthy.

use crate::backend::{BackendState, Backends};
use crate::gguf;
use crate::rpc::RpcTunnel;
use crate::supervise::{LlamaSpec, LocalModel, ServerEvent, supervise_llama};
use crate::transport::Transport;
use mesh_core::election::{Duty, NodeElection};
use mesh_core::launch::{Device, NoMmapFlag, Placement, RpcWorker};
use mesh_core::peer::{ModelName, RunningPipeline};
use mesh_core::{MeshView, PeerId};
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

/// Everything launches need besides the duties.
#[derive(Clone)]
pub struct ServingContext {
    pub llama_server: PathBuf,
    pub threads: Option<u32>,
    pub no_mmap: NoMmapFlag,
    /// The machine's device (its backend; split shares use the advertised memory).
    pub device: Device,
    /// The fast memory this node advertises (after `--max-vram-gb`): its share of a split,
    /// as the election counted it.
    pub advertised_memory_bytes: u64,
    pub logs_dir: PathBuf,
    pub run_dir: PathBuf,
    pub models: BTreeMap<ModelName, LocalModel>,
    pub backends: Arc<Backends>,
    pub server_events: Option<mpsc::UnboundedSender<ServerEvent>>,
    /// Split hosts reach their workers through it; without one, splits are never launched.
    pub transport: Option<Arc<dyn Transport>>,
    /// Written with the election's `run_rpc_server` (the rpc-server supervisor reads it).
    pub rpc_wanted: Arc<watch::Sender<bool>>,
    pub pipelines: Arc<RunningPipelines>,
}

/// The pipelines this node hosts, for its announcement.
#[derive(Debug, Default)]
pub struct RunningPipelines(Mutex<BTreeMap<ModelName, RunningPipeline>>);

impl RunningPipelines {
    /// The launched pipelines whose llama-server is healthy now: running, not merely planned.
    pub fn announced(&self, backends: &Backends) -> Vec<RunningPipeline> {
        self.lock()
            .values()
            .filter(|p| {
                backends
                    .get(&p.model)
                    .is_some_and(|b| matches!(b.state, BackendState::Ready(_)))
            })
            .cloned()
            .collect()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<ModelName, RunningPipeline>> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// What runs for one model.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Launch {
    /// Workers with their announced fast memory, in the election's order.
    Split {
        workers: Vec<(PeerId, u64)>,
        total_group_memory: u64,
    },
    /// Elected split host waiting for its workers' rpc-servers: claim, launch nothing.
    Claim,
}

struct Active {
    launch: Launch,
    stop: watch::Sender<bool>,
    task: Option<JoinHandle<()>>,
    _tunnels: Vec<RpcTunnel>,
}

/// What `duty` asks of this node for `model`, given the mesh as it is now.
fn wanted(duty: &Duty, view: &MeshView, can_split: bool) -> Option<Launch> {
    match duty {
        Duty::SplitHost {
            workers,
            total_group_memory,
            workers_ready,
        } => {
            if !(*workers_ready && can_split) {
                return Some(Launch::Claim);
            }
            let with_memory: Option<Vec<(PeerId, u64)>> = workers
                .iter()
                .map(|w| view.get(w).map(|p| (*w, p.announcement.fast_memory_bytes)))
                .collect();
            Some(match with_memory {
                Some(workers) => Launch::Split {
                    workers,
                    total_group_memory: *total_group_memory,
                },
                // A worker left the view between the election and now: wait for the next one.
                None => Launch::Claim,
            })
        }
        // Solo is the solo launcher's; a worker's part is its rpc-server (`run_rpc_server`).
        Duty::Solo { .. }
        | Duty::SplitWorker { .. }
        | Duty::Standby { .. }
        | Duty::Waiting { .. } => None,
    }
}

/// Reconciles processes with the election until `shutdown` turns true; then stops them all.
pub async fn run_duties(
    ctx: ServingContext,
    mut election: watch::Receiver<NodeElection>,
    view: Arc<dyn Fn() -> MeshView + Send + Sync>,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut active: BTreeMap<ModelName, Active> = BTreeMap::new();
    loop {
        let outcome = election.borrow_and_update().clone();
        ctx.rpc_wanted.send_if_modified(|w| {
            let changed = *w != outcome.run_rpc_server;
            *w = outcome.run_rpc_server;
            changed
        });
        reconcile(&ctx, &outcome, &view(), &mut active).await;
        tokio::select! {
            r = election.changed() => if r.is_err() { break },
            _ = shutdown.wait_for(|s| *s) => break,
        }
    }
    for (model, a) in std::mem::take(&mut active) {
        stop(&ctx, &model, a).await;
    }
}

async fn reconcile(
    ctx: &ServingContext,
    outcome: &NodeElection,
    view: &MeshView,
    active: &mut BTreeMap<ModelName, Active>,
) {
    let mut desired: BTreeMap<ModelName, Launch> = BTreeMap::new();
    for (model, duty) in &outcome.duties {
        if !ctx.models.contains_key(model) {
            continue;
        }
        if let Some(l) = wanted(duty, view, ctx.transport.is_some()) {
            desired.insert(model.clone(), l);
        }
    }
    let stale: Vec<ModelName> = active
        .iter()
        .filter(|(m, a)| desired.get(*m) != Some(&a.launch))
        .map(|(m, _)| m.clone())
        .collect();
    for model in stale {
        let a = active.remove(&model).expect("listed from the map");
        tracing::info!(%model, was = ?a.launch, now = ?desired.get(&model), "duty changed: stopping");
        stop(ctx, &model, a).await;
    }
    for (model, launch) in desired {
        if active.contains_key(&model) {
            continue;
        }
        tracing::info!(%model, ?launch, "duty: starting");
        match start(ctx, &model, launch.clone()).await {
            Ok(a) => {
                active.insert(model, a);
            }
            Err(e) => {
                tracing::warn!(%model, error = %e, "could not start the duty; retrying on the next election");
            }
        }
    }
}

async fn start(ctx: &ServingContext, model: &str, launch: Launch) -> std::io::Result<Active> {
    let (stop_tx, stop_rx) = watch::channel(false);
    let local = ctx.models[model].clone();
    let (placement, tunnels, extra_args) = match &launch {
        Launch::Claim => {
            ctx.backends.set(model, BackendState::Loading);
            return Ok(Active {
                launch,
                stop: stop_tx,
                task: None,
                _tunnels: Vec::new(),
            });
        }
        Launch::Split {
            workers,
            total_group_memory,
        } => {
            let transport = ctx
                .transport
                .clone()
                .expect("splits are only wanted with a transport");
            let mut tunnels = Vec::new();
            for (worker, _) in workers {
                tunnels.push(RpcTunnel::open(transport.clone(), *worker).await?);
            }
            let rpc_workers = tunnels
                .iter()
                .zip(workers)
                .map(|(t, (_, memory))| RpcWorker {
                    tunnel_port: t.port,
                    fast_memory_bytes: *memory,
                })
                .collect();
            let layer_count = match gguf::block_count(&local.path) {
                Ok(n) => n,
                Err(e) => {
                    tracing::warn!(model, error = %e, "could not read the GGUF block count: every layer goes to the workers");
                    None
                }
            };
            ctx.pipelines.lock().insert(
                model.to_string(),
                RunningPipeline {
                    model: model.to_string(),
                    workers: workers.iter().map(|(w, _)| *w).collect(),
                    total_group_memory_bytes: *total_group_memory,
                },
            );
            (
                Placement::SplitHost {
                    workers: rpc_workers,
                    layer_count,
                },
                tunnels,
                vec!["-lv".to_string(), "4".to_string()],
            )
        }
    };
    let device = Device {
        backend: ctx.device.backend,
        memory_bytes: ctx.advertised_memory_bytes,
    };
    let spec = LlamaSpec {
        program: ctx.llama_server.clone(),
        model: local,
        device,
        placement,
        threads: ctx.threads,
        no_mmap: ctx.no_mmap,
        logs_dir: ctx.logs_dir.clone(),
        run_dir: ctx.run_dir.clone(),
        events: ctx.server_events.clone(),
        extra_args,
    };
    ctx.backends.set(model, BackendState::Loading);
    let task = tokio::spawn(supervise_llama(spec, ctx.backends.clone(), stop_rx));
    Ok(Active {
        launch,
        stop: stop_tx,
        task: Some(task),
        _tunnels: tunnels,
    })
}

async fn stop(ctx: &ServingContext, model: &str, a: Active) {
    let _ = a.stop.send(true);
    if let Some(task) = a.task {
        let _ = task.await;
    }
    ctx.pipelines.lock().remove(model);
    ctx.backends.set(model, BackendState::Stopped);
    // The tunnels close as `a` drops, after llama-server is gone.
}

#[cfg(test)]
mod tests {
    use super::*;
    use mesh_core::peer::{PeerAnnouncement, Role};
    use mesh_core::{KnownPeer, Timestamp};

    fn id(b: u8) -> PeerId {
        PeerId::from_bytes([b; 32])
    }

    fn view_with(peers: &[(u8, u64)]) -> MeshView {
        let peers = peers
            .iter()
            .map(|&(b, mem)| {
                let mut a = PeerAnnouncement::new(id(b), "m", Role::Worker);
                a.fast_memory_bytes = mem;
                KnownPeer {
                    announcement: a,
                    rtt_ms: Some(1),
                    first_seen: Timestamp::ZERO,
                    last_fresh: Timestamp::ZERO,
                }
            })
            .collect();
        MeshView::new(id(0), peers)
    }

    fn split(workers: Vec<PeerId>, ready: bool) -> Duty {
        Duty::SplitHost {
            workers,
            total_group_memory: 300,
            workers_ready: ready,
        }
    }

    #[test]
    fn a_split_host_claims_until_every_worker_is_ready_then_launches_with_their_memory() {
        let view = view_with(&[(0, 100), (1, 120), (2, 80)]);
        assert_eq!(
            wanted(&split(vec![id(1), id(2)], false), &view, true),
            Some(Launch::Claim)
        );
        assert_eq!(
            wanted(&split(vec![id(1), id(2)], true), &view, true),
            Some(Launch::Split {
                workers: vec![(id(1), 120), (id(2), 80)],
                total_group_memory: 300,
            })
        );
        // No transport, or a worker gone from the view: claim and wait.
        assert_eq!(
            wanted(&split(vec![id(1)], true), &view, false),
            Some(Launch::Claim)
        );
        assert_eq!(
            wanted(&split(vec![id(9)], true), &view, true),
            Some(Launch::Claim)
        );
    }

    #[test]
    fn no_split_runs_for_solo_worker_standby_or_waiting_duties() {
        let view = view_with(&[(0, 100)]);
        for duty in [
            Duty::Solo { spill: true },
            Duty::SplitWorker { host: id(1) },
            Duty::Standby { hosts: vec![id(1)] },
            Duty::Waiting {
                pooled: 1,
                needed: None,
            },
        ] {
            assert_eq!(wanted(&duty, &view, true), None, "{duty:?}");
        }
    }
}
