//! The turmoil engine (`--engine turmoil`): every scenario peer is a turmoil host
//! running mesh-node's real code — the gossip driver and election ([`mesh_node::mesh::Mesh`]),
//! the HTTP tunnel, the backend proxy and its samples ([`mesh_node::proxy`]), the native-baseline
//! collector, the entry's SLA gate and router ([`mesh_node::entry`]) and the API — over a
//! [`Transport`](mesh_node::transport::Transport) on turmoil TCP ([`transport`]), with a
//! simulated llama-server per hosted model ([`llama`]). Traffic clients are turmoil clients
//! sending real HTTP to the entry ([`traffic`]).
//!
//! The world ([`World`]) owns the turmoil `Sim` and steps it tick by tick in virtual time:
//! peers join (each through an invite minted by a live member, as an operator would mint one),
//! scenario events become turmoil faults (crash, bounce, partition and repair, per-link latency)
//! and the transport's loss model. Nodes publish what they see ([`node::Snapshot`], once a
//! virtual second) for the checkers and, at the end, for the report.
//!
//! **Determinism**: one master seed derives every random choice — node keys (the same as the
//! discrete-event engine's), link delays (ditto), invites, each node's gossip, transport and
//! baseline seeds, llama-server jitter, traffic, and turmoil's own generator — and the whole
//! world runs on one thread (each host's runtime is a current-thread runtime stepped in turn).
//!
//! **Entries** run mesh-node's [`Entry`](mesh_node::entry::Entry) as `mesh-node entry` does:
//! an entry that also serves models routes chats to itself in-process and announces the demand
//! it measures, and its audit loop ([`mesh_node::audit`]) probes its peers through the chat path
//! with its own simulated llama-server as ground truth; each peer's simulated server answers as
//! its behaviour says ([`crate::decode`]). Verdicts go to the checkers as they happen and to the
//! report from the entry's tally and `verify_by_model`.
//!
//! **What it cannot run** (the discrete-event engine runs these): scenarios above [`MAX_PEERS`]
//! peers. `tests/engines.rs` lists every replay by engine.
//!
//! **Scale**: turmoil steps every host each tick and visits every link of every host, so a step
//! costs O(hosts × links) = O(n³) and a virtual hour is 3.6 million steps at the 1 ms tick.
//! Scenarios above [`MAX_PEERS`] peers are refused (use `--engine des`); `mesh-sim bench
//! --engine turmoil` finds how many peers run one virtual hour in a minute.

mod llama;
mod net;
mod node;
mod report;
mod traffic;
pub mod transport;

use crate::check::{Checker, Liveness};
pub(crate) use crate::des::Life;
use crate::net::Network;
use crate::profile::{Model, PlacementKind};
use crate::rng::SimRng;
use crate::scenario::{EventKind, PeerSpec, Scenario};
use crate::timeline::Timeline;
use crate::{EngineStats, Outcome};
use mesh_core::election::Demand;
use mesh_core::gossip::{self as mg, SecretKey};
use mesh_core::invite::{self, DEFAULT_TTL, Invite};
use mesh_core::sla::SlaConfig;
use mesh_core::{PeerId, Timestamp};
use mesh_node::mesh::MeshFile;
use node::Snapshot;
use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;
use tokio::sync::watch;
use transport::{Traffic, TransportConfig};

/// Virtual time per turmoil step. Network deliveries land on step boundaries; timers inside a
/// host fire at their exact instants.
pub const TICK: Duration = Duration::from_millis(1);
/// The largest scenario the engine takes (see the module docs on scale).
pub const MAX_PEERS: usize = 40;
/// The mesh id every simulated mesh has (as in the discrete-event engine).
pub const MESH_ID: &str = "sim";
/// Nodes publish their snapshot this often, on whole multiples of it.
pub const SNAPSHOT_EVERY: Duration = Duration::from_secs(1);
/// The liveness phase looks for convergence this often.
const LIVENESS_CHECK: Duration = Duration::from_secs(5);

