//! The gossip machine's rules, one test each, with explicit `now`. Nodes are driven through the
//! public API only; `Net` delivers their messages instantly (or drops the ones a test chooses).

use super::beat::BeatChain;
use super::sign::{SecretKey, Signed, SignedAnnouncement};
use super::state::{Config, Event, Input, Output, Removal, State};
use super::wire::{Digest, Hello, Message, Records};
use super::{AdmissionError, AdmittedBy};
use crate::id::PeerId;
use crate::invite::{self, InviteError};
use crate::peer::{PeerAnnouncement, Role};
use crate::time::Timestamp;
use rand_core::SeedableRng;
use rand_pcg::Pcg64;
use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::time::Duration;

const MESH: &str = "mesh-a";
const T0: Timestamp = Timestamp::from_secs(10_000);

fn secs(s: u64) -> Duration {
    Duration::from_secs(s)
}

fn key(n: u64) -> SecretKey {
    SecretKey::generate(&mut Pcg64::seed_from_u64(1000 + n))
}

fn node(n: u64, config: Config, now: Timestamp) -> State {
    let k = key(n);
    let ann = PeerAnnouncement::new(k.peer_id(), MESH, Role::Worker);
    State::new(k, ann, config, Pcg64::seed_from_u64(n), now)
}

#[derive(Default)]
struct Net {
    nodes: BTreeMap<PeerId, State>,
    queue: VecDeque<(PeerId, PeerId, Message)>,
    events: Vec<(PeerId, Event)>,
    probes: Vec<(PeerId, PeerId)>,
    dials: Vec<(PeerId, PeerId)>,
    disconnects: Vec<(PeerId, PeerId)>,
}

impl Net {
    fn add(&mut self, s: State) -> PeerId {
        let id = s.me();
        self.nodes.insert(id, s);
        id
    }

    fn input(&mut self, at: PeerId, input: Input, now: Timestamp) {
        let outs: Vec<Output> = self
            .nodes
            .get_mut(&at)
            .unwrap()
            .handle(input, now)
            .collect();
        self.absorb(at, outs);
    }

    fn absorb(&mut self, at: PeerId, outs: Vec<Output>) {
        for o in outs {
            match o {
                Output::SendMessage { to, message } => self.queue.push_back((at, to, message)),
                Output::Event(e) => self.events.push((at, e)),
                Output::Probe(p) => self.probes.push((at, p)),
                Output::Dial { peer, .. } => self.dials.push((at, peer)),
                Output::Disconnect(p) => self.disconnects.push((at, p)),
            }
        }
    }

    /// Delivers queued messages (and what they cause) until none is left, dropping those `keep`
    /// rejects.
    fn settle_with(
        &mut self,
        now: Timestamp,
        mut keep: impl FnMut(PeerId, PeerId, &Message) -> bool,
    ) {
        while let Some((from, to, message)) = self.queue.pop_front() {
            if !keep(from, to, &message) || !self.nodes.contains_key(&to) {
                continue;
            }
            self.input(to, Input::Message { from, message }, now);
        }
    }

    fn settle(&mut self, now: Timestamp) {
        self.settle_with(now, |_, _, _| true);
    }

    fn node(&self, id: PeerId) -> &State {
        &self.nodes[&id]
    }

    fn take_events(&mut self, at: PeerId) -> Vec<Event> {
        let (mine, rest) = std::mem::take(&mut self.events)
            .into_iter()
            .partition(|(p, _)| *p == at);
        self.events = rest;
        mine.into_iter().map(|(_, e)| e).collect()
    }

    fn sent_by(&self, at: PeerId) -> Vec<(PeerId, &Message)> {
        self.queue
            .iter()
            .filter(|(f, _, _)| *f == at)
            .map(|(_, t, m)| (*t, m))
            .collect()
    }
}

/// Node 0 founds; nodes 1..n join through an invite node 0 minted. Everyone ends up knowing
/// everyone (fanout ≥ n).
fn mesh(n: u64, config: Config) -> (Net, Vec<PeerId>) {
    let mut net = Net::default();
    let founder = net.add(node(0, config.clone(), T0));
    let inv = net.nodes.get_mut(&founder).unwrap().mint_invite(
        b"founder-addr".to_vec(),
        invite::DEFAULT_TTL,
        T0,
    );
    let mut ids = vec![founder];
    for i in 1..n {
        let id = net.add(node(i, config.clone(), T0));
        net.input(id, Input::Join(inv.clone()), T0);
        net.settle(T0);
        ids.push(id);
    }
    for &a in &ids {
        for &b in &ids {
            assert!(
                a == b || net.node(a).peer(&b).is_some(),
                "setup: everyone knows everyone"
            );
        }
    }
    net.events.clear();
    net.dials.clear();
    (net, ids)
}

fn timeout(net: &mut Net, at: PeerId, now: Timestamp) {
    net.input(at, Input::Timeout, now);
}

// ---- liveness timers ----

#[test]
fn peer_turns_stale_exactly_stale_after_without_a_fresh_seq() {
    let (mut net, ids) = mesh(2, Config::default());
    let (a, b) = (ids[0], ids[1]);
    let just_before = T0 + secs(180) - Duration::from_micros(1);
    timeout(&mut net, a, just_before);
    assert!(!net.node(a).peer(&b).unwrap().stale);
    assert!(
        net.take_events(a)
            .iter()
            .all(|e| !matches!(e, Event::PeerStale(_)))
    );

    timeout(&mut net, a, T0 + secs(180));
    assert!(net.node(a).peer(&b).unwrap().stale);
    assert!(net.take_events(a).contains(&Event::PeerStale(b)));
    let view = net.node(a).view(|_| Some(10));
    assert!(view.get(&b).is_none(), "a stale peer is out of the view");
}

#[test]
fn stale_peer_is_removed_at_twice_the_stale_time() {
    let (mut net, ids) = mesh(2, Config::default());
    let (a, b) = (ids[0], ids[1]);
    timeout(&mut net, a, T0 + secs(180));
    timeout(&mut net, a, T0 + secs(360) - Duration::from_micros(1));
    assert!(net.node(a).peer(&b).is_some());
    timeout(&mut net, a, T0 + secs(360));
    assert!(net.node(a).peer(&b).is_none());
    assert!(net.take_events(a).contains(&Event::PeerRemoved {
        peer: b,
        reason: Removal::Timeout
    }));
}

#[test]
fn a_shell_that_sleeps_until_poll_timeout_sees_stale_and_removal_on_time() {
    let (mut net, ids) = mesh(2, Config::default());
    let (a, b) = (ids[0], ids[1]);
    let mut wakes = Vec::new();
    while let Some(t) = net.node(a).poll_timeout().filter(|&t| t <= T0 + secs(400)) {
        wakes.push(t);
        timeout(&mut net, a, t);
        for e in net.take_events(a) {
            match e {
                Event::PeerStale(p) => assert_eq!((p, t), (b, T0 + secs(180))),
                Event::PeerRemoved { peer, .. } => assert_eq!((peer, t), (b, T0 + secs(360))),
                _ => {}
            }
        }
        net.queue.clear();
    }
    assert!(wakes.contains(&(T0 + secs(180))) && wakes.contains(&(T0 + secs(360))));
    assert!(net.node(a).peer(&b).is_none());
    assert!(
        wakes.windows(2).all(|w| w[0] < w[1]),
        "time only moves forward: {wakes:?}"
    );
}

#[test]
fn relayed_heartbeat_keeps_a_peer_alive_that_cannot_reach_us_directly() {
    // B sits behind a one-way NAT: nothing from B reaches A directly, only via C.
    let (mut net, ids) = mesh(3, Config::default());
    let (a, b, c) = (ids[0], ids[1], ids[2]);
    let mut now = T0;
    for _ in 0..5 {
        now = now + secs(60);
        for p in [b, c, a] {
            timeout(&mut net, p, now);
        }
        net.settle_with(now, |from, to, _| !(from == b && to == a));
    }
    let info = net.node(a).peer(&b).unwrap();
    assert!(
        !info.stale,
        "fresh seqs relayed by {c} keep {b} alive at {a}"
    );
    assert!(info.last_fresh > T0 + secs(180));
    assert!(net.node(a).view(|_| Some(5)).get(&b).is_some());
}

