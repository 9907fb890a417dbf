//! The entry's accounting (SPEC §6): `mesh_share_pct` counters and per-IP fallback budgets.
//!
//! Every served chat is counted by served-by without ever waiting on the store:
//! [`Accounting::record`] puts the tally on a bounded channel and returns (a full channel drops
//! the tally and counts the drop); a background task adds tallies to the store. The hourly
//! buckets and the rolling windows are mesh-core's ([`MeshShareCounters`]). Stores:
//!
//! - **memory**: tests and simulations;
//! - **disk** (default for `mesh-node entry`): `<data dir>/mesh-share.json`, replaced atomically
//!   at most once a second and on shutdown, so counts survive restarts;
//! - **Redis** (`--redis-url`): one hash per hour (`<prefix>:share:<hour>`, fields `mesh` and
//!   `fallback`, `HINCRBY`, kept 8 days) that every entry sharing the server adds to, and per-IP
//!   budgets as `INCR` + `EXPIRE` in one `MULTI` (`<prefix>:budget:<hour>:<ip>`), so several
//!   entries share one budget per caller. A Redis outage never fails a chat: tallies wait in
//!   memory and are retried, and budgets fall back to this node's own until Redis answers again.

use crate::clock::Clock;
use crate::native::write_atomically;
use anyhow::Context as _;
use mesh_core::Timestamp;
use mesh_core::sla::{
    BudgetLeft, FallbackBudget, HourBucket, HourCounts, MeshShareCounters, OverBudget, ServedBy,
    ShareWindow, caller_key,
};
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fs;
use std::io;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;
use tokio::sync::{mpsc, oneshot};

/// `<data dir>/mesh-share.json`.
pub const FILE: &str = "mesh-share.json";
/// Tallies that may wait for the background task before new ones are dropped.
pub const CHANNEL_CAPACITY: usize = 4_096;
/// The disk store writes at most this often.
pub const DISK_WRITE_INTERVAL: Duration = Duration::from_secs(1);
/// A Redis call taking longer than this counts as failed (the chat path never waits longer).
pub const REDIS_TIMEOUT: Duration = Duration::from_millis(500);
/// Hour hashes outlive the 7-day window by a day.
const SHARE_KEY_TTL_SECS: i64 = 8 * 24 * 3_600;
/// A budget key outlives its clock hour by a minute (clock skew between entries).
const BUDGET_KEY_TTL_SECS: i64 = 3_600 + 60;
/// After a failed Redis write, wait this long before the next try.
const REDIS_RETRY: Duration = Duration::from_secs(1);

/// Where the counters (and, for Redis, the budgets) live.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreConfig {
    Memory,
    Disk { data_dir: PathBuf },
    Redis { url: String, prefix: String },
}

/// The store's name, as `/api/mesh-share` and `/metrics` report it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StoreKind {
    Memory,
    Disk,
    Redis,
}

impl StoreKind {
    pub fn as_str(self) -> &'static str {
        match self {
            StoreKind::Memory => "memory",
            StoreKind::Disk => "disk",
            StoreKind::Redis => "redis",
        }
    }
}

/// `GET /api/mesh-share`: the dashboard cards.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ShareSnapshot {
    pub store: StoreKind,
    pub last_24h: ShareWindow,
    pub last_7d: ShareWindow,
    /// Tallies this node dropped because its background task fell behind (since start).
    pub dropped: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("redis: {0}")]
    Redis(#[from] redis::RedisError),
    #[error("redis did not answer within {} ms", REDIS_TIMEOUT.as_millis())]
    RedisTimeout,
}

enum Msg {
    Count(ServedBy, Timestamp),
    /// Answered once every tally sent before it is in the store (and on disk).
    Flush(oneshot::Sender<()>),
}

