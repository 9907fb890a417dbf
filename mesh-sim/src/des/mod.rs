//! The discrete-event engine (`--engine des`): virtual time, no tokio, no sockets. Peers are plain
//! structs; every decision goes through mesh-core (sample rules and windows, the SLA gate and
//! fallback decision, routing order and retries, mesh share, the launch fit margin, and the
//! election's plan of who serves what).
//!
//! The world: peers join, crash, leave, restart and get partitioned as the scenario says; the
//! deciding node (the first entry, or with none a virtual client beside the hosts) sees every live,
//! reachable peer at once, and `mesh_core::election::plan_models` on that view says who serves
//! what — per-node views, gossip delays and the `Election` machine's host-claim grace arrive with
//! issue 5. Demand for the election is the scenario's declared traffic. Hosts load their
//! model (size-scaled), then serve requests with llama-server's slots; each request's TTFT and
//! decode come from its host's GPU profile with seeded jitter, and are recorded exactly as the
//! node records them: an `Observation` on the host (its published window) and one at the entry
//! (its `EntrySamples`). Solo hosts measure their native baseline 30 s after loading.

mod net;
mod queue;

use crate::profile::{
    self, BATCH_SLOWDOWN_PER_SEQUENCE, Device, Model, PlacementKind, Serving, Timing,
};
use crate::report::{
    self, Figures, HostReport, ModelReport, PeerReport, Report, RequestCounts, SlaReport,
    SplitGroupReport,
};
use crate::rng::SimRng;
use crate::scenario::{Behaviour, EventKind, PeerSpec, Scenario};
use mesh_core::election::{self, Demand, Duty, Election, Plan};
use mesh_core::peer::{NativeBaseline, RttHint, RunningPipeline};
use mesh_core::routing::{self, RouteConfig, Router};
use mesh_core::samples::{self, Ending, ModelSamples, Observation, Sample};
use mesh_core::sla::{
    self, EntrySamples, FallbackBudget, FallbackConfig, MeshShareCounters, ServedBy, SlaConfig,
    TierCatalog,
};
use mesh_core::status::{self, ServingMode};
use mesh_core::{KnownPeer, MeshView, PeerAnnouncement, PeerId, Role, Timestamp};
use net::Network;
use queue::Queue;
use std::collections::{BTreeMap, VecDeque};
use std::net::{IpAddr, Ipv4Addr};
use std::time::Duration;

/// Runs `scenario` to its end with master seed `seed` and reports.
pub fn run(scenario: &Scenario, seed: u64) -> Report {
    let mut world = World::new(scenario, seed);
    world.run();
    world.report()
}

/// Delay before a solo host's first native-baseline probe, gap between probes, refresh period
/// (SPEC §5).
const BASELINE_SETTLE: Duration = Duration::from_secs(30);
const BASELINE_GAP: Duration = Duration::from_secs(1);
const BASELINE_PROBES: u32 = 3;
const BASELINE_REFRESH: Duration = Duration::from_secs(12 * 3600);
/// A canned-text peer streams stored text: no model, no prefill.
const CANNED: Timing = Timing {
    ttft_ms: profile::REQUEST_OVERHEAD_MS,
    per_token_ms: 2.0,
};
/// How much better than measured an `inflate_timings` peer says it is.
const INFLATION: f64 = 1.5;
const MESH_ID: &str = "sim";
/// RTT hints a peer announces: its nearest peers.
const RTT_HINTS: usize = 16;

#[derive(Debug, Clone, Copy)]
enum Ev {
    Join(usize),
    Scenario(usize),
    Arrival(usize),
    /// A request at its entry, choosing (or re-choosing) a target.
    Dispatch(u64),
    HostArrive {
        req: u64,
        peer: usize,
        epoch: u64,
    },
    HostDone {
        req: u64,
        peer: usize,
        epoch: u64,
    },
    Ready {
        peer: usize,
        epoch: u64,
    },
    Probe {
        peer: usize,
        epoch: u64,
        n: u32,
    },
    /// A peer's election has a deadline (host-claim grace, backoff).
    ElectionTimer(usize),
    /// Re-run the elections once for everything that changed at this instant.
    Replan,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Life {
    NotJoined,
    Up,
    Crashed,
    Left,
}

impl Life {
    fn as_str(self) -> &'static str {
        match self {
            Life::NotJoined => "not_joined",
            Life::Up => "up",
            Life::Crashed => "crashed",
            Life::Left => "left",
        }
    }
}

/// What the hosted llama-server really runs (a dishonest peer's differs from its claim).
#[derive(Debug, Clone)]
enum Backing {
    Model(Serving),
    Canned,
}

/// One llama-server a peer runs for one model.
#[derive(Debug)]
struct Hosting {
    model: usize,
    epoch: u64,
    /// Workers of a pipeline this peer hosts; empty when solo.
    workers: Vec<usize>,
    /// The honest layout (placement, native physics).
    serving: Serving,
    traffic: Backing,
    probes: Backing,
    ready: bool,
    /// No longer routable; finishing what it has.
    draining: bool,
    slots: usize,
    active: BTreeMap<u64, Active>,
    waiting: VecDeque<u64>,
    probe_samples: Vec<Sample>,
    timings: BTreeMap<u32, Timing>,
}

#[derive(Debug, Clone, Copy)]
struct Active {
    first_at: Timestamp,
    last_at: Timestamp,
}

struct Peer<'a> {
    spec: &'a PeerSpec,
    id: PeerId,
    device: Device,
    life: Life,
    joined_at: Timestamp,
    hostings: Vec<Hosting>,
    /// Models this peer serves layers of, and for which host.
    worker_for: BTreeMap<usize, usize>,
    /// Its own through-mesh window (what it publishes).
    samples: ModelSamples,
    baselines: BTreeMap<usize, NativeBaseline>,
    served: BTreeMap<usize, u64>,
    /// How it last laid out each model it hosted.
    placements: BTreeMap<usize, PlacementKind>,
    /// Its own election machine (host-claim grace, launch backoff) and what it last said.
    election: Election,
    serving_models: Vec<String>,
    /// The election wake-up already scheduled.
    timer: Option<Timestamp>,
    jitter: SimRng,
}

