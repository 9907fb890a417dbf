//! Gossip plumbing: each node's `gossip::State` fed with messages, probes, connection losses and
//! timeouts; its outputs carried over the simulated network; its events turned into elections,
//! entry-view updates and the gossip figures.

use super::{
    Behaviour, CrashWatch, Ev, GossipIn, Held, INFLATION, MEMORY_INFLATION, MESH_ID, Spreading,
    World,
};
use crate::report::{Convergence, CrashRemoval, GossipReport, KindFigures};
use crate::rng::SimRng;
use crate::timeline::{MAX_SPREADS, Spread};
use mesh_core::gossip::{self as mg, Input, Message, Output, wire};
use mesh_core::invite::DEFAULT_TTL;
use mesh_core::peer::{PeerAnnouncement, RunningPipeline};
use mesh_core::{KnownPeer, MeshView, PeerId, Role};
use std::hash::{DefaultHasher, Hash, Hasher};
use std::time::Duration;

/// A publication still short of 99 % this long after it went out is counted as not converged.
const SPREAD_GIVE_UP: Duration = Duration::from_secs(600);
/// Publications younger than this at the end are left out of the figures (undecided).
const SPREAD_UNDECIDED: Duration = Duration::from_secs(60);

impl World<'_> {
    /// Starts `p`'s gossip machine and joins the mesh: through a fresh invite from a random live
    /// member, or (`restart`) with the invite it joined with and the members it remembers.
    pub(super) fn start_gossip(&mut self, p: usize, restart: bool) {
        let now = self.now;
        let key = mg::SecretKey::from_bytes(self.nodes[p].key);
        let local = self.local_announcement(p);
        let rng = SimRng::derive(self.seed, "gossip", ((p as u64) << 40) ^ now.as_micros()).pcg();
        let mut state = mg::State::new(key, local, self.gossip_config.clone(), rng, now);
        if restart {
            let members = std::mem::take(&mut self.nodes[p].members);
            state.remember_members(members, now);
        }
        let n = self.nodes.len();
        let node = &mut self.nodes[p];
        node.published_seq = state.local().value().seq;
        node.published = Some(state.local().value().clone());
        node.held = vec![Held::default(); n];
        node.held[p] = Held {
            seq: node.published_seq,
            key: election_key(state.local().value()),
        };
        node.gossip = Some(state);
        node.gossip_wake = None;
        self.stats.spreading[p].clear();
        self.stats.live_nodes += 1;
        if let Some(e) = self.entries.get_mut(&Some(p)) {
            e.view = Some(MeshView::new(self.nodes[p].id, Vec::new()));
        }
        self.entry_view_refresh(p, p);

        let members: Vec<usize> = (0..n)
            .filter(|&q| q != p && self.nodes[q].up() && self.nodes[q].gossip.is_some())
            .collect();
        let still_valid = self.nodes[p]
            .invite
            .as_ref()
            .is_some_and(|inv| now < inv.value().expires_at);
        let invite = if restart && still_valid {
            self.nodes[p].invite.clone()
        } else if members.is_empty() {
            None // the founder, or alone: others will join through it
        } else {
            let q = members[(self.rng.next_u64() % members.len() as u64) as usize];
            let ttl = DEFAULT_TTL.max(Duration::from_secs_f64(
                self.sc.duration_s + self.sc.check.liveness_s + 3600.0,
            ));
            let inv = self.nodes[q]
                .gossip
                .as_mut()
                .expect("members run gossip")
                .mint_invite(Vec::new(), ttl, now);
            self.nodes[p].inviter = Some(q);
            Some(inv)
        };
        if let Some(inv) = invite {
            self.nodes[p].invite = Some(inv.clone());
            self.gossip_input(p, Input::Join(inv));
        } else {
            self.after_gossip(p);
        }
    }

    /// `p` crashed: its machine is gone; what it persisted (members) stays for a restart.
    pub(super) fn stop_gossip(&mut self, p: usize) {
        if let Some(g) = self.nodes[p].gossip.take() {
            self.nodes[p].members = g.members(self.now);
            self.stats.live_nodes -= 1;
        }
        self.nodes[p].gossip_wake = None;
        self.stats.spreading[p].clear();
        if let Some(e) = self.entries.get_mut(&Some(p)) {
            e.view = None;
        }
        for w in &mut self.stats.crashes {
            w.entries.retain(|&e| e != p);
        }
    }

    /// `p` leaves cleanly: it tells the mesh, then goes quiet.
    pub(super) fn leave_gossip(&mut self, p: usize) {
        self.gossip_input(p, Input::Leave);
        self.stop_gossip(p);
    }

    pub(super) fn gossip_input(&mut self, p: usize, input: Input) {
        let now = self.now;
        let Some(g) = self.nodes[p].gossip.as_mut() else {
            return;
        };
        self.engine_stats.gossip_inputs += 1;
        let outs: Vec<Output> = g.handle(input, now).collect();
        for o in outs {
            self.gossip_output(p, o);
        }
        self.after_gossip(p);
    }

    pub(super) fn gossip_in(&mut self, p: usize, input: GossipIn) {
        let input = match input {
            GossipIn::ConnectionLost(peer) => Input::ConnectionLost(peer),
            GossipIn::ProbeResult { peer, reachable } => Input::ProbeResult { peer, reachable },
        };
        self.gossip_input(p, input);
    }

    pub(super) fn gossip_wake(&mut self, p: usize) {
        if self.nodes[p].gossip_wake == Some(self.now) {
            self.nodes[p].gossip_wake = None;
            self.gossip_input(p, Input::Timeout);
        }
    }

    pub(super) fn deliver(&mut self, to: usize, from: usize, message: Message) {
        let open =
            self.nodes[to].up() && self.nodes[to].gossip.is_some() && self.net.reachable(from, to);
        if !open {
            self.connection_lost(from, to);
            return;
        }
        let from_id = self.nodes[from].id;
        self.gossip_input(
            to,
            Input::Message {
                from: from_id,
                message,
            },
        );
    }

    /// `from`'s connection to `to` fails after the transport's timeout.
    fn connection_lost(&mut self, from: usize, to: usize) {
        if self.nodes[from].gossip.is_some() {
            let peer = self.nodes[to].id;
            self.queue.push(
                self.now + self.connection_timeout,
                Ev::GossipInput {
                    at: from,
                    input: GossipIn::ConnectionLost(peer),
                },
            );
        }
    }

    fn gossip_output(&mut self, p: usize, o: Output) {
        match o {
            Output::SendMessage { to, message } => self.send(p, to, message),
            Output::Probe(peer) => {
                let Some(&q) = self.index.get(&peer) else {
                    return;
                };
                let alive = self.nodes[q].up()
                    && self.nodes[q].gossip.is_some()
                    && self.net.reachable(p, q);
                let after = if alive {
                    ms(2.0 * self.net.one_way_ms(p, q))
                } else {
                    self.connection_timeout
                };
                self.queue.push(
                    self.now + after,
                    Ev::GossipInput {
                        at: p,
                        input: GossipIn::ProbeResult {
                            peer,
                            reachable: alive,
                        },
                    },
                );
            }
            Output::Dial { .. } | Output::Disconnect(_) => {}
            Output::Event(e) => self.gossip_event(p, e),
        }
    }

    fn send(&mut self, p: usize, to: PeerId, message: Message) {
        self.stats.messages += 1;
        let size = wire::encoded_len(&message) as u64;
        self.stats.bytes += size;
        let kind = match &message {
            Message::Hello(_) => "hello",
            Message::Refused(_) => "refused",
            Message::Digest(_) => "digest",
            Message::Request(_) => "request",
            Message::Records(_) => "records",
            Message::Rumor(r) if !r.announcements.is_empty() => "rumor_announcement",
            Message::Rumor(r) if !r.heartbeats.is_empty() => "rumor_heartbeat",
            Message::Rumor(_) => "rumor_other",
            Message::PeerDown(_) => "peer_down",
        };
        let k = self.stats.by_kind.entry(kind).or_default();
        k.0 += 1;
        k.1 += size;
        let Some(&q) = self.index.get(&to) else {
            return;
        };
        let open = self.nodes[q].up() && self.nodes[q].gossip.is_some() && self.net.reachable(p, q);
        if !open {
            self.connection_lost(p, q);
            return;
        }
        let loss = self.net.loss(p, q);
        if loss > 0.0 && self.rng.chance(loss) {
            return;
        }
        let at = self.now + ms(self.net.one_way_ms(p, q));
        self.queue.push(
            at,
            Ev::Deliver {
                to: q,
                from: p,
                message: Box::new(message),
            },
        );
    }

    fn gossip_event(&mut self, p: usize, e: mg::Event) {
        let about = match &e {
            mg::Event::PeerUp(q) | mg::Event::PeerUpdated(q) => {
                if let Some(&qi) = self.index.get(q) {
                    self.held_update(p, qi, matches!(e, mg::Event::PeerUp(_)));
                }
                Some(*q)
            }
            mg::Event::PeerStale(q)
            | mg::Event::PeerUnreachable(q)
            | mg::Event::PeerReachable(q)
            | mg::Event::PeerRemoved { peer: q, .. } => {
                self.dirty(p);
                Some(*q)
            }
            mg::Event::Rejected { .. } => {
                self.stats.bad_signatures += 1;
                None
            }
            _ => None,
        };
        if let Some(q) = about.and_then(|q| self.index.get(&q).copied())
            && self.entries.contains_key(&Some(p))
        {
            self.entry_view_refresh(p, q);
            self.check_crash_watch(p, q);
        }
    }

    /// `p` now holds a newer announcement of `q` (or `q` came up): elections and spread figures.
    fn held_update(&mut self, p: usize, q: usize, up: bool) {
        let Some(g) = self.nodes[p].gossip.as_ref() else {
            return;
        };
        let id = self.nodes[q].id;
        let (Some(info), Some(a)) = (g.peer(&id), g.announcement(&id)) else {
            return;
        };
        let seq = info.content_seq;
        let key = election_key(a.value());
        let held = &mut self.nodes[p].held[q];
        let prev = *held;
        *held = Held { seq, key };
        if up || prev.key != key {
            self.dirty(p);
        }
        if seq > prev.seq {
            self.spread(q, prev.seq, seq);
        }
    }

    /// One more peer holds `q`'s content up to `to` (it held up to `from` before).
    fn spread(&mut self, q: usize, from: u64, to: u64) {
        let now = self.now;
        for s in self.stats.spreading[q].iter_mut() {
            if s.seq > to {
                break;
            }
            if s.seq <= from {
                continue;
            }
            s.holders += 1;
            let after = now.saturating_since(s.at).as_secs_f64() * 1e3;
            if let Some(k) = s.sample {
                self.timeline.spreads[k].arrivals_ms.push(after);
            }
            if !s.converged && s.holders >= s.target {
                s.converged = true;
                let kind = if s.load_only {
                    &mut self.stats.load_only
                } else {
                    &mut self.stats.structural
                };
                kind.converged_ms.push(after);
            }
        }
        // Followed to the last peer (sampled spreads draw their whole curve).
        self.stats.spreading[q].retain(|s| s.holders < s.others);
    }

    /// After any input to `p`: a new publication starts being measured, and the wake-up moves.
    fn after_gossip(&mut self, p: usize) {
        let now = self.now;
        let Some(g) = self.nodes[p].gossip.as_ref() else {
            return;
        };
        let seq = g.local().value().seq;
        let wake = g.poll_timeout();
        if seq != self.nodes[p].published_seq {
            let content = g.local().value();
            let key = election_key(content);
            let load_only = self.nodes[p]
                .published
                .as_ref()
                .is_some_and(|old| mg::load_only(old, content));
            self.nodes[p].published = Some(content.clone());
            self.nodes[p].published_seq = seq;
            let own = &mut self.nodes[p].held[p];
            let relevant = own.key != key;
            *own = Held { seq, key };
            if relevant {
                self.dirty(p);
            }
            let others = self.stats.live_nodes.saturating_sub(1);
            let queue = &mut self.stats.spreading[p];
            while queue
                .front()
                .is_some_and(|s| now.saturating_since(s.at) > SPREAD_GIVE_UP)
            {
                if let Some(s) = queue.pop_front().filter(|s| !s.converged) {
                    if s.load_only {
                        self.stats.load_only.unconverged += 1;
                    } else {
                        self.stats.structural.unconverged += 1;
                    }
                }
            }
            let settled = now >= self.last_churn + super::CHURN_QUIET && !self.net.partitioned();
            let kind = if load_only {
                &mut self.stats.load_only
            } else {
                &mut self.stats.structural
            };
            if others > 0 && !settled {
                kind.churn += 1;
            } else if others > 0 {
                kind.changes += 1;
                let sampled = !load_only && self.timeline.spreads.len() < MAX_SPREADS;
                let sample = sampled.then(|| {
                    self.timeline.spreads.push(Spread {
                        at_s: since_start_s(now),
                        peers: others,
                        arrivals_ms: Vec::new(),
                    });
                    self.timeline.spreads.len() - 1
                });
                self.stats.spreading[p].push_back(Spreading {
                    seq,
                    at: now,
                    target: (0.99 * others as f64).ceil() as usize,
                    others,
                    holders: 0,
                    converged: false,
                    load_only,
                    sample,
                });
            }
            if self.entries.contains_key(&Some(p)) {
                self.entry_view_refresh(p, p);
            }
            self.invalidate_direct_view();
        }
        if wake != self.nodes[p].gossip_wake {
            self.nodes[p].gossip_wake = wake;
            if let Some(t) = wake {
                let t = t.max(now);
                self.nodes[p].gossip_wake = Some(t);
                self.queue.push(t, Ev::GossipWake(p));
            }
        }
    }

    /// Something that can change `p`'s election happened: elect once things settle.
    pub(super) fn dirty(&mut self, p: usize) {
        let now = self.now;
        let node = &mut self.nodes[p];
        if !(node.up() && node.spec.contributes() && node.gossip.is_some()) {
            return;
        }
        node.last_dirty = now;
        node.dirty_since.get_or_insert(now);
        if !node.elect_pending {
            node.elect_pending = true;
            self.queue.push(now + super::ELECTION_SETTLE, Ev::Elect(p));
        }
    }

    /// Elects if the changes settled (or waited long enough); else looks again when they may.
    pub(super) fn elect_when_settled(&mut self, p: usize) {
        let now = self.now;
        let node = &mut self.nodes[p];
        let Some(since) = node.dirty_since else {
            node.elect_pending = false;
            return;
        };
        let due = (node.last_dirty + super::ELECTION_SETTLE)
            .min(since + super::ELECTION_MAX_WAIT)
            .max(node.up_since + super::JOIN_SETTLE);
        if now < due {
            self.queue.push(due, Ev::Elect(p));
            return;
        }
        node.elect_pending = false;
        node.dirty_since = None;
        self.elect(p);
    }

    /// `p`'s own state changed: republish (once per instant).
    pub(super) fn touch(&mut self, p: usize) {
        if !self.nodes[p].publish_pending && self.nodes[p].gossip.is_some() {
            self.nodes[p].publish_pending = true;
            self.queue.push(self.now, Ev::Publish(p));
        }
    }

    pub(super) fn publish(&mut self, p: usize) {
        self.nodes[p].publish_pending = false;
        if self.nodes[p].gossip.is_none() {
            return;
        }
        let a = self.local_announcement(p);
        self.gossip_input(p, Input::UpdateLocal(Box::new(a)));
    }

    /// What `p` announces about itself now (gossip sets `peer_id`, `mesh_id` and `seq`).
    pub(super) fn local_announcement(&self, p: usize) -> PeerAnnouncement {
        let node = &self.nodes[p];
        let spec = node.spec;
        let hosted: Vec<&super::Hosting> = node
            .hostings
            .iter()
            .filter(|h| h.ready && !h.draining)
            .collect();
        // A peer launching llama-server already announces itself a host (still loading).
        let role = if !spec.contributes() {
            Role::Client
        } else if node.hostings.iter().any(|h| !h.draining) {
            Role::Host { http_port: 9337 }
        } else {
            Role::Worker
        };
        let mut a = PeerAnnouncement::new(node.id, MESH_ID, role);
        a.hostname = spec.name.clone();
        a.backend = spec.backend;
        a.gpu_name = spec.gpu_name.clone().unwrap_or_default();
        let mut fast = spec.fast_memory_gb;
        if let Some(cap) = spec.max_vram_gb {
            fast = fast.min(cap);
        }
        if spec.behaviour == Behaviour::InflateMemory {
            fast *= MEMORY_INFLATION;
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
        a.serving_models = node.serving_models.clone();
        a.hosted_models = hosted
            .iter()
            .map(|h| self.models[h.model].name.clone())
            .collect();
        a.rpc_ready = spec.contributes().then_some(true);
        a.inflight_requests = node.inflight;
        a.model_timings = node.samples.timings(self.now);
        if spec.behaviour == Behaviour::InflateTimings {
            for t in &mut a.model_timings {
                t.tps_p50 *= INFLATION;
                t.ttft_ms_p50 /= INFLATION;
            }
        }
        a.native_baselines = node.collector.published();
        a.rtt_hints = node.rtt_hints.clone();
        // Pipelines it runs, loading ones included (their workers already serve layers).
        a.pipelines = node
            .hostings
            .iter()
            .filter(|h| !h.draining && !h.workers.is_empty())
            .map(|h| RunningPipeline {
                model: self.models[h.model].name.clone(),
                workers: h.workers.iter().map(|&w| self.nodes[w].id).collect(),
                total_group_memory_bytes: ((spec.fast_memory_gb
                    + h.workers
                        .iter()
                        .map(|&w| self.nodes[w].spec.fast_memory_gb)
                        .sum::<f64>())
                    * 1e9) as u64,
            })
            .collect();
        a
    }

    /// `p`'s view of the mesh for its election: its gossip state's live peers, each announcement
    /// stripped to what the election reads (shared per origin and election key, so a view costs
    /// a few small clones per peer instead of whole announcements with their measurements).
    pub(super) fn election_view(&mut self, p: usize) -> MeshView {
        let Some(g) = self.nodes[p].gossip.as_ref() else {
            return MeshView::new(self.nodes[p].id, Vec::new());
        };
        let mut peers = Vec::with_capacity(self.stats.live_nodes);
        let own = g.local().value();
        peers.push(KnownPeer {
            announcement: trim(own),
            rtt_ms: Some(0),
            first_seen: self.nodes[p].up_since,
            last_fresh: self.now,
        });
        for id in g.peer_ids() {
            let (Some(info), Some(&q)) = (g.peer(&id), self.index.get(&id)) else {
                continue;
            };
            if info.stale {
                continue;
            }
            let key = self.nodes[p].held[q].key;
            let cached = self.stats.trimmed[q]
                .as_ref()
                .filter(|(k, _)| *k == key)
                .map(|(_, a)| a.clone());
            let announcement = match cached {
                Some(a) => a,
                None => {
                    let Some(sa) = g.announcement(&id) else {
                        continue;
                    };
                    let a = trim(sa.value());
                    self.stats.trimmed[q] = Some((key, a.clone()));
                    a
                }
            };
            peers.push(KnownPeer {
                announcement,
                rtt_ms: (!info.unreachable)
                    .then(|| (2.0 * self.net.one_way_ms(p, q)).round() as u32),
                first_seen: info.first_seen,
                last_fresh: info.last_fresh,
            });
        }
        MeshView::new(self.nodes[p].id, peers)
    }

    /// `p`'s view of the mesh from its gossip state, with its RTT to each peer.
    pub(super) fn build_view(&self, p: usize) -> MeshView {
        let Some(g) = self.nodes[p].gossip.as_ref() else {
            return MeshView::new(self.nodes[p].id, Vec::new());
        };
        g.view(|id| {
            self.index
                .get(id)
                .map(|&q| (2.0 * self.net.one_way_ms(p, q)).round() as u32)
        })
    }

    /// Brings entry `e`'s view of `q` up to date with its gossip state.
    fn entry_view_refresh(&mut self, e: usize, q: usize) {
        let Some(g) = self.nodes[e].gossip.as_ref() else {
            return;
        };
        let id = self.nodes[q].id;
        let known = if q == e {
            Some(KnownPeer {
                announcement: g.local().value().clone(),
                rtt_ms: Some(0),
                first_seen: self.nodes[e].up_since,
                last_fresh: self.now,
            })
        } else {
            g.peer(&id).filter(|i| !i.stale).and_then(|info| {
                Some(KnownPeer {
                    announcement: g.announcement(&id)?.value().clone(),
                    rtt_ms: (!info.unreachable)
                        .then(|| (2.0 * self.net.one_way_ms(e, q)).round() as u32),
                    first_seen: info.first_seen,
                    last_fresh: info.last_fresh,
                })
            })
        };
        let Some(view) = self
            .entries
            .get_mut(&Some(e))
            .and_then(|ep| ep.view.as_mut())
        else {
            return;
        };
        match (view.peers.binary_search_by_key(&id, KnownPeer::id), known) {
            (Ok(i), Some(k)) => view.peers[i] = k,
            (Err(i), Some(k)) => view.peers.insert(i, k),
            (Ok(i), None) => {
                view.peers.remove(i);
            }
            (Err(_), None) => {}
        }
    }

    /// Whether entry `e` would route to `q` for some model.
    fn is_target(&self, e: usize, q: usize) -> bool {
        let id = self.nodes[q].id;
        self.entries
            .get(&Some(e))
            .and_then(|ep| ep.view.as_ref())
            .and_then(|v| v.get(&id))
            .is_some_and(|k| k.rtt_ms.is_some() && !k.announcement.hosted_models.is_empty())
    }

    /// Crashing peers that entries route to: watch until no entry does.
    pub(super) fn watch_crashes(&mut self, peers: &[usize]) {
        for &p in peers {
            let entries: Vec<usize> = self
                .entries
                .keys()
                .flatten()
                .copied()
                .filter(|&e| e != p && self.nodes[e].up() && self.is_target(e, p))
                .collect();
            if !entries.is_empty() {
                self.stats.crashes.push(CrashWatch {
                    peer: p,
                    at: self.now,
                    entries,
                    worst: Duration::ZERO,
                });
            }
        }
    }

    fn check_crash_watch(&mut self, e: usize, q: usize) {
        if !self
            .stats
            .crashes
            .iter()
            .any(|w| w.peer == q && w.entries.contains(&e))
            || self.is_target(e, q)
        {
            return;
        }
        let now = self.now;
        for w in self.stats.crashes.iter_mut().filter(|w| w.peer == q) {
            if let Some(i) = w.entries.iter().position(|&x| x == e) {
                w.entries.remove(i);
                w.worst = w.worst.max(now.saturating_since(w.at));
            }
        }
    }

    /// `p` just died: every entry holding a connection to it (it routes to it) sees the
    /// connection time out.
    pub(super) fn notice_gone(&mut self, p: usize) {
        let entries: Vec<usize> = self
            .entries
            .keys()
            .flatten()
            .copied()
            .filter(|&e| e != p && self.nodes[e].up() && self.is_target(e, p))
            .collect();
        for e in entries {
            self.connection_lost(e, p);
        }
    }

    /// After a partition: an entry's connections to targets it can no longer reach time out.
    pub(super) fn notice_cut(&mut self, e: usize) {
        if !self.entries.contains_key(&Some(e)) || !self.nodes[e].up() {
            return;
        }
        let cut: Vec<usize> = (0..self.nodes.len())
            .filter(|&q| q != e && !self.net.reachable(e, q) && self.is_target(e, q))
            .collect();
        for q in cut {
            self.connection_lost(e, q);
        }
    }

    pub(super) fn gossip_report(&self) -> GossipReport {
        let end = self.end;
        let per_s = |bytes: u64, node_s: f64| {
            if node_s > 0.0 {
                crate::report::round(bytes as f64 / node_s, 1)
            } else {
                0.0
            }
        };
        let figures = |load_only: bool| {
            let kind = if load_only {
                &self.stats.load_only
            } else {
                &self.stats.structural
            };
            let mut unconverged = kind.unconverged;
            for queue in &self.stats.spreading {
                unconverged += queue
                    .iter()
                    .filter(|s| s.load_only == load_only && !s.converged)
                    .filter(|s| end.saturating_since(s.at) >= SPREAD_UNDECIDED)
                    .count() as u64;
            }
            let converged = kind.converged_ms.len() as u64;
            // Changes still spreading but younger than SPREAD_UNDECIDED at the end: undecided.
            let changes = converged + unconverged;
            let mut sorted = kind.converged_ms.clone();
            sorted.sort_by(f64::total_cmp);
            let pct = |p: f64| {
                (!sorted.is_empty())
                    .then(|| crate::report::round(mesh_core::samples::percentile(&sorted, p), 1))
            };
            let within = sorted.iter().filter(|&&v| v <= 1000.0).count();
            Convergence {
                changes,
                converged,
                within_1s_pct: (changes > 0)
                    .then(|| crate::report::round(100.0 * within as f64 / changes as f64, 1)),
                p50_ms: pct(50.0),
                p99_ms: pct(99.0),
                max_ms: sorted.last().map(|v| crate::report::round(*v, 1)),
                during_churn: kind.churn,
            }
        };
        GossipReport {
            peers: self.stats.live_nodes as u32,
            messages: self.stats.messages,
            bytes: self.stats.bytes,
            bytes_per_peer_per_s: per_s(self.stats.bytes, self.stats.node_seconds),
            steady_bytes_per_peer_per_s: per_s(
                self.stats.bytes - self.stats.bytes_at_half.unwrap_or(0),
                self.stats.node_seconds_half,
            ),
            convergence: figures(false),
            load_convergence: figures(true),
            crashed_hosts: self
                .stats
                .crashes
                .iter()
                .map(|w| CrashRemoval {
                    peer: self.nodes[w.peer].spec.name.clone(),
                    at_s: crate::report::round(since_start_s(w.at), 3),
                    out_of_targets_after_ms: w
                        .entries
                        .is_empty()
                        .then(|| crate::report::round(w.worst.as_secs_f64() * 1e3, 1)),
                })
                .collect(),
            bad_signatures: self.stats.bad_signatures,
            by_kind: self
                .stats
                .by_kind
                .iter()
                .map(|(k, &(messages, bytes, at_half))| {
                    let figures = KindFigures {
                        messages,
                        bytes,
                        steady_bytes_per_peer_per_s: per_s(
                            bytes - at_half,
                            self.stats.node_seconds_half,
                        ),
                    };
                    (k.to_string(), figures)
                })
                .collect(),
        }
    }
}