/// Counters and budgets behind one handle. Cheap to share (`Arc`).
pub struct Accounting {
    clock: Clock,
    tx: mpsc::Sender<Msg>,
    dropped: AtomicU64,
    store: Arc<Store>,
    /// The budget when the store keeps none (memory, disk) or Redis is unreachable.
    local_budget: Mutex<FallbackBudget>,
    budget_limit: u32,
}

impl std::fmt::Debug for Accounting {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Accounting")
            .field("store", &self.kind())
            .field("dropped", &self.dropped())
            .finish_non_exhaustive()
    }
}

enum Store {
    Local {
        counters: Mutex<MeshShareCounters>,
        /// `None`: memory only.
        path: Option<PathBuf>,
    },
    Redis {
        conn: ConnectionManager,
        prefix: String,
    },
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // Every update is a whole operation on plain data; a poisoned value is still consistent.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Accounting {
    /// Opens the store (reading the disk file, or connecting to Redis: an unreachable Redis at
    /// start is a configuration error) and starts its background task. `budget_per_ip_per_hour`
    /// is the fallback budget's limit.
    pub async fn open(
        config: StoreConfig,
        budget_per_ip_per_hour: u32,
        clock: Clock,
    ) -> anyhow::Result<Arc<Accounting>> {
        let store = match config {
            StoreConfig::Memory => Store::Local {
                counters: Mutex::default(),
                path: None,
            },
            StoreConfig::Disk { data_dir } => {
                let path = data_dir.join(FILE);
                Store::Local {
                    counters: Mutex::new(load_file(&path, clock.now())?),
                    path: Some(path),
                }
            }
            StoreConfig::Redis { url, prefix } => {
                let client = redis::Client::open(url.as_str())
                    .with_context(|| format!("redis URL {}", redacted(&url)))?;
                let config = ConnectionManagerConfig::new()
                    .set_connection_timeout(Some(Duration::from_secs(2)))
                    .set_response_timeout(Some(REDIS_TIMEOUT))
                    .set_number_of_retries(2);
                let conn = client
                    .get_connection_manager_with_config(config)
                    .await
                    .with_context(|| format!("connecting to redis at {}", redacted(&url)))?;
                Store::Redis { conn, prefix }
            }
        };
        Ok(Self::start(store, budget_per_ip_per_hour, clock))
    }

    /// Counters in memory only (tests, simulations, `Entry::new`).
    pub fn in_memory(budget_per_ip_per_hour: u32, clock: Clock) -> Arc<Accounting> {
        Self::start(
            Store::Local {
                counters: Mutex::default(),
                path: None,
            },
            budget_per_ip_per_hour,
            clock,
        )
    }

    fn start(store: Store, budget_limit: u32, clock: Clock) -> Arc<Accounting> {
        let (tx, rx) = mpsc::channel(CHANNEL_CAPACITY);
        let store = Arc::new(store);
        tokio::spawn(write_loop(store.clone(), rx, clock));
        Arc::new(Accounting {
            clock,
            tx,
            dropped: AtomicU64::new(0),
            store,
            local_budget: Mutex::new(FallbackBudget::new(budget_limit)),
            budget_limit,
        })
    }

    pub fn kind(&self) -> StoreKind {
        match &*self.store {
            Store::Local { path: None, .. } => StoreKind::Memory,
            Store::Local { path: Some(_), .. } => StoreKind::Disk,
            Store::Redis { .. } => StoreKind::Redis,
        }
    }

