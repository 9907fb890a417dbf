//! What a node does with its election, and how requests are served: duties carried out
//! (launch, stop, serve layers), llama-server slots, chats from arrival to last token or typed
//! error, the native-baseline collector's probes.

use super::{
    Active, AuditReq, Backing, CANNED, Ev, Hosting, Life, MODEL_MTIME, Request, World, ms,
    since_start,
};
use crate::check::Ending as CheckEnding;
use crate::decode;
use crate::profile::{self, BATCH_SLOWDOWN_PER_SEQUENCE, Device, Model, Serving, Timing};
use crate::timeline::ChatPoint;
use mesh_core::baseline::{BaselineEvent, BaselineOutput, BaselineProbe, ProbeId, ProbeResult};
use mesh_core::election::{self, Duty, Plan};
use mesh_core::routing;
use mesh_core::samples::{self, Ending, Observation};
use mesh_core::sla::{self, ServedBy};
use mesh_core::verify::{ProbeFailed, Side};
use mesh_core::{PeerId, Timestamp};
use std::collections::{BTreeMap, VecDeque};
use std::net::{IpAddr, Ipv4Addr};
use std::time::Duration;

impl World<'_> {
    // ---- the election and its duties ----

    /// Runs `p`'s election on its gossip view and carries out its duties.
    pub(super) fn elect(&mut self, p: usize) {
        let node = &self.nodes[p];
        if !node.up() || !node.spec.contributes() || node.gossip.is_none() {
            return;
        }
        self.engine_stats.elections += 1;
        let view = self.election_view(p);
        let now = self.now;
        let outcome = self.nodes[p].election.decide(&view, &self.demand, now);
        let index = &self.index;
        // Per model: host with these workers (empty: solo), or worker for a host.
        let mut hosts: BTreeMap<usize, Vec<usize>> = BTreeMap::new();
        let mut worker_for = BTreeMap::new();
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
        for (model, plan) in &outcome.plans {
            if matches!(plan, Plan::Split { .. }) {
                let capable = self.capable_of(p, model);
                let name = self.nodes[p].spec.name.clone();
                self.checker.split_planned(
                    since_start(now),
                    &name,
                    model,
                    capable.as_ref().map(|(n, d)| (n.as_str(), *d)),
                );
            } else {
                let name = &self.nodes[p].spec.name;
                self.checker.no_split_planned(name, model);
            }
        }
        let node = &mut self.nodes[p];
        node.serving_models = outcome.serving_models;
        node.plans = outcome.plans;
        node.worker_for = worker_for;
        let mut changed = false;
        for m in 0..self.models.len() {
            let want = hosts.get(&m);
            let keep = match (self.nodes[p].live_hosting(m), want) {
                (Some(h), Some(ws)) => &h.workers == ws,
                (None, None) => true,
                _ => false,
            };
            if keep {
                continue;
            }
            changed = true;
            if let Some(epoch) = self.nodes[p].live_hosting(m).map(|h| h.epoch) {
                self.stop_hosting(p, epoch);
            }
            if let Some(ws) = want {
                self.launch(p, m, ws.clone());
            }
        }
        if let Some(at) = self.nodes[p].election.poll_timeout()
            && at > now
            && self.nodes[p].election_timer != Some(at)
        {
            self.nodes[p].election_timer = Some(at);
            self.queue.push(at, Ev::ElectionTimer(p));
        }
        self.touch(p);
        if changed {
            self.report_pipelines();
        }
    }

    /// The earliest-up live peer `p` can reach that could hold `model` solo (announced fast
    /// memory ≥ 1.1 × size, the file configured), and how long it has been up.
    fn capable_of(&self, p: usize, model: &str) -> Option<(String, Duration)> {
        let size = self.models.iter().find(|m| m.name == model)?.size_bytes;
        (0..self.nodes.len())
            .filter(|&q| {
                let n = &self.nodes[q];
                n.up()
                    && n.gossip.is_some()
                    && self.net.reachable(p, q)
                    && n.spec.serve.iter().any(|s| s == model)
                    && election::can_hold_solo(self.announced_fast_memory(q), Some(size))
            })
            .min_by_key(|&q| (self.nodes[q].up_since, q))
            .map(|q| {
                (
                    self.nodes[q].spec.name.clone(),
                    self.now.saturating_since(self.nodes[q].up_since),
                )
            })
    }

    fn announced_fast_memory(&self, q: usize) -> u64 {
        let spec = self.nodes[q].spec;
        let mut fast = spec.fast_memory_gb;
        if let Some(cap) = spec.max_vram_gb {
            fast = fast.min(cap);
        }
        if spec.behaviour == crate::scenario::Behaviour::InflateMemory {
            fast *= super::MEMORY_INFLATION;
        }
        (fast * 1e9) as u64
    }

    /// Tells the checker which pipelines run now.
    pub(super) fn report_pipelines(&mut self) {
        let running: Vec<(&str, &str, Vec<&str>)> = self
            .nodes
            .iter()
            .filter(|n| n.up())
            .flat_map(|n| {
                n.hostings
                    .iter()
                    .filter(|h| !h.draining && !h.workers.is_empty())
                    .map(move |h| (n, h))
            })
            .map(|(n, h)| {
                (
                    n.spec.name.as_str(),
                    self.models[h.model].name.as_str(),
                    h.workers
                        .iter()
                        .map(|&w| self.nodes[w].spec.name.as_str())
                        .collect(),
                )
            })
            .collect();
        let now = since_start(self.now);
        self.checker.pipelines(now, &running);
    }

    fn pipeline(&self, host: usize, workers: &[usize], model: &Model) -> Serving {
        let ws: Vec<(Device, profile::Link)> = workers
            .iter()
            .map(|&w| (self.nodes[w].device.clone(), self.net.link(host, w)))
            .collect();
        profile::pipeline(&self.nodes[host].device, &ws, model)
    }

    fn launch(&mut self, p: usize, m: usize, workers: Vec<usize>) {
        let physics = &self.models[m].physics;
        let serving = if workers.is_empty() {
            profile::solo(&self.nodes[p].device, physics)
        } else {
            self.pipeline(p, &workers, physics)
        };
        let cheaper = |scale_size: f64, scale_params: f64| {
            let physics = Model {
                size_gb: serving.model.size_gb * scale_size,
                params_b: serving.model.params_b * scale_params,
                active_params_b: serving.model.active_params_b * scale_params,
                ..serving.model.clone()
            };
            Backing::Model(if workers.is_empty() {
                profile::solo(&self.nodes[p].device, &physics)
            } else {
                self.pipeline(p, &workers, &physics)
            })
        };
        let honest = Backing::Model(serving.clone());
        // What it runs on real traffic, and on the probes it recognises (its own baseline).
        use crate::scenario::Behaviour as B;
        let (traffic, probes) = match self.nodes[p].spec.behaviour {
            B::Honest | B::InflateMemory | B::InflateTimings => (honest.clone(), honest),
            B::CheaperQuant => (cheaper(0.75, 1.0), cheaper(0.75, 1.0)),
            B::SmallerModel | B::ReplayFingerprint => (cheaper(0.5, 0.5), cheaper(0.5, 0.5)),
            B::ProbeAware => (cheaper(0.75, 1.0), honest),
            B::CannedText => (Backing::Canned, Backing::Canned),
        };
        let load_gb = serving
            .stages
            .iter()
            .map(|s| s.residency.fast_gb + s.residency.ram_gb + s.residency.disk_gb)
            .fold(0.0, f64::max);
        self.next_epoch += 1;
        let epoch = self.next_epoch;
        let node = &mut self.nodes[p];
        node.placements.insert(m, serving.kind);
        let slots = node
            .spec
            .max_inflight
            .unwrap_or(mesh_core::launch::PARALLEL_SLOTS) as usize;
        node.hostings.push(Hosting {
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
            timings: BTreeMap::new(),
        });
        let load = Duration::from_secs_f64(profile::LAUNCH_S + load_gb / profile::LOAD_GBPS);
        self.queue
            .push(self.now + load, Ev::Ready { peer: p, epoch });
    }

    pub(super) fn ready(&mut self, p: usize, epoch: u64) {
        let Some(h) = self.nodes[p].hosting_mut(epoch) else {
            return;
        };
        if h.draining {
            return;
        }
        h.ready = true;
        let solo = h.workers.is_empty();
        let model = self.models[h.model].name.clone();
        self.nodes[p].election.record_launch_success(&model);
        if solo {
            let now = self.now;
            self.nodes[p].collector.handle(
                BaselineEvent::ServerReady {
                    model,
                    model_mtime_unix_nanos: MODEL_MTIME,
                },
                now,
            );
            self.drain_collector(p);
        }
        self.touch(p);
        self.invalidate_direct_view();
    }

    /// Takes a hosting out of rotation; it finishes what it has.
    fn stop_hosting(&mut self, p: usize, epoch: u64) {
        let Some(h) = self.nodes[p].hosting_mut(epoch) else {
            return;
        };
        h.draining = true;
        let (model, solo) = (h.model, h.workers.is_empty());
        if solo {
            let now = self.now;
            let model = self.models[model].name.clone();
            self.nodes[p]
                .collector
                .handle(BaselineEvent::ServerStopped { model }, now);
            self.drain_collector(p);
        }
        self.finish_draining(p, epoch);
    }

    fn finish_draining(&mut self, p: usize, epoch: u64) {
        let node = &mut self.nodes[p];
        if let Some(pos) = node.hostings.iter().position(|h| h.epoch == epoch) {
            let h = &node.hostings[pos];
            if h.draining && h.active.is_empty() && h.waiting.is_empty() {
                node.hostings.remove(pos);
            }
        }
    }

    /// Removes a hosting at once; its streams break (retried if the caller has no token yet).
    pub(super) fn drop_hosting(&mut self, peer: usize, epoch: u64) {
        let Some(pos) = self.nodes[peer]
            .hostings
            .iter()
            .position(|h| h.epoch == epoch)
        else {
            return;
        };
        let hosting = self.nodes[peer].hostings.remove(pos);
        if hosting.workers.is_empty() && self.nodes[peer].up() {
            let now = self.now;
            let model = self.models[hosting.model].name.clone();
            self.nodes[peer]
                .collector
                .handle(BaselineEvent::ServerStopped { model }, now);
            self.drain_collector(peer);
        }
        for (req, a) in &hosting.active {
            self.broken(*req, peer, Some(a.first_at));
        }
        for req in &hosting.waiting {
            self.broken(*req, peer, None);
        }
        self.set_inflight(peer);
    }

    pub(super) fn relink_pipelines(&mut self) {
        for p in 0..self.nodes.len() {
            for i in 0..self.nodes[p].hostings.len() {
                let h = &self.nodes[p].hostings[i];
                if h.workers.is_empty() {
                    continue;
                }
                let serving = self.pipeline(p, &h.workers.clone(), &self.models[h.model].physics);
                let h = &mut self.nodes[p].hostings[i];
                h.serving = serving.clone();
                h.traffic = Backing::Model(serving.clone());
                h.probes = Backing::Model(serving);
                h.timings.clear();
            }
        }
    }

    /// Recounts `p`'s requests in flight; the collector and the announcement follow.
    fn set_inflight(&mut self, p: usize) {
        let n: u32 = self.nodes[p]
            .hostings
            .iter()
            .map(|h| (h.active.len() + h.waiting.len()) as u32)
            .sum();
        if n != self.nodes[p].inflight {
            self.nodes[p].inflight = n;
            let now = self.now;
            if self.nodes[p].up() {
                self.nodes[p]
                    .collector
                    .handle(BaselineEvent::InflightChanged { inflight: n }, now);
                self.drain_collector(p);
                self.touch(p);
            }
        }
    }

    // ---- native baselines ----

    pub(super) fn collector_wake(&mut self, p: usize) {
        if self.nodes[p].collector_wake != Some(self.now) || !self.nodes[p].up() {
            return;
        }
        self.nodes[p].collector_wake = None;
        let now = self.now;
        self.nodes[p].collector.handle_timeout(now);
        self.drain_collector(p);
    }

    fn drain_collector(&mut self, p: usize) {
        while let Some(o) = self.nodes[p].collector.poll_output() {
            match o {
                BaselineOutput::Probe(probe) => self.baseline_probe(p, probe),
                BaselineOutput::Publish(_) => self.touch(p),
                BaselineOutput::SampleDropped { .. } | BaselineOutput::RefreshFailed { .. } => {}
            }
        }
        let wake = self.nodes[p]
            .collector
            .poll_timeout()
            .map(|t| t.max(self.now));
        if wake != self.nodes[p].collector_wake {
            self.nodes[p].collector_wake = wake;
            if let Some(t) = wake {
                self.queue.push(t, Ev::CollectorWake(p));
            }
        }
    }

    /// Runs a baseline probe straight against `p`'s own llama-server (no mesh in the path).
    fn baseline_probe(&mut self, p: usize, probe: BaselineProbe) {
        let now = self.now;
        let Some(m) = self.models.iter().position(|m| m.name == probe.model) else {
            return;
        };
        let node = &mut self.nodes[p];
        let sigma = profile::jitter_sigma(node.spec.backend);
        let Some(h) = node
            .hostings
            .iter()
            .find(|h| h.model == m && h.ready && !h.draining && h.workers.is_empty())
        else {
            let result = Err(ProbeFailed {
                reason: "llama-server is not serving the model solo".into(),
            });
            self.queue.push(
                now,
                Ev::BaselineDone {
                    peer: p,
                    probe: probe.id,
                    result: Box::new(result),
                },
            );
            return;
        };
        let base = match &h.probes {
            Backing::Model(s) => s.native(profile::PROBE_PROMPT_TOKENS),
            Backing::Canned => CANNED,
        };
        let epoch = h.epoch;
        let ttft = ms(base.ttft_ms * node.jitter.jitter(sigma));
        let per = base.per_token_ms * node.jitter.jitter(sigma);
        let tokens = probe.params.max_tokens;
        let first = now + ttft;
        let last = first + ms(per * f64::from(tokens.saturating_sub(1)));
        let prompt = probe.prompt();
        let decode = decode::answer(
            &probe.model,
            node.spec.behaviour,
            node.spec.backend,
            decode::Request {
                prompt: prompt.as_str(),
                max_tokens: tokens,
                probe_shaped: true,
            },
        );
        node.baseline_probe = Some((probe.id, epoch));
        let result = Ok(ProbeResult {
            observation: Observation {
                sent_at: now,
                status: 200,
                first_token_at: Some(first),
                last_token_at: Some(last),
                finished_at: last,
                usage_completion_tokens: Some(tokens),
                counted_deltas: tokens,
                ending: Ending::Complete,
            },
            decode,
        });
        self.queue.push(
            last,
            Ev::BaselineDone {
                peer: p,
                probe: probe.id,
                result: Box::new(result),
            },
        );
    }

    pub(super) fn baseline_done(
        &mut self,
        p: usize,
        probe: ProbeId,
        result: Result<ProbeResult, ProbeFailed>,
    ) {
        if !self.nodes[p].up() {
            return;
        }
        if self.nodes[p]
            .baseline_probe
            .is_some_and(|(id, _)| id == probe)
        {
            self.nodes[p].baseline_probe = None;
        }
        let now = self.now;
        self.nodes[p]
            .collector
            .handle(BaselineEvent::ProbeFinished { id: probe, result }, now);
        self.drain_collector(p);
    }

    // ---- traffic ----

    pub(super) fn schedule_arrival(&mut self, t: usize, after: Timestamp) {
        let mean_s = 60.0 / self.sc.traffic[t].rate_per_min;
        let gap = self.traffic[t].exponential(mean_s);
        let at = after + Duration::from_secs_f64(gap);
        if at <= self.end {
            self.queue.push(at, Ev::Arrival(t));
        }
    }

    pub(super) fn arrival(&mut self, t: usize) {
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
                attempt: 0,
                dispatched: self.now,
                host_arrival: self.now,
                audit: None,
            },
        );
        self.counts[model].sent += 1;
        let deadline = since_start(self.now) + Duration::from_secs_f64(spec.deadline());
        self.checker
            .chat_started(id, deadline, self.models[model].name.clone());
        self.dispatch(id);
    }

    /// Sends an audit probe to `peer` through entry `entry`, like a chat.
    pub(super) fn send_audit_probe(&mut self, model: usize, peer: usize, audit: AuditReq) {
        self.next_request += 1;
        let id = self.next_request;
        let entry = audit.entry;
        self.requests.insert(
            id,
            Request {
                model,
                entry: Some(entry),
                caller: IpAddr::V4(Ipv4Addr::LOCALHOST),
                prompt: 40,
                tokens: audit.max_tokens,
                tried: Vec::new(),
                target: Some(peer),
                attempt: 0,
                dispatched: self.now,
                host_arrival: self.now,
                audit: Some(audit),
            },
        );
        self.audits_sent += 1;
        self.dispatch(id);
    }

    pub(super) fn dispatch(&mut self, id: u64) {
        let Some(r) = self.requests.get(&id) else {
            return;
        };
        let (entry, model_idx) = (r.entry, r.model);
        if entry.is_some_and(|e| !self.nodes[e].up()) {
            return self.fail(id, "entry_unavailable");
        }
        if r.audit.is_some() {
            return self.dispatch_audit(id);
        }
        let model = self.models[model_idx].name.clone();
        if entry.is_none() && self.entries[&None].view.is_none() {
            let v = self.direct_view();
            self.entries.get_mut(&None).expect("exists").view = Some(v);
        }
        let now = self.now;
        let first_try = r.tried.is_empty();
        let caller = r.caller;
        let tried = r.tried.clone();
        let ep = self
            .entries
            .get_mut(&entry)
            .expect("every entry point exists");
        let Some(view) = ep.view.as_ref() else {
            return self.fail(id, "entry_unavailable");
        };
        // The SLA gate and fallback decision, on entries with a provider configured.
        if let (Some(cfg), true) = (&ep.fallback, first_try) {
            let eval = sla::evaluate(&model, view, &ep.samples.measurements(now), now, &self.sla);
            let left = ep.budget.remaining(caller, now);
            if sla::decide_fallback(&eval, cfg, left).fires() && ep.budget.take(caller, now).is_ok()
            {
                return self.served_by_fallback(id);
            }
        }
        let mut order = ep.router.order(&model, view, &id.to_be_bytes(), now);
        if let Some(a) = &ep.auditor {
            order.retain(|p| !a.is_demoted(p, &model, now));
        }
        let Some(target) = routing::next_attempt(&order, &tried) else {
            if let Some(cfg) = &ep.fallback {
                let eval =
                    sla::evaluate(&model, view, &ep.samples.measurements(now), now, &self.sla);
                let left = ep.budget.remaining(caller, now);
                if sla::decide_fallback_after_mesh_failure(&eval, cfg, left).fires()
                    && ep.budget.take(caller, now).is_ok()
                {
                    return self.served_by_fallback(id);
                }
            }
            let reason = if !tried.is_empty() {
                "no_capable_node"
            } else if view
                .peers
                .iter()
                .any(|p| p.announcement.serving_models.contains(&model))
            {
                "election_in_progress"
            } else {
                "no_peer_with_model"
            };
            return self.fail(id, reason);
        };
        ep.router.started(target);
        let peer = self.index[&target];
        self.send_upstream(id, peer, target);
    }

    fn dispatch_audit(&mut self, id: u64) {
        let r = &self.requests[&id];
        let peer = r.target.expect("audit probes name their peer");
        if !r.tried.is_empty() {
            return self.fail(id, "no_capable_node");
        }
        let target = self.nodes[peer].id;
        let entry = r.entry;
        if let Some(ep) = self.entries.get_mut(&entry) {
            ep.router.started(target);
        }
        self.send_upstream(id, peer, target);
    }

    /// The entry opens the tunnel to `peer` and sends the request.
    fn send_upstream(&mut self, id: u64, peer: usize, target: PeerId) {
        let now = self.now;
        let entry = self.requests[&id].entry;
        let epoch = self.nodes[peer]
            .live_hosting(self.requests[&id].model)
            .map_or(0, |h| h.epoch);
        // A lost request packet costs a retransmission timeout.
        let mut delay = self.one_way(entry, peer);
        if let Some(e) = entry {
            let loss = self.net.loss(e, peer);
            if loss > 0.0 && self.nodes[peer].jitter.chance(loss) {
                delay += 1.5 * 2.0 * delay + 25.0;
            }
        }
        let first_byte = self.entries[&entry].router.config().first_byte_timeout();
        let r = self.requests.get_mut(&id).expect("checked by the caller");
        r.tried.push(target);
        r.target = Some(peer);
        r.dispatched = now;
        r.attempt += 1;
        let attempt = r.attempt;
        self.queue.push(
            now + ms(delay),
            Ev::HostArrive {
                req: id,
                peer,
                epoch,
            },
        );
        self.queue
            .push(now + first_byte, Ev::FirstByteDeadline { req: id, attempt });
    }

    pub(super) fn host_arrive(&mut self, req: u64, peer: usize, epoch: u64) {
        if self
            .requests
            .get(&req)
            .is_none_or(|r| r.target != Some(peer))
        {
            return;
        }
        let open = self.nodes[peer]
            .hosting_mut(epoch)
            .is_some_and(|h| h.ready && !h.draining);
        if !open || !self.nodes[peer].up() {
            return self.broken(req, peer, None);
        }
        if let Some(r) = self.requests.get_mut(&req) {
            r.host_arrival = self.now;
        }
        let h = self.nodes[peer].hosting_mut(epoch).expect("checked open");
        if h.active.len() < h.slots {
            self.start(req, peer, epoch);
        } else {
            h.waiting.push_back(req);
        }
        self.set_inflight(peer);
    }

    fn start(&mut self, req: u64, peer: usize, epoch: u64) {
        let Some(r) = self.requests.get(&req) else {
            return;
        };
        let (prompt, tokens) = (r.prompt, r.tokens);
        // A peer that recognises a probe serves it with the real model.
        let recognised = r.audit.as_ref().is_some_and(|a| a.probe_shaped);
        let p = &mut self.nodes[peer];
        let sigma = profile::jitter_sigma(p.spec.backend);
        let h = p
            .hostings
            .iter_mut()
            .find(|h| h.epoch == epoch)
            .expect("started on a live hosting");
        let backing = if recognised { &h.probes } else { &h.traffic };
        let base = match backing {
            Backing::Model(s) if recognised => s.native(prompt),
            Backing::Model(s) => *h.timings.entry(prompt).or_insert_with(|| s.native(prompt)),
            Backing::Canned => CANNED,
        };
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

    pub(super) fn host_done(&mut self, req: u64, peer: usize, epoch: u64) {
        let Some(h) = self.nodes[peer].hosting_mut(epoch) else {
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
        let p = &mut self.nodes[peer];
        if let Ok(s) = observation(r.host_arrival, Duration::ZERO).to_sample() {
            p.samples.record(&name, s);
        }
        if r.audit.is_none() {
            *p.served.entry(model).or_default() += 1;
        }
        let pid = p.id;
        let back = ms(self.one_way(r.entry, peer));
        let done_at = a.last_at + back;
        let ep = self
            .entries
            .get_mut(&r.entry)
            .expect("every entry point exists");
        let sample = observation(r.dispatched, back).to_sample().ok();
        if r.entry.is_some()
            && let Some(s) = sample
        {
            ep.samples.record(pid, &name, s);
        }
        ep.router.first_byte(pid, &name);
        ep.router.finished(pid);
        if let Some(audit) = &r.audit {
            let p = &self.nodes[peer];
            let decode = decode::answer(
                &name,
                p.spec.behaviour,
                p.spec.backend,
                decode::Request {
                    prompt: &audit.prompt,
                    max_tokens: audit.max_tokens,
                    probe_shaped: audit.probe_shaped,
                },
            );
            self.queue.push(
                done_at,
                Ev::AuditAnswer {
                    entry: audit.entry,
                    audit: audit.audit,
                    side: Side::Peer,
                    answer: Box::new(Ok(decode)),
                },
            );
        } else {
            ep.share.record(ServedBy::Mesh, done_at);
            ep.first_served
                .entry(name.clone())
                .or_insert(done_at.as_unix_secs());
            self.counts[model].mesh += 1;
            if let Some(s) = sample {
                self.timeline.chats.push(ChatPoint {
                    at_s: since_start(done_at).as_secs_f64(),
                    model,
                    ttft_ms: s.ttft_ms,
                    tps: s.tps,
                });
            }
            self.checker
                .chat_ended(req, since_start(done_at), CheckEnding::Tokens);
        }
        self.start_waiting(peer, epoch);
        self.finish_draining(peer, epoch);
        self.set_inflight(peer);
    }

    /// Fills free slots from the hosting's queue.
    fn start_waiting(&mut self, peer: usize, epoch: u64) {
        loop {
            let Some(h) = self.nodes[peer].hosting_mut(epoch) else {
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

    /// The first byte of `req`'s attempt is overdue: the entry gives up on that target.
    pub(super) fn first_byte_deadline(&mut self, req: u64, attempt: u32) {
        let Some(r) = self.requests.get(&req) else {
            return;
        };
        let Some(peer) = r.target.filter(|_| r.attempt == attempt) else {
            return;
        };
        let back = ms(self.one_way(r.entry, peer));
        let now = self.now;
        for h in &mut self.nodes[peer].hostings {
            if let Some(a) = h.active.get(&req) {
                if a.first_at + back <= now {
                    return; // streaming already
                }
                h.active.remove(&req);
            } else if let Some(i) = h.waiting.iter().position(|&x| x == req) {
                h.waiting.remove(i);
            }
        }
        self.set_inflight(peer);
        self.broken(req, peer, None);
    }

    fn release(&mut self, req: u64, peer: usize) {
        let entry = self.requests.get(&req).map(|r| r.entry);
        if let Some(ep) = entry.and_then(|e| self.entries.get_mut(&e)) {
            ep.router.finished(self.nodes[peer].id);
        }
    }

    fn served_by_fallback(&mut self, id: u64) {
        if let Some(r) = self.requests.remove(&id) {
            self.counts[r.model].fallback += 1;
            if let Some(ep) = self.entries.get_mut(&r.entry) {
                ep.share.record(ServedBy::Fallback, self.now);
            }
            self.checker
                .chat_ended(id, since_start(self.now), CheckEnding::Fallback);
        }
    }

    pub(super) fn fail(&mut self, id: u64, reason: &str) {
        if let Some(r) = self.requests.remove(&id) {
            if let Some(audit) = r.audit {
                self.queue.push(
                    self.now,
                    Ev::AuditAnswer {
                        entry: audit.entry,
                        audit: audit.audit,
                        side: Side::Peer,
                        answer: Box::new(Err(ProbeFailed {
                            reason: reason.to_string(),
                        })),
                    },
                );
                return;
            }
            *self.counts[r.model]
                .failed
                .entry(reason.to_string())
                .or_default() += 1;
            self.checker
                .chat_ended(id, since_start(self.now), CheckEnding::Error(reason));
        }
    }

    /// A stream from `peer` broke. Before the caller saw a token the entry retries another
    /// target; after, the chat fails.
    pub(super) fn broken(&mut self, req: u64, peer: usize, first_at: Option<Timestamp>) {
        let Some(r) = self.requests.get(&req) else {
            return;
        };
        let (entry, model) = (r.entry, r.model);
        let back = ms(self.one_way(entry, peer));
        let pid = self.nodes[peer].id;
        let name = self.models[model].name.clone();
        let now = self.now;
        // The tunnel to a dead or cut-off host failed: the entry's transport says so.
        if let Some(e) = entry
            && (!self.nodes[peer].up() || !self.net.reachable(e, peer))
            && self.nodes[e].gossip.is_some()
        {
            self.queue.push(
                now,
                Ev::GossipInput {
                    at: e,
                    input: super::GossipIn::ConnectionLost(pid),
                },
            );
        }
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
    pub(super) fn cut_streams(&mut self) {
        let mut cut = Vec::new();
        for (p, node) in self.nodes.iter().enumerate() {
            for h in &node.hostings {
                for req in h.active.keys().chain(h.waiting.iter()) {
                    let entry = self.requests.get(req).and_then(|r| r.entry);
                    let gone =
                        |e: usize| self.nodes[e].life != Life::Up || !self.net.reachable(e, p);
                    if entry.is_some_and(gone) {
                        cut.push((p, h.epoch, *req));
                    }
                }
            }
        }
        for (p, epoch, req) in cut {
            if let Some(h) = self.nodes[p].hosting_mut(epoch) {
                h.active.remove(&req);
                h.waiting.retain(|r| *r != req);
            }
            self.release(req, p);
            self.fail(req, samples::NotRecorded::ClientDisconnected.as_str());
            self.start_waiting(p, epoch);
            self.set_inflight(p);
        }
    }
}
