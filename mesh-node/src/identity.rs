//! The node's persistent identity: an Ed25519 secret key in `<data dir>/secret-key` (hex, owner
//! only). Its public half is the node's [`PeerId`]; iroh's `SecretKey::from_bytes` takes the same
//! 32 bytes, so the transport and the announcements share one identity.

use ed25519_dalek::SigningKey;
use mesh_core::PeerId;
use std::fs;
use std::io;
use std::path::Path;

pub const SECRET_KEY_FILE: &str = "secret-key";
/// Names a key file to use instead of `<data dir>/secret-key` (it must exist).
pub const SECRET_KEY_FILE_ENV: &str = "CLOSEDMESH_SECRET_KEY_FILE";

/// The 32 secret bytes and the id they give.
pub struct Identity {
    pub secret: [u8; 32],
    pub peer_id: PeerId,
}

impl std::fmt::Debug for Identity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Identity")
            .field("peer_id", &self.peer_id)
            .finish_non_exhaustive()
    }
}

impl Identity {
    pub fn from_secret(secret: [u8; 32]) -> Self {
        let public = SigningKey::from_bytes(&secret).verifying_key().to_bytes();
        Identity {
            secret,
            peer_id: PeerId::from_bytes(public),
        }
    }
}

/// Loads the key from `data_dir`, creating it on first run.
pub fn load_or_create(data_dir: &Path) -> io::Result<Identity> {
    // An operator may keep the key elsewhere (a secrets mount): then it must exist.
    if let Some(path) = std::env::var_os(SECRET_KEY_FILE_ENV) {
        let path = std::path::PathBuf::from(path);
        let text = fs::read_to_string(&path).map_err(|e| {
            io::Error::new(
                e.kind(),
                format!("{SECRET_KEY_FILE_ENV}={}: {e}", path.display()),
            )
        })?;
        return parse_secret(&text, &path);
    }
    let path = data_dir.join(SECRET_KEY_FILE);
    match fs::read_to_string(&path) {
        Ok(text) => parse_secret(&text, &path),
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            let mut secret = [0u8; 32];
            getrandom::fill(&mut secret).map_err(|e| io::Error::other(e.to_string()))?;
            fs::create_dir_all(data_dir)?;
            write_private(&path, hex::encode(secret).as_bytes())?;
            Ok(Identity::from_secret(secret))
        }
        Err(e) => Err(e),
    }
}

fn parse_secret(text: &str, path: &Path) -> io::Result<Identity> {
    let mut secret = [0u8; 32];
    hex::decode_to_slice(text.trim(), &mut secret).map_err(|e| {
        io::Error::new(
            io::ErrorKind::InvalidData,
            format!("{} is not a 64-hex-digit key: {e}", path.display()),
        )
    })?;
    Ok(Identity::from_secret(secret))
}

fn write_private(path: &Path, bytes: &[u8]) -> io::Result<()> {
    use std::io::Write;
    #[cfg(unix)]
    use std::os::unix::fs::OpenOptionsExt;
    let mut opts = fs::OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    opts.mode(0o600);
    opts.open(path)?.write_all(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identity_survives_restarts() {
        let dir = tempfile::tempdir().unwrap();
        let a = load_or_create(dir.path()).unwrap();
        let b = load_or_create(dir.path()).unwrap();
        assert_eq!(a.peer_id, b.peer_id);
        let other = tempfile::tempdir().unwrap();
        assert_ne!(load_or_create(other.path()).unwrap().peer_id, a.peer_id);
        fs::write(other.path().join(SECRET_KEY_FILE), "zz").unwrap();
        assert!(load_or_create(other.path()).is_err());
    }
}