    /// Counts one served chat now. Never waits: when the background task is behind by
    /// [`CHANNEL_CAPACITY`] tallies, this one is dropped and counted in [`Self::dropped`].
    pub fn record(&self, served_by: ServedBy) {
        if self
            .tx
            .try_send(Msg::Count(served_by, self.clock.now()))
            .is_err()
        {
            let n = self.dropped.fetch_add(1, Ordering::Relaxed) + 1;
            if n.is_power_of_two() {
                tracing::warn!(
                    dropped = n,
                    "mesh-share tally dropped: the counter store is behind"
                );
            }
        }
    }

    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }

    /// Waits until every tally recorded before this call has been written (or, for an unreachable
    /// Redis, tried once and kept for a retry).
    pub async fn flush(&self) {
        let (done, wait) = oneshot::channel();
        if self.tx.send(Msg::Flush(done)).await.is_ok() {
            let _ = wait.await;
        }
    }

    /// The rolling 24 h and 7 d windows now.
    pub async fn snapshot(&self) -> Result<ShareSnapshot, StoreError> {
        let now = self.clock.now();
        let counters = match &*self.store {
            Store::Local { counters, .. } => lock(counters).clone(),
            Store::Redis { conn, prefix } => redis_counters(conn.clone(), prefix, now).await?,
        };
        Ok(ShareSnapshot {
            store: self.kind(),
            last_24h: counters.last_24h(now),
            last_7d: counters.last_7d(now),
            dropped: self.dropped(),
        })
    }

    /// What `ip` may still spend this hour (for display; deciding goes through
    /// [`Self::take_budget`]).
    pub async fn budget_remaining(&self, ip: IpAddr) -> BudgetLeft {
        let now = self.clock.now();
        if let Store::Redis { conn, prefix } = &*self.store {
            let key = budget_key(prefix, ip, now);
            let used = redis_call(async {
                redis::cmd("GET")
                    .arg(&key)
                    .query_async::<Option<u64>>(&mut conn.clone())
                    .await
            })
            .await;
            match used {
                Ok(used) => {
                    let used = u32::try_from(used.unwrap_or(0)).unwrap_or(u32::MAX);
                    return BudgetLeft(self.budget_limit.saturating_sub(used));
                }
                Err(e) => {
                    tracing::warn!(error = %e, "redis budget read failed; using this node's budget")
                }
            }
        }
        lock(&self.local_budget).remaining(ip, now)
    }

    /// Spends one unit of `ip`'s budget for this hour; returns what is left after it. Atomic
    /// across every entry sharing the store.
    pub async fn take_budget(&self, ip: IpAddr) -> Result<u32, OverBudget> {
        let now = self.clock.now();
        if let Store::Redis { conn, prefix } = &*self.store {
            let key = budget_key(prefix, ip, now);
            let spent = redis_call(async {
                redis::pipe()
                    .atomic()
                    .incr(&key, 1u64)
                    .expire(&key, BUDGET_KEY_TTL_SECS)
                    .ignore()
                    .query_async::<(u64,)>(&mut conn.clone())
                    .await
            })
            .await;
            match spent {
                // A spend past the limit stays counted: the caller is over budget either way.
                Ok((used,)) => {
                    let used = u32::try_from(used).unwrap_or(u32::MAX);
                    return self.budget_limit.checked_sub(used).ok_or(OverBudget);
                }
                Err(e) => {
                    tracing::warn!(error = %e, "redis budget spend failed; using this node's budget")
                }
            }
        }
        lock(&self.local_budget).take(ip, now)
    }
}

async fn redis_call<T>(call: impl Future<Output = redis::RedisResult<T>>) -> Result<T, StoreError> {
    match tokio::time::timeout(REDIS_TIMEOUT, call).await {
        Ok(r) => Ok(r?),
        Err(_) => Err(StoreError::RedisTimeout),
    }
}

fn share_key(prefix: &str, hour: HourBucket) -> String {
    format!("{prefix}:share:{}", hour.0)
}

fn budget_key(prefix: &str, ip: IpAddr, now: Timestamp) -> String {
    format!(
        "{prefix}:budget:{}:{}",
        HourBucket::of(now).0,
        caller_key(ip)
    )
}