impl Peer<'_> {
    fn live_hosting(&self, model: usize) -> Option<&Hosting> {
        self.hostings
            .iter()
            .find(|h| h.model == model && !h.draining)
    }

    fn hosting_mut(&mut self, epoch: u64) -> Option<&mut Hosting> {
        self.hostings.iter_mut().find(|h| h.epoch == epoch)
    }
}

struct ModelInfo {
    name: String,
    size_bytes: u64,
    physics: Model,
}

#[derive(Debug, Clone)]
struct Request {
    model: usize,
    entry: Option<usize>,
    caller: IpAddr,
    prompt: u32,
    tokens: u32,
    tried: Vec<PeerId>,
    target: Option<usize>,
    /// When the entry last sent it upstream, and when it reached the host.
    dispatched: Timestamp,
    host_arrival: Timestamp,
}

/// One way into the mesh: an entry peer, or (`None`) clients on the hosts' own API.
struct EntryPoint {
    router: Router,
    samples: EntrySamples,
    share: MeshShareCounters,
    fallback: Option<FallbackConfig>,
    budget: FallbackBudget,
    view: Option<MeshView>,
}

struct World<'a> {
    sc: &'a Scenario,
    seed: u64,
    end: Timestamp,
    now: Timestamp,
    queue: Queue<Ev>,
    net: Network,
    models: Vec<ModelInfo>,
    peers: Vec<Peer<'a>>,
    traffic: Vec<SimRng>,
    requests: BTreeMap<u64, Request>,
    next_request: u64,
    next_epoch: u64,
    entries: BTreeMap<Option<usize>, EntryPoint>,
    /// The node whose view the plan is made on: the first entry, if any.
    observer: Option<usize>,
    plans: BTreeMap<String, Plan>,
    replan_pending: bool,
    /// What the election weighs: the scenario's traffic per model.
    demand: BTreeMap<String, Demand>,
    counts: Vec<RequestCounts>,
    sla: SlaConfig,
}

fn at_secs(s: f64) -> Timestamp {
    Timestamp::from_micros((s.max(0.0) * 1e6).round() as u64)
}

fn ms(v: f64) -> Duration {
    Duration::from_micros((v.max(0.0) * 1e3).round() as u64)
}

/// Peer ids the simulator gives: index + 1 in bytes 1..5, so short ids read `0000000001`.
fn peer_id(index: usize) -> PeerId {
    let mut b = [0u8; 32];
    b[1..5].copy_from_slice(&(index as u32 + 1).to_be_bytes());
    PeerId(b)
}

/// The virtual client of a mesh without entries.
const DIRECT_CLIENT: PeerId = PeerId([0xff; 32]);

impl<'a> World<'a> {
    fn new(sc: &'a Scenario, seed: u64) -> Self {
        let models: Vec<ModelInfo> = sc
            .models
            .iter()
            .map(|m| ModelInfo {
                name: m.name.clone(),
                size_bytes: (m.size_gb * 1e9).round() as u64,
                physics: Model::from_spec(m),
            })
            .collect();
        let peers = sc
            .peers
            .iter()
            .enumerate()
            .map(|(i, spec)| Peer {
                spec,
                id: peer_id(i),
                device: Device::from_peer(spec),
                life: Life::NotJoined,
                joined_at: Timestamp::ZERO,
                hostings: Vec::new(),
                worker_for: BTreeMap::new(),
                samples: ModelSamples::default(),
                baselines: BTreeMap::new(),
                served: BTreeMap::new(),
                placements: BTreeMap::new(),
                election: Election::new(),
                serving_models: Vec::new(),
                timer: None,
                jitter: SimRng::derive(seed, "jitter", i as u64),
            })
            .collect();
        let observer = sc.peers.iter().position(PeerSpec::is_entry);
        let mut entries = BTreeMap::new();
        let entry_point = |fallback: bool| {
            let config = FallbackConfig {
                api_key_configured: true,
                ..FallbackConfig::default()
            };
            EntryPoint {
                router: Router::new(RouteConfig::default()),
                samples: EntrySamples::default(),
                share: MeshShareCounters::default(),
                budget: FallbackBudget::new(config.per_ip_per_hour),
                fallback: fallback.then_some(config),
                view: None,
            }
        };
        for (i, p) in sc.peers.iter().enumerate().filter(|(_, p)| p.is_entry()) {
            entries.insert(Some(i), entry_point(p.fallback));
        }
        entries.insert(None, entry_point(false));
        let mut demand: BTreeMap<String, Demand> = BTreeMap::new();
        for t in &sc.traffic {
            let d = demand.entry(t.model.clone()).or_default();
            d.clients += 1;
            d.requests_per_min += t.rate_per_min;
        }
        let catalog = TierCatalog::with_overrides(
            sc.models
                .iter()
                .filter_map(|m| m.tier.map(|t| (m.name.clone(), t))),
        );
        World {
            sc,
            seed,
            end: at_secs(sc.duration_s),
            now: Timestamp::ZERO,
            queue: Queue::new(),
            net: Network::new(seed, &sc.network, sc.peers.len()),
            counts: vec![RequestCounts::default(); models.len()],
            models,
            peers,
            traffic: (0..sc.traffic.len())
                .map(|i| SimRng::derive(seed, "traffic", i as u64))
                .collect(),
            requests: BTreeMap::new(),
            next_request: 0,
            next_epoch: 0,
            entries,
            observer,
            plans: BTreeMap::new(),
            replan_pending: false,
            demand,
            sla: SlaConfig {
                catalog,
                ..SlaConfig::default()
            },
        }
    }

    fn run(&mut self) {
        for (i, p) in self.sc.peers.iter().enumerate() {
            self.queue.push(at_secs(p.join_at_s), Ev::Join(i));
        }
        let mut order: Vec<usize> = (0..self.sc.events.len()).collect();
        order.sort_by(|&a, &b| self.sc.events[a].at_s.total_cmp(&self.sc.events[b].at_s));
        for i in order {
            self.queue
                .push(at_secs(self.sc.events[i].at_s), Ev::Scenario(i));
        }
        for t in 0..self.sc.traffic.len() {
            let start = at_secs(self.sc.traffic[t].start_s);
            self.schedule_arrival(t, start);
        }
        while let Some((at, ev)) = self.queue.pop_until(self.end) {
            self.now = at;
            match ev {
                Ev::Join(p) => self.join(p),
                Ev::Scenario(i) => self.scenario_event(i),
                Ev::Arrival(t) => self.arrival(t),
                Ev::Dispatch(req) => self.dispatch(req),
                Ev::HostArrive { req, peer, epoch } => self.host_arrive(req, peer, epoch),
                Ev::HostDone { req, peer, epoch } => self.host_done(req, peer, epoch),
                Ev::Ready { peer, epoch } => self.ready(peer, epoch),
                Ev::Probe { peer, epoch, n } => self.probe(peer, epoch, n),
                Ev::ElectionTimer(p) => {
                    self.peers[p].timer = None;
                    self.request_replan();
                }
                Ev::Replan => {
                    self.replan_pending = false;
                    self.replan();
                }
            }
        }
        self.now = self.end;
    }