/// Why a turmoil run could not complete.
#[derive(Debug, thiserror::Error)]
pub enum TurmoilError {
    #[error(
        "{peers} peers is more than the turmoil engine runs ({MAX_PEERS}): its step costs grow with the cube of the peer count; use `--engine des`"
    )]
    TooLarge { peers: usize },
    #[error("creating the nodes' data dirs: {0}")]
    DataDir(std::io::Error),
    #[error("the simulation failed at {at_s:.3} s: {reason}")]
    Sim { at_s: f64, reason: String },
}

/// How a turmoil run is set up (beyond the scenario).
#[derive(Debug, Clone, PartialEq)]
pub struct TurmoilOptions {
    pub tick: Duration,
    /// Refuse scenarios above this many peers.
    pub max_peers: usize,
}

impl Default for TurmoilOptions {
    fn default() -> Self {
        TurmoilOptions {
            tick: TICK,
            max_peers: MAX_PEERS,
        }
    }
}

/// Runs `scenario` to its end with master seed `seed`.
pub fn run_outcome(
    scenario: &Scenario,
    seed: u64,
    all_statuses: bool,
    progress: Option<&mut dyn FnMut(f64, f64)>,
    options: &TurmoilOptions,
) -> Result<Outcome, TurmoilError> {
    if scenario.peers.len() > options.max_peers {
        return Err(TurmoilError::TooLarge {
            peers: scenario.peers.len(),
        });
    }
    let data = tempfile::Builder::new()
        .prefix("mesh-sim-turmoil-")
        .tempdir()
        .map_err(TurmoilError::DataDir)?;
    let shared = Arc::new(Shared::new(
        scenario,
        seed,
        data.path().to_path_buf(),
        options,
    )?);
    let mut world = World::new(shared, options);
    world.run(progress)?;
    let report = world.report();
    let statuses = world.statuses(all_statuses);
    let derived = world.derived_options();
    world.liveness_phase()?;
    let mut report = report;
    report.checks = lock(&world.shared.checker).finish(world.since_start());
    let timeline = Timeline {
        models: world.shared.models.iter().map(|m| m.name.clone()).collect(),
        chats: lock(&world.shared.chats).timeline.clone(),
        spreads: Vec::new(),
    };
    let stats = EngineStats {
        events: world.steps,
        elections: 0,
        gossip_inputs: world.gossip_received(),
    };
    // The hosts go before the data dirs they write to.
    drop(world);
    drop(data);
    Ok(Outcome {
        report,
        statuses,
        timeline,
        derived,
        stats,
    })
}

pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Virtual time since the start of the run, inside a host.
pub(crate) fn sim_now() -> Duration {
    ::turmoil::sim_elapsed().unwrap_or_default()
}

/// The virtual instant `d` after the start as a [`Timestamp`] (runs start at the epoch 0, as in
/// the discrete-event engine).
pub(crate) fn stamp(d: Duration) -> Timestamp {
    Timestamp::from_micros(d.as_micros() as u64)
}

pub(crate) struct ModelInfo {
    pub name: String,
    pub size_bytes: u64,
    pub physics: Model,
}

/// What the world and the hosts share (hosts hold it in their software closures).
pub(crate) struct Shared {
    pub seed: u64,
    pub sc: Scenario,
    pub models: Vec<ModelInfo>,
    pub ids: Vec<PeerId>,
    pub keys: Vec<[u8; 32]>,
    pub index: BTreeMap<PeerId, usize>,
    pub links: Mutex<Network>,
    /// What the report's plan weighs: the scenario's traffic per model (as in the discrete-event
    /// engine). The nodes' own elections weigh the demand entries measure and announce.
    pub demand: BTreeMap<String, Demand>,
    pub sla: SlaConfig,
    pub gossip: mg::Config,
    pub transport: TransportConfig,
    pub nodes: Vec<Slot>,
    pub checker: Mutex<Checker>,
    pub chats: Mutex<traffic::Chats>,
    /// Traffic clients send new chats while this holds (off in the liveness phase).
    pub traffic_on: AtomicBool,
}

