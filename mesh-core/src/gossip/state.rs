//! The gossip machine: one node's view of the mesh membership and the rules that keep it fresh.

use crate::gossip::admission::{self, AdmissionError, AdmittedBy};
use crate::gossip::beat::{Beat, BeatChain, CHAIN_LEN};
use crate::gossip::sign::{Leaving, SecretKey, Signed, SignedAnnouncement, SignedLeaving};
use crate::gossip::wire::{Digest, Hello, Message, Records, Request};
use crate::id::{PeerId, ShortId};
use crate::invite::{self, AdmissionContext, Invite, InviteError, InviteId, SignedRevocation};
use crate::peer::PeerAnnouncement;
use crate::time::Timestamp;
use crate::view::{KnownPeer, MeshView};
use rand_core::Rng;
use rand_pcg::Pcg64;
use serde::Serialize;
use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet, BinaryHeap, VecDeque};
use std::time::Duration;

/// Records per outgoing message are batched up to about this many bytes.
const RECORDS_CHUNK_BYTES: usize = 1024 * 1024;
/// A beat's size on the wire, at most (for chunking).
const BEAT_BYTES: usize = 64;
/// At most this many peers are requested in one `Request`.
const MAX_REQUEST_PEERS: usize = 4096;

#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    /// Anti-entropy period: each tick, a digest goes to `anti_entropy_peers` random live peers.
    pub tick_interval: Duration,
    pub anti_entropy_peers: usize,
    /// How many random live peers news (a changed announcement, a leaving, a revocation) is
    /// pushed to, by its origin and by every peer that receives it first.
    pub rumor_fanout: usize,
    /// The origin bumps its seq at least this often.
    pub heartbeat_interval: Duration,
    /// Like `rumor_fanout`, for heartbeats; anti-entropy covers whom they miss.
    pub heartbeat_fanout: usize,
    /// A local change confined to load and measurements (`inflight_requests`, `model_timings`,
    /// `demand`) is published at most this often after the previous publication; any other change goes
    /// out at once, carrying the latest load. A busy host's load changes with every request, and
    /// each publication costs a rumour to the whole mesh; the router adds its own fresher count.
    /// Such load-only news is pushed and forwarded to `heartbeat_fanout` peers, not
    /// `rumor_fanout`: most peers hear it at once, anti-entropy brings it to the rest.
    pub metrics_interval: Duration,
    /// Heartbeats a relay forwards are held this long and sent together, to the same
    /// `heartbeat_fanout` random peers; zero forwards each at once. In a mesh of a thousand
    /// peers every node relays a dozen heartbeats a second: batched, the messages (and their
    /// framing) drop by that factor, at the cost of this much delay per hop (liveness counts in
    /// minutes).
    pub relay_batch: Duration,
    /// Without a fresh seq for this long a peer is stale: out of the view, not a gossip target.
    pub stale_after: Duration,
    /// ... and for this long it is removed (and tombstoned).
    pub remove_after: Duration,
    /// How long a tombstone blocks older copies of a removed peer. Must outlast the time stale
    /// copies can still circulate (other peers remove it up to `remove_after` after we did).
    pub tombstone_ttl: Duration,
    /// How long a removed member may come back without a new invite.
    pub roster_ttl: Duration,
    /// How often a digest goes to one random removed member: after a partition longer than
    /// `remove_after` both sides have forgotten each other, and this is how they meet again.
    pub reconnect_interval: Duration,
    /// A probe with no result after this long no longer blocks a new one.
    pub probe_timeout: Duration,
    /// Pull state, never relay: for entries and API clients.
    pub passive: bool,
    /// Revocations held at most (the earliest-expiring go first).
    pub max_revocations: usize,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            tick_interval: Duration::from_secs(60),
            anti_entropy_peers: 2,
            rumor_fanout: 6,
            heartbeat_interval: Duration::from_secs(60),
            heartbeat_fanout: 2,
            metrics_interval: Duration::from_secs(30),
            relay_batch: Duration::from_secs(1),
            stale_after: Duration::from_secs(180),
            remove_after: Duration::from_secs(360),
            tombstone_ttl: Duration::from_secs(720),
            roster_ttl: Duration::from_secs(7 * 24 * 3600),
            reconnect_interval: Duration::from_secs(60),
            probe_timeout: Duration::from_secs(5),
            passive: false,
            max_revocations: 4096,
        }
    }
}