    // ---- membership and faults ----

    fn join(&mut self, p: usize) {
        self.peers[p].life = Life::Up;
        self.peers[p].joined_at = self.now;
        self.request_replan();
    }

    fn scenario_event(&mut self, i: usize) {
        let sc = self.sc;
        let ev = &sc.events[i];
        let peers: Vec<usize> = ev.peers.iter().filter_map(|n| sc.peer_index(n)).collect();
        match ev.kind {
            EventKind::Crash => {
                for &p in &peers {
                    self.peers[p].life = Life::Crashed;
                    self.break_peer(p, true);
                }
                self.cut_streams();
            }
            EventKind::Leave => {
                for &p in &peers {
                    self.peers[p].life = Life::Left;
                    // In-flight chats finish; its rpc-server (if a worker) goes at once.
                    self.break_peer(p, false);
                }
            }
            EventKind::Restart => {
                for &p in &peers {
                    // A fresh process: new election machine, empty in-memory sample window. The
                    // native baseline survives (the node caches it on disk).
                    let peer = &mut self.peers[p];
                    peer.life = Life::Up;
                    peer.joined_at = self.now;
                    peer.election = Election::new();
                    peer.samples = ModelSamples::default();
                    peer.serving_models.clear();
                }
            }
            EventKind::Partition => {
                self.net.partition(&peers);
                self.cut_streams();
            }
            EventKind::Heal => self.net.heal(&peers),
            EventKind::SetLatency => {
                let range = ev
                    .latency_ms
                    .map_or(self.sc.network.latency_ms, |l| l.range());
                self.net.set_latency(&peers, range, ev.loss);
                self.relink_pipelines();
            }
        }
        self.request_replan();
    }

    /// `p` went away: its pipelines' hosts lose it, and (`crashed`) its own streams break.
    fn break_peer(&mut self, p: usize, crashed: bool) {
        let mut hosts_using = Vec::new();
        for (h, peer) in self.peers.iter().enumerate() {
            for x in peer.hostings.iter().filter(|x| x.workers.contains(&p)) {
                hosts_using.push((h, x.epoch));
            }
        }
        for (h, epoch) in hosts_using {
            self.drop_hosting(h, epoch);
        }
        self.peers[p].worker_for.clear();
        if crashed {
            let epochs: Vec<u64> = self.peers[p].hostings.iter().map(|h| h.epoch).collect();
            for epoch in epochs {
                self.drop_hosting(p, epoch);
            }
        }
        self.invalidate_views();
    }

    /// Removes a hosting at once; its streams break (retried if the caller has no token yet).
    fn drop_hosting(&mut self, peer: usize, epoch: u64) {
        let Some(pos) = self.peers[peer]
            .hostings
            .iter()
            .position(|h| h.epoch == epoch)
        else {
            return;
        };
        let hosting = self.peers[peer].hostings.remove(pos);
        for (req, a) in &hosting.active {
            self.broken(*req, peer, Some(a.first_at));
        }
        for req in &hosting.waiting {
            self.broken(*req, peer, None);
        }
    }

    /// A stream from `peer` broke. Before the caller saw a token the entry retries another
    /// target; after, the chat fails.
    fn broken(&mut self, req: u64, peer: usize, first_at: Option<Timestamp>) {
        let Some(r) = self.requests.get(&req) else {
            return;
        };
        let (entry, model) = (r.entry, r.model);
        let back = ms(self.one_way(entry, peer));
        let pid = self.peers[peer].id;
        let name = self.models[model].name.clone();
        let now = self.now;
        let ep = self
            .entries
            .get_mut(&entry)
            .expect("every entry point exists");
        ep.router.finished(pid);
        if first_at.is_some_and(|f| f + back <= now) {
            self.fail(req, samples::NotRecorded::UpstreamError.as_str());
        } else {
            ep.router.failed_before_first_byte(pid, &name, now);
            self.queue.push(now + back, Ev::Dispatch(req));
        }
    }

    /// Streams whose entry went down, or can no longer reach the host, end.
    fn cut_streams(&mut self) {
        let mut cut = Vec::new();
        for (p, peer) in self.peers.iter().enumerate() {
            for h in &peer.hostings {
                for req in h.active.keys().chain(h.waiting.iter()) {
                    let entry = self.requests.get(req).and_then(|r| r.entry);
                    let gone =
                        |e: usize| self.peers[e].life != Life::Up || !self.net.reachable(e, p);
                    if entry.is_some_and(gone) {
                        cut.push((p, h.epoch, *req));
                    }
                }
            }
        }
        for (p, epoch, req) in cut {
            if let Some(h) = self.peers[p].hosting_mut(epoch) {
                h.active.remove(&req);
                h.waiting.retain(|r| *r != req);
            }
            self.release(req, p);
            self.fail(req, samples::NotRecorded::ClientDisconnected.as_str());
            self.start_waiting(p, epoch);
        }
    }

    fn relink_pipelines(&mut self) {
        for p in 0..self.peers.len() {
            for i in 0..self.peers[p].hostings.len() {
                let h = &self.peers[p].hostings[i];
                if h.workers.is_empty() {
                    continue;
                }
                let serving = self.pipeline(p, &h.workers.clone(), h.model);
                let h = &mut self.peers[p].hostings[i];
                h.serving = serving.clone();
                h.traffic = Backing::Model(serving.clone());
                h.probes = Backing::Model(serving);
                h.timings.clear();
            }
        }
    }

    // ---- the plan ----

    /// Asks for one re-election after everything already queued for this instant.
    fn request_replan(&mut self) {
        if !self.replan_pending {
            self.replan_pending = true;
            self.queue.push(self.now, Ev::Replan);
        }
    }

