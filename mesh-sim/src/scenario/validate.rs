//! Semantic checks of a parsed scenario. Every problem is collected (not just the first), each
//! naming the entry and the field, so one run of `mesh-sim` lists everything to fix.

use super::{EventKind, PeerRole, Scenario};
use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

/// Where in the file a problem is.
#[derive(Debug, Clone, PartialEq)]
pub enum Entry {
    Scenario,
    /// 1-based position among the `[[model]]` tables, and its name.
    Model(usize, String),
    Peer(usize, String),
    Network,
    Traffic(usize),
    Event(usize),
    Gossip,
    Verify,
    Check,
}

impl fmt::Display for Entry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Entry::Scenario => f.write_str("top level"),
            Entry::Model(i, name) => write!(f, "[[model]] #{i} {name:?}"),
            Entry::Peer(i, name) => write!(f, "[[peer]] #{i} {name:?}"),
            Entry::Network => f.write_str("[network]"),
            Entry::Traffic(i) => write!(f, "[[traffic]] #{i}"),
            Entry::Event(i) => write!(f, "[[event]] #{i}"),
            Entry::Gossip => f.write_str("[gossip]"),
            Entry::Verify => f.write_str("[verify]"),
            Entry::Check => f.write_str("[check]"),
        }
    }
}