/// Every hour hash of the last 7 days, in one round trip.
async fn redis_counters(
    mut conn: ConnectionManager,
    prefix: &str,
    now: Timestamp,
) -> Result<MeshShareCounters, StoreError> {
    let newest = HourBucket::of(now).0;
    let hours: Vec<HourBucket> = (0..MeshShareCounters::RETAINED_HOURS)
        .map(|back| HourBucket(newest.saturating_sub(back)))
        .collect();
    let mut pipe = redis::pipe();
    for hour in &hours {
        pipe.hgetall(share_key(prefix, *hour));
    }
    let rows: Vec<BTreeMap<String, u64>> =
        redis_call(async { pipe.query_async(&mut conn).await }).await?;
    let mut counters = MeshShareCounters::default();
    for (hour, row) in hours.into_iter().zip(rows) {
        let counts = HourCounts {
            mesh: row.get(ServedBy::Mesh.as_str()).copied().unwrap_or(0),
            fallback: row.get(ServedBy::Fallback.as_str()).copied().unwrap_or(0),
        };
        if counts != HourCounts::default() {
            counters.add(hour, counts, now);
        }
    }
    Ok(counters)
}

/// Tallies not yet in the store, per hour and served-by.
type Pending = BTreeMap<(HourBucket, ServedBy), u64>;

/// The background task: applies tallies to the store until every [`Accounting`] handle is gone,
/// then writes what is left.
async fn write_loop(store: Arc<Store>, mut rx: mpsc::Receiver<Msg>, clock: Clock) {
    let mut pending = Pending::new();
    let mut dirty = false;
    let mut next_write = clock.instant();
    let mut waiting: Vec<oneshot::Sender<()>> = Vec::new();
    loop {
        let due = dirty || !pending.is_empty();
        let msg = tokio::select! {
            msg = rx.recv() => msg,
            () = tokio::time::sleep_until(next_write), if due => {
                persist(&store, &mut pending, &mut dirty, clock).await;
                next_write = clock.instant() + retry_or_write_interval(&store);
                continue;
            }
        };
        let closed = msg.is_none();
        let mut msg = msg;
        // Take everything already queued in one go.
        while let Some(m) = msg {
            match m {
                Msg::Count(served_by, at) => {
                    *pending.entry((HourBucket::of(at), served_by)).or_default() += 1;
                }
                Msg::Flush(done) => waiting.push(done),
            }
            msg = rx.try_recv().ok();
        }
        // In-process counters take tallies at once (readers see them); the file follows.
        if let Store::Local { counters, .. } = &*store {
            let now = clock.now();
            let mut c = lock(counters);
            for ((hour, served_by), n) in std::mem::take(&mut pending) {
                c.add(hour, counts(served_by, n), now);
            }
            dirty = true;
        }
        if closed || !waiting.is_empty() || clock.instant() >= next_write {
            persist(&store, &mut pending, &mut dirty, clock).await;
            next_write = clock.instant() + retry_or_write_interval(&store);
            for done in waiting.drain(..) {
                let _ = done.send(());
            }
        }
        if closed {
            if !pending.is_empty() {
                tracing::warn!(
                    tallies = pending.values().sum::<u64>(),
                    "mesh-share tallies lost at shutdown: redis unreachable"
                );
            }
            return;
        }
    }
}

fn retry_or_write_interval(store: &Store) -> Duration {
    match store {
        Store::Local { .. } => DISK_WRITE_INTERVAL,
        Store::Redis { .. } => REDIS_RETRY,
    }
}

fn counts(served_by: ServedBy, n: u64) -> HourCounts {
    match served_by {
        ServedBy::Mesh => HourCounts {
            mesh: n,
            fallback: 0,
        },
        ServedBy::Fallback => HourCounts {
            mesh: 0,
            fallback: n,
        },
    }
}