    /// Every live contributor runs its election on its own view and carries out its duties;
    /// the deciding node's plan is kept for the report. Passes repeat while a duty changed
    /// something another peer sees (a launch makes its peer a host), at most a few times.
    fn replan(&mut self) {
        for _ in 0..4 {
            let mut changed = false;
            let mut announcements: Vec<PeerAnnouncement> = (0..self.peers.len())
                .map(|p| self.announcement(p))
                .collect();
            for p in 0..self.peers.len() {
                if self.decide(p, &announcements) {
                    changed = true;
                    // What it launched or stopped is part of what the next peers see.
                    announcements[p] = self.announcement(p);
                }
            }
            if !changed {
                break;
            }
        }
        self.plans = election::plan_models(&self.view(self.observer), &self.demand);
        for p in 0..self.peers.len() {
            if let Some(at) = self.peers[p].election.poll_timeout()
                && at > self.now
                && self.peers[p].timer != Some(at)
            {
                self.peers[p].timer = Some(at);
                self.queue.push(at, Ev::ElectionTimer(p));
            }
        }
        self.invalidate_views();
    }

    /// Runs peer `p`'s election and applies its duties. Returns whether any hosting changed.
    fn decide(&mut self, p: usize, announcements: &[PeerAnnouncement]) -> bool {
        let peer = &self.peers[p];
        let live = peer.life == Life::Up && !peer.spec.is_entry();
        // Per model: host with these workers (empty: solo), or worker for a host.
        let mut hosts: BTreeMap<usize, Vec<usize>> = BTreeMap::new();
        let mut worker_for = BTreeMap::new();
        if live {
            let view = self.view_from(Some(p), announcements);
            let index: BTreeMap<PeerId, usize> = self
                .peers
                .iter()
                .enumerate()
                .map(|(i, q)| (q.id, i))
                .collect();
            let outcome = self.peers[p].election.decide(&view, &self.demand, self.now);
            for (m, model) in self.models.iter().enumerate() {
                match outcome.duties.get(&model.name) {
                    Some(Duty::Solo { .. }) => {
                        hosts.insert(m, Vec::new());
                    }
                    Some(Duty::SplitHost {
                        workers,
                        workers_ready: true,
                        ..
                    }) => {
                        hosts.insert(m, workers.iter().map(|w| index[w]).collect());
                    }
                    Some(Duty::SplitWorker { host }) => {
                        worker_for.insert(m, index[host]);
                    }
                    _ => {}
                }
            }
            self.peers[p].serving_models = outcome.serving_models;
        } else {
            self.peers[p].serving_models.clear();
        }
        self.peers[p].worker_for = worker_for;
        let mut changed = false;
        for m in 0..self.models.len() {
            let want = hosts.get(&m);
            let keep = match (self.peers[p].live_hosting(m), want) {
                (Some(h), Some(ws)) => &h.workers == ws,
                (None, None) => true,
                _ => false,
            };
            if keep {
                continue;
            }
            changed = true;
            if let Some(h) = self.peers[p]
                .hostings
                .iter_mut()
                .find(|h| h.model == m && !h.draining)
            {
                h.draining = true;
                let epoch = h.epoch;
                self.finish_draining(p, epoch);
            }
            if let Some(ws) = want {
                self.launch(p, m, ws.clone());
            }
        }
        if changed {
            self.invalidate_views();
        }
        changed
    }

    fn pipeline(&self, host: usize, workers: &[usize], model: usize) -> Serving {
        let ws: Vec<(Device, profile::Link)> = workers
            .iter()
            .map(|&w| (self.peers[w].device.clone(), self.net.link(host, w)))
            .collect();
        profile::pipeline(&self.peers[host].device, &ws, &self.models[model].physics)
    }

    fn launch(&mut self, p: usize, m: usize, workers: Vec<usize>) {
        let serving = if workers.is_empty() {
            profile::solo(&self.peers[p].device, &self.models[m].physics)
        } else {
            self.pipeline(p, &workers, m)
        };
        let behaviour = self.peers[p].spec.behaviour;
        let cheaper = |scale_size: f64, scale_params: f64| {
            let physics = Model {
                size_gb: serving.model.size_gb * scale_size,
                params_b: serving.model.params_b * scale_params,
                active_params_b: serving.model.active_params_b * scale_params,
                ..serving.model.clone()
            };
            Backing::Model(if workers.is_empty() {
                profile::solo(&self.peers[p].device, &physics)
            } else {
                let ws: Vec<(Device, profile::Link)> = workers
                    .iter()
                    .map(|&w| (self.peers[w].device.clone(), self.net.link(p, w)))
                    .collect();
                profile::pipeline(&self.peers[p].device, &ws, &physics)
            })
        };
        let honest = Backing::Model(serving.clone());
        // What it runs on real traffic, and on native-baseline probes.
        let (traffic, probes) = match behaviour {
            Behaviour::Honest | Behaviour::InflateMemory | Behaviour::InflateTimings => {
                (honest.clone(), honest)
            }
            Behaviour::CheaperQuant => (cheaper(0.75, 1.0), cheaper(0.75, 1.0)),
            Behaviour::SmallerModel | Behaviour::ReplayFingerprint => {
                (cheaper(0.5, 0.5), cheaper(0.5, 0.5))
            }
            Behaviour::ProbeAware => (cheaper(0.5, 0.5), honest),
            Behaviour::CannedText => (Backing::Canned, Backing::Canned),
        };
        let load_gb = serving
            .stages
            .iter()
            .map(|s| s.residency.fast_gb + s.residency.ram_gb + s.residency.disk_gb)
            .fold(0.0, f64::max);
        self.next_epoch += 1;
        let epoch = self.next_epoch;
        self.peers[p].placements.insert(m, serving.kind);
        let slots = self.peers[p]
            .spec
            .max_inflight
            .unwrap_or(mesh_core::launch::PARALLEL_SLOTS) as usize;
        self.peers[p].hostings.push(Hosting {
            model: m,
            epoch,
            workers,
            serving,
            traffic,
            probes,
            ready: false,
            draining: false,
            slots,
            active: BTreeMap::new(),
            waiting: VecDeque::new(),
            probe_samples: Vec::new(),
            timings: BTreeMap::new(),
        });
        let load = Duration::from_secs_f64(profile::LAUNCH_S + load_gb / profile::LOAD_GBPS);
        self.queue
            .push(self.now + load, Ev::Ready { peer: p, epoch });
    }

