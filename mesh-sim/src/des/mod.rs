//! The discrete-event engine (`--engine des`): virtual time, no tokio, no sockets. Peers are plain
//! structs driving mesh-core's machines directly; every decision goes through mesh-core.
//!
//! Per node:
//! - **gossip** ([`mesh_core::gossip::State`]): signed announcements, heartbeats, digests and
//!   rumours travel as values over the simulated network ([`net`]) — per-link delay, loss
//!   (a lost message is gone), partitions — with their frame bytes counted
//!   ([`wire::encoded_len`](mesh_core::gossip::wire::encoded_len)). Records are shared, so each
//!   signature is verified once for the whole mesh (mesh-core memoises it). Each peer joins
//!   through an invite minted by a random live member; a restarted peer rejoins with its old
//!   invite and remembered members. A dead or cut-off peer is noticed when a connection to it
//!   times out (`[gossip] connection_timeout_ms`): by anyone sending to it, and by every entry
//!   routing to it (its tunnel's keep-alive).
//! - **election** ([`mesh_core::election::Election`]) on the node's own gossip view, re-run
//!   [`ELECTION_SETTLE`] after a change that can matter to it (membership, dialability, or an
//!   announcement's election-relevant fields), and at its own deadlines; the node carries out
//!   its duties: launch, stop, serve layers.
//! - **baselines** ([`mesh_core::baseline::BaselineCollector`]) on contributors, probing the
//!   node's own llama-server; answers come from [`crate::decode`], so fingerprints are real.
//! - **entries**: mesh-core's router, SLA gate and fallback decision, mesh share, and the audit
//!   loop ([`mesh_core::verify::Auditor`]), all on the entry's gossip view (kept up to date event
//!   by event).
//!
//! Hosts serve requests with llama-server's slots; each request's TTFT and decode come from its
//! host's GPU profile with seeded jitter ([`crate::profile`]), and are recorded exactly as the
//! node records them. Checkers ([`crate::check`]) watch the run; after it, faults stop and a
//! liveness phase waits for every live peer to agree on membership and plans.

mod audit;
mod gossip;
mod queue;
mod report;
mod serve;

use crate::Outcome;
use crate::check::{Checker, Liveness};
use crate::net::Network;
use crate::profile::{Device, Model, PlacementKind, Serving, Timing};
use crate::report::{Report, RequestCounts};
use crate::rng::SimRng;
use crate::scenario::{Behaviour, EventKind, PeerSpec, Scenario};
use crate::timeline::Timeline;
use mesh_core::baseline::{BaselineCache, BaselineCollector, BaselineConfig, ProbeId};
use mesh_core::election::{Demand, Election, Plan};
use mesh_core::gossip::{self as mg, Message};
use mesh_core::invite::Invite;
use mesh_core::peer::RttHint;
use mesh_core::routing::{RouteConfig, Router};
use mesh_core::samples::ModelSamples;
use mesh_core::sla::{EntrySamples, FallbackBudget, FallbackConfig, MeshShareCounters, SlaConfig};
use mesh_core::verify::{AuditId, Auditor, Decode, ProbeFailed, Side};
use mesh_core::{MeshView, PeerId, Timestamp};
use queue::Queue;
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::net::IpAddr;
use std::time::Duration;

/// Runs `scenario` to its end with master seed `seed` and reports.
pub fn run(scenario: &Scenario, seed: u64) -> Report {
    run_outcome(scenario, seed, false, None).report
}

/// Runs `scenario` and returns everything it produced. `all_statuses`: build every node's final
/// `/api/status` (entries' always). `progress` hears (virtual seconds done, in all) now and then.
pub fn run_outcome(
    scenario: &Scenario,
    seed: u64,
    all_statuses: bool,
    progress: Option<&mut dyn FnMut(f64, f64)>,
) -> Outcome {
    let mut world = World::new(scenario, seed);
    world.run(progress);
    world.outcome(all_statuses)
}

