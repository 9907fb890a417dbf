//! Invariant checkers (issue 5, after TigerBeetle's VOPR): safety rules checked continuously while
//! a run goes, and a liveness rule checked after the faults stop. Engine-independent: an engine
//! feeds what happened (plans its nodes made, pipelines running, chats starting and ending,
//! verdicts) and the checker keeps the violations.
//!
//! | rule | violated when |
//! |---|---|
//! | `split_while_a_peer_fits` | a node plans a split for a model while a peer it can reach, serving that model's file with fast memory ≥ 1.1 × its size, has been up for [`SPLIT_GRACE`] (time for gossip and the election to see it) |
//! | `two_hosts_for_a_split` | two running pipelines serve one model, or one worker serves two pipelines |
//! | `chat_past_deadline` | a chat has neither tokens nor a typed error by its deadline |
//! | `untyped_error` | a chat ends with an error outside [`TYPED_ERRORS`] |
//! | `honest_peer_demoted` | a peer that serves the advertised model gets a mismatch verdict or is demoted |
//! | `no_convergence` | after the faults stop, live peers do not come to agree on membership and plans |

use serde::Serialize;
use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

/// A node may plan a split this long after a peer that could hold the model solo came up: the
/// time for its announcement to spread and the election to run on it.
pub const SPLIT_GRACE: Duration = Duration::from_secs(30);
/// The `reason_code`s a chat may end with instead of tokens (SPEC §8), plus the proxy's
/// not-recorded reasons for streams that broke after the first token.
pub const TYPED_ERRORS: &[&str] = &[
    "no_peer_with_model",
    "no_capable_node",
    "election_in_progress",
    "entry_unavailable",
    "first_byte_timeout",
    "upstream_error",
    "client_disconnected",
];
/// Violations kept in full per rule (all are counted).
const KEEP_PER_RULE: usize = 20;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Rule {
    SplitWhileAPeerFits,
    TwoHostsForASplit,
    ChatPastDeadline,
    UntypedError,
    HonestPeerDemoted,
    NoConvergence,
}

impl Rule {
    pub fn as_str(self) -> &'static str {
        match self {
            Rule::SplitWhileAPeerFits => "split_while_a_peer_fits",
            Rule::TwoHostsForASplit => "two_hosts_for_a_split",
            Rule::ChatPastDeadline => "chat_past_deadline",
            Rule::UntypedError => "untyped_error",
            Rule::HonestPeerDemoted => "honest_peer_demoted",
            Rule::NoConvergence => "no_convergence",
        }
    }
}

impl fmt::Display for Rule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Violation {
    /// Virtual seconds since the start of the run.
    pub at_s: f64,
    pub rule: Rule,
    pub detail: String,
}

/// How the liveness phase ended.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "snake_case", tag = "outcome")]
pub enum Liveness {
    /// Not run (`[check] liveness_s = 0`).
    Skipped,
    /// Every live peer agreed on membership and plans this long after the last fault.
    Converged { after_s: f64 },
    /// Still disagreeing when the phase ran out.
    NotConverged { after_s: f64, reason: String },
}

/// What the checkers found: every violation counted, the first few of each rule in full.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ChecksReport {
    pub violations: BTreeMap<Rule, u64>,
    pub first: Vec<Violation>,
    pub liveness: Liveness,
}

impl ChecksReport {
    pub fn total(&self) -> u64 {
        self.violations.values().sum()
    }

    pub fn passed(&self) -> bool {
        self.total() == 0
    }
}

/// How a chat ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ending<'a> {
    /// The mesh streamed its tokens.
    Tokens,
    /// The external provider served it.
    Fallback,
    /// An error with this reason code.
    Error(&'a str),
}

#[derive(Debug, Clone)]
struct OpenChat {
    deadline: Duration,
    what: String,
}

/// The running checkers of one run.
#[derive(Debug, Clone)]
pub struct Checker {
    counts: BTreeMap<Rule, u64>,
    first: Vec<Violation>,
    open: BTreeMap<u64, OpenChat>,
    /// Splits already reported, so one lasting violation counts once: (node, model).
    reported_splits: BTreeMap<(String, String), ()>,
    liveness: Liveness,
}

impl Default for Checker {
    fn default() -> Self {
        Self::new()
    }
}

