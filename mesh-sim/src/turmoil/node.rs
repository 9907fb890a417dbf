//! One scenario peer as a turmoil host: mesh-node's own parts wired as `mesh-node serve` (and,
//! for an entry, `mesh-node entry`) wires them, with the simulated transport, simulated
//! llama-servers instead of processes, and the node's data dir on disk (so a restarted node
//! rejoins from `mesh.json` and keeps its cached native baselines, as a real one does).
//!
//! Real mesh-node code: [`Mesh`] (gossip driver, membership, election), the tunnel
//! ([`TunnelListener`] serving [`api::router`] with the backend [`ChatProxy`] and its
//! [`Recorder`]), the native-baseline collector ([`native::run`]), the first-serve milestones,
//! [`own_announcement`], and for entries [`Entry`] (SLA gate, fallback decision, router, the
//! demand it announces, the audit loop, and — for an entry that serves — chats to itself) on
//! [`entry::router`]. Simulated here: what the process supervisors do (start a llama-server for
//! each solo or split-host duty, poll its `/health`, mark it routable) and the split workers'
//! rpc-servers (an RPC tunnel stream each worker holds open while the election wants it; when it
//! breaks the host's llama-server fails, as a real one does when an RPC backend goes).

use super::llama::{self, LlamaConfig, LlamaServer};
use super::net::{API_PORT, Listener, loopback_upstream};
use super::transport::{Links, SimTransport};
use super::{Shared, lock, sim_now, stamp};
use crate::decode;
use crate::profile::{self, Device, PlacementKind, Serving};
use crate::rng::SimRng;
use crate::scenario::Behaviour;
use axum::body::Body;
use axum::http::{HeaderValue, Response};
use futures::future::BoxFuture;
use mesh_core::election::{Duty, NodeElection};
use mesh_core::launch::{Placement, RpcWorker};
use mesh_core::peer::{NativeBaseline, PeerAnnouncement, Role, RttHint, RunningPipeline};
use mesh_core::samples::Summary;
use mesh_core::sla::{self, EntryMeasurements, Evaluation, FallbackConfig, FallbackDecision};
use mesh_core::status::StatusPayload;
use mesh_core::status::{ByModel, VerifyEntry, VerifyVerdict};
use mesh_core::verify::{AuditConfig, AuditOutput};
use mesh_core::{MeshView, PeerId};
use mesh_node::api::{self, NodeApi};
use mesh_node::audit::AuditTally;
use mesh_node::backend::{BackendState, Backends};
use mesh_node::clock::Clock;
use mesh_node::dial::{BoxIo, Upstream};
use mesh_node::entry::{self, Entry, EntrySettings, Fallback};
use mesh_node::facts::Measurements;
use mesh_node::local_status::{NodeInfo, own_announcement};
use mesh_node::mesh::{ContentSource, Mesh, MeshOptions};
use mesh_node::milestones::{self, Milestones};
use mesh_node::native::{self, NativeSettings};
use mesh_node::proxy::{ChatProxy, Recorder};
use mesh_node::supervise::{LocalModel, ServerEvent};
use mesh_node::transport::{Inbound, StreamKind, Transport, rtt_ms};
use mesh_node::tunnel::TunnelListener;
use mesh_node::{http_serve, rpc};
use serde_json::{Map, Value};
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;
use tokio::io::AsyncReadExt;
use tokio::sync::{broadcast, mpsc, watch};
use tokio::task::{JoinHandle, JoinSet};

/// How much more fast memory than it has an `inflate_memory` peer announces.
pub const MEMORY_INFLATION: f64 = 2.0;
/// How much better than measured an `inflate_timings` peer says it is.
pub const TIMING_INFLATION: f64 = 1.5;
/// The port of a node's first llama-server (one port per model, in scenario order).
const LLAMA_PORT: u16 = 8080;
/// How often a launch's `/health` is polled (the supervisor's pace).
const HEALTH_POLL: Duration = Duration::from_millis(200);
/// After a split host's llama-server failed, it is started again this much later if the
/// election still wants it.
const RELAUNCH_AFTER: Duration = Duration::from_secs(5);
/// Entries note the peers their router could use this often (crash-removal figures).
const TARGETS_EVERY: Duration = Duration::from_millis(100);
/// RTT hints a node announces: its nearest connected contributors.
const RTT_HINTS: usize = 16;