#[test]
fn fresh_seq_revives_a_stale_peer() {
    let (mut net, ids) = mesh(2, Config::default());
    let (a, b) = (ids[0], ids[1]);
    timeout(&mut net, a, T0 + secs(200));
    assert!(net.node(a).peer(&b).unwrap().stale);
    net.take_events(a);
    // B's heartbeat finally gets through.
    timeout(&mut net, b, T0 + secs(200));
    net.settle_with(T0 + secs(200), |from, to, _| from == b && to == a);
    assert!(!net.node(a).peer(&b).unwrap().stale);
    assert!(net.take_events(a).contains(&Event::PeerUp(b)));
    // And the stale clock restarts from the fresh seq.
    timeout(&mut net, a, T0 + secs(379));
    assert!(!net.node(a).peer(&b).unwrap().stale);
}

#[test]
fn origin_bumps_seq_every_heartbeat_and_a_content_change_restarts_the_interval() {
    let (mut net, ids) = mesh(3, Config::default());
    let a = ids[0];
    let seq0 = net.node(a).seq();
    timeout(&mut net, a, T0 + secs(59));
    assert_eq!(net.node(a).seq(), seq0, "no heartbeat before the interval");
    timeout(&mut net, a, T0 + secs(60));
    let seq1 = net.node(a).seq();
    assert!(seq1 > seq0);
    let hbs: Vec<_> = net
        .sent_by(a)
        .into_iter()
        .filter_map(|(_, m)| match m {
            Message::Rumor(r) if !r.heartbeats.is_empty() => Some(r.heartbeats[0]),
            _ => None,
        })
        .collect();
    assert_eq!(hbs.len(), 2, "pushed to heartbeat_fanout peers");
    assert_eq!(hbs[0].seq(), Some(seq1));
    assert_eq!(
        hbs[0].content_seq, seq0,
        "content unchanged since the first announcement"
    );
    net.queue.clear();

    // A content change at +90 s: the next heartbeat is due at +150 s, not +120 s.
    let mut changed = net.node(a).local().value().clone();
    changed.inflight_requests = 3;
    net.input(a, Input::UpdateLocal(Box::new(changed)), T0 + secs(90));
    assert_eq!(
        net.node(a).poll_timeout().map(|t| t <= T0 + secs(150)),
        Some(true)
    );
    let seq2 = net.node(a).seq();
    timeout(&mut net, a, T0 + secs(149));
    assert_eq!(net.node(a).seq(), seq2);
    timeout(&mut net, a, T0 + secs(150));
    assert!(net.node(a).seq() > seq2);
}

#[test]
fn load_only_changes_are_published_at_most_every_metrics_interval() {
    let (mut net, ids) = mesh(3, Config::default());
    let a = ids[0];
    let rumors = |net: &Net| {
        net.sent_by(a)
            .iter()
            .filter(|(_, m)| matches!(m, Message::Rumor(r) if !r.announcements.is_empty()))
            .count()
    };
    let mut changed = net.node(a).local().value().clone();
    changed.hostname = "a".into();
    net.input(
        a,
        Input::UpdateLocal(Box::new(changed.clone())),
        T0 + secs(40),
    );
    assert!(rumors(&net) > 0, "a structural change goes out at once");
    let published = net.node(a).local().value().seq;
    net.queue.clear();

    // Load changes within the interval wait; the latest one goes out when it is up.
    for (i, at) in [(1, 41), (2, 55), (3, 68)] {
        changed.inflight_requests = i;
        net.input(
            a,
            Input::UpdateLocal(Box::new(changed.clone())),
            T0 + secs(at),
        );
    }
    assert_eq!(rumors(&net), 0);
    assert_eq!(net.node(a).local().value().seq, published);
    assert!(
        net.node(a)
            .poll_timeout()
            .is_some_and(|t| t <= T0 + secs(70))
    );
    timeout(&mut net, a, T0 + secs(70));
    assert!(rumors(&net) > 0);
    assert_eq!(net.node(a).local().value().inflight_requests, 3);
    net.queue.clear();

    // A structural change takes the pending load along at once.
    changed.inflight_requests = 4;
    net.input(
        a,
        Input::UpdateLocal(Box::new(changed.clone())),
        T0 + secs(71),
    );
    changed.hosted_models = vec!["Qwen3-8B-Q4_K_M".into()];
    net.input(a, Input::UpdateLocal(Box::new(changed)), T0 + secs(72));
    let local = net.node(a).local().value();
    assert_eq!((local.inflight_requests, local.hosted_models.len()), (4, 1));
    assert!(rumors(&net) > 0);

    // A load change undone before it was due is not published at all.
    net.queue.clear();
    let mut back = net.node(a).local().value().clone();
    back.inflight_requests = 9;
    net.input(a, Input::UpdateLocal(Box::new(back.clone())), T0 + secs(73));
    back.inflight_requests = 4;
    net.input(a, Input::UpdateLocal(Box::new(back)), T0 + secs(74));
    timeout(&mut net, a, T0 + secs(105));
    assert_eq!(rumors(&net), 0);
}

#[test]
fn seq_is_wall_clock_millis_or_one_more_than_the_last() {
    let (mut net, ids) = mesh(2, Config::default());
    let a = ids[0];
    assert_eq!(net.node(a).seq(), T0.as_millis());
    let mut changed = net.node(a).local().value().clone();
    changed.hostname = "x".into();
    net.input(a, Input::UpdateLocal(Box::new(changed.clone())), T0);
    assert_eq!(
        net.node(a).seq(),
        T0.as_millis() + 1,
        "same millisecond: +1"
    );
    changed.hostname = "y".into();
    net.input(a, Input::UpdateLocal(Box::new(changed)), T0 + secs(5));
    assert_eq!(net.node(a).seq(), (T0 + secs(5)).as_millis());
}

#[test]
fn tick_sends_a_digest_to_k_distinct_live_peers_and_reschedules() {
    let config = Config {
        heartbeat_interval: secs(3600),
        anti_entropy_peers: 5,
        ..Config::default()
    };
    let (mut net, ids) = mesh(8, config);
    let a = ids[0];
    net.queue.clear();
    let first = net.node(a).poll_timeout().unwrap();
    assert!(
        first < T0 + secs(60),
        "first tick is jittered within one interval"
    );
    timeout(&mut net, a, first);
    let targets: BTreeSet<PeerId> = net
        .sent_by(a)
        .into_iter()
        .filter(|(_, m)| matches!(m, Message::Digest(_)))
        .map(|(to, _)| to)
        .collect();
    assert_eq!(targets.len(), 5);
    assert!(!targets.contains(&a));
    assert_eq!(net.node(a).poll_timeout(), Some(first + secs(60)));
    let Some((_, Message::Digest(d))) = net.sent_by(a).into_iter().next() else {
        panic!("digest first");
    };
    assert_eq!(d.entries.len(), 8, "itself and seven peers");
    assert!(
        d.entries
            .contains(&(a.short_id(), d.base - net.node(a).seq()))
    );
}

#[test]
fn stale_peers_are_not_gossip_targets() {
    let config = Config {
        heartbeat_interval: secs(3600),
        anti_entropy_peers: 10,
        ..Config::default()
    };
    let (mut net, ids) = mesh(4, config);
    let (a, b) = (ids[0], ids[1]);
    // Everyone but B stays fresh.
    for &p in &ids[2..] {
        let mut changed = net.node(p).local().value().clone();
        changed.hostname = "fresh".into();
        net.input(p, Input::UpdateLocal(Box::new(changed)), T0 + secs(170));
    }
    net.settle(T0 + secs(170));
    net.queue.clear();
    let mut now = T0 + secs(180);
    timeout(&mut net, a, now);
    assert!(net.node(a).peer(&b).unwrap().stale);
    while net
        .sent_by(a)
        .iter()
        .all(|(_, m)| !matches!(m, Message::Digest(_)))
    {
        now = net.node(a).poll_timeout().unwrap();
        timeout(&mut net, a, now);
    }
    let targets: BTreeSet<PeerId> = net
        .sent_by(a)
        .into_iter()
        .filter(|(_, m)| matches!(m, Message::Digest(_)))
        .map(|(to, _)| to)
        .collect();
    assert_eq!(targets, ids[2..].iter().copied().collect());
}

// ---- leaving, tombstones ----

#[test]
fn signed_leaving_removes_the_peer_at_once_everywhere() {
    let (mut net, ids) = mesh(4, Config::default());
    let b = ids[1];
    net.input(b, Input::Leave, T0 + secs(1));
    net.settle(T0 + secs(1));
    for &p in ids.iter().filter(|&&p| p != b) {
        assert!(net.node(p).peer(&b).is_none(), "{p} dropped {b}");
        assert!(net.take_events(p).contains(&Event::PeerRemoved {
            peer: b,
            reason: Removal::Left
        }));
    }
    assert_eq!(
        net.node(b).poll_timeout(),
        None,
        "a node that left is quiet"
    );
}