/// A node re-runs its election once changes that can matter to it (membership, dialability,
/// an announcement's election-relevant fields) have settled for this long…
pub const ELECTION_SETTLE: Duration = Duration::from_secs(1);
/// …or this long after the first of them, while they keep coming (peers joining one after
/// another): one burst of gossip costs one election, a long burst one every few seconds.
pub const ELECTION_MAX_WAIT: Duration = Duration::from_secs(10);
/// A node that just joined (or restarted) listens this long before its first election, so it
/// decides on the mesh it joined rather than on the few peers its inviter's welcome named first
/// (a burst of joiners each electing on a partial view would each claim a model, and a host
/// that routes a model stays).
pub const JOIN_SETTLE: Duration = Duration::from_secs(10);
/// How long a connection to a dead or cut-off peer takes to fail by default (QUIC keep-alive).
pub const CONNECTION_TIMEOUT: Duration = Duration::from_secs(2);
/// Convergence is measured on changes published this long after the last join or fault.
const CHURN_QUIET: Duration = Duration::from_secs(60);
/// The liveness phase checks for convergence this often.
const LIVENESS_CHECK: Duration = Duration::from_secs(5);
/// A canned-text peer streams stored text: no model, no prefill.
const CANNED: Timing = Timing {
    ttft_ms: crate::profile::REQUEST_OVERHEAD_MS,
    per_token_ms: 2.0,
};
/// How much better than measured an `inflate_timings` peer says it is.
const INFLATION: f64 = 1.5;
/// How much more fast memory than it has an `inflate_memory` peer announces.
const MEMORY_INFLATION: f64 = 2.0;
const MESH_ID: &str = "sim";
/// RTT hints a peer announces: its nearest contributors.
const RTT_HINTS: usize = 16;
/// The model file's mtime the baseline cache is keyed by (files never change in a run).
const MODEL_MTIME: u64 = 1;

#[derive(Debug)]
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
    /// The first byte of attempt `attempt` of `req` is due by now.
    FirstByteDeadline {
        req: u64,
        attempt: u32,
    },
    Ready {
        peer: usize,
        epoch: u64,
    },
    Deliver {
        to: usize,
        from: usize,
        message: Box<Message>,
    },
    GossipInput {
        at: usize,
        input: GossipIn,
    },
    GossipWake(usize),
    Elect(usize),
    ElectionTimer(usize),
    CollectorWake(usize),
    BaselineDone {
        peer: usize,
        probe: ProbeId,
        result: Box<Result<mesh_core::baseline::ProbeResult, ProbeFailed>>,
    },
    AuditWake(usize),
    AuditAnswer {
        entry: usize,
        audit: AuditId,
        side: Side,
        answer: Box<Result<Decode, ProbeFailed>>,
    },
    Publish(usize),
    LivenessCheck,
}

#[derive(Debug, Clone, Copy)]
enum GossipIn {
    ConnectionLost(PeerId),
    ProbeResult { peer: PeerId, reachable: bool },
}

/// A peer's lifecycle in a run (both engines).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Life {
    NotJoined,
    Up,
    Crashed,
    Left,
}

impl Life {
    pub(crate) fn as_str(self) -> &'static str {
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
    timings: BTreeMap<u32, Timing>,
}

#[derive(Debug, Clone, Copy)]
struct Active {
    first_at: Timestamp,
    last_at: Timestamp,
}

/// What a node holds of another: the content seq and that content's election key.
#[derive(Debug, Clone, Copy, Default)]
struct Held {
    seq: u64,
    key: u64,
}

struct Node<'a> {
    spec: &'a PeerSpec,
    id: PeerId,
    key: [u8; 32],
    device: Device,
    life: Life,
    joined_at: Timestamp,
    /// Up since (for the checkers): the last join or restart.
    up_since: Timestamp,
    gossip: Option<mg::State>,
    gossip_wake: Option<Timestamp>,
    /// The invite it joined with (a restarted node rejoins with it) and who minted it.
    invite: Option<Invite>,
    inviter: Option<usize>,
    /// Members remembered across a restart.
    members: Vec<PeerId>,
    /// The content seq of its own last publication (to spot new ones), and that content.
    published_seq: u64,
    published: Option<mesh_core::PeerAnnouncement>,
    /// Per peer index.
    held: Vec<Held>,
    hostings: Vec<Hosting>,
    /// Models this peer serves layers of, and for which host.
    worker_for: BTreeMap<usize, usize>,
    /// Its own through-mesh window (what it publishes).
    samples: ModelSamples,
    served: BTreeMap<usize, u64>,
    /// How it last laid out each model it hosted.
    placements: BTreeMap<usize, PlacementKind>,
    election: Election,
    serving_models: Vec<String>,
    /// Its last election's plans.
    plans: BTreeMap<String, Plan>,
    elect_pending: bool,
    /// The first and the last change since its last election.
    dirty_since: Option<Timestamp>,
    last_dirty: Timestamp,
    election_timer: Option<Timestamp>,
    collector: BaselineCollector,
    collector_wake: Option<Timestamp>,
    /// The baseline probe running on its server: (probe, hosting epoch).
    baseline_probe: Option<(ProbeId, u64)>,
    rtt_hints: Vec<RttHint>,
    jitter: SimRng,
    publish_pending: bool,
    /// Real requests on its servers (audit probes from others included: they look like chats).
    inflight: u32,
}