/// One scenario peer's place in the world, across its restarts.
pub(crate) struct Slot {
    pub data_dir: PathBuf,
    pub incarnation: AtomicU64,
    /// The invite of its first start (a restart reads its data dir, as a real node does).
    pub invite: Mutex<Option<Invite>>,
    pub inviter: Mutex<Option<usize>>,
    /// Set to make the node leave the mesh and stop.
    pub leave: watch::Sender<bool>,
    pub snapshot: Mutex<Option<Snapshot>>,
    pub traffic: Arc<Traffic>,
    /// How it laid out each model it ever launched.
    pub placements: Mutex<BTreeMap<String, PlacementKind>>,
    /// Entries: the peers their router could send chats to, as of the last look.
    pub targets: Mutex<BTreeSet<PeerId>>,
    /// Gossip messages (sent, received, bad signatures) of its earlier incarnations.
    pub gossip_carry: Mutex<[u64; 3]>,
}

impl Shared {
    fn new(
        sc: &Scenario,
        seed: u64,
        data: PathBuf,
        options: &TurmoilOptions,
    ) -> Result<Shared, TurmoilError> {
        let _ = options;
        let models = sc
            .models
            .iter()
            .map(|m| ModelInfo {
                name: m.name.clone(),
                size_bytes: (m.size_gb * 1e9).round() as u64,
                physics: Model::from_spec(m),
            })
            .collect();
        let mut ids = Vec::new();
        let mut keys = Vec::new();
        for i in 0..sc.peers.len() {
            // The same derivation as the discrete-event engine: the same seed names the same ids.
            let mut key_rng = SimRng::derive(seed, "key", i as u64);
            let mut key = [0u8; 32];
            for chunk in key.chunks_mut(8) {
                chunk.copy_from_slice(&key_rng.next_u64().to_le_bytes());
            }
            ids.push(SecretKey::from_bytes(key).peer_id());
            keys.push(key);
        }
        let index = ids.iter().enumerate().map(|(i, id)| (*id, i)).collect();
        let demand = sc.demand();
        let catalog = sc.tier_catalog();
        let mut gossip = mesh_node::mesh::node_gossip_config();
        let g = &sc.gossip;
        if let Some(v) = g.tick_s {
            gossip.tick_interval = Duration::from_secs_f64(v);
        }
        if let Some(v) = g.heartbeat_s {
            gossip.heartbeat_interval = Duration::from_secs_f64(v);
        }
        if let Some(v) = g.anti_entropy_peers {
            gossip.anti_entropy_peers = v;
        }
        if let Some(v) = g.rumor_fanout {
            gossip.rumor_fanout = v;
        }
        if let Some(v) = g.heartbeat_fanout {
            gossip.heartbeat_fanout = v;
        }
        let mut transport = TransportConfig::default();
        if let Some(ms) = g.connection_timeout_ms {
            transport.idle_timeout = Duration::from_secs_f64(ms / 1e3);
        }
        let mut nodes = Vec::new();
        for p in &sc.peers {
            let dir = data.join(&p.name);
            std::fs::create_dir_all(&dir).map_err(TurmoilError::DataDir)?;
            nodes.push(Slot {
                data_dir: dir,
                incarnation: AtomicU64::new(0),
                invite: Mutex::new(None),
                inviter: Mutex::new(None),
                leave: watch::channel(false).0,
                snapshot: Mutex::new(None),
                traffic: Arc::default(),
                placements: Mutex::default(),
                targets: Mutex::default(),
                gossip_carry: Mutex::default(),
            });
        }
        Ok(Shared {
            seed,
            sc: sc.clone(),
            models,
            ids,
            keys,
            index,
            links: Mutex::new(Network::new(seed, &sc.network, sc.peers.len())),
            demand,
            sla: SlaConfig {
                catalog,
                ..SlaConfig::default()
            },
            gossip,
            transport,
            nodes,
            checker: Mutex::new(Checker::new()),
            chats: Mutex::new(traffic::Chats::new(sc.models.len())),
            traffic_on: AtomicBool::new(true),
        })
    }

    pub fn spec(&self, p: usize) -> &PeerSpec {
        &self.sc.peers[p]
    }

