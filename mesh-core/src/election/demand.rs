//! Demand: what starts a second solo host (SPEC §3: ≥ 2 clients or ≥ 10 requests a minute).
//!
//! An entry measures it with a [`DemandMeter`] as it routes chats and announces the result
//! ([`PeerAnnouncement::demand`]); every node sums the announcements of its view with
//! [`demand_from_view`] and feeds the sum to its election. Hosts never count: a chat is counted
//! once, where it enters the mesh.

use super::Demand;
use crate::peer::{ModelDemand, ModelName};
use crate::time::Timestamp;
use crate::view::MeshView;
use std::collections::{BTreeMap, VecDeque};
use std::time::Duration;

/// Requests count towards `requests_per_min` this long.
pub const REQUEST_WINDOW: Duration = Duration::from_secs(60);
/// A caller counts as a client this long after its last request.
pub const CLIENT_WINDOW: Duration = Duration::from_secs(300);

/// Per model, the chats an entry routed lately. Callers are opaque keys (an entry uses the
/// caller's IP or API key); the meter never reads a clock, `now` comes with every call.
#[derive(Debug, Default, Clone)]
pub struct DemandMeter {
    models: BTreeMap<ModelName, ModelMeter>,
}

#[derive(Debug, Default, Clone)]
struct ModelMeter {
    requests: VecDeque<Timestamp>,
    callers: BTreeMap<u64, Timestamp>,
}

impl ModelMeter {
    fn prune(&mut self, now: Timestamp) {
        while self
            .requests
            .front()
            .is_some_and(|&t| now.saturating_since(t) >= REQUEST_WINDOW)
        {
            self.requests.pop_front();
        }
        self.callers
            .retain(|_, &mut t| now.saturating_since(t) < CLIENT_WINDOW);
    }
}

impl DemandMeter {
    pub fn new() -> Self {
        Self::default()
    }

    /// One chat for `model` from `caller`.
    pub fn record(&mut self, model: &str, caller: u64, now: Timestamp) {
        let m = self.models.entry(model.to_string()).or_default();
        m.prune(now);
        m.requests.push_back(now);
        m.callers.insert(caller, now);
    }

    /// The demand to announce at `now`: models with any request or client left in the windows,
    /// in name order.
    pub fn snapshot(&mut self, now: Timestamp) -> Vec<ModelDemand> {
        let mut out = Vec::new();
        self.models.retain(|model, m| {
            m.prune(now);
            if m.requests.is_empty() && m.callers.is_empty() {
                return false;
            }
            out.push(ModelDemand {
                model: model.clone(),
                clients: u32::try_from(m.callers.len()).unwrap_or(u32::MAX),
                // The window is a minute: its count is the rate per minute.
                requests_per_min: m.requests.len() as f64,
            });
            true
        });
        out
    }
}

/// The mesh-wide demand per model: the sum of every live peer's announced demand (this node's
/// own announcement included, as the view holds it).
pub fn demand_from_view(view: &MeshView) -> BTreeMap<ModelName, Demand> {
    let mut total: BTreeMap<ModelName, Demand> = BTreeMap::new();
    for p in &view.peers {
        for d in &p.announcement.demand {
            let t = total.entry(d.model.clone()).or_default();
            t.clients = t.clients.saturating_add(d.clients);
            t.requests_per_min += d.requests_per_min;
        }
    }
    total
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::id::PeerId;
    use crate::peer::{PeerAnnouncement, Role};
    use crate::view::KnownPeer;

    const T0: Timestamp = Timestamp::from_micros(1_000_000_000);

    fn at(secs: u64) -> Timestamp {
        T0 + Duration::from_secs(secs)
    }

    #[test]
    fn ten_requests_in_a_minute_are_hot_and_cool_off_after_the_window() {
        let mut meter = DemandMeter::new();
        for i in 0..10 {
            meter.record("m", 1, at(i * 5));
        }
        let snap = meter.snapshot(at(50));
        assert_eq!(snap.len(), 1);
        assert_eq!(snap[0].requests_per_min, 10.0);
        assert_eq!(snap[0].clients, 1);
        let d = Demand {
            clients: snap[0].clients,
            requests_per_min: snap[0].requests_per_min,
        };
        assert!(d.is_hot());
        // A minute after the 5th request only the last five remain.
        let later = meter.snapshot(at(80));
        assert_eq!(later[0].requests_per_min, 5.0);
        assert!(
            !Demand {
                clients: later[0].clients,
                requests_per_min: later[0].requests_per_min
            }
            .is_hot()
        );
    }

    #[test]
    fn two_callers_are_two_clients_until_one_is_quiet_for_the_client_window() {
        let mut meter = DemandMeter::new();
        meter.record("m", 1, at(0));
        meter.record("m", 2, at(100));
        assert_eq!(meter.snapshot(at(120))[0].clients, 2);
        assert_eq!(meter.snapshot(at(310))[0].clients, 1);
        assert!(
            meter.snapshot(at(400)).is_empty(),
            "all quiet: nothing announced"
        );
    }

    #[test]
    fn the_mesh_demand_sums_every_entry_announcement() {
        let entry = |n: u8, clients: u32, rpm: f64| {
            let mut a = PeerAnnouncement::new(PeerId::from_bytes([n; 32]), "m", Role::Client);
            a.demand = vec![ModelDemand {
                model: "qwen".into(),
                clients,
                requests_per_min: rpm,
            }];
            KnownPeer {
                announcement: a,
                rtt_ms: Some(1),
                first_seen: T0,
                last_fresh: T0,
            }
        };
        let view = MeshView::new(
            PeerId::from_bytes([1; 32]),
            vec![entry(1, 1, 4.0), entry(2, 1, 3.0)],
        );
        let d = demand_from_view(&view)["qwen"];
        assert_eq!(d.clients, 2);
        assert_eq!(d.requests_per_min, 7.0);
        assert!(d.is_hot(), "two entries with one caller each: two clients");
    }
}