impl Node<'_> {
    fn live_hosting(&self, model: usize) -> Option<&Hosting> {
        self.hostings
            .iter()
            .find(|h| h.model == model && !h.draining)
    }

    fn hosting_mut(&mut self, epoch: u64) -> Option<&mut Hosting> {
        self.hostings.iter_mut().find(|h| h.epoch == epoch)
    }

    fn up(&self) -> bool {
        self.life == Life::Up
    }
}

struct ModelInfo {
    name: String,
    size_bytes: u64,
    physics: Model,
}

/// An audit probe travelling like a chat.
#[derive(Debug, Clone)]
struct AuditReq {
    entry: usize,
    audit: AuditId,
    prompt: String,
    max_tokens: u32,
    probe_shaped: bool,
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
    /// Which dispatch this is (a first-byte deadline names the attempt it guards).
    attempt: u32,
    /// When the entry last sent it upstream, and when it reached the host.
    dispatched: Timestamp,
    host_arrival: Timestamp,
    audit: Option<AuditReq>,
}

/// One way into the mesh: an entry peer, or (`None`) clients on the hosts' own API.
struct EntryPoint {
    router: Router,
    samples: EntrySamples,
    share: MeshShareCounters,
    fallback: Option<FallbackConfig>,
    budget: FallbackBudget,
    /// A real entry's gossip view, kept up to date event by event; the direct clients' view of
    /// every live peer, rebuilt when stale (`None`).
    view: Option<MeshView>,
    auditor: Option<Auditor>,
    audit_wake: Option<Timestamp>,
    first_served: BTreeMap<String, u64>,
}

/// A verdict history of one (peer, model), for the report.
#[derive(Debug, Clone, Default)]
struct VerdictLog {
    matches: u32,
    mismatches: u32,
    inconclusive: u32,
    audits: u32,
    first_mismatch: Option<Timestamp>,
    demoted: bool,
}

/// A publication whose spread is being measured.
#[derive(Debug, Clone)]
struct Spreading {
    seq: u64,
    at: Timestamp,
    /// 99 % of `others`, the live peers but its origin at publication.
    target: usize,
    others: usize,
    holders: usize,
    converged: bool,
    /// Only load changed (pushed to fewer peers by design).
    load_only: bool,
    /// Index into the timeline's spreads, when sampled.
    sample: Option<usize>,
}

/// Spread figures of one kind of change.
#[derive(Debug, Default)]
struct SpreadStats {
    changes: u64,
    converged_ms: Vec<f64>,
    /// Given up on before reaching 99 %.
    unconverged: u64,
    /// Published during churn, not measured.
    churn: u64,
}

/// A crash of a peer some entry routed to.
#[derive(Debug, Clone)]
struct CrashWatch {
    peer: usize,
    at: Timestamp,
    /// Entries still routing to it.
    entries: Vec<usize>,
    worst: Duration,
}

#[derive(Debug, Default)]
struct GossipStats {
    messages: u64,
    bytes: u64,
    bad_signatures: u64,
    /// Bytes at the steady-state mark.
    bytes_at_half: Option<u64>,
    /// Integral of gossiping nodes over time (node-seconds), whole run and second half.
    node_seconds: f64,
    node_seconds_half: f64,
    last_count_at: Timestamp,
    /// Nodes running gossip now.
    live_nodes: usize,
    /// Per origin: its latest announcement stripped to what the election reads, by election key.
    trimmed: Vec<Option<(u64, mesh_core::PeerAnnouncement)>>,
    /// Per origin, its publications still spreading, oldest first.
    spreading: Vec<VecDeque<Spreading>>,
    /// Structural changes, then load-only ones.
    structural: SpreadStats,
    load_only: SpreadStats,
    crashes: Vec<CrashWatch>,
    /// (messages, bytes) per message kind.
    /// Per message kind: (messages, bytes, bytes at half time).
    by_kind: BTreeMap<&'static str, (u64, u64, u64)>,
}

