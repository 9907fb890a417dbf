//! This node's membership of a mesh: founding or joining it, the gossip driver, the streams peers
//! open to this node, this node's announcement and election, and what survives a restart.
//!
//! [`Mesh::start`] takes an `Arc<dyn Transport>` and the node's [`Clock`], so a host, an entry
//! and the simulator's nodes all run this same code.
//!
//! - **Founding or joining**: with an invite the node joins the invite's mesh and presents it
//!   (again on every start, from `<data dir>/mesh.json`); without one it stays in the mesh it was
//!   in, or founds a new one with a fresh random mesh id.
//! - **Announcement**: every [`MeshOptions::announce_interval`] the node's content (from the
//!   caller's [`ContentSource`]) gets its dialing information and the election's
//!   `serving_models`, and goes to the machine as `UpdateLocal`; the machine ignores unchanged
//!   content and paces load-only changes, so polling is the debounce.
//! - **Election**: mesh-core's [`Election`] runs on the view at the same pace; its outcome is
//!   published on [`Mesh::election`]. The first outcome is computed on a view of this node alone,
//!   before any peer is heard: a host launches what it can serve by itself, and a running host
//!   stays in the plan (`election`'s "peers already routing it stay").
//! - **Streams**: gossip streams go to the driver; HTTP and RPC tunnel streams from members go
//!   to [`MeshStreams`] (HTTP: the host's API; RPC: the split worker's rpc-server, issue 6);
//!   those from strangers are refused.
//! - **Restart**: `<data dir>/mesh.json` keeps the mesh id, the invite joined with, this node's
//!   dialing information, and every member with its last dialing information, so a restarted node
//!   reaches its old peers and admits them without new invites.

use crate::backend::LaunchEvent;
use crate::clock::Clock;
use crate::gossip_driver::{Driver, DriverConfig, Gossip};
use crate::transport::{Inbound, StreamKind, Transport, TransportEvent};
use mesh_core::election::{self, Election, NodeElection};
use mesh_core::gossip::{self, Input, SecretKey};
use mesh_core::invite::{self, Invite};
use mesh_core::peer::{ModelName, PeerAnnouncement, Role};
use mesh_core::{MeshView, PeerId, Timestamp};
use rand_core::SeedableRng;
use rand_pcg::Pcg64;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinSet;

/// `<data dir>/mesh.json`.
pub const MESH_FILE: &str = "mesh.json";
/// `<data dir>/invite.txt`: an invite to this node's mesh, written on every start.
pub const INVITE_FILE: &str = "invite.txt";
/// Tunnel streams waiting for their consumer.
const TUNNEL_QUEUE: usize = 64;

/// What this node's announcement says besides what the mesh layer fills in (`peer_id`,
/// `mesh_id`, `seq`, `dial_info`, `serving_models`). Called once per announce interval.
pub type ContentSource = Arc<dyn Fn() -> PeerAnnouncement + Send + Sync>;

#[derive(Debug, Clone)]
pub struct MeshOptions {
    pub data_dir: PathBuf,
    /// Join this mesh (replacing whatever mesh the data dir remembers).
    pub join: Option<Invite>,
    pub gossip: gossip::Config,
    pub driver: DriverConfig,
    /// How often the announcement and the election are refreshed.
    pub announce_interval: Duration,
    /// How often membership is saved to `mesh.json`.
    pub persist_interval: Duration,
    /// Seeds the gossip machine's generator (the node draws it from the OS; a simulator passes
    /// its scenario seed).
    pub seed: u64,
}

impl MeshOptions {
    pub fn new(data_dir: impl Into<PathBuf>, join: Option<Invite>, seed: u64) -> Self {
        MeshOptions {
            data_dir: data_dir.into(),
            join,
            gossip: node_gossip_config(),
            driver: DriverConfig::default(),
            announce_interval: Duration::from_secs(1),
            persist_interval: Duration::from_secs(5),
            seed,
        }
    }
}