/// Writes the local file (when dirty) or the pending Redis increments (keeping them on failure).
async fn persist(store: &Store, pending: &mut Pending, dirty: &mut bool, clock: Clock) {
    match store {
        Store::Local { path: None, .. } => *dirty = false,
        Store::Local {
            counters,
            path: Some(path),
        } => {
            if !*dirty {
                return;
            }
            let file = ShareFile {
                version: FILE_VERSION,
                counters: lock(counters).clone(),
            };
            let json = serde_json::to_vec(&file).expect("counters serialise");
            match write_atomically(path, &json) {
                Ok(()) => *dirty = false,
                Err(e) => {
                    tracing::warn!(path = %path.display(), error = %e, "could not write the mesh-share file")
                }
            }
        }
        Store::Redis { conn, prefix } => {
            // Hours that left the 7-day window are not worth writing.
            let oldest = HourBucket(
                HourBucket::of(clock.now())
                    .0
                    .saturating_sub(MeshShareCounters::RETAINED_HOURS),
            );
            pending.retain(|(hour, _), _| *hour > oldest);
            if pending.is_empty() {
                return;
            }
            let mut pipe = redis::pipe();
            for ((hour, served_by), n) in pending.iter() {
                let key = share_key(prefix, *hour);
                pipe.hincr(&key, served_by.as_str(), *n)
                    .ignore()
                    .expire(&key, SHARE_KEY_TTL_SECS)
                    .ignore();
            }
            let written =
                redis_call(async { pipe.atomic().query_async::<()>(&mut conn.clone()).await })
                    .await;
            match written {
                Ok(()) => pending.clear(),
                Err(e) => tracing::warn!(
                    error = %e,
                    tallies = pending.values().sum::<u64>(),
                    "mesh-share tallies not written to redis yet; retrying"
                ),
            }
        }
    }
}

const FILE_VERSION: u32 = 1;

#[derive(Debug, Serialize, Deserialize)]
struct ShareFile {
    version: u32,
    counters: MeshShareCounters,
}

/// The counters an earlier run left. A file that does not parse is moved aside (kept for a
/// person to look at, never silently overwritten) and counting starts again.
fn load_file(path: &Path, now: Timestamp) -> anyhow::Result<MeshShareCounters> {
    let bytes = match fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(MeshShareCounters::default()),
        Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
    };
    match serde_json::from_slice::<ShareFile>(&bytes) {
        Ok(file) if file.version == FILE_VERSION => {
            let mut counters = file.counters;
            counters.prune(now);
            Ok(counters)
        }
        parsed => {
            let why = match parsed {
                Ok(f) => format!("unknown version {}", f.version),
                Err(e) => e.to_string(),
            };
            let aside = path.with_extension("json.corrupt");
            fs::rename(path, &aside).with_context(|| format!("moving {} aside", path.display()))?;
            tracing::warn!(path = %path.display(), moved_to = %aside.display(), error = %why, "unreadable mesh-share file moved aside; counting starts again");
            Ok(MeshShareCounters::default())
        }
    }
}