    pub fn model(&self, name: &str) -> Option<(usize, &ModelInfo)> {
        self.models.iter().enumerate().find(|(_, m)| m.name == name)
    }

    pub fn name_of(&self, id: &PeerId) -> String {
        self.index
            .get(id)
            .map_or_else(|| id.short(), |&i| self.sc.peers[i].name.clone())
    }

    /// The peer whose short id is `short` (what `x-closedmesh-peer` carries).
    pub fn by_short(&self, short: &str) -> Option<usize> {
        self.ids.iter().position(|id| id.short() == short)
    }
}

/// A scheduled world action.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Action {
    Join(usize),
    Event(usize),
}

/// The turmoil world: the `Sim`, the agenda of joins and faults, the checkers' clock.
pub(crate) struct World<'a> {
    shared: Arc<Shared>,
    sim: ::turmoil::Sim<'a>,
    tick: Duration,
    life: Vec<Life>,
    registered: Vec<bool>,
    up_since: Vec<Duration>,
    /// Traffic client hosts by traffic source.
    clients: Vec<String>,
    agenda: Vec<(Duration, Action)>,
    next_action: usize,
    invites: SimRng,
    steps: u64,
    /// Crashes of peers some entry routed to: (peer, at, removed after).
    crashes: Vec<(usize, Duration, Option<Duration>)>,
    /// Gossip bytes and node-seconds at the half-way mark, and node-seconds so far.
    half: Option<(u64, f64)>,
    node_seconds: f64,
}

impl<'a> World<'a> {
    fn new(shared: Arc<Shared>, options: &TurmoilOptions) -> Self {
        let sc = &shared.sc;
        let mut builder = ::turmoil::Builder::new();
        builder
            .rng_seed(SimRng::derive(shared.seed, "turmoil", 0).next_u64())
            .tick_duration(options.tick)
            .simulation_duration(Duration::from_secs(u64::MAX / 4))
            .min_message_latency(Duration::ZERO)
            .max_message_latency(Duration::ZERO)
            .epoch(std::time::UNIX_EPOCH)
            .tcp_capacity(1 << 16);
        let sim = builder.build();
        let mut agenda: Vec<(Duration, Action)> = Vec::new();
        for (i, p) in sc.peers.iter().enumerate() {
            agenda.push((secs(p.join_at_s), Action::Join(i)));
        }
        for (i, e) in sc.events.iter().enumerate() {
            agenda.push((secs(e.at_s), Action::Event(i)));
        }
        agenda.sort();
        let n = sc.peers.len();
        let invites = SimRng::derive(shared.seed, "invites", 0);
        let mut world = World {
            sim,
            tick: options.tick,
            life: vec![Life::NotJoined; n],
            registered: vec![false; n],
            up_since: vec![Duration::ZERO; n],
            clients: Vec::new(),
            agenda,
            next_action: 0,
            invites,
            steps: 0,
            crashes: Vec::new(),
            half: None,
            node_seconds: 0.0,
            shared,
        };
        for t in 0..world.shared.sc.traffic.len() {
            let name = format!("client-{t}");
            let shared = world.shared.clone();
            world.sim.client(name.clone(), traffic::client(shared, t));
            world.clients.push(name);
        }
        world
    }

    fn since_start(&self) -> Duration {
        self.sim.elapsed()
    }

    /// Steps the world to its end: joins and events on time, checks every virtual second.
    fn run(&mut self, mut progress: Option<&mut dyn FnMut(f64, f64)>) -> Result<(), TurmoilError> {
        let end = secs(self.shared.sc.duration_s);
        let half = end / 2;
        let mut next_check = Duration::ZERO;
        let mut next_progress = Duration::ZERO;
        // One tick past the end, so snapshots taken at the end instant are in.
        while self.sim.elapsed() <= end {
            self.apply_due();
            self.step()?;
            let now = self.sim.elapsed();
            if now >= next_check {
                self.check(now);
                next_check = now + SNAPSHOT_EVERY;
            }
            if self.half.is_none() && now >= half {
                self.half = Some((self.gossip_bytes(), self.node_seconds));
            }
            if let Some(p) = progress.as_deref_mut()
                && now >= next_progress
            {
                p(now.as_secs_f64(), end.as_secs_f64());
                next_progress = now + Duration::from_secs(10);
            }
        }
        if let Some(p) = progress {
            p(end.as_secs_f64(), end.as_secs_f64());
        }
        Ok(())
    }

