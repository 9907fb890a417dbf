//! Mesh-share counters and per-IP fallback budgets in a real `redis-server` (started by the
//! test on a random loopback port; the test fails, never skips, without the binary): several
//! entries share both, counting never waits on Redis, and a frozen Redis neither blocks chats
//! nor loses tallies.

mod harness;

use axum::http::StatusCode;
use harness::*;
use mesh_core::sla::{BudgetLeft, OverBudget, ServedBy};
use mesh_node::clock::Clock;
use mesh_node::entry::{self, EntryServices, EntrySettings, Fallback};
use mesh_node::fallback::{ApiKey, OpenAiProvider, ProviderSettings};
use mesh_node::milestones::Milestones;
use mesh_node::share_store::{Accounting, StoreConfig, StoreKind};
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;

fn redis(server: &RedisServer, prefix: &str) -> StoreConfig {
    StoreConfig::Redis {
        url: server.url(),
        prefix: prefix.to_string(),
    }
}

async fn wait_total(a: &Accounting, total: u64) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let s = a.snapshot().await.unwrap();
        if s.last_24h.total == total {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "total stayed {}",
            s.last_24h.total
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn two_entries_share_counters_and_one_budget_per_caller() {
    let server = RedisServer::start();
    let a = Accounting::open(redis(&server, "t1"), 20, Clock::system())
        .await
        .unwrap();
    let b = Accounting::open(redis(&server, "t1"), 20, Clock::system())
        .await
        .unwrap();
    assert_eq!(a.kind(), StoreKind::Redis);

    let s = a.snapshot().await.unwrap();
    assert_eq!((s.last_24h.total, s.last_24h.mesh_share_pct), (0, None));
    a.record(ServedBy::Mesh);
    a.record(ServedBy::Mesh);
    b.record(ServedBy::Mesh);
    b.record(ServedBy::Fallback);
    a.flush().await;
    b.flush().await;
    for acc in [&a, &b] {
        let s = acc.snapshot().await.unwrap();
        assert_eq!((s.last_24h.mesh, s.last_24h.fallback), (3, 1));
        assert_eq!(s.last_7d.mesh_share_pct, Some(75.0));
    }
    // One hash per hour, expiring after the 7-day window.
    let keys = server.cmd(&["KEYS", "t1:share:*"]);
    let key = keys
        .lines()
        .find(|l| l.starts_with("t1:share:"))
        .unwrap()
        .to_string();
    let ttl: i64 = server
        .cmd(&["TTL", &key])
        .trim_start_matches(':')
        .trim()
        .parse()
        .unwrap();
    assert!(ttl > 7 * 24 * 3_600 && ttl <= 8 * 24 * 3_600, "ttl {ttl}");
    // Another deployment's prefix sees nothing.
    let other = Accounting::open(redis(&server, "t2"), 20, Clock::system())
        .await
        .unwrap();
    assert_eq!(other.snapshot().await.unwrap().last_7d.total, 0);

    // 50 concurrent spends by one caller through both entries: exactly 20 succeed.
    let ip: IpAddr = "198.51.100.9".parse().unwrap();
    let spends = (0..50).map(|i| {
        let acc = if i % 2 == 0 { a.clone() } else { b.clone() };
        tokio::spawn(async move { acc.take_budget(ip).await })
    });
    let results: Vec<Result<u32, OverBudget>> = futures::future::join_all(spends)
        .await
        .into_iter()
        .map(Result::unwrap)
        .collect();
    assert_eq!(results.iter().filter(|r| r.is_ok()).count(), 20);
    let mut left: Vec<u32> = results.iter().filter_map(|r| r.ok()).collect();
    left.sort_unstable();
    assert_eq!(left, (0..20).collect::<Vec<_>>());
    assert_eq!(a.budget_remaining(ip).await, BudgetLeft(0));
    assert_eq!(
        b.budget_remaining("198.51.100.10".parse().unwrap()).await,
        BudgetLeft(20)
    );
    let keys = server.cmd(&["KEYS", "t1:budget:*"]);
    let key = keys
        .lines()
        .find(|l| l.starts_with("t1:budget:"))
        .unwrap()
        .to_string();
    assert!(key.ends_with(":198.51.100.9"), "{key}");
    let ttl: i64 = server
        .cmd(&["TTL", &key])
        .trim_start_matches(':')
        .trim()
        .parse()
        .unwrap();
    assert!(ttl > 0 && ttl <= 3_660, "ttl {ttl}");
}

#[tokio::test]
async fn a_frozen_redis_blocks_no_chat_and_loses_no_tally() {
    let server = RedisServer::start();
    let a = Accounting::open(redis(&server, "fz"), 2, Clock::system())
        .await
        .unwrap();
    a.record(ServedBy::Mesh);
    wait_total(&a, 1).await;

    server.pause();
    let started = Instant::now();
    for _ in 0..100 {
        a.record(ServedBy::Fallback);
    }
    assert!(
        started.elapsed() < Duration::from_millis(50),
        "{:?}",
        started.elapsed()
    );
    // Budgets fall back to this node's own after the Redis timeout.
    let ip: IpAddr = "203.0.113.50".parse().unwrap();
    let started = Instant::now();
    assert_eq!(a.take_budget(ip).await, Ok(1));
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
    assert!(a.snapshot().await.is_err());

    server.resume();
    wait_total(&a, 101).await;
    assert_eq!(a.dropped(), 0);
}

#[tokio::test]
async fn redis_must_answer_at_start() {
    let err = Accounting::open(
        StoreConfig::Redis {
            url: "redis://:secret-pass@127.0.0.1:9/".into(),
            prefix: "x".into(),
        },
        20,
        Clock::system(),
    )
    .await
    .unwrap_err();
    let msg = format!("{err:#}");
    assert!(
        msg.contains("127.0.0.1:9") && !msg.contains("secret-pass"),
        "{msg}"
    );
}

async fn redis_entry(
    server: &RedisServer,
    prefix: &str,
    fallback: Arc<dyn Fallback>,
    per_ip: u32,
    dir: &std::path::Path,
) -> Arc<mesh_node::entry::Entry> {
    let accounting = Accounting::open(redis(server, prefix), per_ip, Clock::system())
        .await
        .unwrap();
    start_entry(dir, None, EntrySettings::default(), move |_| {
        EntryServices {
            fallback: Some(fallback),
            accounting,
            milestones: Arc::new(Milestones::in_memory()),
        }
    })
    .await
}

#[tokio::test]
async fn a_callers_budget_is_spent_across_entries_sharing_redis() {
    let server = RedisServer::start();
    let fake = FakeProvider::start().await;
    let fallback = || -> Arc<dyn Fallback> {
        Arc::new(
            OpenAiProvider::new(ProviderSettings {
                base_url: fake.base_url.clone(),
                api_key: ApiKey::parse(PROVIDER_KEY),
                per_ip_per_hour: 2,
                ..ProviderSettings::default()
            })
            .unwrap(),
        )
    };
    let (d1, d2) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let e1 = redis_entry(&server, "shared", fallback(), 2, d1.path()).await;
    let e2 = redis_entry(&server, "shared", fallback(), 2, d2.path()).await;
    let (r1, r2) = (entry::router(e1.clone()), entry::router(e2.clone()));
    let caller: SocketAddr = "192.0.2.44:4000".parse().unwrap();
    let chat = chat_body(Some(DAILY), false);

    let a = post(&r1, "/api/chat", &chat, None, caller).await;
    assert_eq!(
        a.header("x-closedmesh-fallback-budget-remaining"),
        Some("1")
    );
    let a = post(&r2, "/api/chat", &chat, None, caller).await;
    assert_eq!(
        a.header("x-closedmesh-fallback-budget-remaining"),
        Some("0")
    );
    let a = post(&r1, "/api/chat", &chat, None, caller).await;
    assert_eq!(a.status, StatusCode::NOT_FOUND);
    assert_eq!(
        a.header("x-closedmesh-fallback-status"),
        Some("fallback-rate-limited")
    );
    assert_eq!(a.header("x-closedmesh-served-by"), Some("mesh"));
    assert_eq!(fake.asked().len(), 2);

    // Each entry's dashboard shows both entries' chats.
    e1.accounting().flush().await;
    e2.accounting().flush().await;
    for r in [&r1, &r2] {
        let share = get(r, "/api/mesh-share").await.json();
        assert_eq!(share["store"], "redis");
        assert_eq!(share["last_24h"]["fallback"], 2);
        assert_eq!(share["last_24h"]["mesh"], 0);
        assert_eq!(share["last_24h"]["mesh_share_pct"], 0.0);
    }
}
