//! Fault fuzzing of the gossip machine (after noq's proptest op sequences and TigerBeetle's VOPR):
//! proptest generates sequences of deliver / drop / duplicate / reorder / advance time / crash /
//! restart / leave / change / forge, and safety invariants are checked after every step:
//!
//! - no node ever holds an announcement its origin did not sign (forged or altered relays);
//! - a node's seq for a peer never goes backwards while it holds the peer;
//! - a peer that crashed or left, once removed at a node, is not brought back there by old
//!   copies while it stays down;
//! - a peer is only removed as `Left` if it really left.
//!
//! Then a liveness phase stops the faults and demands convergence: every live node holds every
//! other live node at its current content, and no node holds a dead one.

use mesh_core::gossip::beat::BeatChain;
use mesh_core::gossip::sign::{Leaving, SecretKey, Signed, SignedAnnouncement};
use mesh_core::gossip::wire::Records;
use mesh_core::gossip::{Config, Event, Input, Message, Output, Removal, State};
use mesh_core::invite::DEFAULT_TTL;
use mesh_core::peer::{PeerAnnouncement, Role};
use mesh_core::{PeerId, Timestamp};
use proptest::prelude::*;
use rand_core::SeedableRng;
use rand_pcg::Pcg64;
use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

const MESH: &str = "ops-mesh";
const T0: Timestamp = Timestamp::from_secs(5_000_000);
/// A transport doesn't hold a message for minutes: older pending messages are lost.
const MAX_MESSAGE_AGE: Duration = Duration::from_secs(30);

#[derive(Debug, Clone)]
enum Op {
    Deliver(prop::sample::Index),
    Drop(prop::sample::Index),
    Duplicate(prop::sample::Index),
    Advance(u64),
    Crash(usize),
    Restart {
        node: usize,
        via: usize,
    },
    Leave(usize),
    Change(usize),
    Forge {
        relay: usize,
        victim: usize,
        to: usize,
        kind: u8,
    },
}

fn op(n: usize) -> impl Strategy<Value = Op> {
    prop_oneof![
        6 => any::<prop::sample::Index>().prop_map(Op::Deliver),
        1 => any::<prop::sample::Index>().prop_map(Op::Drop),
        1 => any::<prop::sample::Index>().prop_map(Op::Duplicate),
        3 => (1u64..=120).prop_map(Op::Advance),
        1 => (0..n).prop_map(Op::Crash),
        1 => (0..n, 0..n).prop_map(|(node, via)| Op::Restart { node, via }),
        1 => (0..n).prop_map(Op::Leave),
        2 => (0..n).prop_map(Op::Change),
        1 => (0..n, 0..n, 0..n, 0u8..4).prop_map(|(relay, victim, to, kind)| Op::Forge { relay, victim, to, kind }),
    ]
}

struct World {
    seed: u64,
    nodes: Vec<Option<State>>,
    ids: Vec<PeerId>,
    now: Timestamp,
    pending: Vec<(Timestamp, usize, usize, Message)>,
    /// Every announcement an honest node signed: (origin, seq) → signed bytes (a set: a node
    /// restarted within the millisecond of its last seq may sign other bytes at the same seq).
    genuine: BTreeMap<(PeerId, u64), BTreeSet<Vec<u8>>>,
    /// Nodes that crashed or left and have not restarted.
    down: BTreeSet<usize>,
    /// Nodes that left at some point (an earlier incarnation's leaving may still arrive).
    ever_left: BTreeSet<usize>,
    /// (node, peer) → the seq the node held when it removed the peer while the peer was down.
    removed_while_down: BTreeMap<(usize, usize), u64>,
    last_seq: BTreeMap<(usize, usize), u64>,
    changes: u64,
    /// What each node's shell persisted: the members it knew when it went down.
    persisted_members: BTreeMap<usize, Vec<PeerId>>,
}

fn key(seed: u64, i: usize) -> SecretKey {
    SecretKey::generate(&mut Pcg64::seed_from_u64(
        seed.wrapping_mul(131).wrapping_add(i as u64),
    ))
}