    fn step(&mut self) -> Result<(), TurmoilError> {
        self.sim.step().map_err(|e| TurmoilError::Sim {
            at_s: self.sim.elapsed().as_secs_f64(),
            reason: e.to_string(),
        })?;
        self.steps += 1;
        let live = self.life.iter().filter(|l| **l == Life::Up).count();
        self.node_seconds += live as f64 * self.tick.as_secs_f64();
        Ok(())
    }

    fn apply_due(&mut self) {
        let now = self.sim.elapsed();
        while let Some(&(at, action)) = self.agenda.get(self.next_action) {
            if at > now {
                break;
            }
            self.next_action += 1;
            match action {
                Action::Join(p) => self.join(p),
                Action::Event(i) => self.event(i),
            }
        }
    }

    fn host_name(&self, p: usize) -> String {
        self.shared.sc.peers[p].name.clone()
    }

    /// Registers peer `p`'s host (its software starts at once) and its links.
    fn register(&mut self, p: usize) {
        let shared = self.shared.clone();
        self.sim.host(self.host_name(p), move || {
            let shared = shared.clone();
            async move {
                node::software(shared, p)
                    .await
                    .map_err(|e| -> Box<dyn std::error::Error> { e.to_string().into() })
            }
        });
        self.registered[p] = true;
        let links = lock(&self.shared.links).clone();
        for q in 0..self.registered.len() {
            if q == p || !self.registered[q] {
                continue;
            }
            let d = Duration::from_secs_f64(links.one_way_ms(p, q) / 1e3);
            self.sim
                .set_link_latency(self.host_name(p), self.host_name(q), d);
            if !links.reachable(p, q) {
                self.sim.partition(self.host_name(p), self.host_name(q));
            }
        }
        for c in &self.clients {
            self.sim
                .set_link_latency(self.host_name(p), c.as_str(), Duration::ZERO);
        }
    }

    fn join(&mut self, p: usize) {
        let now = self.sim.elapsed();
        let live: Vec<usize> = (0..self.life.len())
            .filter(|&q| q != p && self.life[q] == Life::Up)
            .collect();
        let slot = &self.shared.nodes[p];
        if live.is_empty() {
            // The founder: its data dir says it runs mesh `sim` (a fresh node would draw an id).
            let file = MeshFile {
                mesh_id: MESH_ID.into(),
                invite: None,
                dial_info: transport::SimTransport::dial_info_of(
                    &self.shared.ids[p],
                    &self.host_name(p),
                ),
                members: BTreeMap::new(),
            };
            if let Err(e) = file.save(&slot.data_dir) {
                tracing::error!(error = %e, "cannot write the founder's mesh.json");
            }
        } else {
            let q = live[(self.invites.next_u64() % live.len() as u64) as usize];
            let ttl = DEFAULT_TTL.max(Duration::from_secs_f64(
                self.shared.sc.duration_s + self.shared.sc.check.liveness_s + 3600.0,
            ));
            let dial =
                transport::SimTransport::dial_info_of(&self.shared.ids[q], &self.host_name(q));
            let mut rng = self.invites.pcg();
            let inv = invite::mint(
                &SecretKey::from_bytes(self.shared.keys[q]),
                MESH_ID,
                dial.into_bytes(),
                ttl,
                stamp(now),
                &mut rng,
            );
            *lock(&slot.invite) = Some(inv);
            *lock(&slot.inviter) = Some(q);
        }
        self.life[p] = Life::Up;
        self.up_since[p] = now;
        self.register(p);
    }