    fn ready(&mut self, p: usize, epoch: u64) {
        let Some(h) = self.peers[p].hosting_mut(epoch) else {
            return;
        };
        if h.draining {
            return;
        }
        h.ready = true;
        let solo = h.workers.is_empty();
        let model = self.models[h.model].name.clone();
        self.peers[p].election.record_launch_success(&model);
        // What runs is part of what the election weighs (hosts that route a model keep it).
        self.request_replan();
        if solo {
            self.queue.push(
                self.now + BASELINE_SETTLE,
                Ev::Probe {
                    peer: p,
                    epoch,
                    n: 0,
                },
            );
        }
        self.invalidate_views();
    }

    fn finish_draining(&mut self, p: usize, epoch: u64) {
        let peer = &mut self.peers[p];
        if let Some(pos) = peer.hostings.iter().position(|h| h.epoch == epoch) {
            let h = &peer.hostings[pos];
            if h.draining && h.active.is_empty() && h.waiting.is_empty() {
                peer.hostings.remove(pos);
            }
        }
    }

    // ---- what nodes see ----

    fn invalidate_views(&mut self) {
        for e in self.entries.values_mut() {
            e.view = None;
        }
    }

    fn one_way(&self, entry: Option<usize>, peer: usize) -> f64 {
        entry.map_or(0.0, |e| self.net.one_way_ms(e, peer))
    }

    fn announcement(&self, p: usize) -> PeerAnnouncement {
        let peer = &self.peers[p];
        let spec = peer.spec;
        let hosted: Vec<&Hosting> = peer
            .hostings
            .iter()
            .filter(|h| h.ready && !h.draining)
            .collect();
        // A peer launching llama-server already announces itself a host (still loading).
        let role = if spec.is_entry() {
            Role::Client
        } else if peer.hostings.iter().any(|h| !h.draining) {
            Role::Host { http_port: 0 }
        } else {
            Role::Worker
        };
        let mut a = PeerAnnouncement::new(peer.id, MESH_ID, role);
        a.hostname = spec.name.clone();
        a.backend = spec.backend;
        a.gpu_name = spec.gpu_name.clone().unwrap_or_default();
        let mut fast = spec.fast_memory_gb;
        if let Some(cap) = spec.max_vram_gb {
            fast = fast.min(cap);
        }
        if spec.behaviour == Behaviour::InflateMemory {
            fast *= 2.0;
        }
        a.fast_memory_bytes = (fast * 1e9) as u64;
        a.system_ram_bytes = (spec.system_ram_gb * 1e9) as u64;
        a.mem_bandwidth_gbps = spec.mem_bandwidth_gbps;
        a.requested_models = spec.serve.clone();
        for m in &spec.serve {
            if let Some(info) = self.models.iter().find(|i| &i.name == m) {
                a.model_sizes.insert(m.clone(), info.size_bytes);
            }
        }
        a.serving_models = peer.serving_models.clone();
        a.hosted_models = hosted
            .iter()
            .map(|h| self.models[h.model].name.clone())
            .collect();
        a.rpc_ready = (!spec.is_entry()).then_some(true);
        a.inflight_requests = hosted
            .iter()
            .map(|h| (h.active.len() + h.waiting.len()) as u32)
            .sum();
        a.model_timings = peer.samples.timings(self.now);
        if spec.behaviour == Behaviour::InflateTimings {
            for t in &mut a.model_timings {
                t.tps_p50 *= INFLATION;
                t.ttft_ms_p50 /= INFLATION;
            }
        }
        a.native_baselines = peer.baselines.values().cloned().collect();
        // What the split planner reads for host-to-worker RTTs: a node has measured the peers
        // it talks to, here its nearest few (the planner estimates the rest).
        if !spec.is_entry() {
            let mut near: Vec<(u32, usize)> = (0..self.peers.len())
                .filter(|&q| q != p && self.peers[q].life == Life::Up)
                .filter(|&q| !self.peers[q].spec.is_entry() && self.net.reachable(p, q))
                .map(|q| (self.net.link(p, q).rtt_ms.round() as u32, q))
                .collect();
            near.sort_unstable();
            a.rtt_hints = near
                .into_iter()
                .take(RTT_HINTS)
                .map(|(rtt_ms, q)| RttHint {
                    peer: self.peers[q].id,
                    rtt_ms,
                })
                .collect();
        }
        // Pipelines it runs, loading ones included (their workers already serve layers).
        a.pipelines = peer
            .hostings
            .iter()
            .filter(|h| !h.draining && !h.workers.is_empty())
            .map(|h| RunningPipeline {
                model: self.models[h.model].name.clone(),
                workers: h.workers.iter().map(|&w| self.peers[w].id).collect(),
                total_group_memory_bytes: ((spec.fast_memory_gb
                    + h.workers
                        .iter()
                        .map(|&w| self.peers[w].spec.fast_memory_gb)
                        .sum::<f64>())
                    * 1e9) as u64,
            })
            .collect();
        a
    }

    /// The mesh as `entry` (any peer; `None`: the virtual direct client) sees it: every live
    /// peer it can reach, itself included, with its RTT to each.
    fn view(&self, entry: Option<usize>) -> MeshView {
        let announcements: Vec<PeerAnnouncement> = (0..self.peers.len())
            .map(|p| self.announcement(p))
            .collect();
        self.view_from(entry, &announcements)
    }

    /// [`World::view`] from announcements already built (one per peer, by index).
    fn view_from(&self, entry: Option<usize>, announcements: &[PeerAnnouncement]) -> MeshView {
        let me = entry.map_or(DIRECT_CLIENT, |e| self.peers[e].id);
        let peers = (0..self.peers.len())
            .filter(|&p| self.peers[p].life == Life::Up)
            .filter(|&p| entry.is_none_or(|e| self.net.reachable(e, p)))
            .map(|p| KnownPeer {
                announcement: announcements[p].clone(),
                rtt_ms: Some((2.0 * self.one_way(entry, p)).round() as u32),
                first_seen: self.peers[p].joined_at,
                last_fresh: self.now,
            })
            .collect();
        MeshView::new(me, peers)
    }

    // ---- traffic ----

    fn schedule_arrival(&mut self, t: usize, after: Timestamp) {
        let mean_s = 60.0 / self.sc.traffic[t].rate_per_min;
        let gap = self.traffic[t].exponential(mean_s);
        let at = after + Duration::from_secs_f64(gap);
        if at <= self.end {
            self.queue.push(at, Ev::Arrival(t));
        }
    }