#[test]
fn stale_relayed_copy_does_not_resurrect_a_removed_peer_but_its_comeback_does() {
    let (mut net, ids) = mesh(3, Config::default());
    let (a, b, c) = (ids[0], ids[1], ids[2]);
    let old_copy = net.node(c).announcement(&b).unwrap().clone();
    // B crashes; A removes it.
    timeout(&mut net, a, T0 + secs(360));
    assert!(net.node(a).peer(&b).is_none());
    net.queue.clear();
    // C, which hasn't removed B yet, relays its old copy.
    let relayed = Records {
        announcements: vec![old_copy.clone()],
        ..Records::default()
    };
    net.input(
        a,
        Input::Message {
            from: c,
            message: Message::Records(relayed.clone()),
        },
        T0 + secs(361),
    );
    net.input(
        a,
        Input::Message {
            from: c,
            message: Message::Rumor(relayed),
        },
        T0 + secs(362),
    );
    assert!(net.node(a).peer(&b).is_none());
    assert_eq!(net.node(a).stats().tombstoned, 2);

    // B restarts (same key, fresh state): its seq is newer than anything it published before.
    let back = node(1, Config::default(), T0 + secs(400));
    assert!(back.seq() > old_copy.value().seq);
    let comeback = back.local().clone();
    net.nodes.insert(b, back);
    let news = Records {
        announcements: vec![comeback],
        ..Records::default()
    };
    net.input(
        a,
        Input::Message {
            from: c,
            message: Message::Rumor(news),
        },
        T0 + secs(400),
    );
    assert!(net.node(a).peer(&b).is_some());
    assert!(net.take_events(a).contains(&Event::PeerUp(b)));
}

#[test]
fn tombstone_stops_blocking_old_copies_after_its_ttl() {
    let config = Config::default();
    let ttl = config.tombstone_ttl;
    let (mut net, ids) = mesh(3, config);
    let (a, b, c) = (ids[0], ids[1], ids[2]);
    let old_copy = net.node(c).announcement(&b).unwrap().clone();
    timeout(&mut net, a, T0 + secs(360));
    let removed_at = T0 + secs(360);
    let msg = || {
        Message::Records(Records {
            announcements: vec![old_copy.clone()],
            ..Records::default()
        })
    };
    net.input(
        a,
        Input::Message {
            from: c,
            message: msg(),
        },
        removed_at + ttl - Duration::from_micros(1),
    );
    assert!(net.node(a).peer(&b).is_none());
    net.input(
        a,
        Input::Message {
            from: c,
            message: msg(),
        },
        removed_at + ttl,
    );
    assert!(
        net.node(a).peer(&b).is_some(),
        "after the TTL the tombstone is gone"
    );
}

#[test]
fn leaving_older_than_a_comeback_is_ignored() {
    let (mut net, ids) = mesh(3, Config::default());
    let (a, b, c) = (ids[0], ids[1], ids[2]);
    net.input(b, Input::Leave, T0 + secs(1));
    let (_, _, leave_msg) = net.queue.iter().find(|(f, _, _)| *f == b).unwrap().clone();
    net.queue.clear();
    // B comes back before A heard it leave; the late leaving must not remove the new B.
    let back = node(1, Config::default(), T0 + secs(2));
    let hello_ann = back.local().clone();
    net.nodes.insert(b, back);
    net.input(
        a,
        Input::Message {
            from: c,
            message: Message::Rumor(Records {
                announcements: vec![hello_ann],
                ..Records::default()
            }),
        },
        T0 + secs(2),
    );
    net.input(
        a,
        Input::Message {
            from: c,
            message: leave_msg,
        },
        T0 + secs(3),
    );
    assert!(net.node(a).peer(&b).is_some());
}

// ---- PeerDown and probes ----

#[test]
fn peer_down_from_a_third_party_only_triggers_one_direct_probe() {
    let (mut net, ids) = mesh(3, Config::default());
    let (a, b, c) = (ids[0], ids[1], ids[2]);
    for i in 0..3 {
        net.input(
            a,
            Input::Message {
                from: c,
                message: Message::PeerDown(b),
            },
            T0 + secs(i),
        );
    }
    assert_eq!(net.probes, vec![(a, b)], "one probe while one is pending");
    assert!(net.node(a).peer(&b).is_some(), "a hint never removes");
    assert!(!net.node(a).peer(&b).unwrap().unreachable);

    // The probe answered: nothing changes.
    net.input(
        a,
        Input::ProbeResult {
            peer: b,
            reachable: true,
        },
        T0 + secs(3),
    );
    assert!(!net.node(a).peer(&b).unwrap().unreachable);
}

#[test]
fn probe_without_a_result_stops_blocking_new_probes_after_the_probe_timeout() {
    let config = Config::default();
    let pt = config.probe_timeout;
    let (mut net, ids) = mesh(3, config);
    let (a, b, c) = (ids[0], ids[1], ids[2]);
    net.input(
        a,
        Input::Message {
            from: c,
            message: Message::PeerDown(b),
        },
        T0,
    );
    assert_eq!(net.node(a).poll_timeout().map(|t| t <= T0 + pt), Some(true));
    timeout(&mut net, a, T0 + pt);
    net.input(
        a,
        Input::Message {
            from: c,
            message: Message::PeerDown(b),
        },
        T0 + pt,
    );
    assert_eq!(net.probes, vec![(a, b), (a, b)]);
}

#[test]
fn failed_probe_makes_the_peer_undialable_and_spreads_the_hint_but_keeps_it() {
    let (mut net, ids) = mesh(4, Config::default());
    let (a, b) = (ids[0], ids[1]);
    net.input(a, Input::ConnectionLost(b), T0 + secs(1));
    assert_eq!(net.probes, vec![(a, b)]);
    net.queue.clear();
    net.input(
        a,
        Input::ProbeResult {
            peer: b,
            reachable: false,
        },
        T0 + secs(2),
    );
    assert!(net.take_events(a).contains(&Event::PeerUnreachable(b)));
    let info = net.node(a).peer(&b).unwrap();
    assert!(info.unreachable && !info.stale);
    let view = net.node(a).view(|_| Some(12));
    assert_eq!(view.get(&b).unwrap().rtt_ms, None, "not dialable from here");
    // Others are asked to check for themselves (never B itself).
    let hinted: BTreeSet<_> = net
        .sent_by(a)
        .into_iter()
        .filter(|(_, m)| **m == Message::PeerDown(b))
        .map(|(to, _)| to)
        .collect();
    assert_eq!(hinted, [ids[2], ids[3]].into());
    net.settle_with(T0 + secs(2), |_, to, _| to != b);
    let probed: BTreeSet<_> = net
        .probes
        .iter()
        .filter(|(_, p)| *p == b)
        .map(|(at, _)| *at)
        .collect();
    assert_eq!(probed, [a, ids[2], ids[3]].into());

    // B speaks to A directly again: reachable.
    let mut changed = net.node(b).local().value().clone();
    changed.hostname = "back".into();
    net.input(b, Input::UpdateLocal(Box::new(changed)), T0 + secs(3));
    net.settle_with(T0 + secs(3), |from, to, _| from == b && to == a);
    assert!(!net.node(a).peer(&b).unwrap().unreachable);
    assert!(net.take_events(a).contains(&Event::PeerReachable(b)));
}

#[test]
fn peer_down_about_ourselves_is_answered_with_proof_of_life() {
    let (mut net, ids) = mesh(2, Config::default());
    let (a, b) = (ids[0], ids[1]);
    net.input(
        b,
        Input::Message {
            from: a,
            message: Message::PeerDown(b),
        },
        T0 + secs(1),
    );
    assert!(net.probes.is_empty());
    let replies = net.sent_by(b);
    assert!(
        matches!(replies.as_slice(), [(to, Message::Records(r))] if *to == a && !r.announcements.is_empty())
    );
}

// ---- signatures ----

fn tampered(
    orig: &SignedAnnouncement,
    f: impl FnOnce(&mut PeerAnnouncement),
) -> SignedAnnouncement {
    let mut v = orig.value().clone();
    f(&mut v);
    SignedAnnouncement::from_parts(postcard::to_allocvec(&v).unwrap(), *orig.signature()).unwrap()
}