/// The gossip timing a node runs with: mesh-core's defaults (the original's 60 s tick, K = 5,
/// 180 s stale), except that a host's fresh measurements (p50s, load) go out within 5 s rather
/// than 30: an entry's `/api/status` and SLA gate read them, and at one announcement per 5 s per
/// busy host the rumours stay near 1 KB/s.
pub fn node_gossip_config() -> gossip::Config {
    gossip::Config {
        metrics_interval: Duration::from_secs(5),
        ..gossip::Config::default()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum MeshError {
    #[error("reading {path}: {source}")]
    Read { path: PathBuf, source: io::Error },
    #[error("{path} is not a mesh state file: {reason}")]
    Corrupt { path: PathBuf, reason: String },
}

/// `mesh.json`: what a node keeps across restarts.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MeshFile {
    pub mesh_id: String,
    /// The invite this node joined with (text form); absent for a founder.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub invite: Option<String>,
    /// This node's own dialing information as last published (what `mesh-node invite` puts in
    /// the invites it mints).
    #[serde(default)]
    pub dial_info: String,
    /// Members by hex id, with their last known dialing information.
    #[serde(default)]
    pub members: BTreeMap<String, String>,
}

impl MeshFile {
    pub fn path(data_dir: &Path) -> PathBuf {
        data_dir.join(MESH_FILE)
    }

    /// The saved state; `None` when the node never was in a mesh.
    pub fn load(data_dir: &Path) -> Result<Option<MeshFile>, MeshError> {
        let path = Self::path(data_dir);
        match fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes)
                .map(Some)
                .map_err(|e| MeshError::Corrupt {
                    path,
                    reason: e.to_string(),
                }),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(source) => Err(MeshError::Read { path, source }),
        }
    }

    /// Saves atomically (write then rename), owner-readable only: it holds a bearer invite.
    pub fn save(&self, data_dir: &Path) -> io::Result<()> {
        let bytes = serde_json::to_vec_pretty(self).map_err(io::Error::other)?;
        write_private_atomic(&Self::path(data_dir), &bytes)
    }
}

/// Writes `bytes` to `path` through a temporary file, mode 0600.
pub fn write_private_atomic(path: &Path, bytes: &[u8]) -> io::Result<()> {
    use std::io::Write;
    #[cfg(unix)]
    use std::os::unix::fs::OpenOptionsExt;
    if let Some(dir) = path.parent() {
        fs::create_dir_all(dir)?;
    }
    let tmp = path.with_extension("tmp");
    let mut opts = fs::OpenOptions::new();
    opts.write(true).create(true).truncate(true);
    #[cfg(unix)]
    opts.mode(0o600);
    opts.open(&tmp)?.write_all(bytes)?;
    fs::rename(&tmp, path)
}

/// Tunnel streams members opened to this node.
#[derive(Debug)]
pub struct MeshStreams {
    /// HTTP/1.1 to this node's API (a host serves its backend proxy on them).
    pub http: mpsc::Receiver<Inbound>,
    /// llama.cpp RPC to this node's rpc-server (the split worker's side; issue 6).
    pub rpc: mpsc::Receiver<Inbound>,
}

/// A node's place in the mesh. Cheap to share (`Arc<Mesh>`).
pub struct Mesh {
    gossip: Arc<Gossip>,
    key: SecretKey,
    mesh_id: String,
    data_dir: PathBuf,
    election: watch::Receiver<NodeElection>,
    driver: Mutex<Option<Driver>>,
    tasks: Mutex<JoinSet<()>>,
    persist: Arc<Persist>,
    /// Launch outcomes for the election's backoff (see [`Mesh::launch_event`]).
    launches: mpsc::UnboundedSender<LaunchEvent>,
}

impl std::fmt::Debug for Mesh {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Mesh")
            .field("me", &self.me())
            .field("mesh_id", &self.mesh_id)
            .finish_non_exhaustive()
    }
}