    fn event(&mut self, i: usize) {
        let now = self.sim.elapsed();
        let ev = self.shared.sc.events[i].clone();
        let peers: Vec<usize> = ev
            .peers
            .iter()
            .filter_map(|n| self.shared.sc.peer_index(n))
            .collect();
        match ev.kind {
            EventKind::Crash => {
                for &p in &peers {
                    if self.life[p] != Life::Up {
                        continue;
                    }
                    let routed = self.shared.nodes.iter().enumerate().any(|(e, slot)| {
                        self.shared.spec(e).is_entry()
                            && self.life[e] == Life::Up
                            && lock(&slot.targets).contains(&self.shared.ids[p])
                    });
                    if routed {
                        self.crashes.push((p, now, None));
                    }
                    self.carry_gossip(p);
                    self.sim.crash(self.host_name(p));
                    self.life[p] = Life::Crashed;
                }
            }
            EventKind::Restart => {
                for &p in &peers {
                    if self.life[p] == Life::Up {
                        continue;
                    }
                    if !self.registered[p] {
                        self.join(p);
                        continue;
                    }
                    self.carry_gossip(p);
                    self.shared.nodes[p].leave.send_replace(false);
                    self.sim.bounce(self.host_name(p));
                    self.life[p] = Life::Up;
                    self.up_since[p] = now;
                }
            }
            EventKind::Leave => {
                for &p in &peers {
                    if self.life[p] == Life::Up {
                        self.shared.nodes[p].leave.send_replace(true);
                        self.life[p] = Life::Left;
                    }
                }
            }
            EventKind::Partition => {
                lock(&self.shared.links).partition(&peers);
                self.apply_partitions();
            }
            EventKind::Heal => {
                lock(&self.shared.links).heal(&peers);
                self.apply_partitions();
            }
            EventKind::SetLatency => {
                let range = ev
                    .latency_ms
                    .map_or(self.shared.sc.network.latency_ms, |l| l.range());
                lock(&self.shared.links).set_latency(&peers, range, ev.loss);
                let links = lock(&self.shared.links).clone();
                for a in 0..self.registered.len() {
                    for b in a + 1..self.registered.len() {
                        if self.registered[a] && self.registered[b] {
                            let d = Duration::from_secs_f64(links.one_way_ms(a, b) / 1e3);
                            self.sim
                                .set_link_latency(self.host_name(a), self.host_name(b), d);
                        }
                    }
                }
            }
        }
    }

    /// Makes turmoil's links match the partition groups.
    fn apply_partitions(&mut self) {
        let links = lock(&self.shared.links).clone();
        for a in 0..self.registered.len() {
            for b in a + 1..self.registered.len() {
                if !(self.registered[a] && self.registered[b]) {
                    continue;
                }
                if links.reachable(a, b) {
                    self.sim.repair(self.host_name(a), self.host_name(b));
                } else {
                    self.sim.partition(self.host_name(a), self.host_name(b));
                }
            }
        }
    }

    /// Keeps the gossip counts of `p`'s incarnation that is about to end.
    fn carry_gossip(&self, p: usize) {
        let slot = &self.shared.nodes[p];
        if let Some(s) = lock(&slot.snapshot).take() {
            let mut carry = lock(&slot.gossip_carry);
            carry[0] += s.gossip_sent;
            carry[1] += s.gossip_received;
            carry[2] += s.bad_signatures;
        }
    }

    fn gossip_bytes(&self) -> u64 {
        self.shared
            .nodes
            .iter()
            .map(|s| s.traffic.gossip_bytes.load(Ordering::Relaxed))
            .sum()
    }

    fn gossip_counts(&self) -> [u64; 3] {
        let mut total = [0u64; 3];
        for slot in &self.shared.nodes {
            let carry = *lock(&slot.gossip_carry);
            let snap = lock(&slot.snapshot);
            let now = snap.as_ref().map_or([0; 3], |s| {
                [s.gossip_sent, s.gossip_received, s.bad_signatures]
            });
            for i in 0..3 {
                total[i] += carry[i] + now[i];
            }
        }
        total
    }

    fn gossip_received(&self) -> u64 {
        self.gossip_counts()[1]
    }