/// What a node shows the world once a virtual second.
#[derive(Debug, Clone)]
pub(crate) struct Snapshot {
    pub view: MeshView,
    pub election: NodeElection,
    /// Its non-stale members and itself, sorted.
    pub members: Vec<PeerId>,
    /// Models its llama-servers serve now (healthy).
    pub hosted: Vec<String>,
    /// Pipelines it hosts (healthy): model and workers.
    pub pipelines: Vec<(String, Vec<PeerId>)>,
    /// Its own through-mesh window, as it publishes it.
    pub published: BTreeMap<String, Summary>,
    pub native: Vec<NativeBaseline>,
    /// Its `/api/status` (the entry's, on an entry).
    pub status: StatusPayload,
    pub entry: Option<EntrySnapshot>,
    pub gossip_sent: u64,
    pub gossip_received: u64,
    pub bad_signatures: u64,
}

#[derive(Debug, Clone)]
pub(crate) struct EntrySnapshot {
    pub measurements: EntryMeasurements,
    /// The SLA gate's evaluation of every scenario model, as a chat now would get it.
    pub sla: BTreeMap<String, Evaluation>,
    /// What its audit loop did per (peer, model), and the `verify_by_model` rows it shows.
    pub audits: BTreeMap<(PeerId, String), AuditTally>,
    pub verify: BTreeMap<PeerId, ByModel<VerifyEntry>>,
}

struct NodeLinks {
    sh: Arc<Shared>,
    p: usize,
}

impl Links for NodeLinks {
    fn link(&self, to: &PeerId) -> Option<(f64, Duration)> {
        let q = *self.sh.index.get(to)?;
        let links = lock(&self.sh.links);
        let rtt = Duration::from_secs_f64(2.0 * links.one_way_ms(self.p, q) / 1e3);
        Some((links.loss(self.p, q), rtt))
    }
}