#[derive(Debug, Clone)]
pub enum Input {
    /// A message that arrived on a connection whose transport identity is `from`.
    Message { from: PeerId, message: Message },
    /// This node's own state changed. `peer_id`, `mesh_id` and `seq` are the machine's to set.
    UpdateLocal(Box<PeerAnnouncement>),
    /// Join the mesh through an invite: dial its inviter and present it.
    Join(Invite),
    /// The result of an [`Output::Probe`].
    ProbeResult { peer: PeerId, reachable: bool },
    /// A connection to `peer` broke: probe it.
    ConnectionLost(PeerId),
    /// Revoke an invite this node minted.
    RevokeInvite { id: InviteId, expires_at: Timestamp },
    /// Leave the mesh: tell the others, then go quiet.
    Leave,
    /// [`State::poll_timeout`] is due.
    Timeout,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Output {
    SendMessage {
        to: PeerId,
        message: Message,
    },
    /// Connect to `peer`, known so far only from an invite, at `dialing_info`.
    Dial {
        peer: PeerId,
        dialing_info: Vec<u8>,
    },
    /// Check directly whether `peer` answers; report with [`Input::ProbeResult`].
    Probe(PeerId),
    /// Close the connection to a refused peer (after sending what is queued for it).
    Disconnect(PeerId),
    Event(Event),
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub enum Event {
    /// A peer joined, came back after removal, or recovered from stale.
    PeerUp(PeerId),
    /// A peer's announcement content changed.
    PeerUpdated(PeerId),
    PeerStale(PeerId),
    PeerRemoved {
        peer: PeerId,
        reason: Removal,
    },
    /// A direct probe failed: the peer is alive only through others, if at all.
    PeerUnreachable(PeerId),
    PeerReachable(PeerId),
    Admitted {
        peer: PeerId,
        by: AdmittedBy,
    },
    /// This node refused `peer`.
    Refused {
        peer: PeerId,
        reason: AdmissionError,
    },
    /// `peer` refused this node.
    RefusedBy {
        peer: PeerId,
        reason: AdmissionError,
    },
    /// The invite given to [`Input::Join`] cannot be used.
    InviteUnusable(InviteError),
    /// A record relayed by `from` claiming to be `origin`'s failed `origin`'s signature: forged
    /// or altered in transit. Dropped.
    Rejected {
        from: PeerId,
        origin: PeerId,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum Removal {
    /// No fresh seq for `remove_after`.
    Timeout,
    /// The origin said it was leaving.
    Left,
}

/// Counters for the shell's metrics and logs.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Stats {
    pub messages_received: u64,
    pub messages_sent: u64,
    /// Records dropped because they failed their origin's signature.
    pub bad_signature: u64,
    pub wrong_mesh: u64,
    /// Records no newer than what was held.
    pub duplicates: u64,
    /// Records of removed peers, no newer than their tombstone.
    pub tombstoned: u64,
    /// Messages from peers that were not admitted.
    pub unadmitted: u64,
    pub admitted: u64,
    pub refused: u64,
    pub probes: u64,
}

/// What this node knows about one peer (for the shell and tests).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PeerInfo {
    pub seq: u64,
    pub content_seq: u64,
    pub first_seen: Timestamp,
    pub last_fresh: Timestamp,
    pub stale: bool,
    pub unreachable: bool,
    pub passive: bool,
}

struct Entry {
    announcement: SignedAnnouncement,
    /// The newest verified heartbeat on this announcement's chain.
    heartbeat: Option<Beat>,
    /// A beat naming newer content than `announcement` (unverifiable until that content
    /// arrives): the content to fetch, and the beat to check once it is here.
    ahead: Option<Beat>,
    first_seen: Timestamp,
    last_fresh: Timestamp,
    stale: bool,
    passive: bool,
    unreachable: bool,
    probe_until: Option<Timestamp>,
    /// The deadline this entry has in the timer heap (older heap items for it are ignored).
    timer_at: Option<Timestamp>,
}

impl Entry {
    fn content_seq(&self) -> u64 {
        self.announcement.value().seq
    }

    fn seq(&self) -> u64 {
        let hb = self.heartbeat.and_then(|h| h.seq()).unwrap_or(0);
        hb.max(self.content_seq())
    }

    /// Whether `b` (naming this entry's content) is on its chain.
    fn verifies(&self, b: &Beat) -> bool {
        match &self.heartbeat {
            Some(h) if h.n < b.n => b.follows(h),
            _ => b.verifies_against_anchor(&self.announcement.value().beat_anchor),
        }
    }

    fn next_deadline(&self, config: &Config) -> Timestamp {
        let liveness = if self.stale {
            self.last_fresh + config.remove_after
        } else {
            self.last_fresh + config.stale_after
        };
        self.probe_until.map_or(liveness, |p| p.min(liveness))
    }

    /// What someone holding `their_seq` for this peer lacks.
    fn records_newer_than(&self, their_seq: u64, out: &mut Records) {
        if their_seq < self.content_seq() {
            out.announcements.push(self.announcement.clone());
        }
        if let Some(hb) = self.heartbeat
            && hb.seq().is_some_and(|s| s > their_seq)
        {
            out.heartbeats.push(hb);
        }
    }
}

struct Tombstone {
    seq: u64,
    until: Timestamp,
    leaving: Option<SignedLeaving>,
    /// The content held when the peer timed out: a beat on its chain newer than the tombstone
    /// means the peer is back (a healed partition) with that content.
    announcement: Option<SignedAnnouncement>,
    /// A newer beat naming other content (unverified): fetched once, and it vouches for that
    /// content, older than the tombstone, when it arrives.
    ahead: Option<Beat>,
}

/// One node's gossip machine. See the module docs of [`crate::gossip`].
pub struct State {
    key: SecretKey,
    me: PeerId,
    mesh_id: String,
    config: Config,
    rng: Pcg64,
    created_at: Timestamp,
    local: SignedAnnouncement,
    /// The heartbeat chain of `local`, and its newest beat.
    chain: BeatChain,
    local_heartbeat: Option<Beat>,
    /// A load-only change waiting for `metrics_interval` to pass since `last_publish`.
    pending_local: Option<PeerAnnouncement>,
    /// The newest local state whose difference from `local` is immaterial (published with the
    /// next re-announcement).
    drift: Option<PeerAnnouncement>,
    /// Whether the records being accepted carry more than load-only changes (set while
    /// accepting, read when forwarding them).
    structural_news: bool,
    last_publish: Timestamp,
    /// Relayed heartbeats waiting for `relay_batch`, and when they go.
    relay_pending: Vec<Beat>,
    relay_due: Option<Timestamp>,
    seq: u64,
    last_bump: Timestamp,
    left: bool,
    invite: Option<Invite>,
    peers: BTreeMap<PeerId, Entry>,
    tombstones: BTreeMap<PeerId, Tombstone>,
    /// Removed members, by when they were removed: they may come back without an invite.
    roster: BTreeMap<PeerId, Timestamp>,
    /// Peers this node dialed through an invite: heard before they are known members.
    introduced: BTreeSet<PeerId>,
    hello_sent: BTreeMap<PeerId, Timestamp>,
    revocations: BTreeMap<(PeerId, InviteId), SignedRevocation>,
    /// Live, reachable, active peers in id order: the gossip target candidates (a cache,
    /// cleared whenever an entry or one of those flags changes; a new peer is inserted in place).
    targets: Option<Vec<PeerId>>,
    next_tick: Timestamp,
    next_reconnect: Timestamp,
    timers: BinaryHeap<Reverse<(Timestamp, PeerId)>>,
    outputs: VecDeque<Output>,
    stats: Stats,
}

struct Ctx<'a> {
    state: &'a State,
    now: Timestamp,
}

impl AdmissionContext for Ctx<'_> {
    fn is_member(&self, peer: &PeerId) -> bool {
        self.state.is_member(peer, self.now)
    }
    fn is_revoked(&self, inviter: &PeerId, id: &InviteId) -> bool {
        self.state.revocations.contains_key(&(*inviter, *id))
    }
}

impl State {
    /// A node with identity `key` publishing `local` (its `mesh_id` is the mesh it is in).
    pub fn new(
        key: SecretKey,
        local: PeerAnnouncement,
        config: Config,
        mut rng: Pcg64,
        now: Timestamp,
    ) -> Self {
        let me = key.peer_id();
        let seq = now.as_millis().max(1);
        let mut local = local;
        local.peer_id = me;
        local.seq = seq;
        let chain = BeatChain::new(&key, seq);
        local.beat_anchor = chain.anchor();
        let mesh_id = local.mesh_id.clone();
        // Nodes started together must not tick together.
        let first_tick = now + mul_fraction(config.tick_interval, rng.next_u64());
        let first_reconnect = first_tick + config.reconnect_interval;
        State {
            local: Signed::sign(&key, local),
            chain,
            key,
            me,
            mesh_id,
            config,
            rng,
            created_at: now,
            local_heartbeat: None,
            pending_local: None,
            drift: None,
            structural_news: false,
            last_publish: now,
            relay_pending: Vec::new(),
            relay_due: None,
            seq,
            last_bump: now,
            left: false,
            invite: None,
            peers: BTreeMap::new(),
            tombstones: BTreeMap::new(),
            roster: BTreeMap::new(),
            introduced: BTreeSet::new(),
            hello_sent: BTreeMap::new(),
            revocations: BTreeMap::new(),
            targets: None,
            next_tick: first_tick,
            next_reconnect: first_reconnect,
            timers: BinaryHeap::new(),
            outputs: VecDeque::new(),
            stats: Stats::default(),
        }
    }