#[test]
fn relayed_announcement_altered_in_transit_is_rejected_and_counted() {
    let (mut net, ids) = mesh(3, Config::default());
    let (a, b, c) = (ids[0], ids[1], ids[2]);
    let mut changed = net.node(b).local().value().clone();
    changed.fast_memory_bytes = 8_000_000_000;
    net.input(b, Input::UpdateLocal(Box::new(changed)), T0 + secs(1));
    let genuine = net.node(b).local().clone();
    net.queue.clear();
    // C relays it with inflated memory (the original let relays forge metrics).
    let forged = tampered(&genuine, |a| a.fast_memory_bytes = 80_000_000_000);
    net.input(
        a,
        Input::Message {
            from: c,
            message: Message::Rumor(Records {
                announcements: vec![forged],
                ..Records::default()
            }),
        },
        T0 + secs(1),
    );
    assert_eq!(net.node(a).stats().bad_signature, 1);
    assert!(
        net.take_events(a)
            .contains(&Event::Rejected { from: c, origin: b })
    );
    assert_ne!(
        net.node(a)
            .announcement(&b)
            .unwrap()
            .value()
            .fast_memory_bytes,
        80_000_000_000
    );
    assert!(net.queue.is_empty(), "a rejected record is not forwarded");
    // The genuine one still gets in afterwards.
    net.input(
        a,
        Input::Message {
            from: c,
            message: Message::Rumor(Records {
                announcements: vec![genuine],
                ..Records::default()
            }),
        },
        T0 + secs(1),
    );
    assert_eq!(
        net.node(a)
            .announcement(&b)
            .unwrap()
            .value()
            .fast_memory_bytes,
        8_000_000_000
    );
}

#[test]
fn announcement_forged_in_another_peers_name_is_rejected() {
    let (mut net, ids) = mesh(3, Config::default());
    let (a, b, c) = (ids[0], ids[1], ids[2]);
    let mut fake = net.node(b).local().value().clone();
    fake.seq += 1_000;
    fake.hosted_models = vec!["Qwen3-8B-Q4_K_M".into()];
    let forged = Signed::sign(&key(2), fake); // C's key, B's name
    net.input(
        a,
        Input::Message {
            from: c,
            message: Message::Records(Records {
                announcements: vec![forged],
                ..Records::default()
            }),
        },
        T0 + secs(1),
    );
    assert_eq!(net.node(a).stats().bad_signature, 1);
    assert!(
        net.node(a)
            .announcement(&b)
            .unwrap()
            .value()
            .hosted_models
            .is_empty()
    );
}

#[test]
fn forged_heartbeat_does_not_keep_a_dead_peer_alive() {
    let (mut net, ids) = mesh(3, Config::default());
    let (a, b, c) = (ids[0], ids[1], ids[2]);
    // A relay (key 2) builds a chain of its own for B's current content, and also guesses a link.
    let content_seq = net.node(b).seq();
    let foreign_chain = BeatChain::new(&key(2), content_seq).beat(b.short_id(), 1);
    let mut guessed = foreign_chain;
    guessed.n = 7;
    guessed.key = [0x5a; 16];
    net.input(
        a,
        Input::Message {
            from: c,
            message: Message::Rumor(Records {
                heartbeats: vec![foreign_chain, guessed],
                ..Records::default()
            }),
        },
        T0 + secs(179),
    );
    timeout(&mut net, a, T0 + secs(180));
    assert!(net.node(a).peer(&b).unwrap().stale);
    assert_eq!(net.node(a).stats().bad_signature, 2);
}

#[test]
fn announcement_for_another_mesh_is_dropped() {
    let (mut net, ids) = mesh(2, Config::default());
    let (a, b) = (ids[0], ids[1]);
    let k = key(9);
    let other = Signed::sign(
        &k,
        PeerAnnouncement::new(k.peer_id(), "mesh-b", Role::Worker),
    );
    net.input(
        a,
        Input::Message {
            from: b,
            message: Message::Records(Records {
                announcements: vec![other],
                ..Records::default()
            }),
        },
        T0,
    );
    assert_eq!(net.node(a).stats().wrong_mesh, 1);
    assert!(net.node(a).peer(&k.peer_id()).is_none());
}

#[test]
fn node_restarted_with_a_clock_behind_its_old_seq_jumps_past_it() {
    let (mut net, ids) = mesh(2, Config::default());
    let (a, b) = (ids[0], ids[1]);
    let mut changed = net.node(b).local().value().clone();
    changed.hostname = "before".into();
    net.input(b, Input::UpdateLocal(Box::new(changed)), T0 + secs(100));
    net.settle(T0 + secs(100));
    let old_seq = net.node(a).peer(&b).unwrap().seq;
    // B restarts with its clock 50 s behind and joins again.
    let restarted = node(1, Config::default(), T0 + secs(50));
    assert!(restarted.seq() < old_seq);
    net.nodes.insert(b, restarted);
    let inv = net
        .nodes
        .get_mut(&a)
        .unwrap()
        .mint_invite(vec![], invite::DEFAULT_TTL, T0);
    net.input(b, Input::Join(inv), T0 + secs(51));
    net.settle(T0 + secs(51));
    assert!(net.node(b).seq() > old_seq);
    assert_eq!(net.node(a).peer(&b).unwrap().seq, net.node(b).seq());
}

// ---- push, rumours, anti-entropy ----

#[test]
fn local_change_is_pushed_at_once_and_an_unchanged_one_is_not() {
    let (mut net, ids) = mesh(8, Config::default());
    let a = ids[0];
    net.queue.clear();
    let same = net.node(a).local().value().clone();
    net.input(a, Input::UpdateLocal(Box::new(same.clone())), T0 + secs(1));
    assert!(net.queue.is_empty());
    let mut changed = same;
    changed.hosted_models = vec!["Qwen3-8B-Q4_K_M".into()];
    net.input(a, Input::UpdateLocal(Box::new(changed)), T0 + secs(1));
    let pushed: BTreeSet<_> = net
        .sent_by(a)
        .into_iter()
        .filter(|(_, m)| matches!(m, Message::Rumor(r) if r.announcements.len() == 1))
        .map(|(to, _)| to)
        .collect();
    assert_eq!(pushed.len(), 6, "rumor_fanout distinct peers");
}

#[test]
fn load_only_news_goes_to_heartbeat_fanout_peers_at_the_origin_and_at_every_relay() {
    let (mut net, ids) = mesh(10, Config::default());
    let (a, b) = (ids[0], ids[1]);
    let rumor_targets = |net: &Net, at: PeerId| {
        net.sent_by(at)
            .into_iter()
            .filter(|(_, m)| matches!(m, Message::Rumor(r) if !r.announcements.is_empty()))
            .count()
    };
    net.queue.clear();
    let mut changed = net.node(a).local().value().clone();
    changed.inflight_requests = 3;
    net.input(
        a,
        Input::UpdateLocal(Box::new(changed.clone())),
        T0 + secs(60),
    );
    assert_eq!(rumor_targets(&net, a), 2, "heartbeat_fanout");
    let load_only = net.node(a).local().clone();
    net.queue.clear();
    let relay = |net: &mut Net, news: SignedAnnouncement| {
        net.input(
            b,
            Input::Message {
                from: a,
                message: Message::Rumor(Records {
                    announcements: vec![news],
                    ..Records::default()
                }),
            },
            T0 + secs(61),
        );
    };
    relay(&mut net, load_only);
    assert_eq!(
        rumor_targets(&net, b),
        2,
        "relayed to heartbeat_fanout peers"
    );
    net.queue.clear();
    // The same at a structural change: the whole rumour fanout.
    changed.hosted_models = vec!["Qwen3-8B-Q4_K_M".into()];
    net.input(a, Input::UpdateLocal(Box::new(changed)), T0 + secs(62));
    assert_eq!(rumor_targets(&net, a), 6);
    let structural = net.node(a).local().clone();
    net.queue.clear();
    relay(&mut net, structural);
    assert_eq!(rumor_targets(&net, b), 6);
}