impl World {
    fn new(seed: u64, n: usize) -> World {
        let mut w = World {
            seed,
            nodes: (0..n).map(|_| None).collect(),
            ids: (0..n).map(|i| key(seed, i).peer_id()).collect(),
            now: T0,
            pending: Vec::new(),
            genuine: BTreeMap::new(),
            down: BTreeSet::new(),
            ever_left: BTreeSet::new(),
            removed_while_down: BTreeMap::new(),
            last_seq: BTreeMap::new(),
            changes: 0,
            persisted_members: BTreeMap::new(),
        };
        for i in 0..n {
            w.boot(i);
        }
        for i in 1..n {
            w.join(i, 0);
            w.deliver_all();
        }
        w
    }

    fn boot(&mut self, i: usize) {
        let k = key(self.seed, i);
        let ann = PeerAnnouncement::new(k.peer_id(), MESH, Role::Worker);
        let config = Config {
            tick_interval: Duration::from_secs(20),
            heartbeat_interval: Duration::from_secs(30),
            ..Config::default()
        };
        let rng = Pcg64::seed_from_u64(self.seed ^ (i as u64) << 8 ^ self.now.as_micros());
        self.nodes[i] = Some(State::new(k, ann, config, rng, self.now));
        self.record_local(i);
    }

    fn index(&self, id: &PeerId) -> usize {
        self.ids.iter().position(|p| p == id).expect("known id")
    }

    fn alive(&self) -> Vec<usize> {
        (0..self.nodes.len())
            .filter(|&i| self.nodes[i].is_some())
            .collect()
    }

    fn record_local(&mut self, i: usize) {
        if let Some(n) = &self.nodes[i] {
            let l = n.local();
            self.genuine
                .entry((l.value().peer_id, l.value().seq))
                .or_default()
                .insert(l.body().to_vec());
        }
    }

    fn input(&mut self, at: usize, input: Input) {
        let now = self.now;
        let Some(node) = self.nodes[at].as_mut() else {
            return;
        };
        let outs: Vec<Output> = node.handle(input, now).collect();
        self.record_local(at);
        for o in outs {
            match o {
                Output::SendMessage { to, message } => {
                    let to = self.index(&to);
                    self.pending.push((now, at, to, message));
                }
                Output::Probe(p) => {
                    let target = self.index(&p);
                    let reachable = self.nodes[target].is_some();
                    self.input(at, Input::ProbeResult { peer: p, reachable });
                }
                Output::Event(Event::PeerRemoved { peer, reason }) => {
                    let p = self.index(&peer);
                    if reason == Removal::Left {
                        assert!(
                            self.ever_left.contains(&p),
                            "{at} removed {p} as Left, but it never left"
                        );
                    }
                    if self.down.contains(&p) {
                        let held = self.last_seq.get(&(at, p)).copied().unwrap_or(0);
                        self.removed_while_down.insert((at, p), held);
                    }
                }
                _ => {}
            }
        }
    }

    fn join(&mut self, i: usize, via: usize) {
        let now = self.now;
        let inv = self.nodes[via]
            .as_mut()
            .expect("inviter alive")
            .mint_invite(Vec::new(), DEFAULT_TTL, now);
        self.input(i, Input::Join(inv));
    }

    fn deliver(&mut self, k: usize) {
        let (_, from, to, message) = self.pending.remove(k);
        if self.nodes[to].is_some() {
            self.input(
                to,
                Input::Message {
                    from: self.ids[from],
                    message,
                },
            );
        } else {
            self.input(from, Input::ConnectionLost(self.ids[to]));
        }
    }

    fn deliver_all(&mut self) {
        let mut budget = 100_000;
        while !self.pending.is_empty() {
            self.deliver(0);
            budget -= 1;
            assert!(budget > 0, "message storm");
        }
    }

    fn advance(&mut self, by: Duration) {
        let until = self.now + by;
        loop {
            let next = (0..self.nodes.len())
                .filter_map(|i| {
                    self.nodes[i]
                        .as_ref()
                        .and_then(|n| n.poll_timeout())
                        .map(|t| (t, i))
                })
                .min();
            match next {
                Some((t, i)) if t <= until => {
                    self.now = self.now.max(t);
                    self.input(i, Input::Timeout);
                }
                _ => break,
            }
        }
        self.now = until;
        let oldest = self.now - MAX_MESSAGE_AGE;
        self.pending.retain(|(sent, ..)| *sent >= oldest);
    }