    /// The safety checkers on the nodes' latest snapshots, and crash-removal watches.
    fn check(&mut self, now: Duration) {
        let sh = self.shared.clone();
        let mut checker = lock(&sh.checker);
        let mut pipelines: Vec<(String, String, Vec<String>)> = Vec::new();
        for p in 0..self.life.len() {
            if self.life[p] != Life::Up {
                continue;
            }
            let snap = lock(&sh.nodes[p].snapshot);
            let Some(s) = snap.as_ref() else {
                continue;
            };
            let name = sh.spec(p).name.clone();
            for (model, plan) in &s.election.plans {
                if matches!(plan, mesh_core::election::Plan::Split { .. }) {
                    let capable = self.capable_of(p, model, now);
                    checker.split_planned(
                        now,
                        &name,
                        model,
                        capable.as_ref().map(|(n, d)| (n.as_str(), *d)),
                    );
                } else {
                    checker.no_split_planned(&name, model);
                }
            }
            for (model, workers) in &s.pipelines {
                pipelines.push((
                    name.clone(),
                    model.clone(),
                    workers.iter().map(|w| sh.name_of(w)).collect(),
                ));
            }
        }
        let running: Vec<(&str, &str, Vec<&str>)> = pipelines
            .iter()
            .map(|(h, m, w)| {
                (
                    h.as_str(),
                    m.as_str(),
                    w.iter().map(String::as_str).collect(),
                )
            })
            .collect();
        checker.pipelines(now, &running);
        drop(checker);
        for c in &mut self.crashes {
            if c.2.is_some() {
                continue;
            }
            let id = sh.ids[c.0];
            let still = sh.nodes.iter().enumerate().any(|(e, slot)| {
                sh.spec(e).is_entry()
                    && self.life[e] == Life::Up
                    && lock(&slot.targets).contains(&id)
            });
            if !still {
                c.2 = Some(now.saturating_sub(c.1));
            }
        }
    }

    /// The earliest-up live peer `p` can reach that serves `model` and holds it solo (by its
    /// real fast memory), with how long it has been up.
    fn capable_of(&self, p: usize, model: &str, now: Duration) -> Option<(String, Duration)> {
        let (_, info) = self.shared.model(model)?;
        let need = mesh_core::election::min_vram_for_solo(info.size_bytes)?;
        let links = lock(&self.shared.links);
        (0..self.life.len())
            .filter(|&q| self.life[q] == Life::Up && links.reachable(p, q))
            .filter(|&q| {
                let s = self.shared.spec(q);
                s.serve.iter().any(|m| m == model) && announced_memory(s) >= need
            })
            .min_by_key(|&q| (self.up_since[q], q))
            .map(|q| (self.host_name(q), now.saturating_sub(self.up_since[q])))
    }

    /// Faults stop, the network heals, traffic stops; the mesh gets `[check] liveness_s` to
    /// agree on membership and plans.
    fn liveness_phase(&mut self) -> Result<(), TurmoilError> {
        let budget = self.shared.sc.check.liveness_s;
        let start = self.sim.elapsed();
        if budget <= 0.0 {
            lock(&self.shared.checker).liveness(start, Liveness::Skipped);
            return Ok(());
        }
        self.shared.traffic_on.store(false, Ordering::SeqCst);
        lock(&self.shared.links).heal(&[]);
        self.apply_partitions();
        let stop = start + secs(budget);
        let mut next = start + LIVENESS_CHECK;
        while self.sim.elapsed() < stop {
            self.step()?;
            let now = self.sim.elapsed();
            if now >= next {
                next = now + LIVENESS_CHECK;
                if self.disagreement().is_none() {
                    let after = (now - start).as_secs_f64();
                    lock(&self.shared.checker)
                        .liveness(now, Liveness::Converged { after_s: after });
                    return Ok(());
                }
            }
        }
        let reason = self
            .disagreement()
            .unwrap_or_else(|| "converged only at the very end".into());
        lock(&self.shared.checker).liveness(
            self.sim.elapsed(),
            Liveness::NotConverged {
                after_s: budget,
                reason,
            },
        );
        Ok(())
    }