#[test]
fn with_relay_batch_relayed_heartbeats_go_out_together_when_the_batch_is_due() {
    let config = Config {
        relay_batch: secs(1),
        ..Config::default()
    };
    let (mut net, ids) = mesh(8, config);
    let relay = ids[0];
    timeout(&mut net, relay, T0 + secs(60)); // its own heartbeat goes out at once
    net.queue.clear();
    let mut beats = Vec::new();
    for &origin in &ids[1..4] {
        let at = T0 + secs(60);
        timeout(&mut net, origin, at);
        beats.extend(net.sent_by(origin).into_iter().find_map(|(_, m)| match m {
            Message::Rumor(r) if !r.heartbeats.is_empty() => Some(r.heartbeats[0]),
            _ => None,
        }));
        net.queue.clear();
    }
    assert_eq!(beats.len(), 3);
    for (i, hb) in beats.into_iter().enumerate() {
        net.input(
            relay,
            Input::Message {
                from: ids[1 + i],
                message: Message::Rumor(Records {
                    heartbeats: vec![hb],
                    ..Records::default()
                }),
            },
            T0 + secs(60) + Duration::from_millis(100 * i as u64),
        );
    }
    let rumors = |net: &Net| -> Vec<usize> {
        net.sent_by(relay)
            .into_iter()
            .filter_map(|(_, m)| match m {
                Message::Rumor(r) => Some(r.heartbeats.len()),
                _ => None,
            })
            .collect()
    };
    assert!(rumors(&net).is_empty(), "held for the batch");
    assert!(
        net.node(relay)
            .poll_timeout()
            .is_some_and(|t| t <= T0 + secs(61)),
        "due one relay_batch after the first"
    );
    timeout(&mut net, relay, T0 + secs(61));
    assert_eq!(rumors(&net), [3, 3], "all three, to heartbeat_fanout peers");
}

#[test]
fn rumour_is_forwarded_once_on_first_receipt_and_replies_are_not_forwarded() {
    let (mut net, ids) = mesh(5, Config::default());
    let (a, b, c) = (ids[0], ids[1], ids[2]);
    let mut changed = net.node(b).local().value().clone();
    changed.hostname = "news".into();
    net.input(b, Input::UpdateLocal(Box::new(changed)), T0 + secs(1));
    let news = net.node(b).local().clone();
    net.queue.clear();
    let dups = net.node(a).stats().duplicates;
    let rumor = Message::Rumor(Records {
        announcements: vec![news.clone()],
        ..Records::default()
    });
    net.input(
        a,
        Input::Message {
            from: c,
            message: rumor.clone(),
        },
        T0 + secs(1),
    );
    let forwarded: BTreeSet<_> = net.sent_by(a).into_iter().map(|(to, _)| to).collect();
    assert_eq!(
        forwarded,
        [ids[3], ids[4]].into(),
        "never back to the sender or the origin"
    );
    net.queue.clear();
    net.input(
        a,
        Input::Message {
            from: ids[3],
            message: rumor,
        },
        T0 + secs(1),
    );
    assert!(net.queue.is_empty(), "a duplicate is not forwarded again");
    assert_eq!(net.node(a).stats().duplicates, dups + 1);

    // Newer news arriving as an anti-entropy reply is taken but not forwarded.
    let mut changed = net.node(b).local().value().clone();
    changed.hostname = "newer".into();
    net.input(b, Input::UpdateLocal(Box::new(changed)), T0 + secs(2));
    let newer = net.node(b).local().clone();
    net.queue.clear();
    net.input(
        a,
        Input::Message {
            from: c,
            message: Message::Records(Records {
                announcements: vec![newer],
                ..Records::default()
            }),
        },
        T0 + secs(2),
    );
    assert_eq!(
        net.node(a).announcement(&b).unwrap().value().hostname,
        "newer"
    );
    assert!(net.queue.is_empty());
}

#[test]
fn digest_exchange_pushes_what_the_other_lacks_and_pulls_what_it_has_newer() {
    let (mut net, ids) = mesh(4, Config::default());
    let (a, b, c, d) = (ids[0], ids[1], ids[2], ids[3]);
    // C changes; only B hears of it. D changes; only A hears of it.
    for (origin, hearer) in [(c, b), (d, a)] {
        let mut changed = net.node(origin).local().value().clone();
        changed.hostname = format!("changed-{origin}");
        net.input(origin, Input::UpdateLocal(Box::new(changed)), T0 + secs(1));
        net.settle_with(T0 + secs(1), |from, to, _| from == origin && to == hearer);
    }
    // One anti-entropy exchange A → B repairs both sides.
    let digest = |s: &State| {
        let base = u64::MAX / 2;
        Message::Digest(Digest {
            base,
            entries: std::iter::once((s.me().short_id(), base - s.seq()))
                .chain(
                    s.peer_ids()
                        .map(|p| (p.short_id(), base - s.peer(&p).unwrap().seq)),
                )
                .collect(),
            revocations: vec![],
            passive: false,
        })
    };
    let m = digest(net.node(a));
    net.input(
        b,
        Input::Message {
            from: a,
            message: m,
        },
        T0 + secs(2),
    );
    net.settle_with(T0 + secs(2), |from, to, _| {
        (from, to) == (a, b) || (from, to) == (b, a)
    });
    for s in [a, b] {
        assert_eq!(
            net.node(s).announcement(&c).unwrap().value().hostname,
            format!("changed-{c}")
        );
        assert_eq!(
            net.node(s).announcement(&d).unwrap().value().hostname,
            format!("changed-{d}")
        );
    }
}

#[test]
fn heartbeat_naming_content_we_lack_pulls_it_from_the_relay() {
    let (mut net, ids) = mesh(3, Config::default());
    let (a, b, c) = (ids[0], ids[1], ids[2]);
    let mut changed = net.node(b).local().value().clone();
    changed.hostname = "missed".into();
    net.input(b, Input::UpdateLocal(Box::new(changed)), T0 + secs(1));
    net.settle_with(T0 + secs(1), |_, to, _| to == c); // A misses the content
    timeout(&mut net, b, T0 + secs(61)); // heartbeat, relayed to A only through C
    net.settle_with(T0 + secs(61), |from, to, _| !(from == b && to == a));
    timeout(&mut net, c, T0 + secs(62)); // C's relay batch is due
    net.settle_with(T0 + secs(62), |from, to, _| !(from == b && to == a));
    assert_eq!(
        net.node(a).announcement(&b).unwrap().value().hostname,
        "missed"
    );
}

// ---- passive members ----

#[test]
fn passive_member_pulls_but_never_relays_and_is_never_a_target() {
    let config = Config::default();
    let (mut net, ids) = mesh(3, config.clone());
    let (a, b) = (ids[0], ids[1]);
    let entry_cfg = Config {
        passive: true,
        ..config
    };
    let mut entry = node(50, entry_cfg, T0);
    let inv = net
        .nodes
        .get_mut(&a)
        .unwrap()
        .mint_invite(vec![], invite::DEFAULT_TTL, T0);
    let e = entry.me();
    let outs: Vec<_> = entry.handle(Input::Join(inv), T0).collect();
    net.nodes.insert(e, entry);
    net.absorb(e, outs);
    net.settle(T0);
    assert!(
        net.node(e).peer(&b).is_some(),
        "the welcome gave the entry the whole mesh"
    );
    assert!(net.node(a).peer(&e).unwrap().passive);

    // A relays news to everyone but the passive entry.
    let mut changed = net.node(b).local().value().clone();
    changed.hostname = "n".into();
    net.input(b, Input::UpdateLocal(Box::new(changed)), T0 + secs(1));
    net.queue.retain(|(_, to, _)| *to == a);
    net.input(
        a,
        Input::Message {
            from: b,
            message: net.queue[0].2.clone(),
        },
        T0 + secs(1),
    );
    assert!(net.sent_by(a).iter().all(|(to, _)| *to != e));
    net.queue.clear();

    // The entry forwards nothing it receives.
    let news = net.node(b).local().clone();
    net.input(
        e,
        Input::Message {
            from: b,
            message: Message::Rumor(Records {
                announcements: vec![news],
                ..Records::default()
            }),
        },
        T0 + secs(1),
    );
    assert!(net.queue.is_empty());

    // It pulls: its tick sends a digest.
    let t = net.node(e).poll_timeout().unwrap();
    timeout(&mut net, e, t);
    assert!(
        net.sent_by(e)
            .iter()
            .any(|(_, m)| matches!(m, Message::Digest(d) if d.passive))
    );
}

// ---- admission ----

fn hello_from(s: &State, invite: Option<invite::Invite>) -> Message {
    Message::Hello(Hello {
        announcement: s.local().clone(),
        invite,
        passive: false,
    })
}

fn refusal(net: &mut Net, at: PeerId) -> Option<AdmissionError> {
    net.take_events(at).into_iter().find_map(|e| match e {
        Event::Refused { reason, .. } => Some(reason),
        _ => None,
    })
}