struct World<'a> {
    sc: &'a Scenario,
    seed: u64,
    end: Timestamp,
    now: Timestamp,
    queue: Queue<Ev>,
    net: Network,
    models: Vec<ModelInfo>,
    nodes: Vec<Node<'a>>,
    index: HashMap<PeerId, usize>,
    gossip_config: mg::Config,
    connection_timeout: Duration,
    traffic: Vec<SimRng>,
    /// Draws of the world itself: invites, message loss.
    rng: SimRng,
    requests: BTreeMap<u64, Request>,
    next_request: u64,
    next_epoch: u64,
    entries: BTreeMap<Option<usize>, EntryPoint>,
    /// The node whose view the report's plan is made on: the first entry, if any.
    observer: Option<usize>,
    /// What the election weighs: the scenario's traffic per model.
    demand: BTreeMap<String, Demand>,
    counts: Vec<RequestCounts>,
    audits_sent: u64,
    sla: SlaConfig,
    stats: GossipStats,
    checker: Checker,
    timeline: Timeline,
    verdicts: BTreeMap<(usize, usize), VerdictLog>,
    /// When a peer last joined or restarted, or a partition began or healed: changes published
    /// within [`CHURN_QUIET`] of it are left out of the convergence figures.
    last_churn: Timestamp,
    /// When the last fault (scenario event) happened.
    last_fault: Timestamp,
    /// Faults stopped: the liveness phase runs.
    liveness: bool,
    converged: bool,
    engine_stats: crate::EngineStats,
}

fn at_secs(s: f64) -> Timestamp {
    Timestamp::from_micros((s.max(0.0) * 1e6).round() as u64)
}

fn ms(v: f64) -> Duration {
    Duration::from_micros((v.max(0.0) * 1e3).round() as u64)
}