fn ms(v: f64) -> Duration {
    super::ms(v)
}

fn since_start_s(t: mesh_core::Timestamp) -> f64 {
    super::since_start(t).as_secs_f64()
}

/// `a` with only what the election reads (see [`election_key`]).
fn trim(a: &PeerAnnouncement) -> PeerAnnouncement {
    let mut t = PeerAnnouncement::new(a.peer_id, String::new(), a.role);
    t.backend = a.backend;
    t.fast_memory_bytes = a.fast_memory_bytes;
    t.system_ram_bytes = a.system_ram_bytes;
    t.requested_models.clone_from(&a.requested_models);
    t.serving_models.clone_from(&a.serving_models);
    t.hosted_models.clone_from(&a.hosted_models);
    t.model_sizes.clone_from(&a.model_sizes);
    t.rpc_ready = a.rpc_ready;
    t.rtt_hints.clone_from(&a.rtt_hints);
    t.pipelines.clone_from(&a.pipelines);
    t
}

/// A hash of what the election reads from an announcement: a node re-elects only when one of
/// these changes (load, timings and baselines change all the time and never matter to it).
pub(super) fn election_key(a: &PeerAnnouncement) -> u64 {
    let mut h = DefaultHasher::new();
    match a.role {
        Role::Worker => 0u8.hash(&mut h),
        Role::Host { .. } => 1u8.hash(&mut h),
        Role::Client => 2u8.hash(&mut h),
    }
    a.backend.as_str().hash(&mut h);
    a.fast_memory_bytes.hash(&mut h);
    a.system_ram_bytes.hash(&mut h);
    a.requested_models.hash(&mut h);
    a.serving_models.hash(&mut h);
    a.hosted_models.hash(&mut h);
    a.model_sizes.hash(&mut h);
    a.rpc_ready.hash(&mut h);
    for r in &a.rtt_hints {
        r.peer.hash(&mut h);
        r.rtt_ms.hash(&mut h);
    }
    for pl in &a.pipelines {
        pl.model.hash(&mut h);
        pl.workers.hash(&mut h);
        pl.total_group_memory_bytes.hash(&mut h);
    }
    h.finish()
}