#[test]
fn joiner_with_a_valid_invite_is_admitted_and_welcomed() {
    let (mut net, ids) = mesh(3, Config::default());
    let a = ids[0];
    let inv =
        net.nodes
            .get_mut(&a)
            .unwrap()
            .mint_invite(b"addr-a".to_vec(), invite::DEFAULT_TTL, T0);
    let id = inv.value().id;
    let j = net.add(node(20, Config::default(), T0));
    net.input(j, Input::Join(inv), T0 + secs(1));
    assert_eq!(net.dials, vec![(j, a)]);
    net.settle(T0 + secs(1));
    assert!(net.take_events(a).contains(&Event::Admitted {
        peer: j,
        by: AdmittedBy::Invite(id)
    }));
    for &p in &ids {
        assert!(net.node(j).peer(&p).is_some());
        assert!(net.node(p).peer(&j).is_some(), "{p} heard of the joiner");
    }
}

#[test]
fn expired_invite_is_refused_with_a_reason_sent_back() {
    let (mut net, ids) = mesh(2, Config::default());
    let a = ids[0];
    let inv = net
        .nodes
        .get_mut(&a)
        .unwrap()
        .mint_invite(vec![], secs(60), T0);
    let j = net.add(node(20, Config::default(), T0));
    net.input(j, Input::Join(inv), T0 + secs(61));
    net.settle(T0 + secs(61));
    let expected = AdmissionError::Invite(InviteError::Expired {
        expires_at: T0 + secs(60),
        now: T0 + secs(61),
    });
    assert_eq!(refusal(&mut net, a), Some(expected.clone()));
    assert!(net.take_events(j).contains(&Event::RefusedBy {
        peer: a,
        reason: expected
    }));
    assert_eq!(net.disconnects, vec![(a, j)]);
    assert!(net.node(a).peer(&j).is_none());
    assert_eq!(net.node(a).stats().refused, 1);
}

#[test]
fn invite_for_another_mesh_is_refused() {
    let (mut net, ids) = mesh(2, Config::default());
    let a = ids[0];
    let other_key = key(40);
    let inv = invite::mint(
        &other_key,
        "mesh-b",
        vec![],
        invite::DEFAULT_TTL,
        T0,
        &mut Pcg64::seed_from_u64(1),
    );
    let j = net.add(node(20, Config::default(), T0));
    let m = hello_from(net.node(j), Some(inv));
    net.input(
        a,
        Input::Message {
            from: j,
            message: m,
        },
        T0,
    );
    assert_eq!(
        refusal(&mut net, a),
        Some(AdmissionError::Invite(InviteError::WrongMesh {
            expected: MESH.into(),
            found: "mesh-b".into()
        }))
    );
}

#[test]
fn invite_with_a_bad_signature_is_refused() {
    let (mut net, ids) = mesh(2, Config::default());
    let a = ids[0];
    let inv = net
        .nodes
        .get_mut(&a)
        .unwrap()
        .mint_invite(vec![], secs(60), T0);
    let mut body = inv.value().clone();
    body.expires_at = T0 + secs(1_000_000);
    let stretched =
        invite::Invite::from_parts(postcard::to_allocvec(&body).unwrap(), *inv.signature())
            .unwrap();
    let j = net.add(node(20, Config::default(), T0));
    let m = hello_from(net.node(j), Some(stretched));
    net.input(
        a,
        Input::Message {
            from: j,
            message: m,
        },
        T0 + secs(100),
    );
    assert_eq!(
        refusal(&mut net, a),
        Some(AdmissionError::Invite(InviteError::BadSignature))
    );
}

#[test]
fn hello_whose_announcement_is_not_the_transport_identity_is_refused() {
    let (mut net, ids) = mesh(3, Config::default());
    let (a, b) = (ids[0], ids[1]);
    let inv = net
        .nodes
        .get_mut(&a)
        .unwrap()
        .mint_invite(vec![], invite::DEFAULT_TTL, T0);
    let j = net.add(node(20, Config::default(), T0));
    // J presents B's (validly signed) announcement over its own connection.
    let m = hello_from(net.node(b), Some(inv));
    net.input(
        a,
        Input::Message {
            from: j,
            message: m,
        },
        T0,
    );
    assert_eq!(
        refusal(&mut net, a),
        Some(AdmissionError::IdentityMismatch {
            claimed: b,
            transport: j
        })
    );
}

#[test]
fn hello_with_a_forged_announcement_is_refused() {
    let (mut net, ids) = mesh(2, Config::default());
    let a = ids[0];
    let inv = net
        .nodes
        .get_mut(&a)
        .unwrap()
        .mint_invite(vec![], invite::DEFAULT_TTL, T0);
    let j = net.add(node(20, Config::default(), T0));
    let forged = tampered(net.node(j).local(), |x| x.fast_memory_bytes = 1);
    let m = Message::Hello(Hello {
        announcement: forged,
        invite: Some(inv),
        passive: false,
    });
    net.input(
        a,
        Input::Message {
            from: j,
            message: m,
        },
        T0,
    );
    assert_eq!(
        refusal(&mut net, a),
        Some(AdmissionError::BadAnnouncementSignature)
    );
}

#[test]
fn stranger_without_an_invite_is_refused_and_cannot_gossip() {
    let (mut net, ids) = mesh(2, Config::default());
    let a = ids[0];
    let j = net.add(node(20, Config::default(), T0));
    let m = hello_from(net.node(j), None);
    net.input(
        a,
        Input::Message {
            from: j,
            message: m,
        },
        T0,
    );
    assert_eq!(refusal(&mut net, a), Some(AdmissionError::MissingInvite));
    // Skipping the Hello doesn't help.
    let own = net.node(j).local().clone();
    net.input(
        a,
        Input::Message {
            from: j,
            message: Message::Rumor(Records {
                announcements: vec![own],
                ..Records::default()
            }),
        },
        T0,
    );
    assert_eq!(refusal(&mut net, a), Some(AdmissionError::NotAdmitted));
    assert!(net.node(a).peer(&j).is_none());
    assert_eq!(net.node(a).stats().unadmitted, 1);
}

#[test]
fn invite_revoked_by_its_inviter_is_refused_at_every_member() {
    let (mut net, ids) = mesh(3, Config::default());
    let (a, c) = (ids[0], ids[2]);
    let inv = net
        .nodes
        .get_mut(&a)
        .unwrap()
        .mint_invite(vec![], invite::DEFAULT_TTL, T0);
    net.input(
        a,
        Input::RevokeInvite {
            id: inv.value().id,
            expires_at: inv.value().expires_at,
        },
        T0 + secs(1),
    );
    net.settle(T0 + secs(1));
    let j = net.add(node(20, Config::default(), T0));
    let m = hello_from(net.node(j), Some(inv.clone()));
    net.input(
        c,
        Input::Message {
            from: j,
            message: m,
        },
        T0 + secs(2),
    );
    assert_eq!(
        refusal(&mut net, c),
        Some(AdmissionError::Invite(InviteError::Revoked(inv.value().id)))
    );
}

#[test]
fn removed_member_returns_without_an_invite_until_the_roster_forgets_it() {
    let config = Config::default();
    let roster_ttl = config.roster_ttl;
    let (mut net, ids) = mesh(2, config);
    let (a, b) = (ids[0], ids[1]);
    timeout(&mut net, a, T0 + secs(360));
    assert!(net.node(a).peer(&b).is_none());
    let back = node(1, Config::default(), T0 + secs(400));
    let m = hello_from(&back, None);
    net.input(
        a,
        Input::Message {
            from: b,
            message: m.clone(),
        },
        T0 + secs(400),
    );
    assert!(net.take_events(a).contains(&Event::Admitted {
        peer: b,
        by: AdmittedBy::Membership
    }));
    assert!(net.node(a).peer(&b).is_some());

    // Gone again, and away for longer than the roster remembers.
    timeout(&mut net, a, T0 + secs(760));
    assert!(net.node(a).peer(&b).is_none());
    let late = T0 + secs(760) + roster_ttl;
    timeout(&mut net, a, late);
    let back = node(1, Config::default(), late);
    let m = hello_from(&back, None);
    net.input(
        a,
        Input::Message {
            from: b,
            message: m,
        },
        late,
    );
    assert_eq!(refusal(&mut net, a), Some(AdmissionError::MissingInvite));
}