/// The software of peer `p`'s host: runs until the world tells it to leave (or crashes it).
pub(crate) async fn software(sh: Arc<Shared>, p: usize) -> anyhow::Result<()> {
    let slot = &sh.nodes[p];
    let spec = sh.spec(p).clone();
    let incarnation = slot
        .incarnation
        .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    let mut rng = SimRng::derive(sh.seed, "node", ((p as u64) << 32) ^ incarnation);
    let clock = Clock::starting_at(stamp(sim_now()));
    let me = sh.ids[p];
    let transport = SimTransport::bind(
        &spec.name,
        sh.keys[p],
        sh.transport.clone(),
        Arc::new(NodeLinks { sh: sh.clone(), p }),
        slot.traffic.clone(),
        rng.next_u64(),
    )
    .await?;
    let dyn_transport: Arc<dyn Transport> = Arc::new(transport.clone());

    let backends = Arc::new(Backends::new());
    let models_dir = slot.data_dir.join("models");
    std::fs::create_dir_all(&models_dir)?;
    for m in &spec.serve {
        let size = sh.model(m).map_or(0, |(_, i)| i.size_bytes);
        backends.add(m, size);
        backends.set(m, BackendState::Stopped);
        let path = models_dir.join(format!("{m}.gguf"));
        if !path.exists() {
            std::fs::write(&path, b"")?;
        }
    }
    let recorder = Arc::new(Recorder::new(clock));
    let measurements = Measurements {
        native: Arc::default(),
        milestones: Arc::new(Milestones::load(&slot.data_dir)),
    };
    let info = NodeInfo {
        node_id: me,
        mesh_id: String::new(),
        hostname: spec.name.clone(),
        backend: spec.backend,
        gpu_name: spec.gpu_name.clone().unwrap_or_default(),
        fast_memory_bytes: super::announced_memory(&spec),
        system_ram_bytes: (spec.system_ram_gb * 1e9) as u64,
        http_port: API_PORT,
    };
    let pipelines: Arc<Mutex<BTreeMap<String, RunningPipeline>>> = Arc::default();
    // An entry announces the demand it measures (as `mesh-node entry` does) once it exists.
    let entry_slot: Arc<OnceLock<Arc<Entry>>> = Arc::default();
    let content: ContentSource = if spec.contributes() {
        let entry_slot = entry_slot.clone();
        let (info, backends, recorder) = (info.clone(), backends.clone(), recorder.clone());
        let (measurements, pipelines) = (measurements.clone(), pipelines.clone());
        let (sh, transport, spec) = (sh.clone(), transport.clone(), spec.clone());
        Arc::new(move || {
            let list = backends.list();
            let mut a = own_announcement(&info, &list, &measurements.facts(&recorder));
            // Every contributor runs an rpc-server in the simulation (as in the other engine).
            a.rpc_ready = Some(true);
            a.mem_bandwidth_gbps = spec.mem_bandwidth_gbps;
            a.pipelines = lock(&pipelines)
                .values()
                .filter(|r| {
                    list.iter()
                        .any(|b| b.model == r.model && matches!(b.state, BackendState::Ready(_)))
                })
                .cloned()
                .collect();
            a.rtt_hints = rtt_hints(&sh, &transport);
            if spec.behaviour == Behaviour::InflateTimings {
                for t in &mut a.model_timings {
                    t.tps_p50 *= TIMING_INFLATION;
                    t.ttft_ms_p50 /= TIMING_INFLATION;
                }
            }
            if let Some(e) = entry_slot.get() {
                a.demand = e.demand(clock.now());
            }
            a
        })
    } else {
        let hostname = spec.name.clone();
        let entry_slot = entry_slot.clone();
        Arc::new(move || {
            let mut a = PeerAnnouncement::new(me, String::new(), Role::Client);
            a.hostname.clone_from(&hostname);
            if let Some(e) = entry_slot.get() {
                a.demand = e.demand(clock.now());
            }
            a
        })
    };
    let join = if incarnation == 0 {
        lock(&slot.invite).clone()
    } else {
        None
    };
    let mut options = MeshOptions::new(&slot.data_dir, join, rng.next_u64());
    options.gossip = sh.gossip.clone();
    let (mesh, tunnels) = Mesh::start(dyn_transport.clone(), clock, sh.keys[p], options, content)
        .await
        .map_err(|e| anyhow::anyhow!("{e}"))?;

    let (stop_tx, stop_rx) = watch::channel(false);
    let mut tasks = JoinSet::new();
    let mut api_state = None;
    if spec.contributes() {
        let api_state_ = Arc::new(NodeApi {
            info: NodeInfo {
                mesh_id: mesh.mesh_id().to_string(),
                ..info.clone()
            },
            backends: backends.clone(),
            proxy: ChatProxy::new(recorder.clone()),
            measurements: measurements.clone(),
            tiers: sh.sla.catalog.clone(),
            mesh: Some(mesh.clone()),
        });
        // Members' HTTP tunnels reach this node's own API, as on a real host.
        tasks.spawn(http_serve::serve(
            TunnelListener::new(tunnels.http, me),
            api::router(api_state_.clone()),
            stopped(stop_rx.clone()),
        ));
        if !spec.is_entry() {
            let listener = Listener::bind(API_PORT).await?;
            tasks.spawn(http_serve::serve(
                listener,
                api::router(api_state_.clone()),
                stopped(stop_rx.clone()),
            ));
        }
        let (server_tx, server_rx) = mpsc::unbounded_channel();
        tasks.spawn(native::run(
            NativeSettings {
                settle: mesh_core::baseline::BaselineConfig::new("", spec.backend).settle,
                file_poll: native::FILE_POLL,
                runtime_version: format!("mesh-sim {} turmoil", env!("CARGO_PKG_VERSION")),
                backend: spec.backend,
                data_dir: slot.data_dir.clone(),
                seed: rng.next_u64(),
            },
            server_rx,
            recorder.clone(),
            measurements.native.clone(),
            stop_rx.clone(),
        ));
        tasks.spawn(milestones::run(
            measurements.milestones.clone(),
            recorder.clone(),
            stop_rx.clone(),
        ));
        let launcher = Launcher {
            sh: sh.clone(),
            p,
            clock,
            backends: backends.clone(),
            events: server_tx,
            pipelines: pipelines.clone(),
            transport: dyn_transport.clone(),
            rng: SimRng::derive(sh.seed, "launches", ((p as u64) << 32) ^ incarnation),
            models_dir,
            running: BTreeMap::new(),
        };
        tasks.spawn(launcher.run(mesh.election(), stop_rx.clone()));
        tasks.spawn(rpc_worker(tunnels.rpc, mesh.election()));
        api_state = Some(api_state_);
    } else {
        // A client-only node: tunnels are refused by nobody listening.
        drop(tunnels);
    }
    let entry_state = if spec.is_entry() {
        let route = mesh_core::routing::RouteConfig::default();
        let settings = EntrySettings {
            first_byte_timeout: route.first_byte_timeout(),
            route,
            sla: sh.sla.clone(),
            ..EntrySettings::default()
        };
        let fallback: Option<Arc<dyn Fallback>> = spec.fallback.then(|| {
            Arc::new(SimFallback {
                config: FallbackConfig {
                    api_key_configured: true,
                    ..FallbackConfig::default()
                },
            }) as Arc<dyn Fallback>
        });
        let entry = Entry::new(mesh.clone(), settings, fallback);
        // An entry that also serves routes chats to itself and takes its own llama-servers as
        // the audits' ground truth, as `mesh-node entry --model` does.
        if let Some(api) = &api_state {
            entry.serve_locally(api.clone(), stop_rx.clone());
        }
        let audit = entry
            .start_audit(
                audit_config(&sh),
                SimRng::derive(sh.seed, "audit", ((p as u64) << 32) ^ incarnation).next_u64(),
                stop_rx.clone(),
            )
            .map_err(|e| anyhow::anyhow!("the scenario's [verify]: {e}"))?;
        tasks.spawn(check_audits(sh.clone(), p, audit.subscribe()));
        let _ = entry_slot.set(entry.clone());
        let listener = Listener::bind(API_PORT).await?;
        tasks.spawn(http_serve::serve(
            listener,
            entry::router(entry.clone()),
            stopped(stop_rx.clone()),
        ));
        tasks.spawn(watch_targets(sh.clone(), p, entry.clone()));
        Some(entry)
    } else {
        None
    };
    tasks.spawn(observe(
        sh.clone(),
        p,
        Observed {
            mesh: mesh.clone(),
            backends: backends.clone(),
            recorder: recorder.clone(),
            measurements: measurements.clone(),
            pipelines: pipelines.clone(),
            api: api_state,
            entry: entry_state,
        },
    ));

    let mut leave = slot.leave.subscribe();
    let _ = leave.wait_for(|l| *l).await;
    tracing::info!(node = %spec.name, "leaving the mesh");
    mesh.shutdown().await;
    let _ = stop_tx.send(true);
    let _ = tokio::time::timeout(Duration::from_secs(5), async {
        while tasks.join_next().await.is_some() {}
    })
    .await;
    Ok(())
}

