//! Admission over real iroh sockets, with real `mesh-node entry` processes (relays disabled,
//! loopback; no model needed): invites that are expired, for another mesh or altered are refused
//! with a clear log line on both sides, and a record a relay altered in transit is rejected.

mod support;

use mesh_core::gossip::wire::{Hello, Message, Records};
use mesh_core::gossip::{SecretKey, Signed};
use mesh_core::invite::{self, Invite};
use mesh_core::peer::{PeerAnnouncement, Role};
use mesh_core::{PeerId, Timestamp};
use mesh_node::config::RelayMode;
use mesh_node::gossip_driver::write_frame;
use mesh_node::mesh::MeshFile;
use mesh_node::transport::iroh::{IrohConfig, IrohTransport};
use mesh_node::transport::{StreamKind, Transport};
use rand_core::SeedableRng;
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use support::{NodeProcess, free_port};
use tokio::time::Instant;

/// `mesh-node entry` on loopback with relays off; the invite (if any) goes in through the
/// environment, as an operator keeping it off the command line would pass it.
fn entry(data_dir: &Path, join: Option<&str>) -> NodeProcess {
    let api = free_port();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_mesh-node"));
    cmd.args([
        "entry",
        "--relay",
        "disabled",
        "--api-addr",
        &api.to_string(),
    ])
    .arg("--data-dir")
    .arg(data_dir)
    .env("CLOSEDMESH_LOG", "info")
    .env_remove("CLOSEDMESH_JOIN")
    .stdin(Stdio::null())
    .stdout(Stdio::null())
    .stderr(Stdio::null());
    if let Some(j) = join {
        cmd.env("CLOSEDMESH_JOIN", j);
    }
    NodeProcess {
        child: cmd.spawn().expect("start mesh-node entry"),
        api,
        data_dir: data_dir.to_path_buf(),
    }
}