impl Mesh {
    /// Founds, rejoins or joins a mesh and starts gossiping. `secret` is the node key the
    /// transport authenticates with.
    pub async fn start(
        transport: Arc<dyn Transport>,
        clock: Clock,
        secret: [u8; 32],
        options: MeshOptions,
        content: ContentSource,
    ) -> Result<(Arc<Mesh>, MeshStreams), MeshError> {
        let key = SecretKey::from_bytes(secret);
        let me = key.peer_id();
        let saved = MeshFile::load(&options.data_dir)?;
        let (mesh_id, invite, members) = membership(&options, saved);
        for (peer, info) in &members {
            if let Err(e) = transport.add_peer(*peer, info) {
                tracing::debug!(%peer, error = %e, "forgot a member's stale dialing information");
            }
        }
        let now = clock.now();
        let mut local = content();
        local.mesh_id.clone_from(&mesh_id);
        local.dial_info = transport.dial_info();
        let mut state = gossip::State::new(
            key.clone(),
            local.clone(),
            options.gossip.clone(),
            Pcg64::seed_from_u64(options.seed),
            now,
        );
        state.remember_members(members.keys().copied(), now);
        // A founder's first election sees it alone: what it can serve by itself, it serves. A
        // node joining (or rejoining) a mesh holds its election until it hears from a member,
        // or JOIN_SETTLE passes: deciding alone, it would launch what the mesh already serves.
        let mut election = Election::new();
        let joining = invite.is_some() || !members.is_empty();
        let alone = election.decide(&state.view(|_| None), &BTreeMap::new(), now);
        let hold = joining.then(|| (now + JOIN_SETTLE, held_election(&alone)));
        let first = match &hold {
            Some((_, held)) => held.clone(),
            None => alone,
        };
        local.serving_models = serving(&local, &first);
        let _ = state
            .handle(Input::UpdateLocal(Box::new(local)), now)
            .count();
        tracing::info!(
            node_id = %me,
            mesh_id = %mesh_id,
            joining = invite.is_some(),
            members = members.len(),
            "mesh membership"
        );

        let driver = Driver::start(state, transport.clone(), clock, options.driver.clone());
        let gossip = driver.gossip().clone();
        let (election_tx, election_rx) = watch::channel(first);
        let persist = Arc::new(Persist {
            data_dir: options.data_dir.clone(),
            file: Mutex::new(MeshFile {
                mesh_id: mesh_id.clone(),
                invite: invite.as_ref().map(Invite::to_text),
                dial_info: transport.dial_info(),
                members: members
                    .iter()
                    .map(|(id, info)| (id.to_hex(), info.clone()))
                    .collect(),
            }),
            saved: Default::default(),
        });
        persist.save_now(&gossip);
        if let Some(inv) = invite {
            gossip.input(Input::Join(inv)).await;
        }

        let (http_tx, http) = mpsc::channel(TUNNEL_QUEUE);
        let (rpc_tx, rpc) = mpsc::channel(TUNNEL_QUEUE);
        let mut tasks = JoinSet::new();
        tasks.spawn(dispatch(gossip.clone(), http_tx, rpc_tx));
        let (launch_tx, launch_rx) = mpsc::unbounded_channel();
        tasks.spawn(announce(
            gossip.clone(),
            content,
            Elector {
                election,
                launches: launch_rx,
                hold,
            },
            election_tx,
            options.announce_interval,
        ));
        tasks.spawn(revocation_loop(gossip.clone(), options.data_dir.clone()));
        tasks.spawn(persist_loop(
            gossip.clone(),
            persist.clone(),
            options.persist_interval,
        ));
        let mesh = Arc::new(Mesh {
            gossip,
            key,
            mesh_id,
            data_dir: options.data_dir,
            election: election_rx,
            driver: Mutex::new(Some(driver)),
            tasks: Mutex::new(tasks),
            persist,
            launches: launch_tx,
        });
        Ok((mesh, MeshStreams { http, rpc }))
    }

    pub fn me(&self) -> PeerId {
        self.key.peer_id()
    }

    /// Tells the election how a launch went: failures bench this node as a host of the model
    /// for a while (SPEC §3: 2 in 90 s → 60 s out, 3 in 600 s → 300 s out), a healthy start
    /// clears them. Takes effect at the next election round.
    pub fn launch_event(&self, event: LaunchEvent) {
        let _ = self.launches.send(event);
    }

    pub fn mesh_id(&self) -> &str {
        &self.mesh_id
    }