async fn stopped(mut stop: watch::Receiver<bool>) {
    let _ = stop.wait_for(|s| *s).await;
}

/// The node's nearest connected contributors by measured RTT (what it announces for split
/// planning on others' views).
fn rtt_hints(sh: &Shared, transport: &SimTransport) -> Vec<RttHint> {
    let mut near: Vec<RttHint> = transport
        .connected()
        .into_iter()
        .filter(|(id, _)| sh.index.get(id).is_some_and(|&q| sh.spec(q).contributes()))
        .map(|(peer, rtt)| RttHint {
            peer,
            rtt_ms: rtt_ms(rtt),
        })
        .collect();
    near.sort_by_key(|h| (h.rtt_ms, h.peer));
    near.truncate(RTT_HINTS);
    near
}

// ---- launching what the election says ----

#[derive(Debug, Clone, PartialEq)]
enum Launch {
    Solo {
        spill: bool,
    },
    Split {
        workers: Vec<PeerId>,
        total_group_memory: u64,
    },
    /// An elected split host waiting for its workers' rpc-servers: claimed, nothing runs.
    Claim,
}

struct Running {
    launch: Launch,
    /// `None` while claiming, or after the server failed (until relaunched).
    server: Option<LlamaServer>,
    watcher: Option<JoinHandle<()>>,
    failures: u32,
    /// After a failure, not started again before this.
    retry_at: Option<tokio::time::Instant>,
}

impl Drop for Running {
    fn drop(&mut self) {
        if let Some(w) = self.watcher.take() {
            w.abort();
        }
    }
}

/// The simulated process supervisors: mesh-node's launcher and split launcher rules (solo
/// duties are launched and never stopped; a split runs while its duty stays the same) with
/// simulated llama-servers.
struct Launcher {
    sh: Arc<Shared>,
    p: usize,
    clock: Clock,
    backends: Arc<Backends>,
    events: mpsc::UnboundedSender<ServerEvent>,
    pipelines: Arc<Mutex<BTreeMap<String, RunningPipeline>>>,
    transport: Arc<dyn Transport>,
    rng: SimRng,
    models_dir: std::path::PathBuf,
    running: BTreeMap<String, Running>,
}