/// What is wrong with a field.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ProblemKind {
    #[error("must not be empty")]
    Empty,
    #[error("must be a finite number greater than 0, got {0}")]
    NotPositive(f64),
    #[error("must be a finite number of at least 0, got {0}")]
    Negative(f64),
    #[error("must be at least 1")]
    Zero,
    #[error("must be {expected}, got {value}")]
    OutOfRange { value: f64, expected: &'static str },
    #[error("[{lo}, {hi}] is not a range: the first bound must not exceed the second")]
    BadRange { lo: f64, hi: f64 },
    #[error("duplicate name {0:?}")]
    Duplicate(String),
    #[error("unknown model {0:?}: no [[model]] has that name")]
    UnknownModel(String),
    #[error("unknown peer {0:?}: no [[peer]] has that name")]
    UnknownPeer(String),
    #[error("peer {0:?} is not an entry (role = \"entry\")")]
    NotAnEntry(String),
    #[error("{0:?} is listed twice")]
    Repeated(String),
    #[error("a contributing peer must serve at least one model")]
    NoServe,
    #[error("required (and greater than 0) for a peer that serves models")]
    RequiredForContributor,
    #[error("only an entry (role = \"entry\") falls back to an external provider")]
    FallbackOnContributor,
    #[error("a scenario needs at least one [[peer]]")]
    NoPeers,
    #[error("a `{0}` event must name at least one peer")]
    NeedsPeers(&'static str),
    #[error("a `set_latency` event needs `latency_ms`")]
    MissingLatency,
    #[error("only `set_latency` events take this key, not `{0}`")]
    NotApplicable(&'static str),
    #[error("{at} s is after the end of the run ({duration} s)")]
    AfterEnd { at: f64, duration: f64 },
    #[error("peer {peer:?} is not running at {at} s (not joined yet, crashed or left)")]
    NotRunning { peer: String, at: f64 },
    #[error("peer {peer:?} has not crashed or left by {at} s: there is nothing to restart")]
    NotDown { peer: String, at: f64 },
}

/// One problem: the entry, the field, and what is wrong.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{entry}, `{field}`: {kind}")]
pub struct Problem {
    pub entry: Entry,
    pub field: &'static str,
    pub kind: ProblemKind,
}

struct Checker {
    problems: Vec<Problem>,
}

impl Checker {
    fn push(&mut self, entry: &Entry, field: &'static str, kind: ProblemKind) {
        self.problems.push(Problem {
            entry: entry.clone(),
            field,
            kind,
        });
    }

    fn positive(&mut self, entry: &Entry, field: &'static str, v: f64) {
        if !(v.is_finite() && v > 0.0) {
            self.push(entry, field, ProblemKind::NotPositive(v));
        }
    }

    fn non_negative(&mut self, entry: &Entry, field: &'static str, v: f64) {
        if !(v.is_finite() && v >= 0.0) {
            self.push(entry, field, ProblemKind::Negative(v));
        }
    }

    fn name(&mut self, entry: &Entry, name: &str, seen: &mut BTreeSet<String>) {
        if name.trim().is_empty() {
            self.push(entry, "name", ProblemKind::Empty);
        } else if !seen.insert(name.to_string()) {
            self.push(entry, "name", ProblemKind::Duplicate(name.to_string()));
        }
    }

    fn within_run(&mut self, entry: &Entry, field: &'static str, at: f64, duration: f64) {
        self.non_negative(entry, field, at);
        if at.is_finite() && duration.is_finite() && at > duration {
            self.push(entry, field, ProblemKind::AfterEnd { at, duration });
        }
    }

    fn probability(&mut self, entry: &Entry, field: &'static str, p: f64) {
        if !(p.is_finite() && (0.0..1.0).contains(&p)) {
            self.push(
                entry,
                field,
                ProblemKind::OutOfRange {
                    value: p,
                    expected: "a probability in [0, 1)",
                },
            );
        }
    }

    fn latency_range(&mut self, entry: &Entry, [lo, hi]: [f64; 2]) {
        self.non_negative(entry, "latency_ms", lo);
        self.non_negative(entry, "latency_ms", hi);
        if lo > hi {
            self.push(entry, "latency_ms", ProblemKind::BadRange { lo, hi });
        }
    }
}

/// Every problem of `s`, in file order; empty when the scenario is valid.
pub(super) fn check(s: &Scenario) -> Vec<Problem> {
    let mut c = Checker {
        problems: Vec::new(),
    };
    let top = Entry::Scenario;
    if s.name.trim().is_empty() {
        c.push(&top, "name", ProblemKind::Empty);
    }
    c.positive(&top, "duration_s", s.duration_s);
    if s.peers.is_empty() {
        c.push(&top, "peer", ProblemKind::NoPeers);
    }

    let mut model_names = BTreeSet::new();
    for (i, m) in s.models.iter().enumerate() {
        let e = Entry::Model(i + 1, m.name.clone());
        c.name(&e, &m.name, &mut model_names);
        c.positive(&e, "size_gb", m.size_gb);
        c.positive(&e, "params_b", m.params_b);
        if let Some(a) = m.active_params_b {
            c.positive(&e, "active_params_b", a);
            if a > m.params_b {
                c.push(
                    &e,
                    "active_params_b",
                    ProblemKind::OutOfRange {
                        value: a,
                        expected: "at most `params_b`",
                    },
                );
            }
        }
        if m.layers == Some(0) {
            c.push(&e, "layers", ProblemKind::Zero);
        }
        if m.embedding_length == Some(0) {
            c.push(&e, "embedding_length", ProblemKind::Zero);
        }
    }

    let mut peer_names = BTreeSet::new();
    for (i, p) in s.peers.iter().enumerate() {
        let e = Entry::Peer(i + 1, p.name.clone());
        c.name(&e, &p.name, &mut peer_names);
        let numbers = [
            ("fast_memory_gb", p.fast_memory_gb),
            ("system_ram_gb", p.system_ram_gb),
            ("mem_bandwidth_gbps", p.mem_bandwidth_gbps),
        ];
        if p.contributes() || p.role == PeerRole::Contributor {
            for (field, v) in numbers {
                if v == 0.0 {
                    c.push(&e, field, ProblemKind::RequiredForContributor);
                } else {
                    c.positive(&e, field, v);
                }
            }
        } else {
            for (field, v) in numbers {
                c.non_negative(&e, field, v);
            }
        }
        if p.role == PeerRole::Contributor {
            if p.serve.is_empty() {
                c.push(&e, "serve", ProblemKind::NoServe);
            }
            if p.fallback {
                c.push(&e, "fallback", ProblemKind::FallbackOnContributor);
            }
        }
        let mut served = BTreeSet::new();
        for m in &p.serve {
            if s.model(m).is_none() {
                c.push(&e, "serve", ProblemKind::UnknownModel(m.clone()));
            } else if !served.insert(m) {
                c.push(&e, "serve", ProblemKind::Repeated(m.clone()));
            }
        }
        for (field, v) in [
            ("ram_bandwidth_gbps", p.ram_bandwidth_gbps),
            ("compute_tflops", p.compute_tflops),
            ("max_vram_gb", p.max_vram_gb),
        ] {
            if let Some(v) = v {
                c.positive(&e, field, v);
            }
        }
        if p.max_inflight == Some(0) {
            c.push(&e, "max_inflight", ProblemKind::Zero);
        }
        c.within_run(&e, "join_at_s", p.join_at_s, s.duration_s);
    }

    let net = Entry::Network;
    c.latency_range(&net, s.network.latency_ms);
    c.probability(&net, "loss", s.network.loss);
    c.positive(&net, "bandwidth_mbps", s.network.bandwidth_mbps);

    for (i, t) in s.traffic.iter().enumerate() {
        let e = Entry::Traffic(i + 1);
        if s.model(&t.model).is_none() {
            c.push(&e, "model", ProblemKind::UnknownModel(t.model.clone()));
        }
        c.positive(&e, "rate_per_min", t.rate_per_min);
        if t.prompt_tokens == 0 {
            c.push(&e, "prompt_tokens", ProblemKind::Zero);
        }
        if t.max_tokens == 0 {
            c.push(&e, "max_tokens", ProblemKind::Zero);
        }
        if let Some(entry) = &t.entry {
            match s.peers.iter().find(|p| &p.name == entry) {
                None => c.push(&e, "entry", ProblemKind::UnknownPeer(entry.clone())),
                Some(p) if !p.is_entry() => {
                    c.push(&e, "entry", ProblemKind::NotAnEntry(entry.clone()))
                }
                Some(_) => {}
            }
        }
        c.within_run(&e, "start_s", t.start_s, s.duration_s);
        if let Some(d) = t.deadline_s {
            c.positive(&e, "deadline_s", d);
        }
    }

    let g = Entry::Gossip;
    for (field, v) in [
        ("tick_s", s.gossip.tick_s),
        ("heartbeat_s", s.gossip.heartbeat_s),
        ("connection_timeout_ms", s.gossip.connection_timeout_ms),
    ] {
        if let Some(v) = v {
            c.positive(&g, field, v);
        }
    }
    if s.gossip.anti_entropy_peers == Some(0) {
        c.push(&g, "anti_entropy_peers", ProblemKind::Zero);
    }
    if s.gossip.rumor_fanout == Some(0) {
        c.push(&g, "rumor_fanout", ProblemKind::Zero);
    }
    if let Some(v) = s.verify.interval_s {
        c.positive(&Entry::Verify, "interval_s", v);
    }
    c.non_negative(&Entry::Check, "liveness_s", s.check.liveness_s);

    check_events(&mut c, s);
    c.problems
}

fn check_events(c: &mut Checker, s: &Scenario) {
    // Replays crash/leave/restart in time order to catch a restart of a running peer or a crash
    // of one that is not up (file order breaks ties, as the engines apply them).
    // `Some(t)`: up from `t` on; `None`: crashed or left.
    let mut running: BTreeMap<&str, Option<f64>> = s
        .peers
        .iter()
        .map(|p| (p.name.as_str(), Some(p.join_at_s)))
        .collect();
    let mut order: Vec<usize> = (0..s.events.len()).collect();
    order.sort_by(|&a, &b| s.events[a].at_s.total_cmp(&s.events[b].at_s));

    for (i, ev) in s.events.iter().enumerate() {
        let e = Entry::Event(i + 1);
        c.within_run(&e, "at_s", ev.at_s, s.duration_s);
        let mut listed = BTreeSet::new();
        for p in &ev.peers {
            if s.peer_index(p).is_none() {
                c.push(&e, "peers", ProblemKind::UnknownPeer(p.clone()));
            } else if !listed.insert(p) {
                c.push(&e, "peers", ProblemKind::Repeated(p.clone()));
            }
        }
        match ev.kind {
            EventKind::Crash | EventKind::Restart | EventKind::Leave | EventKind::Partition
                if ev.peers.is_empty() =>
            {
                c.push(&e, "peers", ProblemKind::NeedsPeers(ev.kind.as_str()));
            }
            _ => {}
        }
        if ev.kind == EventKind::SetLatency {
            match ev.latency_ms {
                None => c.push(&e, "latency_ms", ProblemKind::MissingLatency),
                Some(l) => c.latency_range(&e, l.range()),
            }
            if let Some(loss) = ev.loss {
                c.probability(&e, "loss", loss);
            }
        } else {
            if ev.latency_ms.is_some() {
                c.push(
                    &e,
                    "latency_ms",
                    ProblemKind::NotApplicable(ev.kind.as_str()),
                );
            }
            if ev.loss.is_some() {
                c.push(&e, "loss", ProblemKind::NotApplicable(ev.kind.as_str()));
            }
        }
    }

    for i in order {
        let ev = &s.events[i];
        let e = Entry::Event(i + 1);
        for p in &ev.peers {
            let Some(state) = running.get_mut(p.as_str()) else {
                continue; // reported above
            };
            let up = matches!(*state, Some(joined) if joined <= ev.at_s);
            match ev.kind {
                EventKind::Crash | EventKind::Leave if !up => c.push(
                    &e,
                    "peers",
                    ProblemKind::NotRunning {
                        peer: p.clone(),
                        at: ev.at_s,
                    },
                ),
                EventKind::Crash | EventKind::Leave => *state = None,
                EventKind::Restart if state.is_some() => c.push(
                    &e,
                    "peers",
                    ProblemKind::NotDown {
                        peer: p.clone(),
                        at: ev.at_s,
                    },
                ),
                EventKind::Restart => *state = Some(ev.at_s),
                _ => {}
            }
        }
    }
}