    pub fn gossip(&self) -> &Arc<Gossip> {
        &self.gossip
    }

    pub fn transport(&self) -> &Arc<dyn Transport> {
        self.gossip.transport()
    }

    /// The live mesh with this node's RTTs.
    pub fn view(&self) -> MeshView {
        self.gossip.view()
    }

    pub fn is_member(&self, peer: &PeerId) -> bool {
        self.gossip.is_member(peer)
    }

    /// The election's latest outcome for this node (duties per model). A split host or worker
    /// acts on `duties` (issue 6); a solo host launches its `Duty::Solo` models.
    pub fn election(&self) -> watch::Receiver<NodeElection> {
        self.election.clone()
    }

    /// Mints an invite to this mesh, signed by this node, carrying its dialing information.
    pub fn mint_invite(&self, ttl: Duration) -> Invite {
        let dial = self.transport().dial_info();
        let now = self.gossip.clock().now();
        self.gossip.lock().mint_invite(dial.into_bytes(), ttl, now)
    }

    /// Writes a fresh invite to `<data dir>/invite.txt` (owner-readable only).
    pub fn write_invite_file(&self, ttl: Duration) -> io::Result<PathBuf> {
        let path = self.data_dir.join(INVITE_FILE);
        let mut text = self.mint_invite(ttl).to_text();
        text.push('\n');
        write_private_atomic(&path, text.as_bytes())?;
        Ok(path)
    }

    /// Leaves the mesh (a signed `Leaving` goes out), saves membership, closes the transport.
    pub async fn shutdown(&self) {
        self.tasks
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .abort_all();
        self.persist.save_now(&self.gossip);
        let driver = self.driver.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(d) = driver {
            d.leave().await;
        }
        self.transport().close().await;
    }
}

/// The mesh id, the invite to present, and the remembered members with their dialing info.
fn membership(
    options: &MeshOptions,
    saved: Option<MeshFile>,
) -> (String, Option<Invite>, BTreeMap<PeerId, String>) {
    let remembered = |file: &MeshFile| -> BTreeMap<PeerId, String> {
        file.members
            .iter()
            .filter_map(|(id, info)| Some((id.parse().ok()?, info.clone())))
            .collect()
    };
    match (&options.join, saved) {
        (Some(inv), Some(file)) if file.mesh_id == inv.value().mesh_id => {
            (file.mesh_id.clone(), Some(inv.clone()), remembered(&file))
        }
        (Some(inv), _) => (
            inv.value().mesh_id.clone(),
            Some(inv.clone()),
            BTreeMap::new(),
        ),
        (None, Some(file)) => {
            let invite = file
                .invite
                .as_deref()
                .and_then(|t| match Invite::from_text(t) {
                    Ok(i) => Some(i),
                    Err(e) => {
                        tracing::warn!(error = %e, "ignoring the stored invite");
                        None
                    }
                });
            (file.mesh_id.clone(), invite, remembered(&file))
        }
        (None, None) => (new_mesh_id(), None, BTreeMap::new()),
    }
}

/// A fresh mesh id: `cm-` and 16 random bytes in hex.
fn new_mesh_id() -> String {
    let mut bytes = [0u8; 16];
    getrandom::fill(&mut bytes).expect("OS entropy for a new mesh id");
    format!("cm-{}", hex::encode(bytes))
}

/// A seed for the node's generators from OS entropy.
pub fn os_seed() -> io::Result<u64> {
    let mut b = [0u8; 8];
    getrandom::fill(&mut b).map_err(|e| io::Error::other(format!("OS entropy: {e}")))?;
    Ok(u64::from_le_bytes(b))
}

/// What this node advertises in `serving_models`: the election's, unless it is a client.
fn serving(local: &PeerAnnouncement, election: &NodeElection) -> Vec<ModelName> {
    match local.role {
        Role::Client => Vec::new(),
        _ => election.serving_models.clone(),
    }
}