impl Launcher {
    async fn run(
        mut self,
        mut election: watch::Receiver<NodeElection>,
        mut stop: watch::Receiver<bool>,
    ) {
        let (failed_tx, mut failed_rx) = mpsc::unbounded_channel::<String>();
        let mut retry = tokio::time::interval(RELAUNCH_AFTER);
        retry.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let outcome = election.borrow_and_update().clone();
            self.reconcile(&outcome, &failed_tx).await;
            tokio::select! {
                biased;
                _ = stop.wait_for(|s| *s) => break,
                changed = election.changed() => if changed.is_err() { break },
                Some(model) = failed_rx.recv() => self.failed(&model),
                _ = retry.tick() => {}
            }
        }
        for model in self.running.keys().cloned().collect::<Vec<_>>() {
            self.stop(&model);
        }
    }

    fn wanted(&self, outcome: &NodeElection) -> BTreeMap<String, Launch> {
        let spec = self.sh.spec(self.p);
        let mut out = BTreeMap::new();
        for model in &spec.serve {
            let launch = match outcome.duties.get(model) {
                Some(Duty::Solo { spill }) => Launch::Solo { spill: *spill },
                Some(Duty::SplitHost {
                    workers,
                    total_group_memory,
                    workers_ready,
                }) => {
                    if *workers_ready {
                        Launch::Split {
                            workers: workers.clone(),
                            total_group_memory: *total_group_memory,
                        }
                    } else {
                        Launch::Claim
                    }
                }
                _ => continue,
            };
            out.insert(model.clone(), launch);
        }
        out
    }

    async fn reconcile(&mut self, outcome: &NodeElection, failed: &mpsc::UnboundedSender<String>) {
        let wanted = self.wanted(outcome);
        let stale: Vec<String> = self
            .running
            .iter()
            // A running solo host stays (mesh-node's launcher never stops one).
            .filter(|(m, r)| {
                !matches!(r.launch, Launch::Solo { .. }) && wanted.get(*m) != Some(&r.launch)
            })
            .map(|(m, _)| m.clone())
            .collect();
        for model in stale {
            tracing::info!(%model, "duty changed: stopping");
            self.stop(&model);
        }
        for (model, launch) in wanted {
            match self.running.get(&model) {
                Some(r) if r.server.is_some() || r.launch == Launch::Claim => continue,
                Some(r) if r.retry_at.is_some_and(|t| tokio::time::Instant::now() < t) => continue,
                // Failed earlier and due again, or never started.
                Some(_) | None => {}
            }
            let failures = self.running.get(&model).map_or(0, |r| r.failures);
            self.start(&model, launch, failures, failed).await;
        }
    }

    fn failed(&mut self, model: &str) {
        let Some(r) = self.running.get_mut(model) else {
            return;
        };
        tracing::warn!(model, "llama-server failed (an RPC backend went away)");
        r.server = None;
        if let Some(w) = r.watcher.take() {
            w.abort();
        }
        r.failures += 1;
        r.retry_at = Some(tokio::time::Instant::now() + RELAUNCH_AFTER);
        lock(&self.pipelines).remove(model);
        self.backends.set(
            model,
            BackendState::Restarting {
                failures: r.failures,
            },
        );
        let _ = self.events.send(ServerEvent::Stopped {
            model: model.to_string(),
        });
    }

    fn stop(&mut self, model: &str) {
        if self.running.remove(model).is_some() {
            lock(&self.pipelines).remove(model);
            self.backends.set(model, BackendState::Stopped);
            let _ = self.events.send(ServerEvent::Stopped {
                model: model.to_string(),
            });
        }
    }

    fn device(&self) -> Device {
        Device::from_peer(self.sh.spec(self.p))
    }

    fn pipeline(&self, workers: &[PeerId], model: &profile::Model) -> Serving {
        let links = lock(&self.sh.links);
        let ws: Vec<(Device, profile::Link)> = workers
            .iter()
            .filter_map(|w| self.sh.index.get(w))
            .map(|&w| (Device::from_peer(self.sh.spec(w)), links.link(self.p, w)))
            .collect();
        drop(links);
        profile::pipeline(&self.device(), &ws, model)
    }

    async fn start(
        &mut self,
        model: &str,
        launch: Launch,
        failures: u32,
        failed: &mpsc::UnboundedSender<String>,
    ) {
        let Some((index, info)) = self.sh.model(model) else {
            return;
        };
        let physics = info.physics.clone();
        let size_bytes = info.size_bytes;
        let mut running = Running {
            launch: launch.clone(),
            server: None,
            watcher: None,
            failures,
            retry_at: None,
        };
        let (serving, placement, tethers) = match &launch {
            Launch::Claim => {
                tracing::info!(
                    model,
                    "elected split host: claiming until the workers are ready"
                );
                self.backends.set(model, BackendState::Loading);
                self.running.insert(model.to_string(), running);
                return;
            }
            Launch::Solo { spill } => {
                let device = self.device();
                (
                    profile::solo(&device, &physics),
                    Placement::Solo { spill: *spill },
                    Vec::new(),
                )
            }
            Launch::Split {
                workers,
                total_group_memory,
            } => {
                let mut tethers = Vec::new();
                for w in workers {
                    match self.transport.open(*w, StreamKind::Rpc).await {
                        Ok(s) => tethers.push(s),
                        Err(e) => {
                            tracing::warn!(model, worker = %w, error = %e, "cannot reach a worker's rpc-server; retrying");
                            running.failures += 1;
                            running.retry_at = Some(tokio::time::Instant::now() + RELAUNCH_AFTER);
                            self.backends.set(
                                model,
                                BackendState::Restarting {
                                    failures: running.failures,
                                },
                            );
                            self.running.insert(model.to_string(), running);
                            return;
                        }
                    }
                }
                lock(&self.pipelines).insert(
                    model.to_string(),
                    RunningPipeline {
                        model: model.to_string(),
                        workers: workers.clone(),
                        total_group_memory_bytes: *total_group_memory,
                    },
                );
                let placement = Placement::SplitHost {
                    workers: workers
                        .iter()
                        .enumerate()
                        .map(|(i, w)| RpcWorker {
                            tunnel_port: 50_000 + i as u16,
                            fast_memory_bytes: self
                                .sh
                                .index
                                .get(w)
                                .map_or(0, |&q| super::announced_memory(self.sh.spec(q))),
                        })
                        .collect(),
                    layer_count: Some(physics.layers),
                };
                (self.pipeline(workers, &physics), placement, tethers)
            }
        };
        lock(&self.sh.nodes[self.p].placements).insert(model.to_string(), serving.kind);
        let spec = self.sh.spec(self.p);
        let workers: Vec<PeerId> = match &launch {
            Launch::Split { workers, .. } => workers.clone(),
            _ => Vec::new(),
        };
        let (traffic, probes) = llama::backings(spec.behaviour, &serving, |m| {
            if workers.is_empty() {
                profile::solo(&self.device(), m)
            } else {
                self.pipeline(&workers, m)
            }
        });
        let load_gb = serving
            .stages
            .iter()
            .map(|s| s.residency.fast_gb + s.residency.ram_gb + s.residency.disk_gb)
            .fold(0.0, f64::max);
        let api_key = format!("{:016x}{:016x}", self.rng.next_u64(), self.rng.next_u64());
        let config = LlamaConfig {
            model: model.to_string(),
            behaviour: spec.behaviour,
            backend: spec.backend,
            traffic,
            probes,
            slots: spec
                .max_inflight
                .unwrap_or(mesh_core::launch::PARALLEL_SLOTS) as usize,
            api_key: api_key.clone(),
            load: Duration::from_secs_f64(profile::LAUNCH_S + load_gb / profile::LOAD_GBPS),
            seed: self.rng.next_u64(),
            clock: self.clock,
        };
        let port = LLAMA_PORT + index as u16;
        self.backends.set(model, BackendState::Loading);
        let server = match LlamaServer::start(config, port).await {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(model, error = %e, "could not start the simulated llama-server");
                running.failures += 1;
                running.retry_at = Some(tokio::time::Instant::now() + RELAUNCH_AFTER);
                self.running.insert(model.to_string(), running);
                return;
            }
        };
        let upstream = loopback_upstream(port, Some(api_key));
        let local = LocalModel {
            name: model.to_string(),
            path: self.models_dir.join(format!("{model}.gguf")),
            size_bytes,
        };
        running.server = Some(server);
        running.watcher = Some(tokio::spawn(supervise(
            upstream,
            local,
            placement,
            self.backends.clone(),
            self.events.clone(),
            tethers,
            failed.clone(),
        )));
        tracing::info!(model, ?launch, "launched a simulated llama-server");
        self.running.insert(model.to_string(), running);
    }
}

