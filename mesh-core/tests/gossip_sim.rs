//! Many gossip machines over a seeded lossy network (20–100 ms links, 1% loss), in virtual time:
//! convergence, the SPEC §2 goal figures, crash and leave handling, partitions, determinism.
//! Every test prints its seed; `MESH_SEED=<n>` reruns one with another.

mod gossip_support;

use gossip_support::{NetConfig, Sim, T0};
use mesh_core::gossip::{Config, Event, Input, Removal};
use std::time::Duration;

fn seed() -> u64 {
    std::env::var("MESH_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(7)
}

fn secs(s: u64) -> Duration {
    Duration::from_secs(s)
}

fn ms(m: u64) -> Duration {
    Duration::from_millis(m)
}

/// `n` nodes join one by one through real invites (each through a random earlier node).
fn joined(seed: u64, n: usize, gossip: Config, net: NetConfig) -> Sim {
    let mut sim = Sim::new(seed, n, gossip, net);
    for i in 1..n {
        let via = (i * 7919 + seed as usize) % i;
        sim.join(i, via);
        sim.run_for(ms(200));
    }
    sim
}

fn everyone_knows_everyone(sim: &Sim) -> Result<(), String> {
    for a in 0..sim.nodes.len() {
        if !sim.alive(a) {
            continue;
        }
        for b in 0..sim.nodes.len() {
            if a == b || !sim.alive(b) {
                continue;
            }
            let held = sim.info(a, b).map(|p| p.content_seq);
            let actual = sim.node(b).local().value().seq;
            if held != Some(actual) {
                return Err(format!(
                    "node {a} holds {b} at {held:?}, its seq is {actual}"
                ));
            }
        }
    }
    Ok(())
}

#[test]
fn thirty_nodes_joining_through_invites_converge_over_a_lossy_network() {
    let seed = seed();
    let mut sim = joined(seed, 30, Config::default(), NetConfig::default());
    sim.run_for(secs(180));
    everyone_knows_everyone(&sim).unwrap_or_else(|e| panic!("seed {seed}: {e}"));
    for i in 0..30 {
        assert_eq!(sim.node(i).stats().bad_signature, 0, "seed {seed}");
    }
}

#[test]
fn small_mesh_converges_with_every_message_through_the_codec() {
    let seed = seed();
    let net = NetConfig {
        through_wire: true,
        ..NetConfig::default()
    };
    let mut sim = joined(seed, 8, Config::default(), net);
    sim.run_for(secs(120));
    for i in 0..8 {
        sim.update(i, |a| a.hostname = format!("host-{i}"));
    }
    sim.run_for(secs(5));
    everyone_knows_everyone(&sim).unwrap_or_else(|e| panic!("seed {seed}: {e}"));
}

#[test]
fn changed_announcement_reaches_99_percent_of_1000_peers_within_a_second() {
    // SPEC §2 goal: 1,000 peers, 20–100 ms links, 1% loss. Default config: no anti-entropy tick
    // helps within the second; this is rumour mongering alone.
    let seed = seed();
    let mut sim = Sim::new(seed, 1000, Config::default(), NetConfig::default());
    sim.record_events = false;
    sim.prewarm();
    sim.run_for(secs(2));
    let origin = 421;
    sim.update(origin, |a| a.hosted_models = vec!["Qwen3-8B-Q4_K_M".into()]);
    let seq = sim.node(origin).local().value().seq;
    let start = sim.now;
    let mut reached_99 = None;
    for step in 1..=40 {
        sim.run_until(start + ms(50 * step));
        if reached_99.is_none() && sim.holders(origin, seq) >= 990 {
            reached_99 = Some(sim.now.saturating_since(start));
        }
    }
    let holders = sim.holders(origin, seq);
    println!("seed {seed}: 99% after {reached_99:?}; {holders}/999 after 2 s");
    let t = reached_99.unwrap_or_else(|| panic!("seed {seed}: only {holders}/999 after 2 s"));
    assert!(t <= secs(1), "seed {seed}: 99% took {t:?}");
}

#[test]
fn steady_state_gossip_stays_under_2_kb_per_peer_per_second() {
    let seed = seed();
    let n = 50;
    let mut sim = joined(seed, n, Config::default(), NetConfig::default());
    sim.record_events = false;
    sim.run_until(T0 + secs(600));
    let before: u64 = sim.bytes_sent.iter().sum();
    let window = secs(1200);
    sim.run_for(window);
    let sent: u64 = sim.bytes_sent.iter().sum::<u64>() - before;
    let per_peer = sent as f64 / n as f64 / window.as_secs_f64();
    println!("seed {seed}: {n} peers, steady state {per_peer:.0} B/s sent per peer");
    assert!(
        per_peer <= 2048.0,
        "seed {seed}: {per_peer:.0} B/s per peer"
    );
    everyone_knows_everyone(&sim).unwrap_or_else(|e| panic!("seed {seed}: {e}"));
}

#[test]
fn crashed_peer_turns_undialable_everywhere_within_seconds_and_is_removed_after_360_s() {
    let seed = seed();
    let n = 30;
    let mut sim = joined(seed, n, Config::default(), NetConfig::default());
    sim.run_until(T0 + secs(300));
    everyone_knows_everyone(&sim).unwrap_or_else(|e| panic!("seed {seed}: {e}"));
    let dead = 11;
    let dead_id = sim.id(dead);
    let crash_at = sim.now;
    sim.crash(dead);
    sim.events.clear();
    sim.run_for(secs(900));

    let mut undialable_after = Duration::ZERO;
    for i in (0..n).filter(|&i| i != dead) {
        let t = sim
            .events
            .iter()
            .find(|(_, at, e)| *at == i && *e == Event::PeerUnreachable(dead_id))
            .map(|(t, _, _)| t.saturating_since(crash_at))
            .unwrap_or_else(|| panic!("seed {seed}: node {i} never found {dead} unreachable"));
        undialable_after = undialable_after.max(t);
        let removed = sim
            .events
            .iter()
            .find(|(_, at, e)| {
                *at == i
                    && *e
                        == Event::PeerRemoved {
                            peer: dead_id,
                            reason: Removal::Timeout,
                        }
            })
            .map(|(t, _, _)| t.saturating_since(crash_at))
            .unwrap_or_else(|| panic!("seed {seed}: node {i} never removed {dead}"));
        assert!(
            // Its last heartbeat went out at most one interval before the crash; a node that
            // missed it hears it at the latest by the next anti-entropy tick.
            removed >= secs(300) && removed <= secs(420),
            "seed {seed}: node {i} removed it after {removed:?}"
        );
        assert!(
            sim.info(i, dead).is_none(),
            "seed {seed}: resurrected at {i}"
        );
        let ups = sim
            .events
            .iter()
            .filter(|(_, at, e)| *at == i && *e == Event::PeerUp(dead_id))
            .count();
        assert_eq!(ups, 0, "seed {seed}: stale copies re-added {dead} at {i}");
    }
    println!("seed {seed}: crashed peer undialable at every node after {undialable_after:?}");
    assert!(
        undialable_after <= secs(10),
        "seed {seed}: {undialable_after:?}"
    );
}

#[test]
fn leaving_peer_is_gone_everywhere_within_a_second() {
    let seed = seed();
    let n = 30;
    let mut sim = joined(seed, n, Config::default(), NetConfig::default());
    sim.run_until(T0 + secs(200));
    let leaver = 4;
    sim.input(leaver, Input::Leave);
    sim.run_for(secs(1));
    let still = (0..n)
        .filter(|&i| i != leaver && sim.info(i, leaver).is_some())
        .count();
    assert_eq!(still, 0, "seed {seed}: {still} nodes still hold the leaver");
}

#[test]
fn partitioned_peer_is_removed_and_comes_back_when_the_partition_heals() {
    let seed = seed();
    let n = 12;
    let mut sim = joined(seed, n, Config::default(), NetConfig::default());
    sim.run_until(T0 + secs(200));
    let cut = 5;
    sim.isolated.insert(cut);
    sim.run_for(secs(420));
    for i in (0..n).filter(|&i| i != cut) {
        assert!(
            sim.info(i, cut).is_none(),
            "seed {seed}: {i} still holds {cut}"
        );
    }
    sim.isolated.clear();
    // Its next tick finds it alone and it says Hello to its inviter again; as a remembered
    // member it needs no new invite, and its newer seqs beat every tombstone.
    sim.run_for(secs(180));
    everyone_knows_everyone(&sim).unwrap_or_else(|e| panic!("seed {seed}: {e}"));
}

#[test]
fn same_seed_same_run_another_seed_another_run() {
    let run = |seed: u64| {
        let mut sim = joined(seed, 12, Config::default(), NetConfig::default());
        sim.run_until(T0 + secs(100));
        sim.update(3, |a| a.inflight_requests = 2);
        sim.crash(7);
        sim.run_until(T0 + secs(600));
        let events: Vec<String> = sim.events.iter().map(|e| format!("{e:?}")).collect();
        (sim.trace, events, sim.bytes_sent.clone())
    };
    let seed = seed();
    let a = run(seed);
    let b = run(seed);
    assert!(a == b, "seed {seed}: two runs differ");
    let c = run(seed + 1);
    assert_ne!(
        a.0,
        c.0,
        "seeds {seed} and {} gave the same trace",
        seed + 1
    );
}