async fn wait_file(path: &Path, within: Duration) -> String {
    let deadline = Instant::now() + within;
    loop {
        if let Ok(text) = std::fs::read_to_string(path) {
            if !text.trim().is_empty() {
                return text;
            }
        }
        assert!(Instant::now() < deadline, "{} not written", path.display());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Waits until the node's log has a line containing every one of `needles`; returns that line.
async fn wait_log_line(node: &NodeProcess, needles: &[&str], within: Duration) -> String {
    let deadline = Instant::now() + within;
    loop {
        let log = node.log();
        if let Some(line) = log.lines().find(|l| needles.iter().all(|n| l.contains(n))) {
            return line.to_string();
        }
        assert!(
            Instant::now() < deadline,
            "no log line with {needles:?} within {within:?}:\n{log}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The node's short id, from its key file.
fn short_id(data_dir: &Path) -> String {
    secret(data_dir).peer_id().short()
}

fn secret(data_dir: &Path) -> SecretKey {
    let text = std::fs::read_to_string(data_dir.join("secret-key")).unwrap();
    let mut bytes = [0u8; 32];
    hex::decode_to_slice(text.trim(), &mut bytes).unwrap();
    SecretKey::from_bytes(bytes)
}

fn peer_ids(status: &Value) -> Vec<String> {
    status["peers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["id"].as_str().unwrap().to_string())
        .collect()
}

fn unix_now() -> Timestamp {
    Timestamp::from_micros(
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_micros() as u64,
    )
}

/// A founder and its invite file, once it is up.
async fn founder(dir: &Path) -> (NodeProcess, String) {
    let a = entry(&dir.join("a"), None);
    let invite = wait_file(&dir.join("a/invite.txt"), Duration::from_secs(20)).await;
    wait_file(&dir.join("a/mesh.json"), Duration::from_secs(5)).await;
    (a, invite.trim().to_string())
}

#[tokio::test]
async fn expired_foreign_and_altered_invites_are_refused_with_a_clear_log_line() {
    let dir = tempfile::tempdir().unwrap();
    let (mut a, good) = founder(dir.path()).await;
    let mesh = MeshFile::load(&dir.path().join("a")).unwrap().unwrap();

    // Expired: minted by `mesh-node invite` with a one-second TTL, used two seconds later.
    let expired_file = dir.path().join("expired.txt");
    let out = Command::new(env!("CARGO_BIN_EXE_mesh-node"))
        .args(["invite", "--ttl", "1s", "--out"])
        .arg(&expired_file)
        .arg("--data-dir")
        .arg(dir.path().join("a"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    tokio::time::sleep(Duration::from_millis(2_000)).await;

    // Another mesh: signed by the founder's own key, but for a mesh it is not in.
    let mut rng = rand_pcg::Pcg64::seed_from_u64(7);
    let foreign = invite::mint(
        &secret(&dir.path().join("a")),
        "some-other-mesh",
        mesh.dial_info.clone().into_bytes(),
        Duration::from_secs(3600),
        unix_now(),
        &mut rng,
    )
    .to_text();

    // Altered: the founder's valid invite with its expiry pushed out, signature kept.
    let original = Invite::from_text(&good).unwrap();
    let mut body = original.body().to_vec();
    *body.last_mut().unwrap() ^= 1;
    let altered = Signed::from_parts(body, *original.signature())
        .unwrap()
        .to_text();
    assert_ne!(altered, good);

    let expired_arg = format!("@{}", expired_file.display());
    let joiners: Vec<(&str, PathBuf, String, &str, &str)> = vec![
        (
            "expired",
            dir.path().join("j1"),
            expired_arg,
            "invite refused: invite expired at",
            "mint a new one with `mesh-node invite`",
        ),
        (
            "wrong mesh",
            dir.path().join("j2"),
            foreign,
            "hello announcement is for mesh \"some-other-mesh\"",
            "this is mesh",
        ),
        (
            "bad signature",
            dir.path().join("j3"),
            altered,
            "invite refused: invite signature does not verify",
            "altered or not signed by its inviter",
        ),
    ];
    let mut running = Vec::new();
    for (what, jdir, invite, reason, detail) in &joiners {
        let j = entry(jdir, Some(invite));
        wait_file(&jdir.join("secret-key"), Duration::from_secs(10)).await;
        running.push((what, j, short_id(jdir), *reason, *detail));
    }
    for (what, j, id, reason, detail) in &running {
        // The founder says whom it refused and why, in words an operator can act on...
        let line = wait_log_line(
            &a,
            &["WARN", "refused admission to peer", id, reason, detail],
            Duration::from_secs(20),
        )
        .await;
        eprintln!("{what}: {line}");
        // ...and the joiner hears it too.
        let line = wait_log_line(
            j,
            &["WARN", "this node was refused by peer", reason],
            Duration::from_secs(20),
        )
        .await;
        eprintln!("{what} (joiner): {line}");
    }
    // None of them got in.
    let status = a.status().await.unwrap();
    assert!(peer_ids(&status).is_empty(), "{status:#}");
    for (_, j, ..) in &mut running {
        j.stop().await;
    }
    a.stop().await;
}

/// Hello over a fresh gossip stream from an in-test peer, as a joiner would send it.
async fn hello(t: &IrohTransport, key: &SecretKey, to: PeerId, mesh_id: &str, inv: Invite) {
    let mut ann = PeerAnnouncement::new(key.peer_id(), mesh_id, Role::Client);
    ann.dial_info = t.dial_info();
    ann.seq = 1;
    let msg = Message::Hello(Hello {
        announcement: Signed::sign(key, ann),
        invite: Some(inv),
        passive: false,
    });
    let mut s = t.open(to, StreamKind::Gossip).await.unwrap();
    write_frame(&mut s, &msg).await.unwrap();
    // Keep the stream open: the node reads it until it ends.
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_secs(60)).await;
        drop(s);
    });
}

#[tokio::test]
async fn an_announcement_altered_by_its_relay_is_rejected_and_the_original_accepted() {
    let dir = tempfile::tempdir().unwrap();
    let (mut a, text) = founder(dir.path()).await;
    let inv = Invite::from_text(&text).unwrap();
    let a_id = inv.value().inviter;
    let mesh_id = inv.value().mesh_id.clone();

    // A relay that is a genuine member: admitted with the founder's invite.
    let relay_key = SecretKey::from_bytes([41; 32]);
    let relay = IrohTransport::bind([41; 32], IrohConfig::with_relay(RelayMode::Disabled))
        .await
        .unwrap();
    relay
        .add_peer(
            a_id,
            &String::from_utf8(inv.value().dialing_info.clone()).unwrap(),
        )
        .unwrap();
    hello(&relay, &relay_key, a_id, &mesh_id, inv).await;
    let relay_short = relay_key.peer_id().short();
    wait_log_line(
        &a,
        &["admitted peer", &relay_short],
        Duration::from_secs(20),
    )
    .await;

    // A third peer's signed announcement, and the same bytes with the model name swapped by the
    // relay (same length, so the encoding still parses: only the signature can tell).
    let origin = SecretKey::from_bytes([42; 32]);
    let announce = |model: &str| {
        let mut ann = PeerAnnouncement::new(
            origin.peer_id(),
            mesh_id.clone(),
            Role::Host { http_port: 9337 },
        );
        ann.seq = 5;
        ann.hosted_models = vec![model.to_string()];
        ann.serving_models = vec![model.to_string()];
        ann
    };
    let honest = Signed::sign(&origin, announce("Honest-Model"));
    let forged_body = postcard_body(&announce("Forged-Model"), honest.body());
    let forged: Signed<PeerAnnouncement> =
        Signed::from_parts(forged_body, *honest.signature()).unwrap();
    assert_eq!(forged.value().hosted_models, ["Forged-Model"]);

    let mut s = relay.open(a_id, StreamKind::Gossip).await.unwrap();
    let rumor = |sa| {
        Message::Rumor(Records {
            announcements: vec![sa],
            ..Records::default()
        })
    };
    write_frame(&mut s, &rumor(forged)).await.unwrap();
    let origin_short = origin.peer_id().short();
    let line = wait_log_line(
        &a,
        &[
            "WARN",
            "rejected a record that fails its origin's signature",
            &format!("relay={relay_short}"),
            &format!("origin={origin_short}"),
        ],
        Duration::from_secs(20),
    )
    .await;
    eprintln!("{line}");
    let status = a.status().await.unwrap();
    assert!(
        !peer_ids(&status).contains(&origin_short),
        "the forged peer got in: {status:#}"
    );

    // The untouched record through the same relay is accepted: the alteration was the reason.
    write_frame(&mut s, &rumor(honest)).await.unwrap();
    let status = a
        .wait_status("the honest record", Duration::from_secs(20), |s| {
            peer_ids(s).contains(&origin_short)
        })
        .await;
    let row = status["peers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["id"] == origin_short.as_str())
        .unwrap();
    assert_eq!(row["hosted_models"], serde_json::json!(["Honest-Model"]));
    a.stop().await;
}

/// The encoding of `forged`, checked to differ from `honest_body` only in place.
fn postcard_body(forged: &PeerAnnouncement, honest_body: &[u8]) -> Vec<u8> {
    let key = SecretKey::from_bytes([99; 32]);
    // Signing with any key gives the canonical body bytes of the value.
    let body = Signed::sign(&key, forged.clone()).body().to_vec();
    assert_eq!(body.len(), honest_body.len());
    assert_ne!(body, honest_body);
    body
}

#[tokio::test]
async fn a_restarted_member_rejoins_from_its_data_dir_after_its_invite_expired() {
    let dir = tempfile::tempdir().unwrap();
    let (mut a, _) = founder(dir.path()).await;
    let short_lived = dir.path().join("short.txt");
    let out = Command::new(env!("CARGO_BIN_EXE_mesh-node"))
        .args(["invite", "--ttl", "4s", "--out"])
        .arg(&short_lived)
        .arg("--data-dir")
        .arg(dir.path().join("a"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let minted = Instant::now();

    let j_dir = dir.path().join("j");
    let mut j = entry(&j_dir, Some(&format!("@{}", short_lived.display())));
    wait_file(&j_dir.join("secret-key"), Duration::from_secs(10)).await;
    let j_id = short_id(&j_dir);
    a.wait_status("the joiner admitted", Duration::from_secs(20), |s| {
        peer_ids(s).contains(&j_id)
    })
    .await;
    // A clean stop: the member says it leaves, and the founder drops it at once.
    j.stop().await;
    a.wait_status("the leaver dropped", Duration::from_secs(10), |s| {
        !peer_ids(s).contains(&j_id)
    })
    .await;
    tokio::time::sleep((minted + Duration::from_secs(5)).saturating_duration_since(Instant::now()))
        .await;

    // Restarted with no invite at all: the data dir remembers the mesh, the invite (expired
    // now) and the members; the founder re-admits it as a former member.
    let mut j = entry(&j_dir, None);
    a.wait_status("the member back", Duration::from_secs(20), |s| {
        peer_ids(s).contains(&j_id)
    })
    .await;
    let line = wait_log_line(
        &a,
        &["admitted peer", &j_id, "Membership"],
        Duration::from_secs(5),
    )
    .await;
    eprintln!("{line}");
    let mine = MeshFile::load(&j_dir).unwrap().unwrap();
    assert_eq!(
        mine.mesh_id,
        MeshFile::load(&dir.path().join("a"))
            .unwrap()
            .unwrap()
            .mesh_id
    );
    assert!(
        mine.members
            .contains_key(&secret(&dir.path().join("a")).peer_id().to_hex())
    );
    j.stop().await;
    a.stop().await;
}

/// `mesh-node invite` against a data dir; returns (success, stdout, stderr).
fn invite_cmd(args: &[&str]) -> (bool, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_mesh-node"))
        .arg("invite")
        .args(args)
        .env_remove("CLOSEDMESH_DATA_DIR")
        .output()
        .expect("run mesh-node invite");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test]
async fn a_revoked_invite_is_refused_and_only_its_minter_may_revoke_it() {
    let dir = tempfile::tempdir().unwrap();
    let (mut a, good) = founder(dir.path()).await;
    let a_dir = dir.path().join("a");
    let a_dir_arg = a_dir.to_str().unwrap();

    // A member admitted with the founder's startup invite.
    let mut b = entry(&dir.path().join("b"), Some(&good));
    wait_log_line(&a, &["admitted peer"], Duration::from_secs(30)).await;

    // The founder mints a second invite, then withdraws it.
    let spare = dir.path().join("spare.txt");
    let (ok, _, err) = invite_cmd(&[
        "--data-dir",
        a_dir_arg,
        "--ttl",
        "1h",
        "--out",
        spare.to_str().unwrap(),
    ]);
    assert!(ok, "{err}");
    let spare_arg = format!("@{}", spare.display());
    // Another node cannot revoke it: only its minter signs revocations.
    let (ok, _, err) = invite_cmd(&[
        "--data-dir",
        dir.path().join("b").to_str().unwrap(),
        "--revoke",
        &spare_arg,
    ]);
    assert!(!ok, "b revoked a's invite: {err}");
    assert!(err.contains("only it can revoke it"), "{err}");
    let (ok, _, err) = invite_cmd(&["--data-dir", a_dir_arg, "--revoke", &spare_arg]);
    assert!(ok, "{err}");
    assert!(err.contains("revoked"), "{err}");
    wait_log_line(
        &a,
        &["revoking an invite this node minted"],
        Duration::from_secs(10),
    )
    .await;

    // A newcomer holding the revoked invite is refused, and told why.
    let mut c = entry(&dir.path().join("c"), Some(&spare_arg));
    let line = wait_log_line(
        &a,
        &[
            "WARN",
            "refused admission to peer",
            "was revoked by its inviter",
        ],
        Duration::from_secs(30),
    )
    .await;
    assert!(line.contains(&short_id(&dir.path().join("c"))), "{line}");
    wait_log_line(
        &c,
        &[
            "this node was refused by peer",
            "was revoked by its inviter",
        ],
        Duration::from_secs(30),
    )
    .await;
    // The member admitted before still belongs.
    let status = a.status().await.unwrap();
    assert!(
        peer_ids(&status).contains(&short_id(&dir.path().join("b"))),
        "{status:#}"
    );
    c.stop().await;
    b.stop().await;
    a.stop().await;
}