    /// Why the live peers do not agree yet (on their latest snapshots); `None` when they do.
    fn disagreement(&self) -> Option<String> {
        let sh = &self.shared;
        let live: Vec<usize> = (0..self.life.len())
            .filter(|&p| self.life[p] == Life::Up)
            .collect();
        let mut expected: Vec<PeerId> = live.iter().map(|&p| sh.ids[p]).collect();
        expected.sort();
        let mut plans: Option<(usize, BTreeMap<String, mesh_core::election::Plan>)> = None;
        for &p in &live {
            let snap = lock(&sh.nodes[p].snapshot);
            let Some(s) = snap.as_ref() else {
                return Some(format!("{} has not published a snapshot", sh.spec(p).name));
            };
            if s.members != expected {
                let missing: Vec<String> = expected
                    .iter()
                    .filter(|id| !s.members.contains(id))
                    .map(|id| sh.name_of(id))
                    .collect();
                let extra: Vec<String> = s
                    .members
                    .iter()
                    .filter(|id| !expected.contains(id))
                    .map(|id| sh.name_of(id))
                    .collect();
                return Some(format!(
                    "{} sees the membership differently (missing {missing:?}, extra {extra:?})",
                    sh.spec(p).name
                ));
            }
            if !sh.spec(p).contributes() {
                continue;
            }
            match &plans {
                None => plans = Some((p, s.election.plans.clone())),
                Some((q, theirs)) if *theirs != s.election.plans => {
                    return Some(format!(
                        "{} and {} plan differently: {:?} / {:?}",
                        sh.spec(*q).name,
                        sh.spec(p).name,
                        theirs,
                        s.election.plans
                    ));
                }
                Some(_) => {}
            }
        }
        None
    }

    /// Every option the seed decided, for a failing run's printout.
    fn derived_options(&self) -> Vec<(String, String)> {
        let sh = &self.shared;
        let mut out = vec![
            ("seed".to_string(), sh.seed.to_string()),
            ("engine".into(), "turmoil".into()),
            (
                "tick_ms".into(),
                format!("{}", self.tick.as_secs_f64() * 1e3),
            ),
            (
                "turmoil rng_seed".into(),
                SimRng::derive(sh.seed, "turmoil", 0).next_u64().to_string(),
            ),
            ("gossip".into(), format!("{:?}", sh.gossip)),
            ("transport".into(), format!("{:?}", sh.transport)),
            ("demand".into(), format!("{:?}", sh.demand)),
        ];
        let entry = sh.sc.peers.iter().position(PeerSpec::is_entry);
        let links = lock(&sh.links);
        for (p, spec) in sh.sc.peers.iter().enumerate() {
            let inviter =
                lock(&sh.nodes[p].inviter).map_or("-".to_string(), |q| sh.spec(q).name.clone());
            let to_entry = entry.map_or("-".to_string(), |e| {
                format!("{:.1} ms", links.one_way_ms(e, p))
            });
            out.push((
                format!("peer {}", spec.name),
                format!(
                    "id {} invited by {inviter}, one-way to the entry {to_entry}",
                    sh.ids[p].short()
                ),
            ));
        }
        let n = sh.sc.peers.len();
        if n <= 16 {
            for a in 0..n {
                for b in a + 1..n {
                    out.push((
                        format!("link {}-{}", sh.spec(a).name, sh.spec(b).name),
                        format!("{:.1} ms one-way", links.one_way_ms(a, b)),
                    ));
                }
            }
        }
        out
    }
}

/// The fast memory `spec` announces (capped by `--max-vram-gb`; doubled by a peer that inflates
/// it), in bytes.
pub(crate) fn announced_memory(spec: &PeerSpec) -> u64 {
    let mut fast = spec.fast_memory_gb;
    if let Some(cap) = spec.max_vram_gb {
        fast = fast.min(cap);
    }
    if spec.behaviour == crate::scenario::Behaviour::InflateMemory {
        fast *= node::MEMORY_INFLATION;
    }
    (fast * 1e9) as u64
}

fn secs(s: f64) -> Duration {
    Duration::from_micros((s.max(0.0) * 1e6).round() as u64)
}

#[cfg(test)]
mod tests;