    fn arrival(&mut self, t: usize) {
        self.schedule_arrival(t, self.now);
        let sc = self.sc;
        let spec = &sc.traffic[t];
        let model = self
            .models
            .iter()
            .position(|m| m.name == spec.model)
            .expect("validated: traffic names a declared model");
        let entry = match &spec.entry {
            Some(name) => self.sc.peer_index(name),
            None => self.observer,
        };
        let lo = spec.max_tokens.div_ceil(2);
        let tokens = self.traffic[t]
            .uniform(f64::from(lo), f64::from(spec.max_tokens) + 1.0)
            .floor()
            .min(f64::from(spec.max_tokens)) as u32;
        self.next_request += 1;
        let id = self.next_request;
        self.requests.insert(
            id,
            Request {
                model,
                entry,
                caller: IpAddr::V4(Ipv4Addr::new(10, 0, (t / 256) as u8, (t % 256) as u8)),
                prompt: spec.prompt_tokens,
                tokens: tokens.max(1),
                tried: Vec::new(),
                target: None,
                dispatched: self.now,
                host_arrival: self.now,
            },
        );
        self.counts[model].sent += 1;
        self.dispatch(id);
    }

    /// Builds the entry's view if a change invalidated it (views are cached between changes).
    fn ensure_entry_view(&mut self, entry: Option<usize>) {
        if self.entries.get(&entry).is_some_and(|e| e.view.is_none()) {
            let v = self.view(entry);
            if let Some(e) = self.entries.get_mut(&entry) {
                e.view = Some(v);
            }
        }
    }

    fn dispatch(&mut self, id: u64) {
        let Some(r) = self.requests.get(&id).cloned() else {
            return;
        };
        if r.entry.is_some_and(|e| self.peers[e].life != Life::Up) {
            return self.fail(id, "entry_unavailable");
        }
        let model = self.models[r.model].name.clone();
        self.ensure_entry_view(r.entry);
        let now = self.now;
        let ep = self
            .entries
            .get_mut(&r.entry)
            .expect("every entry point exists");
        let view = ep.view.as_ref().expect("ensured above");
        // The SLA gate and fallback decision, on entries with a provider configured.
        if let (Some(cfg), true) = (&ep.fallback, r.tried.is_empty()) {
            let eval = sla::evaluate(&model, view, &ep.samples.measurements(now), now, &self.sla);
            let left = ep.budget.remaining(r.caller, now);
            if sla::decide_fallback(&eval, cfg, left).fires()
                && ep.budget.take(r.caller, now).is_ok()
            {
                return self.served_by_fallback(id);
            }
        }
        let order = ep.router.order(&model, view, &id.to_be_bytes(), now);
        let Some(target) = routing::next_attempt(&order, &r.tried) else {
            if let Some(cfg) = &ep.fallback {
                let eval =
                    sla::evaluate(&model, view, &ep.samples.measurements(now), now, &self.sla);
                let left = ep.budget.remaining(r.caller, now);
                if sla::decide_fallback_after_mesh_failure(&eval, cfg, left).fires()
                    && ep.budget.take(r.caller, now).is_ok()
                {
                    return self.served_by_fallback(id);
                }
            }
            let reason = if !r.tried.is_empty() {
                "no_capable_node"
            } else if self.plans.get(&model).is_some_and(|p| p.host().is_some()) {
                "election_in_progress"
            } else {
                "no_peer_with_model"
            };
            return self.fail(id, reason);
        };
        ep.router.started(target);
        let peer = self
            .peers
            .iter()
            .position(|p| p.id == target)
            .expect("targets come from the view of known peers");
        let epoch = self.peers[peer]
            .live_hosting(r.model)
            .map_or(0, |h| h.epoch);
        // A lost request packet costs a retransmission timeout.
        let mut delay = self.one_way(r.entry, peer);
        if let Some(e) = r.entry {
            let loss = self.net.loss(e, peer);
            if loss > 0.0 && self.peers[peer].jitter.chance(loss) {
                delay += 1.5 * 2.0 * delay + 25.0;
            }
        }
        let r = self.requests.get_mut(&id).expect("checked above");
        r.tried.push(target);
        r.target = Some(peer);
        r.dispatched = now;
        self.queue.push(
            now + ms(delay),
            Ev::HostArrive {
                req: id,
                peer,
                epoch,
            },
        );
    }

    fn host_arrive(&mut self, req: u64, peer: usize, epoch: u64) {
        let open = self.peers[peer]
            .hosting_mut(epoch)
            .is_some_and(|h| h.ready && !h.draining);
        if !open || self.peers[peer].life != Life::Up {
            return self.broken(req, peer, None);
        }
        if let Some(r) = self.requests.get_mut(&req) {
            r.host_arrival = self.now;
        }
        let h = self.peers[peer].hosting_mut(epoch).expect("checked open");
        if h.active.len() < h.slots {
            self.start(req, peer, epoch);
        } else {
            h.waiting.push_back(req);
        }
    }

    fn start(&mut self, req: u64, peer: usize, epoch: u64) {
        let Some(r) = self.requests.get(&req) else {
            return;
        };
        let (prompt, tokens) = (r.prompt, r.tokens);
        let p = &mut self.peers[peer];
        let sigma = profile::jitter_sigma(p.spec.backend);
        let h = p
            .hostings
            .iter_mut()
            .find(|h| h.epoch == epoch)
            .expect("started on a live hosting");
        let base = *h.timings.entry(prompt).or_insert_with(|| match &h.traffic {
            Backing::Model(s) => s.native(prompt),
            Backing::Canned => CANNED,
        });
        let batch = 1.0 + BATCH_SLOWDOWN_PER_SEQUENCE * h.active.len() as f64;
        let native = Timing {
            ttft_ms: base.ttft_ms * p.jitter.jitter(sigma),
            per_token_ms: base.per_token_ms * p.jitter.jitter(sigma) * batch,
        };
        let t = native.through_mesh();
        let first_at = self.now + ms(t.ttft_ms);
        let last_at = first_at + ms(t.per_token_ms * f64::from(tokens - 1));
        h.active.insert(req, Active { first_at, last_at });
        self.queue.push(last_at, Ev::HostDone { req, peer, epoch });
    }