/// A Redis URL without its password, for messages.
fn redacted(url: &str) -> String {
    match url.split_once("://") {
        Some((scheme, rest)) => match rest.rsplit_once('@') {
            Some((_, host)) => format!("{scheme}://***@{host}"),
            None => url.to_string(),
        },
        None => "(unparsable URL)".to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redis_urls_lose_their_credentials_in_messages() {
        assert_eq!(
            redacted("redis://:hunter2@10.0.0.5:6379/0"),
            "redis://***@10.0.0.5:6379/0"
        );
        assert_eq!(redacted("redis://127.0.0.1:1"), "redis://127.0.0.1:1");
    }

    #[test]
    fn budget_keys_follow_the_clock_hour_and_the_callers_slash_64() {
        let t = Timestamp::from_secs(1_800_000_000);
        let a = budget_key("cm", "2001:db8:1:2::1".parse().unwrap(), t);
        let b = budget_key("cm", "2001:db8:1:2:ffff::9".parse().unwrap(), t);
        assert_eq!(a, b);
        assert_eq!(a, "cm:budget:500000:2001:db8:1:2::");
        let v4 = budget_key("cm", "::ffff:198.51.100.1".parse().unwrap(), t);
        assert_eq!(v4, "cm:budget:500000:198.51.100.1");
        let next_hour = budget_key(
            "cm",
            "198.51.100.1".parse().unwrap(),
            t + Duration::from_secs(3_600),
        );
        assert_eq!(next_hour, "cm:budget:500001:198.51.100.1");
    }

    #[tokio::test]
    async fn disk_counts_survive_a_restart_and_a_corrupt_file_is_moved_aside() {
        let dir = tempfile::tempdir().unwrap();
        let store = || StoreConfig::Disk {
            data_dir: dir.path().to_path_buf(),
        };
        let a = Accounting::open(store(), 20, Clock::system())
            .await
            .unwrap();
        a.record(ServedBy::Mesh);
        a.record(ServedBy::Mesh);
        a.record(ServedBy::Fallback);
        a.flush().await;
        drop(a);

        let b = Accounting::open(store(), 20, Clock::system())
            .await
            .unwrap();
        let s = b.snapshot().await.unwrap();
        assert_eq!(s.store, StoreKind::Disk);
        assert_eq!(
            (s.last_24h.mesh, s.last_24h.fallback, s.last_24h.total),
            (2, 1, 3)
        );
        assert!((s.last_7d.mesh_share_pct.unwrap() - 200.0 / 3.0).abs() < 1e-9);
        drop(b);

        fs::write(dir.path().join(FILE), b"{\"version\":1,\"coun").unwrap();
        let c = Accounting::open(store(), 20, Clock::system())
            .await
            .unwrap();
        let s = c.snapshot().await.unwrap();
        assert_eq!(s.last_7d.total, 0);
        assert_eq!(s.last_7d.mesh_share_pct, None);
        assert!(dir.path().join("mesh-share.json.corrupt").is_file());
    }

    #[tokio::test(start_paused = true)]
    async fn the_disk_file_is_written_at_most_once_a_second() {
        let dir = tempfile::tempdir().unwrap();
        let a = Accounting::open(
            StoreConfig::Disk {
                data_dir: dir.path().to_path_buf(),
            },
            20,
            Clock::starting_at(Timestamp::from_secs(1_800_000_000)),
        )
        .await
        .unwrap();
        let path = dir.path().join(FILE);
        let on_disk = || -> u64 {
            fs::read(&path)
                .ok()
                .and_then(|b| serde_json::from_slice::<ShareFile>(&b).ok())
                .map_or(0, |f| {
                    f.counters
                        .last_7d(Timestamp::from_secs(1_800_000_500))
                        .total
                })
        };
        a.record(ServedBy::Mesh);
        tokio::time::sleep(Duration::from_millis(10)).await;
        // The first tally goes out at once (the write interval starts elapsed) ...
        assert_eq!(on_disk(), 1);
        a.record(ServedBy::Mesh);
        a.record(ServedBy::Mesh);
        tokio::time::sleep(Duration::from_millis(100)).await;
        // ... later ones wait for the interval, but readers see them at once.
        assert_eq!(on_disk(), 1);
        assert_eq!(a.snapshot().await.unwrap().last_24h.total, 3);
        tokio::time::sleep(DISK_WRITE_INTERVAL).await;
        assert_eq!(on_disk(), 3);
    }

    #[tokio::test]
    async fn local_budget_is_mesh_cores() {
        let a = Accounting::in_memory(2, Clock::system());
        let ip: IpAddr = "203.0.113.7".parse().unwrap();
        assert_eq!(a.budget_remaining(ip).await, BudgetLeft(2));
        assert_eq!(a.take_budget(ip).await, Ok(1));
        assert_eq!(a.take_budget(ip).await, Ok(0));
        assert_eq!(a.take_budget(ip).await, Err(OverBudget));
        assert_eq!(a.budget_remaining(ip).await, BudgetLeft(0));
    }
}