impl Checker {
    pub fn new() -> Self {
        Checker {
            counts: BTreeMap::new(),
            first: Vec::new(),
            open: BTreeMap::new(),
            reported_splits: BTreeMap::new(),
            liveness: Liveness::Skipped,
        }
    }

    fn violate(&mut self, at: Duration, rule: Rule, detail: String) {
        let n = self.counts.entry(rule).or_default();
        *n += 1;
        if *n as usize <= KEEP_PER_RULE {
            self.first.push(Violation {
                at_s: secs(at),
                rule,
                detail,
            });
        }
    }

    /// `node` plans a split of `model` at `at`. `capable`: the earliest-up peer that `node` can
    /// reach and that could hold the model solo, with how long it has been up.
    pub fn split_planned(
        &mut self,
        at: Duration,
        node: &str,
        model: &str,
        capable: Option<(&str, Duration)>,
    ) {
        let Some((peer, up_for)) = capable else {
            self.reported_splits
                .remove(&(node.to_string(), model.to_string()));
            return;
        };
        if up_for < SPLIT_GRACE {
            return;
        }
        let key = (node.to_string(), model.to_string());
        if self.reported_splits.insert(key, ()).is_none() {
            self.violate(
                at,
                Rule::SplitWhileAPeerFits,
                format!(
                    "{node} plans a split of {model} while {peer} (up {:.0} s) holds it solo",
                    up_for.as_secs_f64()
                ),
            );
        }
    }

    /// `node` no longer plans a split of `model`.
    pub fn no_split_planned(&mut self, node: &str, model: &str) {
        self.reported_splits
            .remove(&(node.to_string(), model.to_string()));
    }

    /// Every pipeline running now (not draining): `(host, model, workers)`.
    pub fn pipelines(&mut self, at: Duration, running: &[(&str, &str, Vec<&str>)]) {
        let mut by_model: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
        let mut by_worker: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
        for (host, model, workers) in running {
            by_model.entry(model).or_default().push(host);
            for w in workers {
                by_worker.entry(w).or_default().push(host);
            }
        }
        for (model, hosts) in by_model.into_iter().filter(|(_, h)| h.len() > 1) {
            self.violate(
                at,
                Rule::TwoHostsForASplit,
                format!("{model} has pipelines on {}", hosts.join(" and ")),
            );
        }
        for (worker, hosts) in by_worker.into_iter().filter(|(_, h)| h.len() > 1) {
            self.violate(
                at,
                Rule::TwoHostsForASplit,
                format!(
                    "worker {worker} serves pipelines of {}",
                    hosts.join(" and ")
                ),
            );
        }
    }

    /// A chat arrived; it must end by `deadline`.
    pub fn chat_started(&mut self, id: u64, deadline: Duration, what: impl Into<String>) {
        self.open.insert(
            id,
            OpenChat {
                deadline,
                what: what.into(),
            },
        );
    }

    pub fn chat_ended(&mut self, id: u64, at: Duration, ending: Ending) {
        let Some(chat) = self.open.remove(&id) else {
            return;
        };
        if at > chat.deadline {
            self.violate(
                at,
                Rule::ChatPastDeadline,
                format!(
                    "chat {id} ({}) ended {:.1} s after its deadline",
                    chat.what,
                    secs(at - chat.deadline)
                ),
            );
        }
        if let Ending::Error(code) = ending
            && !TYPED_ERRORS.contains(&code)
        {
            self.violate(
                at,
                Rule::UntypedError,
                format!("chat {id} ({}) ended with {code:?}", chat.what),
            );
        }
    }

    /// A verdict on `peer` for `model`. `serves_advertised`: the peer really runs the model.
    pub fn verdict(
        &mut self,
        at: Duration,
        peer: &str,
        model: &str,
        mismatch: bool,
        serves_advertised: bool,
    ) {
        if mismatch && serves_advertised {
            self.violate(
                at,
                Rule::HonestPeerDemoted,
                format!("{peer} got a mismatch verdict for {model} it serves honestly"),
            );
        }
    }

    /// `peer` left rotation for `model` (enforcement).
    pub fn demoted(&mut self, at: Duration, peer: &str, model: &str, serves_advertised: bool) {
        if serves_advertised {
            self.violate(
                at,
                Rule::HonestPeerDemoted,
                format!("{peer} was demoted for {model} it serves honestly"),
            );
        }
    }

