//! A small discrete-event harness for gossip machines (after iroh-gossip's `proto/sim.rs` and
//! quinn's `Pair`): many `State`s over a seeded network with per-link latency and loss, driven in
//! virtual time. Every random choice comes from the one seed; the same seed gives the same run.
#![allow(dead_code)]

use mesh_core::gossip::state::PeerInfo;
use mesh_core::gossip::{Config, Event, Input, Message, Output, SecretKey, State, wire};
use mesh_core::invite::DEFAULT_TTL;
use mesh_core::peer::{PeerAnnouncement, Role};
use mesh_core::{PeerId, Timestamp};
use rand_core::{Rng, SeedableRng};
use rand_pcg::Pcg64;
use std::collections::{BTreeMap, BTreeSet};
use std::hash::{DefaultHasher, Hash, Hasher};
use std::time::Duration;

pub const MESH: &str = "sim-mesh";
pub const T0: Timestamp = Timestamp::from_secs(1_000_000);

#[derive(Debug, Clone)]
pub struct NetConfig {
    /// Per-link one-way latency, drawn uniformly once per link.
    pub latency_ms: (u64, u64),
    pub loss: f64,
    /// Encode and decode every message (exercises the codec; each node then verifies its own
    /// copies). Otherwise messages travel as values and only their encoded size is counted.
    pub through_wire: bool,
    /// How long a sender takes to notice that a message went to a crashed peer.
    pub connection_timeout: Duration,
}

impl Default for NetConfig {
    fn default() -> Self {
        NetConfig {
            latency_ms: (20, 100),
            loss: 0.01,
            through_wire: false,
            connection_timeout: Duration::from_secs(1),
        }
    }
}

enum Pending {
    Deliver {
        from: usize,
        to: usize,
        message: Message,
    },
    Input {
        at: usize,
        input: Input,
    },
}

pub struct Sim {
    pub nodes: Vec<Option<State>>,
    pub ids: Vec<PeerId>,
    index: BTreeMap<PeerId, usize>,
    pub gossip: Config,
    pub net: NetConfig,
    pub now: Timestamp,
    rng: Pcg64,
    seq: u64,
    queue: BTreeMap<(Timestamp, u64), Pending>,
    wakes: BTreeSet<(Timestamp, usize)>,
    wake_of: Vec<Option<Timestamp>>,
    links: BTreeMap<(usize, usize), Duration>,
    pub bytes_sent: Vec<u64>,
    pub messages_sent: Vec<u64>,
    pub events: Vec<(Timestamp, usize, Event)>,
    /// A running hash of every output, for determinism checks.
    pub trace: u64,
    pub record_events: bool,
    /// Nodes cut off from everyone (a partition): their messages, both ways, are lost.
    pub isolated: BTreeSet<usize>,
}

pub fn key_for(seed: u64, i: usize) -> SecretKey {
    SecretKey::generate(&mut Pcg64::seed_from_u64(
        seed.wrapping_mul(1_000_003) + i as u64,
    ))
}

impl Sim {
    /// `n` nodes, none connected yet.
    pub fn new(seed: u64, n: usize, gossip: Config, net: NetConfig) -> Sim {
        let mut sim = Sim {
            nodes: Vec::new(),
            ids: Vec::new(),
            index: BTreeMap::new(),
            gossip,
            net,
            now: T0,
            rng: Pcg64::seed_from_u64(seed),
            seq: 0,
            queue: BTreeMap::new(),
            wakes: BTreeSet::new(),
            wake_of: Vec::new(),
            links: BTreeMap::new(),
            bytes_sent: Vec::new(),
            messages_sent: Vec::new(),
            events: Vec::new(),
            trace: 0,
            record_events: true,
            isolated: BTreeSet::new(),
        };
        for i in 0..n {
            let key = key_for(seed, i);
            sim.ids.push(key.peer_id());
            sim.index.insert(key.peer_id(), i);
            sim.nodes.push(None);
            sim.wake_of.push(None);
            sim.bytes_sent.push(0);
            sim.messages_sent.push(0);
        }
        let seed_base = seed;
        for i in 0..n {
            sim.start(i, seed_base);
        }
        sim
    }