    fn host_done(&mut self, req: u64, peer: usize, epoch: u64) {
        let Some(h) = self.peers[peer].hosting_mut(epoch) else {
            return;
        };
        let Some(a) = h.active.remove(&req) else {
            return;
        };
        let model = h.model;
        let Some(r) = self.requests.remove(&req) else {
            return;
        };
        let name = self.models[model].name.clone();
        let observation = |sent_at: Timestamp, shift: Duration| Observation {
            sent_at,
            status: 200,
            first_token_at: Some(a.first_at + shift),
            last_token_at: Some(a.last_at + shift),
            finished_at: a.last_at + shift,
            usage_completion_tokens: Some(r.tokens),
            counted_deltas: r.tokens,
            ending: Ending::Complete,
        };
        let p = &mut self.peers[peer];
        if let Ok(s) = observation(r.host_arrival, Duration::ZERO).to_sample() {
            p.samples.record(&name, s);
        }
        *p.served.entry(model).or_default() += 1;
        let pid = p.id;
        let back = ms(self.one_way(r.entry, peer));
        let ep = self
            .entries
            .get_mut(&r.entry)
            .expect("every entry point exists");
        if r.entry.is_some()
            && let Ok(s) = observation(r.dispatched, back).to_sample()
        {
            ep.samples.record(pid, &name, s);
        }
        ep.router.first_byte(pid, &name);
        ep.router.finished(pid);
        ep.share.record(ServedBy::Mesh, a.last_at + back);
        self.counts[model].mesh += 1;
        self.start_waiting(peer, epoch);
        self.finish_draining(peer, epoch);
    }

    /// Fills free slots from the hosting's queue.
    fn start_waiting(&mut self, peer: usize, epoch: u64) {
        loop {
            let Some(h) = self.peers[peer].hosting_mut(epoch) else {
                return;
            };
            if h.active.len() >= h.slots {
                return;
            }
            let Some(next) = h.waiting.pop_front() else {
                return;
            };
            self.start(next, peer, epoch);
        }
    }

    fn release(&mut self, req: u64, peer: usize) {
        let entry = self.requests.get(&req).map(|r| r.entry);
        if let Some(ep) = entry.and_then(|e| self.entries.get_mut(&e)) {
            ep.router.finished(self.peers[peer].id);
        }
    }

    fn served_by_fallback(&mut self, id: u64) {
        if let Some(r) = self.requests.remove(&id) {
            self.counts[r.model].fallback += 1;
            if let Some(ep) = self.entries.get_mut(&r.entry) {
                ep.share.record(ServedBy::Fallback, self.now);
            }
        }
    }

    fn fail(&mut self, id: u64, reason: &str) {
        if let Some(r) = self.requests.remove(&id) {
            *self.counts[r.model]
                .failed
                .entry(reason.to_string())
                .or_default() += 1;
        }
    }

    // ---- native baselines ----

    fn probe(&mut self, peer: usize, epoch: u64, n: u32) {
        let now = self.now;
        let backend = self.peers[peer].spec.backend;
        let sigma = profile::jitter_sigma(backend);
        let p = &mut self.peers[peer];
        let Some(h) = p
            .hostings
            .iter_mut()
            .find(|h| h.epoch == epoch && !h.draining)
        else {
            return;
        };
        let mut next = now + BASELINE_GAP;
        // A probe that would share the GPU with real traffic is discarded (SPEC §5).
        if h.active.is_empty() && h.waiting.is_empty() {
            let base = match &h.probes {
                Backing::Model(s) => s.native(profile::PROBE_PROMPT_TOKENS),
                Backing::Canned => CANNED,
            };
            let ttft = ms(base.ttft_ms * p.jitter.jitter(sigma));
            let per = base.per_token_ms * p.jitter.jitter(sigma);
            let last = now + ttft + ms(per * f64::from(profile::PROBE_MAX_TOKENS - 1));
            let o = Observation {
                sent_at: now,
                status: 200,
                first_token_at: Some(now + ttft),
                last_token_at: Some(last),
                finished_at: last,
                usage_completion_tokens: Some(profile::PROBE_MAX_TOKENS),
                counted_deltas: profile::PROBE_MAX_TOKENS,
                ending: Ending::Complete,
            };
            if let Ok(s) = o.to_sample() {
                h.probe_samples.push(s);
            }
            next = last + BASELINE_GAP;
        }
        if n + 1 < BASELINE_PROBES {
            self.queue.push(
                next,
                Ev::Probe {
                    peer,
                    epoch,
                    n: n + 1,
                },
            );
            return;
        }
        let model = h.model;
        let taken = std::mem::take(&mut h.probe_samples);
        // A refresh where every probe was discarded keeps the cached value.
        if !taken.is_empty() {
            let tps: Vec<f64> = taken.iter().map(|s| s.tps).collect();
            let ttft: Vec<f64> = taken.iter().map(|s| s.ttft_ms).collect();
            p.baselines.insert(
                model,
                NativeBaseline {
                    model: self.models[model].name.clone(),
                    native_tps_p50: samples::median(&tps),
                    native_ttft_ms_p50: samples::median(&ttft),
                    measured_at_unix_secs: now.as_unix_secs(),
                    samples: taken.len() as u32,
                    backend,
                    fingerprint: None,
                },
            );
        }
        self.queue
            .push(now + BASELINE_REFRESH, Ev::Probe { peer, epoch, n: 0 });
    }

    // ---- the report ----