/// Waits for the server's `/health`, marks it routable, then watches its RPC backends (a split
/// host's tunnels to its workers): when one breaks, the server has failed.
async fn supervise(
    upstream: Upstream,
    model: LocalModel,
    placement: Placement,
    backends: Arc<Backends>,
    events: mpsc::UnboundedSender<ServerEvent>,
    tethers: Vec<BoxIo>,
    failed: mpsc::UnboundedSender<String>,
) {
    loop {
        tokio::time::sleep(HEALTH_POLL).await;
        if matches!(upstream.get_status("/health").await, Ok(200)) {
            break;
        }
    }
    backends.set(&model.name, BackendState::Ready(upstream.clone()));
    let name = model.name.clone();
    let _ = events.send(ServerEvent::Ready {
        model,
        upstream,
        placement,
    });
    if tethers.is_empty() {
        return;
    }
    let watches = tethers.into_iter().map(|mut s| {
        Box::pin(async move {
            let mut buf = [0u8; 64];
            loop {
                match s.read(&mut buf).await {
                    Ok(0) | Err(_) => return,
                    Ok(_) => {}
                }
            }
        })
    });
    futures::future::select_all(watches).await;
    let _ = failed.send(name);
}

/// The split worker's side: RPC tunnel streams are accepted only from the hosts this node's
/// election serves layers for (mesh-node's rule), and held open while it still does.
async fn rpc_worker(
    mut streams: mpsc::Receiver<Inbound>,
    mut election: watch::Receiver<NodeElection>,
) {
    let mut held: Vec<(PeerId, JoinHandle<()>)> = Vec::new();
    loop {
        tokio::select! {
            biased;
            changed = election.changed() => {
                if changed.is_err() {
                    return;
                }
                let allowed = rpc::allowed_rpc_hosts(&election.borrow());
                held.retain(|(host, task)| {
                    let keep = allowed.contains(host) && !task.is_finished();
                    if !keep {
                        task.abort();
                    }
                    keep
                });
            }
            inbound = streams.recv() => {
                let Some(inbound) = inbound else { return };
                let allowed = rpc::allowed_rpc_hosts(&election.borrow());
                if !allowed.contains(&inbound.peer) {
                    tracing::warn!(peer = %inbound.peer, "refused an RPC tunnel from a peer that is not this node's split host");
                    continue;
                }
                let mut stream = inbound.stream;
                held.push((inbound.peer, tokio::spawn(async move {
                    let mut buf = [0u8; 64];
                    while let Ok(n) = stream.read(&mut buf).await {
                        if n == 0 {
                            return;
                        }
                    }
                })));
            }
        }
    }
}