#[test]
fn peer_that_forgot_us_gets_a_fresh_hello() {
    let (mut net, ids) = mesh(2, Config::default());
    let (a, b) = (ids[0], ids[1]);
    // A restarts and forgets everyone (its roster was not persisted).
    let later = T0 + secs(100);
    let fresh_a = node(0, Config::default(), later);
    net.nodes.insert(a, fresh_a);
    let mut changed = net.node(b).local().value().clone();
    changed.hostname = "after".into();
    net.input(b, Input::UpdateLocal(Box::new(changed)), later);
    net.settle(later);
    // A refused B's rumour as NotAdmitted; B said Hello again with the invite it joined with,
    // which A (same key) minted and which is still valid.
    assert!(net.take_events(b).iter().any(|e| matches!(
        e,
        Event::RefusedBy {
            reason: AdmissionError::NotAdmitted,
            ..
        }
    )));
    assert!(net.node(a).peer(&b).is_some());
    assert_eq!(
        net.node(a).announcement(&b).unwrap().value().hostname,
        "after"
    );
}

#[test]
fn remembered_members_are_admitted_after_a_restart_without_invites() {
    let (mut net, ids) = mesh(2, Config::default());
    let (a, b) = (ids[0], ids[1]);
    let remembered = net.node(a).members(T0);
    assert_eq!(remembered, vec![b]);
    let mut fresh_a = node(0, Config::default(), T0 + secs(10));
    fresh_a.remember_members(remembered, T0 + secs(10));
    net.nodes.insert(a, fresh_a);
    let m = hello_from(net.node(b), None);
    net.input(
        a,
        Input::Message {
            from: b,
            message: m,
        },
        T0 + secs(11),
    );
    assert!(net.take_events(a).contains(&Event::Admitted {
        peer: b,
        by: AdmittedBy::Membership
    }));
}

// ---- the view ----

#[test]
fn view_has_me_at_rtt_zero_and_live_peers_at_the_shells_rtt() {
    let (net, ids) = mesh(3, Config::default());
    let a = ids[0];
    let rtts: BTreeMap<PeerId, u32> = [(ids[1], 40), (ids[2], 75)].into();
    let view = net.node(a).view(|p| rtts.get(p).copied());
    assert_eq!(view.me, a);
    assert_eq!(view.me().unwrap().rtt_ms, Some(0));
    assert_eq!(view.get(&ids[1]).unwrap().rtt_ms, Some(40));
    assert_eq!(view.get(&ids[2]).unwrap().rtt_ms, Some(75));
    assert_eq!(view.get(&ids[1]).unwrap().first_seen, T0);
    let order: Vec<_> = view.peers.iter().map(|p| p.id()).collect();
    let mut sorted = order.clone();
    sorted.sort();
    assert_eq!(order, sorted);
}

// ---- recovery paths found by the fault fuzzer (tests/gossip_ops.rs) ----

#[test]
fn newer_heartbeat_brings_back_a_removed_peer_with_its_unchanged_content() {
    // A long partition: A removed B (tombstone at B's last seq), but B lives on with the same
    // content. B's newer heartbeat is on the chain of the content A removed it with: B is back
    // at once, without asking anyone for anything.
    let (mut net, ids) = mesh(3, Config::default());
    let (a, b, c) = (ids[0], ids[1], ids[2]);
    timeout(&mut net, b, T0 + secs(60)); // a heartbeat A hears: tombstone seq > content seq
    net.settle_with(T0 + secs(60), |_, to, _| to == a);
    timeout(&mut net, a, T0 + secs(420));
    assert!(net.node(a).peer(&b).is_none());
    net.queue.clear();
    timeout(&mut net, b, T0 + secs(430));
    let hb = net
        .sent_by(b)
        .into_iter()
        .find_map(|(_, m)| match m {
            Message::Rumor(r) if !r.heartbeats.is_empty() => Some(r.clone()),
            _ => None,
        })
        .expect("B heartbeats");
    net.queue.clear();
    // A stale copy of the beat A already had changes nothing ...
    let mut old = hb.clone();
    old.heartbeats[0] =
        BeatChain::new(&key(1), old.heartbeats[0].content_seq).beat(b.short_id(), 1);
    net.input(
        a,
        Input::Message {
            from: c,
            message: Message::Rumor(old),
        },
        T0 + secs(430),
    );
    assert!(net.node(a).peer(&b).is_none());
    // ... the newer one brings B back.
    net.input(
        a,
        Input::Message {
            from: c,
            message: Message::Rumor(hb),
        },
        T0 + secs(430),
    );
    let asked = net
        .sent_by(a)
        .into_iter()
        .filter(|(_, m)| matches!(m, Message::Request(_)))
        .count();
    assert_eq!(
        asked, 0,
        "nothing to fetch: A kept the content it removed B with"
    );
    let info = net.node(a).peer(&b).expect("B is back");
    assert_eq!(info.seq, net.node(b).seq());
    assert!(!info.stale);
    assert!(net.take_events(a).contains(&Event::PeerUp(b)));
}

#[test]
fn relay_that_cannot_supply_the_content_is_asked_only_once() {
    // A holds only a tombstone and a revival heartbeat for B; C's replies carry a stale copy
    // that cannot be taken. Re-sending the same heartbeat must not trigger new requests.
    let (mut net, ids) = mesh(3, Config::default());
    let (a, b, c) = (ids[0], ids[1], ids[2]);
    timeout(&mut net, b, T0 + secs(60));
    net.settle_with(T0 + secs(60), |_, to, _| to == a);
    let mut changed = net.node(b).local().value().clone();
    changed.hostname = "unseen".into();
    net.input(b, Input::UpdateLocal(Box::new(changed)), T0 + secs(61));
    net.queue.clear();
    timeout(&mut net, a, T0 + secs(420));
    net.queue.clear();
    timeout(&mut net, b, T0 + secs(430));
    let hb = net
        .sent_by(b)
        .into_iter()
        .find_map(|(_, m)| match m {
            Message::Rumor(r) if !r.heartbeats.is_empty() => Some(r.clone()),
            _ => None,
        })
        .unwrap();
    net.queue.clear();
    for i in 0..3 {
        net.input(
            a,
            Input::Message {
                from: c,
                message: Message::Records(hb.clone()),
            },
            T0 + secs(431 + i),
        );
    }
    let requests = net
        .sent_by(a)
        .into_iter()
        .filter(|(_, m)| matches!(m, Message::Request(_)))
        .count();
    assert_eq!(requests, 1);
}

#[test]
fn removed_member_gets_a_digest_now_and_then_so_a_long_partition_heals() {
    // B and C both joined through A, which is gone; a partition outlasts remove_after, so B and C
    // forget each other and neither holds an invite that leads to the other.
    let config = Config::default();
    let reconnect = config.reconnect_interval;
    let (mut net, ids) = mesh(3, config);
    let (a, b, c) = (ids[0], ids[1], ids[2]);
    net.nodes.remove(&a);
    let step = |net: &mut Net, deliver: bool| {
        let now = [b, c]
            .map(|p| net.node(p).poll_timeout().unwrap())
            .into_iter()
            .min()
            .unwrap();
        for p in [b, c] {
            if net.node(p).poll_timeout() == Some(now) {
                timeout(net, p, now);
            }
        }
        if deliver {
            net.settle(now);
        } else {
            net.queue.clear();
        }
        now
    };
    while step(&mut net, false) < T0 + secs(500) {}
    assert!(net.node(b).peer(&c).is_none() && net.node(c).peer(&b).is_none());
    let healed = T0 + secs(500);
    let mut now = healed;
    while now < healed + reconnect * 3 && net.node(b).peer(&c).is_none() {
        now = step(&mut net, true);
    }
    assert!(net.node(b).peer(&c).is_some() && net.node(c).peer(&b).is_some());
}

#[test]
fn join_that_never_completed_is_retried_each_tick_while_the_invite_lasts() {
    let (mut net, ids) = mesh(2, Config::default());
    let a = ids[0];
    let inv = net
        .nodes
        .get_mut(&a)
        .unwrap()
        .mint_invite(vec![], secs(600), T0);
    let j = net.add(node(20, Config::default(), T0));
    net.input(j, Input::Join(inv), T0);
    net.queue.clear(); // the Hello is lost
    let mut hellos = 0;
    let mut now = T0;
    while now < T0 + secs(900) {
        now = net.node(j).poll_timeout().unwrap();
        timeout(&mut net, j, now);
        hellos += net
            .queue
            .iter()
            .filter(|(_, _, m)| matches!(m, Message::Hello(_)))
            .count();
        net.queue.clear();
    }
    assert!(
        (9..=11).contains(&hellos),
        "one Hello per tick until the invite expires, got {hellos}"
    );
}