    fn report(&mut self) -> Report {
        let now = self.end;
        for r in self.requests.values() {
            *self.counts[r.model]
                .failed
                .entry("in_flight_at_end".into())
                .or_default() += 1;
        }
        let observer_view = self.view(self.observer);
        let measurements = self
            .entries
            .get(&self.observer)
            .map(|e| e.samples.measurements(now))
            .unwrap_or_default();
        let name_of = |id: &PeerId| {
            self.peers
                .iter()
                .find(|p| p.id == *id)
                .map_or_else(|| id.short(), |p| p.spec.name.clone())
        };
        let mut models = Vec::new();
        for (m, info) in self.models.iter().enumerate() {
            let plan = self.plans.get(&info.name);
            let (hosts, split_group) = match plan {
                Some(Plan::Solo { host, replicas, .. }) => (
                    std::iter::once(host).chain(replicas).map(name_of).collect(),
                    None,
                ),
                Some(Plan::Split {
                    host,
                    workers,
                    total_group_memory,
                }) => (
                    vec![name_of(host)],
                    Some(SplitGroupReport {
                        host: name_of(host),
                        members: std::iter::once(host).chain(workers).map(name_of).collect(),
                        total_group_vram_gb: report::round(*total_group_memory as f64 / 1e9, 1),
                    }),
                ),
                Some(Plan::WaitingForCapacity { .. }) | None => (Vec::new(), None),
            };
            // The plan's part for each peer (a mapping of the election's plan, no rule of ours).
            let mut serving_mode: BTreeMap<String, ServingMode> = BTreeMap::new();
            match plan {
                Some(Plan::Solo { host, replicas, .. }) => {
                    for id in std::iter::once(host).chain(replicas) {
                        serving_mode.insert(name_of(id), ServingMode::Solo);
                    }
                }
                Some(Plan::Split { host, workers, .. }) => {
                    serving_mode.insert(name_of(host), ServingMode::SplitHost);
                    for id in workers {
                        serving_mode.insert(name_of(id), ServingMode::SplitWorker);
                    }
                }
                Some(Plan::WaitingForCapacity { .. }) | None => {
                    for p in self
                        .peers
                        .iter()
                        .filter(|p| p.life == Life::Up && p.spec.serve.contains(&info.name))
                    {
                        serving_mode.insert(p.spec.name.clone(), ServingMode::Waiting);
                    }
                }
            }
            let mut by_host = Vec::new();
            for peer in &self.peers {
                // Every peer that ever launched the model (a pipeline's host launches it).
                if !peer.placements.contains_key(&m) {
                    continue;
                }
                let served = peer.served.get(&m).copied().unwrap_or(0);
                let mut published = peer.samples.summary(&info.name, now);
                if peer.spec.behaviour == Behaviour::InflateTimings
                    && let Some(s) = published.as_mut()
                {
                    s.tps_p50 *= INFLATION;
                    s.ttft_ms_p50 /= INFLATION;
                }
                let through = published.map(Figures::from_summary);
                let native = peer.baselines.get(&m).map(|b| Figures {
                    ttft_ms_p50: report::round(b.native_ttft_ms_p50, 1),
                    tps_p50: report::round(b.native_tps_p50, 2),
                    samples: b.samples,
                });
                let still_serving = peer.live_hosting(m).is_some();
                by_host.push(HostReport {
                    peer: peer.spec.name.clone(),
                    serving_mode: still_serving
                        .then(|| serving_mode.get(&peer.spec.name).copied())
                        .flatten(),
                    placement: peer.placements[&m],
                    through_mesh: through,
                    at_entry: measurements
                        .get(&(peer.id, info.name.clone()))
                        .map(|e| Figures::from_summary(e.summary)),
                    native,
                    mesh_efficiency: report::efficiency(through, native).0,
                    served,
                });
            }
            // The primary host: most samples in its window, then most served, then file order.
            let primary = by_host
                .iter()
                .enumerate()
                .max_by_key(|(i, h)| {
                    (
                        h.through_mesh.map_or(0, |f| f.samples),
                        h.served,
                        std::cmp::Reverse(*i),
                    )
                })
                .map(|(_, h)| h);
            let through = primary.and_then(|h| h.through_mesh);
            let native = primary.and_then(|h| h.native);
            let (mesh_efficiency, ttft_overhead_ms) = report::efficiency(through, native);
            let eval = sla::evaluate(&info.name, &observer_view, &measurements, now, &self.sla);
            models.push(ModelReport {
                name: info.name.clone(),
                size_gb: report::round(info.size_bytes as f64 / 1e9, 2),
                plan: match plan {
                    Some(Plan::Solo { .. }) => "solo",
                    Some(Plan::Split { .. }) => "split",
                    Some(Plan::WaitingForCapacity { .. }) | None => "waiting",
                }
                .to_string(),
                hosts,
                split_group,
                serving_mode,
                through_mesh: through,
                native,
                mesh_efficiency,
                ttft_overhead_ms,
                sla: SlaReport {
                    tier: eval.tier,
                    status: eval.status.as_str().to_string(),
                    candidates: eval.candidates.len() as u32,
                    best_peer: eval.best_peer.as_ref().map(name_of),
                    best_ttft_ms: eval.best_ttft_ms.map(|v| report::round(v, 1)),
                    best_tps: eval.best_tps.map(|v| report::round(v, 2)),
                },
                requests: self.counts[m].clone(),
                served_by_peer: self
                    .peers
                    .iter()
                    .filter_map(|p| p.served.get(&m).map(|n| (p.spec.name.clone(), *n)))
                    .collect(),
                by_host,
            });
        }
        let peers = self
            .peers
            .iter()
            .enumerate()
            .map(|(p, peer)| {
                let status = status::classify_peer(&observer_view, &peer.id);
                PeerReport {
                    name: peer.spec.name.clone(),
                    id: peer.id.short(),
                    role: peer.spec.role,
                    backend: peer.spec.backend,
                    behaviour: peer.spec.behaviour,
                    state: peer.life.as_str().to_string(),
                    reachable: self.observer.is_none_or(|o| self.net.reachable(o, p)),
                    node_state: status.as_ref().map(|s| s.state),
                    serving_mode: status.as_ref().and_then(|s| s.serving_mode),
                    split_role: status.as_ref().and_then(|s| s.split_role),
                    split_group: status.and_then(|s| s.split_group),
                    hosted_models: peer
                        .hostings
                        .iter()
                        .filter(|h| h.ready && !h.draining)
                        .map(|h| self.models[h.model].name.clone())
                        .collect(),
                    requests_served: peer.served.values().sum(),
                }
            })
            .collect();
        let mut requests = RequestCounts::default();
        for c in &self.counts {
            requests.add(c);
        }
        let (mesh, total) = self.entries.values().fold((0, 0), |(m, t), e| {
            let w = e.share.last_24h(now);
            (m + w.mesh, t + w.total)
        });
        let mesh_share_pct =
            (total > 0).then(|| report::round(100.0 * mesh as f64 / total as f64, 1));
        Report {
            scenario: self.sc.name.clone(),
            seed: self.seed,
            duration_s: self.sc.duration_s,
            engine: "des".to_string(),
            models,
            peers,
            requests,
            mesh_share_pct,
        }
    }
}

#[cfg(test)]
mod tests;