fn since_start(t: Timestamp) -> Duration {
    Duration::from_micros(t.as_micros())
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
        let net = Network::new(seed, &sc.network, sc.peers.len());
        let mut nodes = Vec::with_capacity(sc.peers.len());
        let mut index = HashMap::with_capacity(sc.peers.len());
        for (i, spec) in sc.peers.iter().enumerate() {
            let mut key_rng = SimRng::derive(seed, "key", i as u64);
            let mut key = [0u8; 32];
            for chunk in key.chunks_mut(8) {
                chunk.copy_from_slice(&key_rng.next_u64().to_le_bytes());
            }
            let id = mg::SecretKey::from_bytes(key).peer_id();
            index.insert(id, i);
            nodes.push(Node {
                spec,
                id,
                key,
                device: Device::from_peer(spec),
                life: Life::NotJoined,
                joined_at: Timestamp::ZERO,
                up_since: Timestamp::ZERO,
                gossip: None,
                gossip_wake: None,
                invite: None,
                inviter: None,
                members: Vec::new(),
                published_seq: 0,
                published: None,
                held: Vec::new(),
                hostings: Vec::new(),
                worker_for: BTreeMap::new(),
                samples: ModelSamples::default(),
                served: BTreeMap::new(),
                placements: BTreeMap::new(),
                election: Election::new(),
                serving_models: Vec::new(),
                plans: BTreeMap::new(),
                elect_pending: false,
                dirty_since: None,
                last_dirty: Timestamp::ZERO,
                election_timer: None,
                collector: new_collector(seed, i, spec, BaselineCache::default(), 0),
                collector_wake: None,
                baseline_probe: None,
                rtt_hints: Vec::new(),
                jitter: SimRng::derive(seed, "jitter", i as u64),
                publish_pending: false,
                inflight: 0,
            });
        }
        let observer = sc.peers.iter().position(PeerSpec::is_entry);
        let demand = sc.demand();
        let catalog = sc.tier_catalog();
        let mut gossip_config = mg::Config::default();
        let g = &sc.gossip;
        if let Some(v) = g.tick_s {
            gossip_config.tick_interval = Duration::from_secs_f64(v);
        }
        if let Some(v) = g.heartbeat_s {
            gossip_config.heartbeat_interval = Duration::from_secs_f64(v);
        }
        if let Some(v) = g.anti_entropy_peers {
            gossip_config.anti_entropy_peers = v;
        }
        if let Some(v) = g.rumor_fanout {
            gossip_config.rumor_fanout = v;
        }
        if let Some(v) = g.heartbeat_fanout {
            gossip_config.heartbeat_fanout = v;
        }
        let connection_timeout = g.connection_timeout_ms.map_or(CONNECTION_TIMEOUT, ms);
        let mut world = World {
            sc,
            seed,
            end: at_secs(sc.duration_s),
            now: Timestamp::ZERO,
            queue: Queue::new(),
            net,
            counts: vec![RequestCounts::default(); models.len()],
            timeline: Timeline::new(models.iter().map(|m| m.name.clone()).collect()),
            models,
            nodes,
            index,
            gossip_config,
            connection_timeout,
            traffic: (0..sc.traffic.len())
                .map(|i| SimRng::derive(seed, "traffic", i as u64))
                .collect(),
            rng: SimRng::derive(seed, "world", 0),
            requests: BTreeMap::new(),
            next_request: 0,
            next_epoch: 0,
            entries: BTreeMap::new(),
            observer,
            demand,
            audits_sent: 0,
            sla: SlaConfig {
                catalog,
                ..SlaConfig::default()
            },
            stats: GossipStats {
                spreading: vec![VecDeque::new(); sc.peers.len()],
                trimmed: vec![None; sc.peers.len()],
                ..GossipStats::default()
            },
            checker: Checker::new(),
            verdicts: BTreeMap::new(),
            last_churn: Timestamp::ZERO,
            last_fault: Timestamp::ZERO,
            liveness: false,
            converged: false,
            engine_stats: crate::EngineStats::default(),
        };
        for (i, p) in sc.peers.iter().enumerate().filter(|(_, p)| p.is_entry()) {
            let ep = world.entry_point(Some(i), p.fallback);
            world.entries.insert(Some(i), ep);
        }
        let direct = world.entry_point(None, false);
        world.entries.insert(None, direct);
        world.compute_rtt_hints();
        world
    }

    fn entry_point(&self, entry: Option<usize>, fallback: bool) -> EntryPoint {
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
            auditor: entry.map(|e| self.new_auditor(e)),
            audit_wake: None,
            first_served: BTreeMap::new(),
        }
    }

    /// What a peer measured of its nearest contributors: its RTT hints (static: links only
    /// change with `set_latency`).
    fn compute_rtt_hints(&mut self) {
        let contributors: Vec<usize> = (0..self.nodes.len())
            .filter(|&q| self.nodes[q].spec.contributes())
            .collect();
        for p in 0..self.nodes.len() {
            if !self.nodes[p].spec.contributes() {
                continue;
            }
            let mut near: Vec<(u32, usize)> = contributors
                .iter()
                .filter(|&&q| q != p)
                .map(|&q| (self.net.link(p, q).rtt_ms.round() as u32, q))
                .collect();
            let k = RTT_HINTS.min(near.len());
            if k > 0 && k < near.len() {
                near.select_nth_unstable(k - 1);
            }
            near.truncate(k);
            near.sort_unstable();
            self.nodes[p].rtt_hints = near
                .into_iter()
                .map(|(rtt_ms, q)| RttHint {
                    peer: self.nodes[q].id,
                    rtt_ms,
                })
                .collect();
        }
    }

    fn run(&mut self, mut progress: Option<&mut dyn FnMut(f64, f64)>) {
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
        let half = at_secs(self.sc.duration_s / 2.0);
        let total_s = self.sc.duration_s;
        let mut next_tick = Timestamp::ZERO;
        let mut events: u64 = 0;
        let mut half_marked = false;
        while let Some((at, ev)) = self.queue.pop_until(self.end) {
            if !half_marked && at >= half {
                self.count_nodes(half);
                self.mark_half();
                half_marked = true;
            }
            self.now = at;
            self.handle(ev);
            events += 1;
            self.engine_stats.events += 1;
            if let Some(p) = progress.as_deref_mut()
                && events % 4096 == 0
                && at >= next_tick
            {
                p(since_start(at).as_secs_f64(), total_s);
                next_tick = at + Duration::from_secs(10);
            }
        }
        if !half_marked {
            self.count_nodes(half);
            self.mark_half();
        }
        self.now = self.end;
        self.count_nodes(self.end);
        if let Some(p) = progress {
            p(total_s, total_s);
        }
    }

    fn handle(&mut self, ev: Ev) {
        match ev {
            Ev::Join(p) => self.join(p),
            Ev::Scenario(i) => self.scenario_event(i),
            Ev::Arrival(t) => self.arrival(t),
            Ev::Dispatch(req) => self.dispatch(req),
            Ev::HostArrive { req, peer, epoch } => self.host_arrive(req, peer, epoch),
            Ev::HostDone { req, peer, epoch } => self.host_done(req, peer, epoch),
            Ev::FirstByteDeadline { req, attempt } => self.first_byte_deadline(req, attempt),
            Ev::Ready { peer, epoch } => self.ready(peer, epoch),
            Ev::Deliver { to, from, message } => self.deliver(to, from, *message),
            Ev::GossipInput { at, input } => self.gossip_in(at, input),
            Ev::GossipWake(p) => self.gossip_wake(p),
            Ev::Elect(p) => self.elect_when_settled(p),
            Ev::ElectionTimer(p) => {
                if self.nodes[p].election_timer == Some(self.now) {
                    self.nodes[p].election_timer = None;
                    self.elect(p);
                }
            }
            Ev::CollectorWake(p) => self.collector_wake(p),
            Ev::BaselineDone {
                peer,
                probe,
                result,
            } => self.baseline_done(peer, probe, *result),
            Ev::AuditWake(e) => self.audit_wake(e),
            Ev::AuditAnswer {
                entry,
                audit,
                side,
                answer,
            } => self.audit_answer(entry, audit, side, *answer),
            Ev::Publish(p) => self.publish(p),
            Ev::LivenessCheck => self.liveness_check(),
        }
    }

    /// Accumulates node-seconds of gossiping nodes up to `t` (for bytes per peer per second).
    /// Marks the start of the run's second half, where the steady-state gossip figures count.
    fn mark_half(&mut self) {
        self.stats.bytes_at_half = Some(self.stats.bytes);
        for k in self.stats.by_kind.values_mut() {
            k.2 = k.1;
        }
    }

    fn count_nodes(&mut self, t: Timestamp) {
        let live = self.nodes.iter().filter(|n| n.gossip.is_some()).count() as f64;
        let dt = t.saturating_since(self.stats.last_count_at).as_secs_f64();
        self.stats.node_seconds += live * dt;
        if self.stats.bytes_at_half.is_some() {
            self.stats.node_seconds_half += live * dt;
        }
        self.stats.last_count_at = t;
    }

    // ---- membership and faults ----

    fn join(&mut self, p: usize) {
        self.count_nodes(self.now);
        let node = &mut self.nodes[p];
        node.life = Life::Up;
        node.joined_at = self.now;
        node.up_since = self.now;
        self.last_churn = self.now;
        self.start_gossip(p, false);
        self.touch(p);
        self.dirty(p);
        self.drain_auditor(p);
    }

    fn scenario_event(&mut self, i: usize) {
        let sc = self.sc;
        let ev = &sc.events[i];
        let peers: Vec<usize> = ev.peers.iter().filter_map(|n| sc.peer_index(n)).collect();
        // Membership churn: peers (re)joining, or groups cut apart or rejoined. A crash or a
        // leave only shrinks the set of peers a change must reach.
        if matches!(
            ev.kind,
            EventKind::Restart | EventKind::Partition | EventKind::Heal
        ) {
            self.last_churn = self.now;
        }
        self.last_fault = self.now;
        self.count_nodes(self.now);
        match ev.kind {
            EventKind::Crash => {
                self.watch_crashes(&peers);
                for &p in &peers {
                    self.nodes[p].life = Life::Crashed;
                    self.stop_gossip(p);
                    self.break_peer(p, true);
                    self.notice_gone(p);
                }
                self.cut_streams();
            }
            EventKind::Leave => {
                for &p in &peers {
                    self.leave_gossip(p);
                    self.nodes[p].life = Life::Left;
                    // In-flight chats finish; its rpc-server (if a worker) goes at once.
                    self.break_peer(p, false);
                }
            }
            EventKind::Restart => {
                for &p in &peers {
                    // A fresh process: new election machine, empty in-memory sample window. The
                    // native baseline survives (the node caches it on disk), and so do the
                    // members it persisted and its invite.
                    let cache = self.nodes[p].collector.cache().clone();
                    let collector =
                        new_collector(self.seed, p, &sc.peers[p], cache, self.now.as_micros());
                    let node = &mut self.nodes[p];
                    node.life = Life::Up;
                    node.up_since = self.now;
                    node.election = Election::new();
                    node.samples = ModelSamples::default();
                    node.serving_models.clear();
                    node.plans.clear();
                    node.collector = collector;
                    node.collector_wake = None;
                    node.baseline_probe = None;
                    node.inflight = 0;
                    self.start_gossip(p, true);
                    if let Some(e) = self.entries.get_mut(&Some(p)) {
                        e.view = None;
                        e.auditor = None;
                    }
                    if self.entries.contains_key(&Some(p)) {
                        let auditor = self.new_auditor(p);
                        if let Some(e) = self.entries.get_mut(&Some(p)) {
                            e.auditor = Some(auditor);
                            e.audit_wake = None;
                        }
                        self.drain_auditor(p);
                    }
                    self.touch(p);
                    self.dirty(p);
                }
            }
            EventKind::Partition => {
                self.net.partition(&peers);
                self.cut_streams();
                for p in 0..self.nodes.len() {
                    self.notice_cut(p);
                }
            }
            EventKind::Heal => self.net.heal(&peers),
            EventKind::SetLatency => {
                let range = ev
                    .latency_ms
                    .map_or(self.sc.network.latency_ms, |l| l.range());
                self.net.set_latency(&peers, range, ev.loss);
                self.relink_pipelines();
                self.compute_rtt_hints();
                for p in 0..self.nodes.len() {
                    self.touch(p);
                }
            }
        }
        self.invalidate_direct_view();
    }

    /// `p` went away: its pipelines' hosts lose it, and (`crashed`) its own streams break.
    fn break_peer(&mut self, p: usize, crashed: bool) {
        let mut hosts_using = Vec::new();
        for (h, node) in self.nodes.iter().enumerate() {
            for x in node.hostings.iter().filter(|x| x.workers.contains(&p)) {
                hosts_using.push((h, x.epoch));
            }
        }
        for (h, epoch) in hosts_using {
            self.drop_hosting(h, epoch);
            self.touch(h);
            self.dirty(h);
        }
        self.nodes[p].worker_for.clear();
        if crashed {
            let epochs: Vec<u64> = self.nodes[p].hostings.iter().map(|h| h.epoch).collect();
            for epoch in epochs {
                self.drop_hosting(p, epoch);
            }
        }
        self.report_pipelines();
    }

    // ---- the direct clients' view ----

    fn invalidate_direct_view(&mut self) {
        if let Some(e) = self.entries.get_mut(&None) {
            e.view = None;
        }
    }

    /// Every live peer as it announces itself now: what clients of the hosts' own API see.
    fn direct_view(&self) -> MeshView {
        let peers = (0..self.nodes.len())
            .filter(|&p| self.nodes[p].up())
            .filter_map(|p| {
                let g = self.nodes[p].gossip.as_ref()?;
                Some(mesh_core::KnownPeer {
                    announcement: g.local().value().clone(),
                    rtt_ms: Some(0),
                    first_seen: self.nodes[p].joined_at,
                    last_fresh: self.now,
                })
            })
            .collect();
        MeshView::new(DIRECT_CLIENT, peers)
    }

    fn one_way(&self, entry: Option<usize>, peer: usize) -> f64 {
        entry.map_or(0.0, |e| self.net.one_way_ms(e, peer))
    }

    // ---- liveness ----

    /// After the run: heal the network, stop traffic and faults, and wait (at most `[check]
    /// liveness_s`) for every live peer to agree on membership and plans.
    fn liveness_phase(&mut self) {
        let budget = self.sc.check.liveness_s;
        if budget <= 0.0 {
            self.checker
                .liveness(since_start(self.now), Liveness::Skipped);
            return;
        }
        self.liveness = true;
        self.net.heal(&[]);
        self.invalidate_direct_view();
        self.last_fault = self.last_fault.max(self.end);
        let stop = self.end + Duration::from_secs_f64(budget);
        self.queue
            .push(self.end + LIVENESS_CHECK, Ev::LivenessCheck);
        while !self.converged
            && let Some((at, ev)) = self.queue.pop_until(stop)
        {
            self.now = at;
            self.handle(ev);
        }
        if !self.converged {
            self.now = stop;
            let reason = self
                .disagreement()
                .unwrap_or_else(|| "converged only at the very end".into());
            self.checker.liveness(
                since_start(stop),
                Liveness::NotConverged {
                    after_s: budget,
                    reason,
                },
            );
        }
    }

    fn liveness_check(&mut self) {
        match self.disagreement() {
            None => {
                self.converged = true;
                let after = self.now.saturating_since(self.end).as_secs_f64();
                self.checker.liveness(
                    since_start(self.now),
                    Liveness::Converged { after_s: after },
                );
            }
            Some(_) => self
                .queue
                .push(self.now + LIVENESS_CHECK, Ev::LivenessCheck),
        }
    }

    /// Why the live peers do not agree yet; `None` when they do.
    fn disagreement(&self) -> Option<String> {
        let live: Vec<usize> = (0..self.nodes.len())
            .filter(|&p| self.nodes[p].up() && self.nodes[p].gossip.is_some())
            .collect();
        let live_ids: Vec<PeerId> = live.iter().map(|&p| self.nodes[p].id).collect();
        let mut sorted_ids = live_ids.clone();
        sorted_ids.sort();
        for &p in &live {
            let g = self.nodes[p].gossip.as_ref().expect("filtered");
            let mut members: Vec<PeerId> = g
                .peer_ids()
                .filter(|id| g.peer(id).is_some_and(|i| !i.stale))
                .collect();
            members.push(self.nodes[p].id);
            members.sort();
            if members != sorted_ids {
                let missing: Vec<String> = sorted_ids
                    .iter()
                    .filter(|id| members.binary_search(id).is_err())
                    .map(|id| self.name_of(id))
                    .collect();
                let extra: Vec<String> = members
                    .iter()
                    .filter(|id| sorted_ids.binary_search(id).is_err())
                    .map(|id| self.name_of(id))
                    .collect();
                return Some(format!(
                    "{} sees the membership differently (missing {:?}, extra {:?})",
                    self.nodes[p].spec.name, missing, extra
                ));
            }
        }
        let electing: Vec<usize> = live
            .iter()
            .copied()
            .filter(|&p| self.nodes[p].spec.contributes())
            .collect();
        if let Some(&p) = electing.iter().find(|&&p| self.nodes[p].elect_pending) {
            return Some(format!(
                "{} has an election pending",
                self.nodes[p].spec.name
            ));
        }
        if let Some((&first, rest)) = electing.split_first() {
            let plans = &self.nodes[first].plans;
            if let Some(&other) = rest.iter().find(|&&q| &self.nodes[q].plans != plans) {
                return Some(format!(
                    "{} and {} plan differently: {:?} / {:?}",
                    self.nodes[first].spec.name,
                    self.nodes[other].spec.name,
                    plans,
                    self.nodes[other].plans
                ));
            }
        }
        None
    }

    fn name_of(&self, id: &PeerId) -> String {
        self.index
            .get(id)
            .map_or_else(|| id.short(), |&i| self.nodes[i].spec.name.clone())
    }

    // ---- the outcome ----

    fn outcome(mut self, all_statuses: bool) -> Outcome {
        let mut report = self.report();
        let statuses = self.statuses(all_statuses);
        let derived = self.derived_options();
        self.liveness_phase();
        report.checks = self.checker.finish(since_start(self.now));
        Outcome {
            report,
            statuses,
            timeline: std::mem::take(&mut self.timeline),
            derived,
            stats: self.engine_stats,
        }
    }

    /// Everything the seed decided, for a failing run's printout.
    fn derived_options(&self) -> Vec<(String, String)> {
        let mut out = vec![
            ("seed".to_string(), self.seed.to_string()),
            ("engine".into(), "des".into()),
            ("gossip".into(), format!("{:?}", self.gossip_config)),
            (
                "connection_timeout_ms".into(),
                self.connection_timeout.as_millis().to_string(),
            ),
        ];
        let entry = self.observer;
        for (p, n) in self.nodes.iter().enumerate() {
            let inviter = n
                .inviter
                .map_or("-".to_string(), |i| self.nodes[i].spec.name.clone());
            let to_entry = entry.map_or("-".to_string(), |e| {
                format!("{:.1} ms", self.net.one_way_ms(e, p))
            });
            out.push((
                format!("peer {}", n.spec.name),
                format!(
                    "id {} invited by {inviter}, one-way to the entry {to_entry}",
                    n.id.short()
                ),
            ));
        }
        if self.nodes.len() <= 16 {
            for a in 0..self.nodes.len() {
                for b in a + 1..self.nodes.len() {
                    out.push((
                        format!(
                            "link {}-{}",
                            self.nodes[a].spec.name, self.nodes[b].spec.name
                        ),
                        format!("{:.1} ms one-way", self.net.one_way_ms(a, b)),
                    ));
                }
            }
        }
        out
    }
}

fn new_collector(
    seed: u64,
    p: usize,
    spec: &PeerSpec,
    cache: BaselineCache,
    incarnation: u64,
) -> BaselineCollector {
    let config = BaselineConfig::new(env!("CARGO_PKG_VERSION"), spec.backend);
    BaselineCollector::new(
        config,
        cache,
        SimRng::derive(seed, "baseline", (p as u64) << 32 ^ incarnation).pcg(),
    )
}

#[cfg(test)]
mod tests;