    fn apply(&mut self, op: Op) {
        let n = self.nodes.len();
        match op {
            Op::Deliver(ix) if !self.pending.is_empty() => {
                let k = ix.index(self.pending.len());
                self.deliver(k);
            }
            Op::Drop(ix) if !self.pending.is_empty() => {
                let k = ix.index(self.pending.len());
                self.pending.remove(k);
            }
            Op::Duplicate(ix) if !self.pending.is_empty() => {
                let k = ix.index(self.pending.len());
                let copy = self.pending[k].clone();
                self.pending.push(copy);
            }
            Op::Advance(s) => self.advance(Duration::from_secs(s)),
            Op::Crash(i) if self.nodes[i].is_some() && self.alive().len() > 2 => {
                self.persist(i);
                self.nodes[i] = None;
                self.down.insert(i);
            }
            Op::Leave(i) if self.nodes[i].is_some() && self.alive().len() > 2 => {
                self.ever_left.insert(i);
                self.down.insert(i);
                self.input(i, Input::Leave);
                self.persist(i);
                self.nodes[i] = None;
            }
            Op::Restart { node, via } if self.nodes[node].is_none() => {
                // A restart takes a moment.
                self.advance(Duration::from_secs(1));
                let alive = self.alive();
                let via = alive[via % alive.len()];
                self.boot(node);
                let remembered = self.persisted_members.remove(&node).unwrap_or_default();
                let now = self.now;
                self.nodes[node]
                    .as_mut()
                    .unwrap()
                    .remember_members(remembered, now);
                self.down.remove(&node);
                // Nobody's memory of the old incarnation applies, nor its own memories.
                self.removed_while_down
                    .retain(|&(at, p), _| p != node && at != node);
                self.last_seq.retain(|&(at, _), _| at != node);
                for j in 0..n {
                    self.last_seq.remove(&(j, node));
                }
                self.join(node, via);
            }
            Op::Change(i) if self.nodes[i].is_some() => {
                self.changes += 1;
                let mut a = self.nodes[i].as_ref().unwrap().local().value().clone();
                a.inflight_requests = (self.changes % 7) as u32;
                a.hostname = format!("change-{}", self.changes);
                self.input(i, Input::UpdateLocal(Box::new(a)));
            }
            Op::Forge {
                relay,
                victim,
                to,
                kind,
            } if relay != victim && self.nodes[relay].is_some() => {
                let victim_id = self.ids[victim];
                let relay_key = key(self.seed, relay);
                let held = self.nodes[relay]
                    .as_ref()
                    .unwrap()
                    .announcement(&victim_id)
                    .cloned();
                let base = held.unwrap_or_else(|| {
                    let k = key(self.seed, victim);
                    Signed::sign(&k, PeerAnnouncement::new(victim_id, MESH, Role::Worker))
                });
                let records = match kind {
                    // Altered in transit: same signature, inflated memory, bumped seq.
                    0 => {
                        let mut v = base.value().clone();
                        v.fast_memory_bytes = 999_000_000_000;
                        v.seq += 1;
                        let body = postcard_bytes(&v);
                        Records {
                            announcements: vec![
                                SignedAnnouncement::from_parts(body, *base.signature()).unwrap(),
                            ],
                            ..Records::default()
                        }
                    }
                    // Signed by the relay in the victim's name.
                    1 => {
                        let mut v = base.value().clone();
                        v.seq += 1_000_000;
                        v.hosted_models = vec!["forged".into()];
                        Records {
                            announcements: vec![Signed::sign(&relay_key, v)],
                            ..Records::default()
                        }
                    }
                    // A forged heartbeat keeping the victim alive: a chain of the relay's own for
                    // the victim's content, as far along as it goes.
                    2 => Records {
                        heartbeats: vec![
                            BeatChain::new(&relay_key, base.value().seq)
                                .beat(victim_id.short_id(), mesh_core::gossip::beat::CHAIN_LEN),
                        ],
                        ..Records::default()
                    },
                    // A forged leaving.
                    _ => Records {
                        leavings: vec![Signed::sign(
                            &relay_key,
                            Leaving {
                                peer: victim_id,
                                mesh_id: MESH.into(),
                                seq: u64::MAX - 1,
                            },
                        )],
                        ..Records::default()
                    },
                };
                self.pending
                    .push((self.now, relay, to, Message::Rumor(records)));
            }
            _ => {}
        }
    }

    fn persist(&mut self, i: usize) {
        let members = self.nodes[i].as_ref().unwrap().members(self.now);
        self.persisted_members.insert(i, members);
    }

