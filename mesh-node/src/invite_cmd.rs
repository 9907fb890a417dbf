//! `mesh-node invite [--ttl 24h] [--out FILE] [--data-dir DIR]`: mints an invite to the mesh of
//! the node whose data dir it reads. `mesh-node invite --revoke INVITE|@FILE` revokes one this
//! node minted: it appends the invite's id to `<data dir>/revoked-invites.txt`, which the
//! running node reads within a second or two and gossips as a signed revocation (and again
//! each time it starts, until the invite would have expired anyway).
//!
//! It works from the data dir alone, without the node's API: the node key (`secret-key`) signs,
//! and `mesh.json` gives the mesh id and the dialing information the running node last published
//! (it rewrites that file when its addresses change). So run it on the node's machine, while the
//! node runs: a node restarted since may listen on another port. Every node also writes a fresh
//! invite to `<data dir>/invite.txt` each time it starts.

use crate::clock::Clock;
use crate::config::{InviteArgs, default_data_dir};
use crate::identity::{self, SECRET_KEY_FILE};
use crate::mesh::{MeshFile, REVOKED_INVITES_FILE, read_invite, write_private_atomic};
use anyhow::{Context, bail};
use mesh_core::gossip::SecretKey;
use mesh_core::invite;
use rand_core::SeedableRng;
use std::time::Duration;

/// Parses a TTL: a number with a unit `s`, `m`, `h` or `d` (`24h`, `90m`); a bare number is
/// seconds.
pub fn parse_ttl(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let n: u64 = number
        .parse()
        .map_err(|_| format!("TTL {text:?} must start with a whole number"))?;
    let secs = match unit {
        "" | "s" => 1,
        "m" => 60,
        "h" => 3_600,
        "d" => 86_400,
        other => return Err(format!("TTL unit {other:?} is not one of s, m, h, d")),
    };
    if n == 0 {
        return Err("a TTL of zero makes an invite that is already expired".into());
    }
    Ok(Duration::from_secs(n.saturating_mul(secs)))
}

pub fn run(args: InviteArgs) -> anyhow::Result<()> {
    let ttl = parse_ttl(&args.ttl).map_err(anyhow::Error::msg)?;
    let data_dir = match args.data_dir {
        Some(d) => d,
        None => default_data_dir()?,
    };
    if !data_dir.join(SECRET_KEY_FILE).is_file() {
        bail!(
            "no node key in {}: start the node there first (`mesh-node serve` or `mesh-node entry`)",
            data_dir.display()
        );
    }
    let identity = identity::load_or_create(&data_dir)
        .with_context(|| format!("node key in {}", data_dir.display()))?;
    let Some(file) = MeshFile::load(&data_dir)? else {
        bail!(
            "{} holds no mesh: start the node there first",
            data_dir.display()
        );
    };
    if let Some(arg) = &args.revoke {
        return revoke(arg, &data_dir, &file.mesh_id, identity.peer_id);
    }
    if file.dial_info.is_empty() {
        bail!("the node has not published its dialing information yet: wait for it to start");
    }
    let mut seed = [0u8; 32];
    getrandom::fill(&mut seed).map_err(|e| anyhow::anyhow!("OS entropy: {e}"))?;
    let mut rng = rand_pcg::Pcg64::from_seed(seed);
    let now = Clock::system().now();
    let minted = invite::mint(
        &SecretKey::from_bytes(identity.secret),
        &file.mesh_id,
        file.dial_info.into_bytes(),
        ttl,
        now,
        &mut rng,
    );
    let text = minted.to_text();
    match &args.out {
        Some(path) => {
            write_private_atomic(path, format!("{text}\n").as_bytes())
                .with_context(|| format!("writing {}", path.display()))?;
            eprintln!(
                "invite to mesh {} (id {}) written to {}; valid for {}",
                file.mesh_id,
                minted.value().id,
                path.display(),
                args.ttl
            );
        }
        None => println!("{text}"),
    }
    Ok(())
}

/// Records the revocation of `arg` (an invite this node minted) for the running node.
fn revoke(
    arg: &str,
    data_dir: &std::path::Path,
    mesh_id: &str,
    me: mesh_core::PeerId,
) -> anyhow::Result<()> {
    let inv = read_invite(arg).context("--revoke")?;
    let body = inv.value();
    if body.mesh_id != mesh_id {
        bail!(
            "that invite is for mesh {}, this node is in {mesh_id}",
            body.mesh_id
        );
    }
    if body.inviter != me {
        bail!(
            "that invite was minted by node {}: only it can revoke it (run this with its data dir)",
            body.inviter
        );
    }
    let now = Clock::system().now();
    if body.expires_at <= now {
        eprintln!("invite {} has expired already: nothing to revoke", body.id);
        return Ok(());
    }
    let line = revocation_line(body.id, body.expires_at);
    let path = data_dir.join(REVOKED_INVITES_FILE);
    let mut text = std::fs::read_to_string(&path).unwrap_or_default();
    if !text.lines().any(|l| l.trim() == line) {
        text.push_str(&line);
        text.push('\n');
        write_private_atomic(&path, text.as_bytes())
            .with_context(|| format!("writing {}", path.display()))?;
    }
    eprintln!(
        "invite {} revoked: the running node gossips the revocation within seconds",
        body.id
    );
    Ok(())
}

/// One line of `revoked-invites.txt`: the invite id (hex) and its expiry (unix ms).
pub fn revocation_line(id: invite::InviteId, expires_at: mesh_core::Timestamp) -> String {
    format!("{id} {}", expires_at.as_millis())
}

/// Parses `revoked-invites.txt`, skipping lines that are not `<32 hex> <ms>`.
pub fn parse_revocations(text: &str) -> Vec<(invite::InviteId, mesh_core::Timestamp)> {
    text.lines()
        .filter_map(|line| {
            let (id, ms) = line.trim().split_once(' ')?;
            let mut bytes = [0u8; 16];
            hex::decode_to_slice(id, &mut bytes).ok()?;
            let ms: u64 = ms.trim().parse().ok()?;
            Some((
                invite::InviteId(bytes),
                mesh_core::Timestamp::from_millis(ms),
            ))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn revocation_lines_round_trip_and_garbage_is_skipped() {
        let id = invite::InviteId([7; 16]);
        let at = mesh_core::Timestamp::from_millis(1_800_000_000_000);
        let text = format!("{}\nnot a line\nzz 12\n", revocation_line(id, at));
        assert_eq!(parse_revocations(&text), vec![(id, at)]);
    }

    #[test]
    fn ttls_take_a_unit_and_reject_nonsense() {
        assert_eq!(parse_ttl("24h"), Ok(Duration::from_secs(86_400)));
        assert_eq!(parse_ttl("90m"), Ok(Duration::from_secs(5_400)));
        assert_eq!(parse_ttl("7d"), Ok(Duration::from_secs(604_800)));
        assert_eq!(parse_ttl(" 45 "), Ok(Duration::from_secs(45)));
        assert_eq!(parse_ttl("2s"), Ok(Duration::from_secs(2)));
        assert!(parse_ttl("0h").is_err());
        assert!(parse_ttl("h").is_err());
        assert!(parse_ttl("3 weeks").is_err());
        assert!(parse_ttl("-1h").is_err());
    }
}