// ---- the external provider of an entry with `fallback = true` ----

/// A stand-in for the external OpenAI-compatible provider: answers every chat at once with a
/// short stream (its speed is not what a scenario studies).
struct SimFallback {
    config: FallbackConfig,
}

impl Fallback for SimFallback {
    fn config(&self) -> &FallbackConfig {
        &self.config
    }

    fn chat(
        &self,
        decision: &FallbackDecision,
        _request: Map<String, Value>,
    ) -> BoxFuture<'static, Response<Body>> {
        let model = decision.provider_model.clone().unwrap_or_default();
        Box::pin(async move {
            tokio::time::sleep(Duration::from_millis(300)).await;
            let chunk = serde_json::json!({
                "object": "chat.completion.chunk",
                "model": model,
                "choices": [{"index": 0, "delta": {"content": "ok"}, "finish_reason": "stop"}],
            });
            let usage = serde_json::json!({
                "object": "chat.completion.chunk",
                "choices": [],
                "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2},
            });
            let body = format!("data: {chunk}\n\ndata: {usage}\n\ndata: [DONE]\n\n");
            let mut r = Response::new(Body::from(body));
            r.headers_mut().insert(
                axum::http::header::CONTENT_TYPE,
                HeaderValue::from_static("text/event-stream"),
            );
            r
        })
    }
}

// ---- what the world sees ----

struct Observed {
    mesh: Arc<Mesh>,
    backends: Arc<Backends>,
    recorder: Arc<Recorder>,
    measurements: Measurements,
    pipelines: Arc<Mutex<BTreeMap<String, RunningPipeline>>>,
    api: Option<Arc<NodeApi>>,
    entry: Option<Arc<Entry>>,
}

/// Publishes the node's snapshot on every whole virtual second.
async fn observe(sh: Arc<Shared>, p: usize, o: Observed) {
    loop {
        let now = sim_now();
        let every = super::SNAPSHOT_EVERY.as_micros();
        let next = (now.as_micros() / every + 1) * every;
        tokio::time::sleep(Duration::from_micros((next - now.as_micros()) as u64)).await;
        let snapshot = snapshot(&sh, &o);
        *lock(&sh.nodes[p].snapshot) = Some(snapshot);
    }
}