    pub fn liveness(&mut self, at: Duration, outcome: Liveness) {
        if let Liveness::NotConverged { reason, .. } = &outcome {
            self.violate(at, Rule::NoConvergence, reason.clone());
        }
        self.liveness = outcome;
    }

    /// Ends the run at `at`: chats still open past their deadline are violations.
    pub fn finish(&mut self, at: Duration) -> ChecksReport {
        let overdue: Vec<(u64, OpenChat)> = self
            .open
            .iter()
            .filter(|(_, c)| c.deadline < at)
            .map(|(id, c)| (*id, c.clone()))
            .collect();
        for (id, chat) in overdue {
            self.violate(
                chat.deadline,
                Rule::ChatPastDeadline,
                format!("chat {id} ({}) never ended", chat.what),
            );
            self.open.remove(&id);
        }
        let mut first = self.first.clone();
        first.sort_by(|a, b| a.at_s.total_cmp(&b.at_s).then(a.rule.cmp(&b.rule)));
        ChecksReport {
            violations: self.counts.clone(),
            first,
            liveness: self.liveness.clone(),
        }
    }
}

fn secs(d: Duration) -> f64 {
    (d.as_secs_f64() * 1e3).round() / 1e3
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(v: u64) -> Duration {
        Duration::from_secs(v)
    }

    #[test]
    fn a_split_counts_only_after_the_grace_and_once_while_it_lasts() {
        let mut c = Checker::new();
        c.split_planned(s(10), "a", "M", Some(("big", s(5))));
        c.split_planned(s(40), "a", "M", Some(("big", s(35))));
        c.split_planned(s(41), "a", "M", Some(("big", s(36))));
        c.no_split_planned("a", "M");
        c.split_planned(s(90), "a", "M", Some(("big", s(85))));
        c.split_planned(s(90), "b", "M", None);
        let r = c.finish(s(100));
        assert_eq!(r.violations[&Rule::SplitWhileAPeerFits], 2);
        assert!(r.first[0].detail.contains("big"));
    }

    #[test]
    fn two_pipelines_for_a_model_or_a_shared_worker_are_violations() {
        let mut c = Checker::new();
        c.pipelines(
            s(1),
            &[("h", "M", vec!["w1", "w2"]), ("g", "N", vec!["w3"])],
        );
        assert!(c.clone().finish(s(2)).passed());
        c.pipelines(s(3), &[("h", "M", vec!["w1"]), ("g", "M", vec!["w3"])]);
        c.pipelines(s(4), &[("h", "M", vec!["w1"]), ("g", "N", vec!["w1"])]);
        assert_eq!(c.finish(s(5)).violations[&Rule::TwoHostsForASplit], 2);
    }

    #[test]
    fn chats_must_end_typed_and_in_time() {
        let mut c = Checker::new();
        for id in 0..5 {
            c.chat_started(id, s(100), "M");
        }
        c.chat_ended(0, s(50), Ending::Tokens);
        c.chat_ended(1, s(60), Ending::Error("no_peer_with_model"));
        c.chat_ended(2, s(101), Ending::Fallback);
        c.chat_ended(3, s(70), Ending::Error("it broke"));
        let r = c.finish(s(200));
        assert_eq!(r.violations[&Rule::ChatPastDeadline], 2, "{r:?}");
        assert_eq!(r.violations[&Rule::UntypedError], 1);
    }

    #[test]
    fn open_chats_before_their_deadline_at_the_end_are_fine() {
        let mut c = Checker::new();
        c.chat_started(1, s(500), "M");
        assert!(c.finish(s(200)).passed());
    }

    #[test]
    fn only_peers_serving_the_advertised_model_can_be_falsely_accused() {
        let mut c = Checker::new();
        c.verdict(s(1), "cheat", "M", true, false);
        c.demoted(s(1), "cheat", "M", false);
        c.verdict(s(2), "honest", "M", false, true);
        assert!(c.clone().finish(s(3)).passed());
        c.verdict(s(4), "honest", "M", true, true);
        c.liveness(
            s(5),
            Liveness::NotConverged {
                after_s: 600.0,
                reason: "x".into(),
            },
        );
        let r = c.finish(s(6));
        assert_eq!(r.violations[&Rule::HonestPeerDemoted], 1);
        assert_eq!(r.violations[&Rule::NoConvergence], 1);
        assert!(!r.passed());
    }
}