#[test]
fn the_inviter_of_our_own_invite_vouches_for_invites_it_minted_for_others() {
    // J joined through A but only ever met B; C, holding an invite from A too, asks J.
    let (mut net, ids) = mesh(2, Config::default());
    let a = ids[0];
    let j = net.add(node(20, Config::default(), T0));
    let inv_j = net
        .nodes
        .get_mut(&a)
        .unwrap()
        .mint_invite(vec![], invite::DEFAULT_TTL, T0);
    net.input(j, Input::Join(inv_j), T0);
    net.queue.clear();
    let c = net.add(node(21, Config::default(), T0));
    let inv_c = net
        .nodes
        .get_mut(&a)
        .unwrap()
        .mint_invite(vec![], invite::DEFAULT_TTL, T0);
    let m = hello_from(net.node(c), Some(inv_c.clone()));
    net.input(
        j,
        Input::Message {
            from: c,
            message: m,
        },
        T0,
    );
    assert!(net.take_events(j).contains(&Event::Admitted {
        peer: c,
        by: AdmittedBy::Invite(inv_c.value().id)
    }));
}

#[test]
fn a_strangers_not_admitted_does_not_fish_out_our_invite() {
    let (mut net, ids) = mesh(2, Config::default());
    let b = ids[1];
    let stranger = key(99).peer_id();
    net.input(
        b,
        Input::Message {
            from: stranger,
            message: Message::Refused(AdmissionError::NotAdmitted),
        },
        T0 + secs(100),
    );
    assert!(
        net.queue.is_empty(),
        "no Hello (with our invite) to a stranger"
    );
    assert!(net.take_events(b).contains(&Event::RefusedBy {
        peer: stranger,
        reason: AdmissionError::NotAdmitted
    }));
}

#[test]
fn revocation_is_gossiped_in_digests_until_its_invite_would_have_expired() {
    let (mut net, ids) = mesh(3, Config::default());
    let a = ids[0];
    let inv = net
        .nodes
        .get_mut(&a)
        .unwrap()
        .mint_invite(vec![], secs(600), T0);
    let (id, expires_at) = (inv.value().id, inv.value().expires_at);
    net.input(a, Input::RevokeInvite { id, expires_at }, T0);
    net.settle(T0);
    let digests_at = |net: &mut Net, now: Timestamp| {
        net.queue.clear();
        let mut t = now;
        loop {
            t = net.node(a).poll_timeout().unwrap().max(t);
            timeout(net, a, t);
            if let Some((_, Message::Digest(d))) = net
                .sent_by(a)
                .into_iter()
                .find(|(_, m)| matches!(m, Message::Digest(_)))
            {
                return d.revocations.clone();
            }
        }
    };
    assert_eq!(digests_at(&mut net, T0 + secs(540)), vec![(a, id)]);
    assert_eq!(digests_at(&mut net, T0 + secs(600)), vec![]);
}

#[test]
fn a_beat_on_content_not_yet_here_is_checked_when_the_content_arrives() {
    let (mut net, ids) = mesh(3, Config::default());
    let (a, b, c) = (ids[0], ids[1], ids[2]);
    let mut changed = net.node(b).local().value().clone();
    changed.hostname = "renamed".into();
    net.input(b, Input::UpdateLocal(Box::new(changed)), T0 + secs(10));
    let content = net.node(b).local().clone();
    net.queue.clear();
    timeout(&mut net, b, T0 + secs(70));
    let beat = net
        .sent_by(b)
        .into_iter()
        .find_map(|(_, m)| match m {
            Message::Rumor(r) if !r.heartbeats.is_empty() => Some(r.heartbeats[0]),
            _ => None,
        })
        .expect("B heartbeats");
    assert_eq!(beat.content_seq, content.value().seq);
    net.queue.clear();
    // The beat overtakes the announcement: A cannot check it yet, so it asks the relay, once.
    for at in [71, 72] {
        net.input(
            a,
            Input::Message {
                from: c,
                message: Message::Rumor(Records {
                    heartbeats: vec![beat],
                    ..Records::default()
                }),
            },
            T0 + secs(at),
        );
    }
    let asked = net
        .sent_by(a)
        .into_iter()
        .filter(|(_, m)| {
            matches!(m, Message::Request(r)
                if r.peers == vec![(b.short_id(), net.node(a).peer(&b).unwrap().content_seq)])
        })
        .count();
    assert_eq!(asked, 1);
    assert!(net.node(a).peer(&b).unwrap().seq < beat.seq().unwrap());
    net.input(
        a,
        Input::Message {
            from: c,
            message: Message::Records(Records {
                announcements: vec![content],
                ..Records::default()
            }),
        },
        T0 + secs(73),
    );
    let info = net.node(a).peer(&b).unwrap();
    assert_eq!(info.seq, beat.seq().unwrap(), "the held beat now counts");
    assert_eq!(info.last_fresh, T0 + secs(73));
    assert_eq!(net.node(a).stats().bad_signature, 0);
}

#[test]
fn load_jitter_is_not_published_but_a_material_change_is() {
    use crate::peer::ModelTiming;
    let (mut net, ids) = mesh(3, Config::default());
    let a = ids[0];
    let timing = |tps: f64, samples: u32| ModelTiming {
        model: "m".into(),
        tps_p50: tps,
        ttft_ms_p50: 100.0,
        samples_in_window: samples,
    };
    let mut s = net.node(a).local().value().clone();
    s.model_timings = vec![timing(40.0, 20)];
    net.input(a, Input::UpdateLocal(Box::new(s.clone())), T0 + secs(100));
    let published = net.node(a).local().value().seq;
    // 40 → 42 tok/s, 20 → 24 samples, one more request in flight: jitter.
    s.model_timings = vec![timing(42.0, 24)];
    s.inflight_requests = 1;
    net.input(a, Input::UpdateLocal(Box::new(s.clone())), T0 + secs(200));
    timeout(&mut net, a, T0 + secs(240));
    assert_eq!(net.node(a).local().value().seq, published, "not published");
    assert_eq!(net.node(a).local().value().model_timings[0].tps_p50, 40.0);
    // Drifting further (45 tok/s is 12.5 % above what was published) is material.
    s.model_timings = vec![timing(45.0, 26)];
    net.input(a, Input::UpdateLocal(Box::new(s.clone())), T0 + secs(300));
    assert!(net.node(a).local().value().seq > published);
    assert_eq!(net.node(a).local().value().model_timings[0].tps_p50, 45.0);
    assert_eq!(net.node(a).local().value().inflight_requests, 1);
}

#[test]
fn what_counts_as_a_material_load_change() {
    use super::material_load_change as material;
    use crate::peer::{ModelDemand, ModelTiming};
    let base = {
        let mut a = PeerAnnouncement::new(key(1).peer_id(), MESH, Role::Worker);
        a.model_timings = vec![ModelTiming {
            model: "m".into(),
            tps_p50: 50.0,
            ttft_ms_p50: 200.0,
            samples_in_window: 30,
        }];
        a.demand = vec![ModelDemand {
            model: "m".into(),
            clients: 2,
            requests_per_min: 12.0,
        }];
        a
    };
    let with = |f: &dyn Fn(&mut PeerAnnouncement)| {
        let mut a = base.clone();
        f(&mut a);
        material(&base, &a)
    };
    assert!(!with(&|a| a.inflight_requests = 1));
    assert!(with(&|a| a.inflight_requests = 2));
    assert!(!with(&|a| a.model_timings[0].tps_p50 = 54.0));
    assert!(with(&|a| a.model_timings[0].tps_p50 = 56.0));
    assert!(with(&|a| a.model_timings[0].ttft_ms_p50 = 260.0));
    assert!(!with(&|a| a.model_timings[0].samples_in_window = 40));
    assert!(with(&|a| a.model_timings[0].samples_in_window = 70));
    assert!(with(&|a| a.model_timings.clear()));
    assert!(with(&|a| a.demand[0].requests_per_min = 12.5));
    assert!(with(&|a| a.demand[0].requests_per_min = 9.0));
    assert!(with(&|a| a.demand[0].clients = 3));
    let mut few = base.clone();
    few.model_timings[0].samples_in_window = 2;
    let mut more = few.clone();
    more.model_timings[0].samples_in_window = 3;
    assert!(
        material(&few, &more),
        "below the SLA's minimum every sample counts"
    );
}