fn snapshot(sh: &Shared, o: &Observed) -> Snapshot {
    let view = o.mesh.view();
    let (members, stats) = {
        let g = o.mesh.gossip().lock();
        let mut members: Vec<PeerId> = g
            .peer_ids()
            .filter(|id| g.peer(id).is_some_and(|i| !i.stale))
            .collect();
        members.push(g.me());
        members.sort();
        (members, g.stats().clone())
    };
    let list = o.backends.list();
    let hosted = list
        .iter()
        .filter(|b| matches!(b.state, BackendState::Ready(_)))
        .map(|b| b.model.clone())
        .collect::<Vec<_>>();
    let pipelines = lock(&o.pipelines)
        .values()
        .filter(|r| hosted.contains(&r.model))
        .map(|r| (r.model.clone(), r.workers.clone()))
        .collect();
    let status = match (&o.entry, &o.api) {
        (Some(e), _) => e.status(),
        (None, Some(api)) => api.status(),
        (None, None) => {
            mesh_core::status::status_payload(&view, &mesh_core::status::LocalFacts::default())
                .expect("a view holds this node's own announcement")
        }
    };
    let entry = o.entry.as_ref().map(|e| {
        let measurements = e.measurements();
        let now = o.recorder.clock().now();
        let sla = sh
            .models
            .iter()
            .map(|m| {
                (
                    m.name.clone(),
                    sla::evaluate(&m.name, &view, &measurements, now, &sh.sla),
                )
            })
            .collect();
        let audit = e.audit();
        EntrySnapshot {
            measurements,
            sla,
            audits: audit.map(|a| a.tally()).unwrap_or_default(),
            verify: audit.map(|a| a.verify(&view)).unwrap_or_default(),
        }
    });
    Snapshot {
        election: o.mesh.election().borrow().clone(),
        members,
        hosted,
        pipelines,
        published: o.recorder.summaries(),
        native: o.measurements.native.get(),
        status,
        entry,
        gossip_sent: stats.messages_sent,
        gossip_received: stats.messages_received,
        bad_signatures: stats.bad_signature,
        view,
    }
}

/// The entry's audit configuration from the scenario's `[verify]`.
fn audit_config(sh: &Shared) -> AuditConfig {
    sh.sc
        .verify
        .audit_config(sh.models.iter().map(|m| m.name.as_str()))
}

/// The safety checkers on the entry's verdicts and demotions: none may accuse an honest peer.
async fn check_audits(sh: Arc<Shared>, p: usize, mut events: broadcast::Receiver<AuditOutput>) {
    loop {
        let out = match events.recv().await {
            Ok(out) => out,
            Err(broadcast::error::RecvError::Lagged(n)) => {
                tracing::error!(node = p, missed = n, "audit checker lagged");
                continue;
            }
            Err(broadcast::error::RecvError::Closed) => return,
        };
        let (peer, model, mismatch) = match &out {
            AuditOutput::Verdict { peer, model, entry } => {
                (peer, model, Some(entry.verdict == VerifyVerdict::Mismatch))
            }
            AuditOutput::Demoted { peer, model, .. } => (peer, model, None),
            _ => continue,
        };
        let Some(&q) = sh.index.get(peer) else {
            continue;
        };
        let spec = sh.spec(q);
        let honest = decode::serves_advertised_model(spec.behaviour);
        let at = sim_now();
        let mut checker = lock(&sh.checker);
        match mismatch {
            Some(mismatch) => checker.verdict(at, &spec.name, model, mismatch, honest),
            None => checker.demoted(at, &spec.name, model, honest),
        }
    }
}

/// Notes the peers an entry could route chats to now: dialable hosts routing some model.
async fn watch_targets(sh: Arc<Shared>, p: usize, entry: Arc<Entry>) {
    loop {
        tokio::time::sleep(TARGETS_EVERY).await;
        let view = entry.mesh().view();
        let targets = view
            .peers
            .iter()
            .filter(|k| k.id() != view.me && k.rtt_ms.is_some() && k.announcement.is_host())
            .filter(|k| !k.announcement.hosted_models.is_empty())
            .map(|k| k.id())
            .collect();
        *lock(&sh.nodes[p].targets) = targets;
    }
}

/// The placement a peer's launch of `model` had, for the report.
pub(crate) fn placement_of(sh: &Shared, p: usize, model: &str) -> Option<PlacementKind> {
    lock(&sh.nodes[p].placements).get(model).copied()
}