/// Streams peers open to this node, to their consumers; connection losses to the machine.
async fn dispatch(gossip: Arc<Gossip>, http: mpsc::Sender<Inbound>, rpc: mpsc::Sender<Inbound>) {
    let transport = gossip.transport().clone();
    while let Some(event) = transport.next_event().await {
        match event {
            TransportEvent::ConnectionLost(peer) => {
                tracing::info!(%peer, "connection lost");
                gossip.input(Input::ConnectionLost(peer)).await;
            }
            TransportEvent::Stream(inbound) => match inbound.kind {
                StreamKind::Gossip => {
                    crate::gossip_driver::serve_stream(
                        gossip.clone(),
                        inbound.peer,
                        inbound.stream,
                    );
                }
                kind @ (StreamKind::Http | StreamKind::Rpc) => {
                    let peer = inbound.peer;
                    if !gossip.is_member(&peer) {
                        tracing::warn!(%peer, %kind, "refused a tunnel stream from a peer that is not a member of this mesh");
                        continue;
                    }
                    let queue = if kind == StreamKind::Http {
                        &http
                    } else {
                        &rpc
                    };
                    if queue.try_send(inbound).is_err() {
                        tracing::warn!(%peer, %kind, "tunnel stream dropped: nothing serves it here or its queue is full");
                    }
                }
            },
        }
    }
}

/// A joining node acts on its election once it has heard from a member of the mesh, or after
/// this long without (nobody answers: it serves what it can by itself).
pub const JOIN_SETTLE: Duration = Duration::from_secs(10);

/// The election of a node that has not heard from its mesh yet: no duties, nothing advertised;
/// its rpc-server runs if it would alone (a split host only picks workers whose rpc-server is
/// up, and the server accepts nobody but an elected host).
fn held_election(alone: &NodeElection) -> NodeElection {
    NodeElection {
        serving_models: Vec::new(),
        duties: BTreeMap::new(),
        run_rpc_server: alone.run_rpc_server,
        plans: BTreeMap::new(),
    }
}

/// The election machine with what feeds it besides the view.
struct Elector {
    election: Election,
    launches: mpsc::UnboundedReceiver<LaunchEvent>,
    /// While joining: until when the election is held, and the held outcome.
    hold: Option<(Timestamp, NodeElection)>,
}

impl Elector {
    fn take_launch_events(&mut self, now: Timestamp) {
        while let Ok(event) = self.launches.try_recv() {
            match event {
                LaunchEvent::Failed(model) => {
                    if let Some(until) = self.election.record_launch_failure(&model, now) {
                        tracing::warn!(%model, out_for_ms = until.saturating_since(now).as_millis() as u64, "repeated launch failures: this node stands down as a host of the model for a while");
                    }
                }
                LaunchEvent::Ready(model) => self.election.record_launch_success(&model),
            }
        }
    }
}

/// Refreshes the announcement and the election.
async fn announce(
    gossip: Arc<Gossip>,
    content: ContentSource,
    mut elector: Elector,
    election_tx: watch::Sender<NodeElection>,
    every: Duration,
) {
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let now = gossip.clock().now();
        let view = gossip.view();
        let mut local = content();
        if let Some((until, _)) = &elector.hold {
            let heard = election::heard_enough_to_elect(&view, local.rpc_ready);
            if heard || now >= *until {
                tracing::info!(heard_from_mesh = heard, "joined: acting on the election");
                elector.hold = None;
            }
        }
        elector.take_launch_events(now);
        // What the mesh's entries routed lately: hot models get a second solo host.
        let demand = election::demand_from_view(&view);
        let outcome = match &elector.hold {
            Some((_, held)) => held.clone(),
            None => elector.election.decide(&view, &demand, now),
        };
        local.dial_info = gossip.transport().dial_info();
        local.serving_models = serving(&local, &outcome);
        gossip.input(Input::UpdateLocal(Box::new(local))).await;
        election_tx.send_if_modified(|current| {
            if *current == outcome {
                return false;
            }
            if current.duties != outcome.duties || current.serving_models != outcome.serving_models
            {
                tracing::info!(serving = ?outcome.serving_models, duties = ?outcome.duties, "election: this node's duties changed");
            }
            *current = outcome;
            true
        });
    }
}