    /// Feeds one input; yields what the shell must do, in order.
    pub fn handle(&mut self, input: Input, now: Timestamp) -> impl Iterator<Item = Output> + '_ {
        if !self.left {
            match input {
                Input::Message { from, message } => self.on_message(from, message, now),
                Input::UpdateLocal(a) => self.on_update_local(*a, now),
                Input::Join(inv) => self.on_join(inv, now),
                Input::ProbeResult { peer, reachable } => self.on_probe_result(peer, reachable),
                Input::ConnectionLost(peer) => self.probe(peer, now, true),
                Input::RevokeInvite { id, expires_at } => self.on_revoke(id, expires_at, now),
                Input::Leave => self.on_leave(now),
                Input::Timeout => self.on_timeout(now),
            }
        }
        self.outputs.drain(..)
    }

    /// When the machine next needs [`Input::Timeout`]; `None` after leaving.
    pub fn poll_timeout(&self) -> Option<Timestamp> {
        if self.left {
            return None;
        }
        let mut t = self
            .next_tick
            .min(self.last_bump + self.config.heartbeat_interval);
        if let Some(Reverse((deadline, _))) = self.timers.peek() {
            t = t.min(*deadline);
        }
        if self.pending_local.is_some() {
            t = t.min(self.last_publish + self.config.metrics_interval);
        }
        if let Some(due) = self.relay_due {
            t = t.min(due);
        }
        Some(t)
    }

    /// The live mesh for the decision modules: this node and every non-stale peer. `rtt_ms` is
    /// the shell's measurement; a peer whose direct probe failed is undialable (`None`).
    pub fn view(&self, rtt_ms: impl Fn(&PeerId) -> Option<u32>) -> MeshView {
        let mut peers = vec![KnownPeer {
            announcement: self.local.value().clone(),
            rtt_ms: Some(0),
            first_seen: self.created_at,
            last_fresh: self.last_bump,
        }];
        for (id, e) in self.peers.iter().filter(|(_, e)| !e.stale) {
            peers.push(KnownPeer {
                announcement: e.announcement.value().clone(),
                rtt_ms: if e.unreachable { None } else { rtt_ms(id) },
                first_seen: e.first_seen,
                last_fresh: e.last_fresh,
            });
        }
        MeshView::new(self.me, peers)
    }

    /// Mints an invite to this node's mesh, signed by this node.
    pub fn mint_invite(&mut self, dialing_info: Vec<u8>, ttl: Duration, now: Timestamp) -> Invite {
        invite::mint(
            &self.key,
            &self.mesh_id,
            dialing_info,
            ttl,
            now,
            &mut self.rng,
        )
    }

    pub fn me(&self) -> PeerId {
        self.me
    }

    pub fn mesh_id(&self) -> &str {
        &self.mesh_id
    }

    /// This node's current signed announcement.
    pub fn local(&self) -> &SignedAnnouncement {
        &self.local
    }

    /// This node's newest seq.
    pub fn seq(&self) -> u64 {
        self.seq
    }

    pub fn stats(&self) -> &Stats {
        &self.stats
    }

    pub fn peer(&self, id: &PeerId) -> Option<PeerInfo> {
        self.peers.get(id).map(|e| PeerInfo {
            seq: e.seq(),
            content_seq: e.content_seq(),
            first_seen: e.first_seen,
            last_fresh: e.last_fresh,
            stale: e.stale,
            unreachable: e.unreachable,
            passive: e.passive,
        })
    }

    pub fn announcement(&self, id: &PeerId) -> Option<&SignedAnnouncement> {
        self.peers.get(id).map(|e| &e.announcement)
    }

    /// Every peer held, stale ones included, in id order.
    pub fn peer_ids(&self) -> impl Iterator<Item = PeerId> + '_ {
        self.peers.keys().copied()
    }

    /// Members to remember across a restart (persist them; give them back with
    /// [`State::remember_members`]), so returning peers need no new invite.
    pub fn members(&self, now: Timestamp) -> Vec<PeerId> {
        let mut m: BTreeSet<PeerId> = self.peers.keys().copied().collect();
        m.extend(
            self.roster
                .iter()
                .filter(|&(_, &t)| now < t + self.config.roster_ttl)
                .map(|(p, _)| *p),
        );
        m.into_iter().collect()
    }

    pub fn remember_members(&mut self, members: impl IntoIterator<Item = PeerId>, now: Timestamp) {
        for p in members {
            if p != self.me && !self.peers.contains_key(&p) {
                self.roster.insert(p, now);
            }
        }
    }

    // ---- inputs ----

    fn on_message(&mut self, from: PeerId, message: Message, now: Timestamp) {
        self.stats.messages_received += 1;
        if from == self.me {
            return;
        }
        let message = match message {
            Message::Hello(hello) => return self.on_hello(from, hello, now),
            Message::Refused(reason) => return self.on_refused(from, reason, now),
            m => m,
        };
        if !self.is_member(&from, now) {
            self.stats.unadmitted += 1;
            self.send(from, Message::Refused(AdmissionError::NotAdmitted));
            self.emit(Event::Refused {
                peer: from,
                reason: AdmissionError::NotAdmitted,
            });
            return;
        }
        // Hearing from a peer directly proves it is reachable.
        if let Some(e) = self.peers.get_mut(&from)
            && e.unreachable
        {
            e.unreachable = false;
            self.targets = None;
            self.emit(Event::PeerReachable(from));
        }
        match message {
            Message::Digest(d) => self.on_digest(from, d, now),
            Message::Request(r) => self.on_request(from, r),
            Message::Records(r) => self.on_records(from, r, false, now),
            Message::Rumor(r) => self.on_records(from, r, true, now),
            Message::PeerDown(p) => self.on_peer_down(from, p, now),
            Message::Hello(_) | Message::Refused(_) => unreachable!("handled above"),
        }
    }

    fn on_hello(&mut self, from: PeerId, hello: Hello, now: Timestamp) {
        let ctx = Ctx { state: self, now };
        match admission::admit(&hello, from, &self.mesh_id, now, &ctx) {
            Err(reason) => {
                self.stats.refused += 1;
                self.send(from, Message::Refused(reason.clone()));
                self.outputs.push_back(Output::Disconnect(from));
                self.emit(Event::Refused { peer: from, reason });
            }
            Ok(by) => {
                self.stats.admitted += 1;
                self.emit(Event::Admitted { peer: from, by });
                let hello_seq = hello.announcement.value().seq;
                self.structural_news = false;
                let mut news = Records::default();
                let mut wanted = Vec::new();
                self.accept_announcement(
                    from,
                    hello.announcement,
                    &[],
                    now,
                    &mut news,
                    &mut wanted,
                );
                if let Some(e) = self.peers.get_mut(&from)
                    && e.passive != hello.passive
                {
                    e.passive = hello.passive;
                    self.targets = None;
                }
                // Welcome: everything the newcomer may lack, including a newer record of itself
                // than it presented (it restarted with a clock behind: it will jump past it).
                let mut welcome = Records::default();
                self.local_records_newer_than(0, &mut welcome);
                for (id, e) in &self.peers {
                    e.records_newer_than(if *id == from { hello_seq } else { 0 }, &mut welcome);
                }
                welcome
                    .revocations
                    .extend(self.revocations.values().cloned());
                self.send_records(from, welcome, false);
                self.forward(from, news, now);
            }
        }
    }

    fn on_refused(&mut self, from: PeerId, reason: AdmissionError, now: Timestamp) {
        let forgotten = reason == AdmissionError::NotAdmitted;
        self.emit(Event::RefusedBy { peer: from, reason });
        // A member forgot us (it restarted): introduce ourselves again, at most once a tick.
        // Never to a stranger: a Hello carries our invite, a bearer credential.
        let recently = self
            .hello_sent
            .get(&from)
            .is_some_and(|&t| now < t + self.config.tick_interval);
        if forgotten && !recently && self.is_member(&from, now) {
            self.send_hello(from, now);
        }
    }

    fn on_update_local(&mut self, mut a: PeerAnnouncement, now: Timestamp) {
        a.peer_id = self.me;
        a.mesh_id.clone_from(&self.mesh_id);
        a.seq = self.local.value().seq;
        a.beat_anchor = self.local.value().beat_anchor;
        if &a == self.local.value() {
            self.pending_local = None;
            self.drift = None;
            return;
        }
        if self.load_only_change(&a) && !material_load_change(self.local.value(), &a) {
            // Jitter in load and p50s: not worth a rumour to the whole mesh. It goes out with
            // the next change that is (every update carries the whole current state).
            self.pending_local = None;
            self.drift = Some(a);
            return;
        }
        self.drift = None;
        if now < self.last_publish + self.config.metrics_interval && self.load_only_change(&a) {
            self.pending_local = Some(a);
            return;
        }
        self.publish(a, now);
    }

    /// Whether `a` differs from the published announcement only in load and measurements.
    fn load_only_change(&self, a: &PeerAnnouncement) -> bool {
        load_only(self.local.value(), a)
    }

    fn publish(&mut self, mut a: PeerAnnouncement, now: Timestamp) {
        let fanout = if self.load_only_change(&a) {
            self.config.heartbeat_fanout
        } else {
            self.config.rumor_fanout
        };
        self.pending_local = None;
        self.last_publish = now;
        a.seq = self.next_seq(now);
        self.sign_local(a, now);
        let news = Records {
            announcements: vec![self.local.clone()],
            ..Records::default()
        };
        self.push_rumor(news, fanout, &[]);
    }

    /// Signs `a` (its seq set) as this node's announcement, with a fresh heartbeat chain.
    fn sign_local(&mut self, mut a: PeerAnnouncement, now: Timestamp) {
        self.chain = BeatChain::new(&self.key, a.seq);
        a.beat_anchor = self.chain.anchor();
        self.local = Signed::sign(&self.key, a);
        self.local_heartbeat = None;
        self.last_bump = now;
    }

    fn on_join(&mut self, inv: Invite, now: Timestamp) {
        let body = inv.value();
        if body.mesh_id != self.mesh_id {
            self.emit(Event::InviteUnusable(InviteError::WrongMesh {
                expected: self.mesh_id.clone(),
                found: body.mesh_id.clone(),
            }));
            return;
        }
        let inviter = body.inviter;
        self.invite = Some(inv);
        if inviter == self.me {
            return;
        }
        self.introduced.insert(inviter);
        self.send_hello(inviter, now);
    }

    fn on_probe_result(&mut self, peer: PeerId, reachable: bool) {
        let Some(e) = self.peers.get_mut(&peer) else {
            return;
        };
        e.probe_until = None;
        if reachable {
            if e.unreachable {
                e.unreachable = false;
                self.targets = None;
                self.emit(Event::PeerReachable(peer));
            }
        } else if !e.unreachable {
            e.unreachable = true;
            self.targets = None;
            self.emit(Event::PeerUnreachable(peer));
            // Let others check too: a router that can't reach a crashed host must not be the
            // only one to stop routing to it.
            if !self.config.passive {
                for to in self.choose(self.config.rumor_fanout, &[peer]) {
                    self.send(to, Message::PeerDown(peer));
                }
            }
        }
    }

    fn on_revoke(&mut self, id: InviteId, expires_at: Timestamp, now: Timestamp) {
        let r = invite::revoke(&self.key, &self.mesh_id, id, expires_at);
        let mut news = Records::default();
        self.accept_revocation(self.me, r, now, &mut news);
        self.push_rumor(news, self.config.rumor_fanout, &[]);
    }

    fn on_leave(&mut self, now: Timestamp) {
        let seq = self.next_seq(now);
        let leaving = Signed::sign(
            &self.key,
            Leaving {
                peer: self.me,
                mesh_id: self.mesh_id.clone(),
                seq,
            },
        );
        let news = Records {
            leavings: vec![leaving],
            ..Records::default()
        };
        self.push_rumor(news, self.config.rumor_fanout, &[]);
        self.left = true;
    }

    fn on_timeout(&mut self, now: Timestamp) {
        if self.relay_due.is_some_and(|due| now >= due) {
            self.relay_due = None;
            let news = Records {
                heartbeats: std::mem::take(&mut self.relay_pending),
                ..Records::default()
            };
            let mut origins: Vec<PeerId> = news
                .heartbeats
                .iter()
                .filter_map(|b| self.resolve(b.peer))
                .collect();
            origins.sort_unstable();
            origins.dedup();
            self.push_rumor(news, self.config.heartbeat_fanout, &origins);
        }
        if now >= self.last_publish + self.config.metrics_interval
            && let Some(a) = self.pending_local.take()
        {
            self.publish(a, now);
        }
        if now >= self.last_bump + self.config.heartbeat_interval {
            self.heartbeat(now);
        }
        while let Some(&Reverse((at, peer))) = self.timers.peek() {
            if at > now {
                break;
            }
            self.timers.pop();
            self.on_peer_deadline(peer, at, now);
        }
        if now >= self.next_tick {
            self.tick(now);
        }
    }

    fn heartbeat(&mut self, now: Timestamp) {
        let n = self.local_heartbeat.map_or(1, |b| b.n + 1);
        let content_seq = self.chain.content_seq();
        if n > CHAIN_LEN || content_seq + u64::from(n) <= self.seq {
            // The chain is spent (or, defensively, would not move seq forward): re-announce.
            let a = self
                .drift
                .take()
                .unwrap_or_else(|| self.local.value().clone());
            return self.publish(a, now);
        }
        let hb = self.chain.beat(self.me.short_id(), n);
        self.seq = content_seq + u64::from(n);
        self.local_heartbeat = Some(hb);
        self.last_bump = now;
        let news = Records {
            heartbeats: vec![hb],
            ..Records::default()
        };
        self.push_rumor(news, self.config.heartbeat_fanout, &[]);
    }

    fn on_peer_deadline(&mut self, peer: PeerId, at: Timestamp, now: Timestamp) {
        let config = &self.config;
        let Some(e) = self.peers.get_mut(&peer) else {
            return;
        };
        if e.timer_at != Some(at) {
            return;
        }
        e.timer_at = None;
        if e.probe_until.is_some_and(|p| now >= p) {
            e.probe_until = None;
        }
        let mut events = Vec::new();
        if !e.stale && now >= e.last_fresh + config.stale_after {
            e.stale = true;
            self.targets = None;
            events.push(Event::PeerStale(peer));
        }
        if e.stale && now >= e.last_fresh + config.remove_after {
            let seq = e.seq();
            let removed = self.peers.remove(&peer).map(|e| e.announcement);
            self.targets = None;
            self.tombstones.insert(
                peer,
                Tombstone {
                    seq,
                    until: now + self.config.tombstone_ttl,
                    leaving: None,
                    announcement: removed,
                    ahead: None,
                },
            );
            self.roster.insert(peer, now);
            events.push(Event::PeerRemoved {
                peer,
                reason: Removal::Timeout,
            });
        } else {
            self.schedule(peer);
        }
        for ev in events {
            self.emit(ev);
        }
    }

    fn tick(&mut self, now: Timestamp) {
        self.next_tick = now + self.config.tick_interval;
        self.prune(now);
        // A join that never completed (the Hello or the welcome was lost, or the inviter was
        // down): try the inviter again while the invite lasts, even if others found us since
        // (they may be an island that only the inviter links to the rest).
        if let Some(inv) = self.invite.as_ref().map(|i| i.value())
            && inv.inviter != self.me
            && now < inv.expires_at
            && !self.peers.contains_key(&inv.inviter)
        {
            let inviter = inv.inviter;
            self.send_hello(inviter, now);
        }
        let mut targets = self.choose(self.config.anti_entropy_peers, &[]);
        if now >= self.next_reconnect && !self.roster.is_empty() {
            self.next_reconnect = now + self.config.reconnect_interval;
            let pick = below(&mut self.rng, self.roster.len());
            targets.extend(self.roster.keys().nth(pick).copied());
        }
        if targets.is_empty() {
            return;
        }
        let digest = self.digest();
        for to in targets {
            self.send(to, Message::Digest(digest.clone()));
        }
    }

    fn prune(&mut self, now: Timestamp) {
        self.tombstones.retain(|_, t| now < t.until);
        let roster_ttl = self.config.roster_ttl;
        self.roster.retain(|_, &mut t| now < t + roster_ttl);
        self.revocations.retain(|_, r| now < r.value().expires_at);
        let tick = self.config.tick_interval;
        self.hello_sent.retain(|_, &mut t| now < t + tick);
    }

    fn digest(&self) -> Digest {
        let mut seqs = Vec::with_capacity(self.peers.len() + 1);
        seqs.push((self.me.short_id(), self.seq));
        seqs.extend(self.peers.iter().map(|(id, e)| (id.short_id(), e.seq())));
        let base = seqs.iter().map(|&(_, s)| s).max().unwrap_or(0);
        Digest {
            base,
            entries: seqs.into_iter().map(|(p, s)| (p, base - s)).collect(),
            revocations: self.revocations.keys().copied().collect(),
            passive: self.config.passive,
        }
    }

    fn on_digest(&mut self, from: PeerId, d: Digest, now: Timestamp) {
        // The target cache only changes with the flag (rebuilding it on every digest cost more
        // than the digest itself in thousand-peer meshes).
        if let Some(e) = self.peers.get_mut(&from)
            && e.passive != d.passive
        {
            e.passive = d.passive;
            self.targets = None;
        }
        let relay = !self.config.passive;
        let mut reply = Records::default();
        let mut wanted = Vec::new();
        let mut theirs = BTreeSet::new();
        let my_short = self.me.short_id();
        for (short, delta) in d.entries {
            if !theirs.insert(short) {
                continue;
            }
            let their_seq = d.base.saturating_sub(delta);
            if short == my_short {
                if their_seq < self.seq {
                    self.local_records_newer_than(their_seq, &mut reply);
                } else if their_seq > self.seq {
                    wanted.push((short, self.seq));
                }
                continue;
            }
            let mut held = false;
            for (_, e) in self.peers.range(PeerId::short_range(short)) {
                held = true;
                let mine = e.seq();
                if mine > their_seq && relay {
                    e.records_newer_than(their_seq, &mut reply);
                } else if mine < their_seq {
                    wanted.push((short, mine));
                }
            }
            if held {
                continue;
            }
            let mut tombstoned = false;
            for (_, t) in self.tombstones.range(PeerId::short_range(short)) {
                if now >= t.until {
                    continue;
                }
                tombstoned = true;
                if t.seq >= their_seq {
                    // Tell them it left, so they drop it too.
                    reply.leavings.extend(t.leaving.clone());
                } else {
                    wanted.push((short, 0));
                }
            }
            if !tombstoned {
                wanted.push((short, 0));
            }
        }
        if !theirs.contains(&my_short) {
            self.local_records_newer_than(0, &mut reply);
        }
        if relay {
            for (id, e) in &self.peers {
                if !theirs.contains(&id.short_id()) {
                    e.records_newer_than(0, &mut reply);
                }
            }
        }
        let their_revs: BTreeSet<_> = d.revocations.into_iter().collect();
        reply.revocations.extend(
            self.revocations
                .iter()
                .filter(|(k, _)| !their_revs.contains(k))
                .map(|(_, r)| r.clone()),
        );
        let wanted_revs: Vec<_> = their_revs
            .into_iter()
            .filter(|k| !self.revocations.contains_key(k))
            .collect();
        wanted.dedup();
        self.send_records(from, reply, false);
        self.request(from, wanted, wanted_revs);
    }

    fn on_request(&mut self, from: PeerId, r: Request) {
        let mut reply = Records::default();
        let my_short = self.me.short_id();
        for (short, have) in r.peers.into_iter().collect::<BTreeMap<_, _>>() {
            if short == my_short {
                self.local_records_newer_than(have, &mut reply);
            }
            if self.config.passive {
                continue;
            }
            for (_, e) in self.peers.range(PeerId::short_range(short)) {
                e.records_newer_than(have, &mut reply);
            }
            for (id, t) in self.tombstones.range(PeerId::short_range(short)) {
                if !self.peers.contains_key(id) {
                    reply.leavings.extend(t.leaving.clone());
                }
            }
        }
        for k in r.revocations {
            if let Some(rev) = self.revocations.get(&k) {
                reply.revocations.push(rev.clone());
            }
        }
        self.send_records(from, reply, false);
    }

    fn on_records(&mut self, from: PeerId, records: Records, rumor: bool, now: Timestamp) {
        self.structural_news = false;
        let mut news = Records::default();
        let mut wanted = Vec::new();
        // Announcements first: a beat in the same batch may be on the chain of one of them (and
        // a beat newer than a tombstone vouches for the content it names).
        for a in records.announcements {
            self.accept_announcement(from, a, &records.heartbeats, now, &mut news, &mut wanted);
        }
        for h in records.heartbeats {
            self.accept_heartbeat(from, h, now, &mut news, &mut wanted);
        }
        for l in records.leavings {
            self.accept_leaving(from, l, now, &mut news);
        }
        for r in records.revocations {
            self.accept_revocation(from, r, now, &mut news);
        }
        wanted.sort();
        wanted.dedup();
        let wanted = wanted
            .into_iter()
            .filter_map(|s| {
                let mut held = self.peers.range(PeerId::short_range(s)).map(|(_, e)| e);
                match held.next() {
                    None => Some((s, 0)),
                    Some(e) => e
                        .ahead
                        .is_some_and(|b| b.content_seq > e.content_seq())
                        .then(|| (s, e.content_seq())),
                }
            })
            .collect();
        self.request(from, wanted, Vec::new());
        if rumor {
            self.forward(from, news, now);
        }
    }

    fn on_peer_down(&mut self, from: PeerId, peer: PeerId, now: Timestamp) {
        if peer == self.me {
            // Whoever thinks we are down just reached us: show it we are alive.
            let mut proof = Records::default();
            self.local_records_newer_than(0, &mut proof);
            self.send_records(from, proof, false);
            return;
        }
        self.probe(peer, now, false);
    }

    fn probe(&mut self, peer: PeerId, now: Timestamp, even_if_unreachable: bool) {
        let timeout = self.config.probe_timeout;
        let Some(e) = self.peers.get_mut(&peer) else {
            return;
        };
        if e.probe_until.is_some_and(|t| now < t) || (e.unreachable && !even_if_unreachable) {
            return;
        }
        e.probe_until = Some(now + timeout);
        self.schedule(peer);
        self.stats.probes += 1;
        self.outputs.push_back(Output::Probe(peer));
    }

    // ---- accepting records ----

    fn accept_announcement(
        &mut self,
        from: PeerId,
        sa: SignedAnnouncement,
        batch_beats: &[Beat],
        now: Timestamp,
        news: &mut Records,
        wanted: &mut Vec<ShortId>,
    ) {
        let a = sa.value();
        let origin = a.peer_id;
        if origin == self.me {
            if sa.body() == self.local.body() {
                return; // our own, echoed back
            }
            return self.refute(from, a.seq, || sa.verify(), now);
        }
        if a.mesh_id != self.mesh_id {
            self.stats.wrong_mesh += 1;
            return;
        }
        // Content older than the tombstone gets in only on the word of a newer beat on its chain
        // (the peer came back unchanged after we removed it).
        let mut revival = None;
        if let Some(t) = self.live_tombstone(&origin, now)
            && a.seq <= t.seq
        {
            revival = t
                .ahead
                .iter()
                .chain(batch_beats.iter().filter(|b| b.peer == origin.short_id()))
                .filter(|b| b.content_seq == a.seq && b.seq().is_some_and(|s| s > t.seq))
                .max_by_key(|b| b.n)
                .copied();
            if revival.is_none() {
                self.stats.tombstoned += 1;
                return;
            }
        }
        let known = self.peers.get(&origin).map(|e| (e.content_seq(), e.seq()));
        if known.is_some_and(|(content, _)| a.seq <= content) {
            self.stats.duplicates += 1;
            return;
        }
        if !sa.verify() {
            self.stats.bad_signature += 1;
            self.emit(Event::Rejected { from, origin });
            return;
        }
        if revival.is_some_and(|b| !b.verifies_against_anchor(&a.beat_anchor)) {
            // A beat that does not belong to this content cannot vouch for it.
            self.stats.tombstoned += 1;
            return;
        }
        let seq = a.seq;
        self.structural_news |= self
            .peers
            .get(&origin)
            .is_none_or(|e| !load_only(e.announcement.value(), a));
        news.announcements.push(sa.clone());
        let Some(e) = self.peers.get_mut(&origin) else {
            return self.insert_peer(origin, sa, revival, now);
        };
        let mut fresh = known.is_some_and(|(_, newest)| seq > newest);
        e.announcement = sa;
        e.heartbeat = None;
        // A beat that arrived before this content: now it can be checked.
        if let Some(b) = e.ahead.take() {
            if b.content_seq == seq {
                if b.verifies_against_anchor(&e.announcement.value().beat_anchor) {
                    e.heartbeat = Some(b);
                    fresh = true;
                }
            } else if b.content_seq > seq {
                // It names still newer content.
                e.ahead = Some(b);
                wanted.push(origin.short_id());
            }
        }
        let recovered = fresh && e.stale;
        if fresh {
            e.last_fresh = now;
            if e.stale {
                e.stale = false;
                self.targets = None;
            }
        }
        if recovered {
            self.schedule(origin);
            self.emit(Event::PeerUp(origin));
        }
        self.emit(Event::PeerUpdated(origin));
    }

    fn accept_heartbeat(
        &mut self,
        from: PeerId,
        b: Beat,
        now: Timestamp,
        news: &mut Records,
        wanted: &mut Vec<ShortId>,
    ) {
        let Some(seq) = b.seq() else {
            self.stats.bad_signature += 1;
            return;
        };
        if b.peer == self.me.short_id() {
            if seq < self.seq || self.local_heartbeat == Some(b) {
                // Older, or our own newest beat echoed back.
                return;
            }
            // Ours from before a restart? Our chains are derived from our key: recompute it.
            let ours = BeatChain::new(&self.key, b.content_seq).beat(self.me.short_id(), b.n) == b;
            return self.refute(from, seq, || ours, now);
        }
        let Some(origin) = self.resolve(b.peer) else {
            // Alive, but unknown here: fetch what the relay holds under that short id.
            wanted.push(b.peer);
            return;
        };
        if self
            .live_tombstone(&origin, now)
            .is_some_and(|t| seq <= t.seq)
        {
            self.stats.tombstoned += 1;
            return;
        }
        let Some(e) = self.peers.get_mut(&origin) else {
            // Alive, but we hold nothing to check it against: fetch the content it names. A
            // removed peer coming back with the content we removed it with is back at once.
            if let Some(t) = self.tombstones.get_mut(&origin) {
                if let Some(a) = &t.announcement
                    && a.value().seq == b.content_seq
                    && b.verifies_against_anchor(&a.value().beat_anchor)
                {
                    let a = a.clone();
                    news.heartbeats.push(b);
                    return self.insert_peer(origin, a, Some(b), now);
                }
                if t.ahead.is_some_and(|x| x.seq() >= Some(seq)) {
                    // Asked for already: a peer that cannot supply it would be asked forever.
                    self.stats.duplicates += 1;
                    return;
                }
                t.ahead = Some(b);
            }
            wanted.push(b.peer);
            return;
        };
        if seq <= e.seq() || b.content_seq < e.content_seq() {
            // Not news: in particular no new request.
            self.stats.duplicates += 1;
            return;
        }
        if b.content_seq > e.content_seq() {
            // Newer content than we hold: the beat can be checked once it is here.
            if e.ahead.is_some_and(|x| x.seq() >= Some(seq)) {
                self.stats.duplicates += 1;
                return;
            }
            e.ahead = Some(b);
            wanted.push(b.peer);
            return;
        }
        if !e.verifies(&b) {
            self.stats.bad_signature += 1;
            self.emit(Event::Rejected { from, origin });
            return;
        }
        e.heartbeat = Some(b);
        e.last_fresh = now;
        news.heartbeats.push(b);
        if e.stale {
            e.stale = false;
            self.targets = None;
            self.schedule(origin);
            self.emit(Event::PeerUp(origin));
        }
    }

    /// A peer that is new here, or back: from its first announcement, or (a beat on the chain
    /// of the content we removed it with) from its tombstone.
    fn insert_peer(
        &mut self,
        origin: PeerId,
        sa: SignedAnnouncement,
        heartbeat: Option<Beat>,
        now: Timestamp,
    ) {
        self.tombstones.remove(&origin);
        self.roster.remove(&origin);
        // A new live, active, reachable peer joins the target cache in place (rebuilding it
        // after every join is quadratic while a large mesh fills).
        if let Some(targets) = &mut self.targets
            && let Err(i) = targets.binary_search(&origin)
        {
            targets.insert(i, origin);
        }
        self.peers.insert(
            origin,
            Entry {
                announcement: sa,
                heartbeat,
                ahead: None,
                first_seen: now,
                last_fresh: now,
                stale: false,
                passive: false,
                unreachable: false,
                probe_until: None,
                timer_at: None,
            },
        );
        self.schedule(origin);
        self.emit(Event::PeerUp(origin));
    }

    fn accept_leaving(
        &mut self,
        from: PeerId,
        sl: SignedLeaving,
        now: Timestamp,
        news: &mut Records,
    ) {
        let l = sl.value();
        let origin = l.peer;
        if origin == self.me {
            return self.refute(from, l.seq, || sl.verify(), now);
        }
        if l.mesh_id != self.mesh_id {
            self.stats.wrong_mesh += 1;
            return;
        }
        let outdated = self
            .live_tombstone(&origin, now)
            .is_some_and(|t| t.seq >= l.seq)
            || self.peers.get(&origin).is_some_and(|e| e.seq() >= l.seq);
        if outdated {
            self.stats.duplicates += 1;
            return;
        }
        if !sl.verify() {
            self.stats.bad_signature += 1;
            self.emit(Event::Rejected { from, origin });
            return;
        }
        let seq = l.seq;
        news.leavings.push(sl.clone());
        self.tombstones.insert(
            origin,
            Tombstone {
                seq,
                until: now + self.config.tombstone_ttl,
                leaving: Some(sl),
                announcement: None,
                ahead: None,
            },
        );
        self.roster.insert(origin, now);
        if self.peers.remove(&origin).is_some() {
            self.targets = None;
            self.emit(Event::PeerRemoved {
                peer: origin,
                reason: Removal::Left,
            });
        }
    }

    fn accept_revocation(
        &mut self,
        from: PeerId,
        sr: SignedRevocation,
        now: Timestamp,
        news: &mut Records,
    ) {
        let r = sr.value();
        if r.mesh_id != self.mesh_id {
            self.stats.wrong_mesh += 1;
            return;
        }
        let key = (r.inviter, r.invite);
        if now >= r.expires_at || self.revocations.contains_key(&key) {
            self.stats.duplicates += 1;
            return;
        }
        if !sr.verify() {
            self.stats.bad_signature += 1;
            self.emit(Event::Rejected {
                from,
                origin: r.inviter,
            });
            return;
        }
        if self.revocations.len() >= self.config.max_revocations {
            let earliest = self
                .revocations
                .iter()
                .min_by_key(|(k, v)| (v.value().expires_at, **k))
                .map(|(k, v)| (*k, v.value().expires_at));
            match earliest {
                Some((k, exp)) if exp < r.expires_at => {
                    self.revocations.remove(&k);
                }
                _ => return,
            }
        }
        news.revocations.push(sr.clone());
        self.revocations.insert(key, sr);
    }

    /// Someone holds a record of ours at least as new as our own seq (we restarted with a clock
    /// behind our old one): jump past it and republish, so the mesh takes our current state.
    fn refute(&mut self, from: PeerId, seq: u64, valid: impl FnOnce() -> bool, now: Timestamp) {
        if seq < self.seq || !valid() {
            return;
        }
        self.seq = seq;
        let mut a = self.local.value().clone();
        a.seq = self.next_seq(now);
        self.sign_local(a, now);
        let news = Records {
            announcements: vec![self.local.clone()],
            ..Records::default()
        };
        // The holder of the old record may be the only peer we know yet.
        self.send_records(from, news.clone(), false);
        self.push_rumor(news, self.config.rumor_fanout, &[from]);
    }

    // ---- helpers ----

    /// Known to be in the mesh: ourselves, a peer we hold, a remembered former member, or the
    /// inviter of an invite we joined with.
    fn is_member(&self, peer: &PeerId, now: Timestamp) -> bool {
        *peer == self.me
            || self.peers.contains_key(peer)
            || self.introduced.contains(peer)
            || self
                .roster
                .get(peer)
                .is_some_and(|&t| now < t + self.config.roster_ttl)
    }

    /// The peer held (or tombstoned) under short id `s`. Ids are public keys: a second peer
    /// with the same short id takes a 2⁶⁴-work search, and would only get its beats confused
    /// with the first's (rejected, never accepted: each checks against its own chain).
    fn resolve(&self, s: ShortId) -> Option<PeerId> {
        let range = PeerId::short_range(s);
        self.peers
            .range(range.clone())
            .map(|(id, _)| *id)
            .next()
            .or_else(|| self.tombstones.range(range).map(|(id, _)| *id).next())
    }

    fn live_tombstone(&self, peer: &PeerId, now: Timestamp) -> Option<&Tombstone> {
        self.tombstones.get(peer).filter(|t| now < t.until)
    }

    fn next_seq(&mut self, now: Timestamp) -> u64 {
        self.seq = (self.seq + 1).max(now.as_millis());
        self.seq
    }

    fn local_records_newer_than(&self, their_seq: u64, out: &mut Records) {
        if their_seq < self.local.value().seq {
            out.announcements.push(self.local.clone());
        }
        if let Some(hb) = self.local_heartbeat
            && hb.seq().is_some_and(|s| s > their_seq)
        {
            out.heartbeats.push(hb);
        }
    }

    fn send_hello(&mut self, to: PeerId, now: Timestamp) {
        if let Some(inv) = &self.invite
            && inv.value().inviter == to
        {
            self.outputs.push_back(Output::Dial {
                peer: to,
                dialing_info: inv.value().dialing_info.clone(),
            });
        }
        let hello = Hello {
            announcement: self.local.clone(),
            invite: self.invite.clone(),
            passive: self.config.passive,
        };
        self.hello_sent.insert(to, now);
        self.send(to, Message::Hello(hello));
    }

    /// Forwards what was news to us (rumour mongering). Passive nodes never relay.
    fn forward(&mut self, from: PeerId, news: Records, now: Timestamp) {
        if self.config.passive || news.is_empty() {
            return;
        }
        let heartbeats_only = news.announcements.is_empty()
            && news.leavings.is_empty()
            && news.revocations.is_empty();
        if heartbeats_only && !self.config.relay_batch.is_zero() {
            self.relay_pending.extend(news.heartbeats);
            self.relay_due.get_or_insert(now + self.config.relay_batch);
            return;
        }
        // Heartbeats, and announcements that only changed load, go to fewer peers.
        let light = news.leavings.is_empty()
            && news.revocations.is_empty()
            && (news.announcements.is_empty() || !self.structural_news);
        let fanout = if light {
            self.config.heartbeat_fanout
        } else {
            self.config.rumor_fanout
        };
        let mut exclude = vec![from];
        exclude.extend(news.announcements.iter().map(|a| a.signer()));
        exclude.extend(news.heartbeats.iter().filter_map(|h| self.resolve(h.peer)));
        exclude.extend(news.leavings.iter().map(|l| l.signer()));
        self.push_rumor(news, fanout, &exclude);
    }

    fn push_rumor(&mut self, news: Records, fanout: usize, exclude: &[PeerId]) {
        if news.is_empty() {
            return;
        }
        let targets = self.choose(fanout, exclude);
        for to in targets {
            self.send_records(to, news.clone(), true);
        }
    }

    fn request(
        &mut self,
        to: PeerId,
        mut peers: Vec<(ShortId, u64)>,
        revocations: Vec<(PeerId, InviteId)>,
    ) {
        peers.truncate(MAX_REQUEST_PEERS);
        if peers.is_empty() && revocations.is_empty() {
            return;
        }
        self.send(to, Message::Request(Request { peers, revocations }));
    }

    /// Sends `records`, split into messages of about [`RECORDS_CHUNK_BYTES`].
    fn send_records(&mut self, to: PeerId, records: Records, rumor: bool) {
        let wrap = |r: Records| {
            if rumor {
                Message::Rumor(r)
            } else {
                Message::Records(r)
            }
        };
        let mut chunk = Records::default();
        let mut size = 0;
        let Records {
            announcements,
            heartbeats,
            leavings,
            revocations,
        } = records;
        macro_rules! add {
            ($items:expr, $field:ident) => {
                for item in $items {
                    let len = item.body().len() + 72;
                    if size + len > RECORDS_CHUNK_BYTES && !chunk.is_empty() {
                        self.send(to, wrap(std::mem::take(&mut chunk)));
                        size = 0;
                    }
                    size += len;
                    chunk.$field.push(item);
                }
            };
        }
        add!(announcements, announcements);
        for b in heartbeats {
            if size + BEAT_BYTES > RECORDS_CHUNK_BYTES && !chunk.is_empty() {
                self.send(to, wrap(std::mem::take(&mut chunk)));
                size = 0;
            }
            size += BEAT_BYTES;
            chunk.heartbeats.push(b);
        }
        add!(leavings, leavings);
        add!(revocations, revocations);
        if !chunk.is_empty() {
            self.send(to, wrap(chunk));
        }
    }

    /// Up to `n` random live, reachable, active peers, none of `exclude`.
    fn choose(&mut self, n: usize, exclude: &[PeerId]) -> Vec<PeerId> {
        let peers = &self.peers;
        let candidates = self.targets.get_or_insert_with(|| {
            peers
                .iter()
                .filter(|(_, e)| !e.stale && !e.passive && !e.unreachable)
                .map(|(id, _)| *id)
                .collect()
        });
        let len = candidates.len();
        if len > 4 * (n + exclude.len()) {
            // Large mesh: sample without building a copy. At least 3/4 of the candidates are
            // eligible, so this takes a few draws.
            let mut out = Vec::with_capacity(n);
            while out.len() < n {
                let p = candidates[below(&mut self.rng, len)];
                if !exclude.contains(&p) && !out.contains(&p) {
                    out.push(p);
                }
            }
            return out;
        }
        let mut eligible: Vec<PeerId> = candidates
            .iter()
            .filter(|p| !exclude.contains(p))
            .copied()
            .collect();
        let n = n.min(eligible.len());
        for i in 0..n {
            let j = i + below(&mut self.rng, eligible.len() - i);
            eligible.swap(i, j);
        }
        eligible.truncate(n);
        eligible
    }

    fn schedule(&mut self, peer: PeerId) {
        let Some(e) = self.peers.get_mut(&peer) else {
            return;
        };
        let deadline = e.next_deadline(&self.config);
        if e.timer_at.is_none_or(|t| deadline < t) {
            e.timer_at = Some(deadline);
            self.timers.push(Reverse((deadline, peer)));
        }
    }

    fn send(&mut self, to: PeerId, message: Message) {
        self.stats.messages_sent += 1;
        self.outputs.push_back(Output::SendMessage { to, message });
    }

    fn emit(&mut self, event: Event) {
        self.outputs.push_back(Output::Event(event));
    }
}