    fn start(&mut self, i: usize, seed: u64) {
        let key = key_for(seed, i);
        let ann = PeerAnnouncement::new(key.peer_id(), MESH, Role::Worker);
        let rng = Pcg64::seed_from_u64(self.rng.next_u64());
        self.nodes[i] = Some(State::new(key, ann, self.gossip.clone(), rng, self.now));
        self.rewake(i);
    }

    pub fn id(&self, i: usize) -> PeerId {
        self.ids[i]
    }

    pub fn alive(&self, i: usize) -> bool {
        self.nodes[i].is_some()
    }

    pub fn node(&self, i: usize) -> &State {
        self.nodes[i].as_ref().expect("node is alive")
    }

    pub fn info(&self, at: usize, about: usize) -> Option<PeerInfo> {
        self.node(at).peer(&self.ids[about])
    }

    /// Node `i` joins through an invite minted by node `via`, now.
    pub fn join(&mut self, i: usize, via: usize) {
        let now = self.now;
        let inv = self.nodes[via]
            .as_mut()
            .expect("inviter alive")
            .mint_invite(Vec::new(), DEFAULT_TTL, now);
        self.input(i, Input::Join(inv));
    }

    /// Everyone knows everyone, at the cost of one welcome each instead of a join storm: every
    /// node joins through node 0 (node 0 through node 1), the Hellos are discarded, and each
    /// node is handed every announcement as a reply from its inviter. Only protocol inputs.
    pub fn prewarm(&mut self) {
        let now = self.now;
        let all: Vec<_> = (0..self.nodes.len())
            .map(|i| self.node(i).local().clone())
            .collect();
        for i in 0..self.nodes.len() {
            let via = if i == 0 { 1 } else { 0 };
            let inv = self.nodes[via]
                .as_mut()
                .unwrap()
                .mint_invite(Vec::new(), DEFAULT_TTL, now);
            let node = self.nodes[i].as_mut().unwrap();
            node.handle(Input::Join(inv), now).for_each(drop);
            let records = wire::Records {
                announcements: all.clone(),
                ..Default::default()
            };
            node.handle(
                Input::Message {
                    from: self.ids[via],
                    message: Message::Records(records),
                },
                now,
            )
            .for_each(drop);
            self.rewake(i);
        }
    }

    pub fn input(&mut self, at: usize, input: Input) {
        let now = self.now;
        let Some(node) = self.nodes[at].as_mut() else {
            return;
        };
        let outs: Vec<Output> = node.handle(input, now).collect();
        self.rewake(at);
        for o in outs {
            self.perform(at, o);
        }
    }

    pub fn update(&mut self, at: usize, f: impl FnOnce(&mut PeerAnnouncement)) {
        let mut a = self.node(at).local().value().clone();
        f(&mut a);
        self.input(at, Input::UpdateLocal(Box::new(a)));
    }

    pub fn crash(&mut self, i: usize) {
        self.nodes[i] = None;
        if let Some(t) = self.wake_of[i].take() {
            self.wakes.remove(&(t, i));
        }
    }

    /// Restarts a crashed node with the same key and empty state; it joins through `via`.
    pub fn restart(&mut self, i: usize, seed: u64, via: usize) {
        self.start(i, seed);
        self.join(i, via);
    }

    fn rewake(&mut self, i: usize) {
        if let Some(t) = self.wake_of[i].take() {
            self.wakes.remove(&(t, i));
        }
        if let Some(t) = self.nodes[i].as_ref().and_then(|n| n.poll_timeout()) {
            self.wake_of[i] = Some(t);
            self.wakes.insert((t, i));
        }
    }

    fn mix(&mut self, v: impl Hash) {
        let mut h = DefaultHasher::new();
        self.trace.hash(&mut h);
        v.hash(&mut h);
        self.trace = h.finish();
    }