struct Persist {
    data_dir: PathBuf,
    /// What is on disk (the last save), or what was loaded and is still to be saved.
    file: Mutex<MeshFile>,
    saved: std::sync::atomic::AtomicBool,
}

impl Persist {
    /// Saves the current membership if it changed since the last save.
    fn save_now(&self, gossip: &Gossip) {
        let now = gossip.clock().now();
        let mut file = self.file.lock().unwrap_or_else(|p| p.into_inner());
        let mut next = file.clone();
        next.dial_info = gossip.transport().dial_info();
        {
            let state = gossip.lock();
            let mut members = BTreeMap::new();
            for id in state.members(now) {
                let hex = id.to_hex();
                let info = state
                    .announcement(&id)
                    .map(|a| a.value().dial_info.clone())
                    .filter(|i| !i.is_empty())
                    .or_else(|| file.members.get(&hex).cloned())
                    .unwrap_or_default();
                members.insert(hex, info);
            }
            next.members = members;
        }
        let saved = self.saved.load(std::sync::atomic::Ordering::Relaxed);
        if next != *file || !saved {
            match next.save(&self.data_dir) {
                Ok(()) => {
                    *file = next;
                    self.saved.store(true, std::sync::atomic::Ordering::Relaxed);
                }
                Err(e) => {
                    tracing::warn!(error = %e, dir = %self.data_dir.display(), "saving mesh membership failed")
                }
            }
        }
    }
}

async fn persist_loop(gossip: Arc<Gossip>, persist: Arc<Persist>, every: Duration) {
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        persist.save_now(&gossip);
    }
}

/// Where `mesh-node invite --revoke` records the invites this node withdrew.
pub const REVOKED_INVITES_FILE: &str = "revoked-invites.txt";

/// Gossips each revocation `mesh-node invite --revoke` records in the data dir: at start, then
/// as lines appear (checked every second).
async fn revocation_loop(gossip: Arc<Gossip>, data_dir: PathBuf) {
    let path = data_dir.join(REVOKED_INVITES_FILE);
    let mut sent = std::collections::BTreeSet::new();
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let Ok(text) = tokio::fs::read_to_string(&path).await else {
            continue;
        };
        let now = gossip.clock().now();
        for (id, expires_at) in crate::invite_cmd::parse_revocations(&text) {
            if expires_at > now && sent.insert(id) {
                tracing::info!(invite = %id, "revoking an invite this node minted");
                gossip.input(Input::RevokeInvite { id, expires_at }).await;
            }
        }
    }
}

/// Reads an invite from `--join`/`CLOSEDMESH_JOIN`: the text itself, or `@path` to a file
/// holding it.
pub fn read_invite(arg: &str) -> Result<Invite, InviteArgError> {
    let arg = arg.trim();
    let text = match arg.strip_prefix('@') {
        Some(path) => fs::read_to_string(path).map_err(|e| InviteArgError::File {
            path: PathBuf::from(path),
            error: e.to_string(),
        })?,
        None => arg.to_string(),
    };
    Invite::from_text(&text).map_err(InviteArgError::Invite)
}

#[derive(Debug, thiserror::Error)]
pub enum InviteArgError {
    #[error("reading the invite file {path}: {error}")]
    File { path: PathBuf, error: String },
    #[error("{0}")]
    Invite(invite::InviteError),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repeated_launch_failures_bench_this_node_and_a_healthy_start_clears_them() {
        let (tx, launches) = mpsc::unbounded_channel();
        let mut elector = Elector {
            election: Election::new(),
            launches,
            hold: None,
        };
        let t0 = Timestamp::from_secs(1_000);
        tx.send(LaunchEvent::Failed("m".into())).unwrap();
        elector.take_launch_events(t0);
        tx.send(LaunchEvent::Failed("m".into())).unwrap();
        elector.take_launch_events(t0 + Duration::from_secs(30));
        // Two failures within 90 s: out for 60 s, so a third is not counted meanwhile.
        assert_eq!(
            elector
                .election
                .record_launch_failure("m", t0 + Duration::from_secs(40)),
            None
        );
        tx.send(LaunchEvent::Ready("m".into())).unwrap();
        elector.take_launch_events(t0 + Duration::from_secs(50));
        // Cleared: counting starts afresh (had the backoff stayed, both would read None).
        let e = &mut elector.election;
        assert_eq!(
            e.record_launch_failure("m", t0 + Duration::from_secs(51)),
            None
        );
        assert!(
            e.record_launch_failure("m", t0 + Duration::from_secs(52))
                .is_some(),
            "two fresh failures after a healthy start bench it again"
        );
    }