/// Whether `new` differs from `old` only in `seq` (and so its heartbeat chain) and load
/// (`inflight_requests`, `model_timings`, `demand`): news the machine pushes to fewer peers.
pub fn load_only(old: &PeerAnnouncement, new: &PeerAnnouncement) -> bool {
    PeerAnnouncement {
        seq: old.seq,
        beat_anchor: old.beat_anchor,
        inflight_requests: old.inflight_requests,
        model_timings: old.model_timings.clone(),
        demand: old.demand.clone(),
        ..new.clone()
    } == *old
}

/// Whether a load-only change is worth publishing: in-flight requests moved by two or more, a
/// model's p50s by 10 % or more, its sample count from or to a handful (the SLA gate's minimum
/// lives there) or by half, any change of demand (see below), or a model came or went.
pub fn material_load_change(old: &PeerAnnouncement, new: &PeerAnnouncement) -> bool {
    let apart = |a: f64, b: f64| (a - b).abs() > 0.1 * a.abs().max(b.abs());
    if old.inflight_requests.abs_diff(new.inflight_requests) >= 2 {
        return true;
    }
    if old.model_timings.len() != new.model_timings.len() || old.demand.len() != new.demand.len() {
        return true;
    }
    let timings = old
        .model_timings
        .iter()
        .zip(&new.model_timings)
        .any(|(o, n)| {
            let (so, sn) = (o.samples_in_window, n.samples_in_window);
            o.model != n.model
                || apart(o.tps_p50, n.tps_p50)
                || apart(o.ttft_ms_p50, n.ttft_ms_p50)
                || (so != sn && so.min(sn) < 10)
                || so.abs_diff(sn) * 2 > so.max(sn)
        });
    // Entries are few and the election's duplicate-host rule turns on a threshold of their
    // demand: every change of it counts.
    timings || old.demand != new.demand
}

/// A uniform index below `n` (n > 0), without modulo bias worth the name (n ≪ 2^64).
fn below(rng: &mut Pcg64, n: usize) -> usize {
    ((u128::from(rng.next_u64()) * n as u128) >> 64) as usize
}

/// `d × (x / 2^64)`: a uniform point in `[0, d)`.
fn mul_fraction(d: Duration, x: u64) -> Duration {
    let micros = d.as_micros().min(u128::from(u64::MAX));
    Duration::from_micros(((micros * u128::from(x)) >> 64) as u64)
}