    fn link(&mut self, a: usize, b: usize) -> Duration {
        let key = (a.min(b), a.max(b));
        let (lo, hi) = self.net.latency_ms;
        let draw = lo + self.rng.next_u64() % (hi - lo + 1);
        *self.links.entry(key).or_insert(Duration::from_millis(draw))
    }

    fn push(&mut self, at: Timestamp, p: Pending) {
        self.seq += 1;
        self.queue.insert((at, self.seq), p);
    }

    fn perform(&mut self, at: usize, o: Output) {
        let now = self.now;
        if !matches!(o, Output::SendMessage { .. }) {
            self.mix((now.as_micros(), at, format!("{o:?}")));
        }
        match o {
            Output::SendMessage { to, message } => {
                let Some(&dst) = self.index.get(&to) else {
                    return;
                };
                let frame = wire::encode(&message).expect("messages fit a frame");
                self.bytes_sent[at] += frame.len() as u64;
                self.messages_sent[at] += 1;
                self.mix((now.as_micros(), at, dst, &frame));
                if self.isolated.contains(&at) || self.isolated.contains(&dst) {
                    return;
                }
                if self.nodes[dst].is_none() {
                    let t = now + self.net.connection_timeout;
                    self.push(
                        t,
                        Pending::Input {
                            at,
                            input: Input::ConnectionLost(to),
                        },
                    );
                    return;
                }
                let lost = (self.rng.next_u64() as f64 / u64::MAX as f64) < self.net.loss;
                let latency = self.link(at, dst);
                if lost {
                    return;
                }
                let message = if self.net.through_wire {
                    wire::decode(&frame).expect("own frames decode").0
                } else {
                    message
                };
                self.push(
                    now + latency,
                    Pending::Deliver {
                        from: at,
                        to: dst,
                        message,
                    },
                );
            }
            Output::Probe(p) => {
                let dst = self.index[&p];
                let cut = self.isolated.contains(&at) || self.isolated.contains(&dst);
                let (t, reachable) = if self.nodes[dst].is_some() && !cut {
                    (now + self.link(at, dst) * 2, true)
                } else {
                    (now + self.net.connection_timeout, false)
                };
                self.push(
                    t,
                    Pending::Input {
                        at,
                        input: Input::ProbeResult { peer: p, reachable },
                    },
                );
            }
            Output::Dial { .. } | Output::Disconnect(_) => {}
            Output::Event(e) => {
                if self.record_events {
                    self.events.push((now, at, e));
                }
            }
        }
    }

    /// Runs every delivery and timer up to and including `until`.
    pub fn run_until(&mut self, until: Timestamp) {
        loop {
            let next_msg = self.queue.keys().next().map(|k| k.0);
            let next_wake = self.wakes.iter().next().map(|w| w.0);
            let next = match (next_msg, next_wake) {
                (Some(a), Some(b)) => a.min(b),
                (Some(a), None) => a,
                (None, Some(b)) => b,
                (None, None) => break,
            };
            if next > until {
                break;
            }
            self.now = next;
            if next_msg == Some(next) {
                let (_, p) = self.queue.pop_first().expect("peeked");
                match p {
                    Pending::Deliver { from, to, message } => {
                        let from = self.ids[from];
                        self.input(to, Input::Message { from, message });
                    }
                    Pending::Input { at, input } => self.input(at, input),
                }
            } else {
                let &(t, i) = self.wakes.iter().next().expect("peeked");
                self.wakes.remove(&(t, i));
                self.wake_of[i] = None;
                self.input(i, Input::Timeout);
            }
        }
        self.now = self.now.max(until);
    }

    pub fn run_for(&mut self, d: Duration) {
        let until = self.now + d;
        self.run_until(until);
    }

    /// How many live nodes other than `origin` hold `origin` at content seq ≥ `seq`.
    pub fn holders(&self, origin: usize, seq: u64) -> usize {
        (0..self.nodes.len())
            .filter(|&i| i != origin && self.alive(i))
            .filter(|&i| self.info(i, origin).is_some_and(|p| p.content_seq >= seq))
            .count()
    }

    pub fn live_count(&self) -> usize {
        self.nodes.iter().filter(|n| n.is_some()).count()
    }
}