    fn check_safety(&mut self) -> Result<(), String> {
        for j in self.alive() {
            let node = self.nodes[j].as_ref().unwrap();
            for p in node.peer_ids().collect::<Vec<_>>() {
                let pi = self.index(&p);
                let ann = node.announcement(&p).unwrap();
                if !ann.verify() {
                    return Err(format!(
                        "node {j} holds an unverifiable announcement of {pi}"
                    ));
                }
                let key = (p, ann.value().seq);
                if !self
                    .genuine
                    .get(&key)
                    .is_some_and(|b| b.contains(ann.body()))
                {
                    return Err(format!(
                        "node {j} holds {pi} at seq {} that {pi} never signed",
                        key.1
                    ));
                }
                let seq = node.peer(&p).unwrap().seq;
                let last = self.last_seq.entry((j, pi)).or_insert(0);
                if seq < *last {
                    return Err(format!(
                        "node {j}'s seq for {pi} went back from {last} to {seq}"
                    ));
                }
                *last = seq;
                // Only a seq newer than any it held can bring a removed peer back (one it had not
                // heard yet, relayed late); never an older copy.
                if let Some(&gone_at) = self.removed_while_down.get(&(j, pi))
                    && seq <= gone_at
                {
                    return Err(format!(
                        "node {j} re-added {pi} (still down) at seq {seq} ≤ {gone_at}, the seq it removed"
                    ));
                }
            }
            // Dropped peers start their seq history afresh.
            let held: BTreeSet<usize> = node.peer_ids().map(|p| self.index(&p)).collect();
            self.last_seq
                .retain(|&(a, p), _| a != j || held.contains(&p));
        }
        Ok(())
    }

    /// Faults stop: messages flow promptly, lonely nodes rejoin, and the mesh must converge.
    fn check_liveness(&mut self) -> Result<(), String> {
        for _ in 0..200 {
            self.deliver_all();
            self.advance(Duration::from_secs(5));
            self.deliver_all();
            self.check_safety()?;
        }
        for j in self.alive() {
            if self.nodes[j].as_ref().unwrap().peer_ids().next().is_none() {
                let via = *self.alive().iter().find(|&&v| v != j).unwrap();
                self.join(j, via);
            }
        }
        for _ in 0..100 {
            self.deliver_all();
            self.advance(Duration::from_secs(5));
            self.deliver_all();
            self.check_safety()?;
        }
        let alive = self.alive();
        for &j in &alive {
            let node = self.nodes[j].as_ref().unwrap();
            for &p in &alive {
                if p == j {
                    continue;
                }
                let want = self.nodes[p].as_ref().unwrap().local().value().seq;
                let has = node.peer(&self.ids[p]).map(|i| i.content_seq);
                if has != Some(want) {
                    return Err(format!(
                        "after the faults, node {j} holds {p} at {has:?}, not {want}"
                    ));
                }
            }
            for &d in &self.down {
                if node.peer(&self.ids[d]).is_some() {
                    return Err(format!("after the faults, node {j} still holds dead {d}"));
                }
            }
        }
        Ok(())
    }
}

fn postcard_bytes(a: &PeerAnnouncement) -> Vec<u8> {
    postcard::to_allocvec(a).expect("encodes")
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    #[test]
    fn random_faults_never_break_safety_and_the_mesh_converges_after(
        seed in any::<u64>(),
        n in 3usize..7,
        ops in prop::collection::vec(op(6), 1..120),
    ) {
        let mut w = World::new(seed, n);
        for op in ops {
            let op = match op {
                Op::Crash(i) => Op::Crash(i % n),
                Op::Leave(i) => Op::Leave(i % n),
                Op::Change(i) => Op::Change(i % n),
                Op::Restart { node, via } => Op::Restart { node: node % n, via },
                Op::Forge { relay, victim, to, kind } => Op::Forge { relay: relay % n, victim: victim % n, to: to % n, kind },
                other => other,
            };
            w.apply(op.clone());
            if let Err(e) = w.check_safety() {
                return Err(TestCaseError::fail(format!("seed {seed}, after {op:?}: {e}")));
            }
        }
        if let Err(e) = w.check_liveness() {
            return Err(TestCaseError::fail(format!("seed {seed}: {e}")));
        }
    }
}