    fn invite_to(mesh: &str) -> Invite {
        let key = SecretKey::from_bytes([3; 32]);
        let mut rng = Pcg64::seed_from_u64(1);
        invite::mint(
            &key,
            mesh,
            b"dial".to_vec(),
            Duration::from_secs(60),
            Timestamp::from_secs(1_000),
            &mut rng,
        )
    }

    fn saved(mesh: &str, invite: Option<&Invite>) -> MeshFile {
        MeshFile {
            mesh_id: mesh.into(),
            invite: invite.map(Invite::to_text),
            dial_info: "me".into(),
            members: BTreeMap::from([(PeerId::from_bytes([9; 32]).to_hex(), "info".into())]),
        }
    }

    fn options(join: Option<Invite>) -> MeshOptions {
        MeshOptions::new("/nonexistent", join, 0)
    }

    #[test]
    fn a_node_founds_rejoins_or_joins_by_what_it_was_given_and_what_it_remembers() {
        // Nothing given, nothing remembered: a new mesh.
        let (id, inv, members) = membership(&options(None), None);
        assert!(id.starts_with("cm-") && id.len() == 35, "{id}");
        assert!(inv.is_none() && members.is_empty());

        // Restart: the remembered mesh, its invite (presented again) and members.
        let old = invite_to("m1");
        let (id, inv, members) = membership(&options(None), Some(saved("m1", Some(&old))));
        assert_eq!(id, "m1");
        assert_eq!(inv, Some(old.clone()));
        assert_eq!(members[&PeerId::from_bytes([9; 32])], "info");

        // A founder's restart: no invite to present.
        let (id, inv, _) = membership(&options(None), Some(saved("m1", None)));
        assert_eq!((id.as_str(), inv), ("m1", None));

        // A new invite to the same mesh keeps the members; to another mesh, starts afresh.
        let same = invite_to("m1");
        let (_, inv, members) =
            membership(&options(Some(same.clone())), Some(saved("m1", Some(&old))));
        assert_eq!((inv, members.len()), (Some(same), 1));
        let other = invite_to("m2");
        let (id, inv, members) =
            membership(&options(Some(other.clone())), Some(saved("m1", Some(&old))));
        assert_eq!((id.as_str(), inv, members.len()), ("m2", Some(other), 0));
    }

    #[test]
    fn the_state_file_round_trips_and_a_corrupt_one_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(MeshFile::load(dir.path()).unwrap(), None);
        let file = saved("m1", Some(&invite_to("m1")));
        file.save(dir.path()).unwrap();
        assert_eq!(MeshFile::load(dir.path()).unwrap(), Some(file));
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = fs::metadata(MeshFile::path(dir.path()))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600, "it holds a bearer invite");
        }
        fs::write(MeshFile::path(dir.path()), "{").unwrap();
        assert!(matches!(
            MeshFile::load(dir.path()),
            Err(MeshError::Corrupt { .. })
        ));
    }

    #[test]
    fn invites_are_read_from_text_or_a_file() {
        let inv = invite_to("m1");
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("invite.txt");
        fs::write(&path, format!("{}\n", inv.to_text())).unwrap();
        assert_eq!(read_invite(&format!("@{}", path.display())).unwrap(), inv);
        assert_eq!(read_invite(&format!("  {}  ", inv.to_text())).unwrap(), inv);
        assert!(matches!(
            read_invite("@/no/such/file"),
            Err(InviteArgError::File { .. })
        ));
        assert!(matches!(
            read_invite("closedmesh1!!"),
            Err(InviteArgError::Invite(_))
        ));
    }
}
