//! Invites (SPEC §9): minting and checking signed, expiring, revocable mesh invites.
//!
//! Any member can mint an invite for its mesh; the invite is signed by that member (the
//! *inviter*) and carries the inviter's dialing information (opaque bytes the shell fills: iroh's
//! serialised `EndpointAddr`), so a joiner knows whom to dial. The admitting peer accepts it when
//! the signature is the inviter's, the mesh is its own, it has not expired, it is not revoked and
//! the inviter is a member it knows (itself, a live peer, a remembered former member, or the
//! inviter of the invite it joined with). There is no founder key: a mesh has no single point
//! whose loss stops it from growing, and any member can let others in (members are trusted).
//!
//! Invites are bearer credentials, usable until they expire (default 24 h). The inviter revokes
//! one with a signed [`Revocation`], which gossip spreads to every member and each keeps until the
//! invite would have expired anyway. A revocation only ever names its signer's own invites.
//!
//! Text form: `closedmesh1` followed by lowercase base32 of the signed invite, so it survives
//! copy-paste, files and environment variables; surrounding whitespace is ignored.

use crate::gossip::sign::{SecretKey, Signable, Signed};
use crate::id::PeerId;
use crate::time::Timestamp;
use serde::{Deserialize, Serialize};
use std::fmt;
use std::str::FromStr;
use std::time::Duration;

pub const INVITE_DOMAIN: &[u8] = b"closedmesh/invite/v1\0";
pub const REVOCATION_DOMAIN: &[u8] = b"closedmesh/revoke/v1\0";
/// The prefix of an invite's text form.
pub const TEXT_PREFIX: &str = "closedmesh1";
pub const DEFAULT_TTL: Duration = Duration::from_secs(24 * 3600);
/// Dialing information larger than this is not an address.
pub const MAX_DIALING_INFO: usize = 4096;

/// An invite's random id: what a revocation names.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct InviteId(pub [u8; 16]);

impl InviteId {
    pub fn random(rng: &mut impl rand_core::Rng) -> Self {
        let mut b = [0u8; 16];
        rng.fill_bytes(&mut b);
        InviteId(b)
    }
}

impl fmt::Debug for InviteId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "InviteId({})", hex::encode(&self.0[..5]))
    }
}

impl fmt::Display for InviteId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&hex::encode(self.0))
    }
}

/// What an inviter signs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InviteBody {
    pub mesh_id: String,
    pub inviter: PeerId,
    /// How to reach the inviter (opaque to the core).
    pub dialing_info: Vec<u8>,
    pub id: InviteId,
    pub expires_at: Timestamp,
}

impl Signable for InviteBody {
    const DOMAIN: &'static [u8] = INVITE_DOMAIN;
    fn signer(&self) -> PeerId {
        self.inviter
    }
}

pub type Invite = Signed<InviteBody>;

/// The inviter withdraws one of its invites before it expires.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Revocation {
    pub inviter: PeerId,
    pub mesh_id: String,
    pub invite: InviteId,
    /// When the revoked invite expires: after that the revocation can be forgotten.
    pub expires_at: Timestamp,
}

impl Signable for Revocation {
    const DOMAIN: &'static [u8] = REVOCATION_DOMAIN;
    fn signer(&self) -> PeerId {
        self.inviter
    }
}

pub type SignedRevocation = Signed<Revocation>;

/// Why an invite is not accepted. Each says what an operator must do differently.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error, Serialize, Deserialize)]
pub enum InviteError {
    #[error("malformed invite: {0}")]
    Malformed(String),
    #[error("invite signature does not verify: altered or not signed by its inviter")]
    BadSignature,
    #[error("invite is for mesh {found:?}, this is mesh {expected:?}")]
    WrongMesh { expected: String, found: String },
    #[error("invite expired at {expires_at} (now {now}); mint a new one with `mesh-node invite`")]
    Expired {
        expires_at: Timestamp,
        now: Timestamp,
    },
    #[error("invite {0} was revoked by its inviter")]
    Revoked(InviteId),
    #[error("invite was minted by {0}, which is not a known member of this mesh")]
    UnknownInviter(PeerId),
}

/// Mints an invite to `mesh_id`, signed by `key` (the inviter), valid until `now + ttl`.
pub fn mint(
    key: &SecretKey,
    mesh_id: &str,
    dialing_info: Vec<u8>,
    ttl: Duration,
    now: Timestamp,
    rng: &mut impl rand_core::Rng,
) -> Invite {
    Signed::sign(
        key,
        InviteBody {
            mesh_id: mesh_id.to_string(),
            inviter: key.peer_id(),
            dialing_info,
            id: InviteId::random(rng),
            expires_at: now + ttl,
        },
    )
}

/// Signs the revocation of `invite` (which `key` minted).
pub fn revoke(
    key: &SecretKey,
    mesh_id: &str,
    invite: InviteId,
    expires_at: Timestamp,
) -> SignedRevocation {
    Signed::sign(
        key,
        Revocation {
            inviter: key.peer_id(),
            mesh_id: mesh_id.to_string(),
            invite,
            expires_at,
        },
    )
}

/// What the admitting peer knows when it checks an invite.
pub trait AdmissionContext {
    /// The inviter is this node, a live peer, or a remembered former member of the mesh.
    fn is_member(&self, peer: &PeerId) -> bool;
    /// `inviter` revoked its invite `id`.
    fn is_revoked(&self, inviter: &PeerId, id: &InviteId) -> bool;
}

/// Checks `invite` for admission to `mesh_id` at `now`. The signature is checked first: nothing
/// else in an unsigned invite can be believed.
pub fn check(
    invite: &Invite,
    mesh_id: &str,
    now: Timestamp,
    ctx: &impl AdmissionContext,
) -> Result<(), InviteError> {
    if !invite.verify() {
        return Err(InviteError::BadSignature);
    }
    let body = invite.value();
    if body.mesh_id != mesh_id {
        return Err(InviteError::WrongMesh {
            expected: mesh_id.to_string(),
            found: body.mesh_id.clone(),
        });
    }
    if now >= body.expires_at {
        return Err(InviteError::Expired {
            expires_at: body.expires_at,
            now,
        });
    }
    if ctx.is_revoked(&body.inviter, &body.id) {
        return Err(InviteError::Revoked(body.id));
    }
    if !ctx.is_member(&body.inviter) {
        return Err(InviteError::UnknownInviter(body.inviter));
    }
    Ok(())
}

// Lowercase RFC 4648 base32 without padding (decoding accepts either case).
fn base32() -> data_encoding::Encoding {
    let mut spec = data_encoding::Specification::new();
    spec.symbols.push_str("abcdefghijklmnopqrstuvwxyz234567");
    spec.translate.from.push_str("ABCDEFGHIJKLMNOPQRSTUVWXYZ");
    spec.translate.to.push_str("abcdefghijklmnopqrstuvwxyz");
    spec.encoding()
        .expect("a 32-symbol alphabet with a case translation is a valid base32 specification")
}

impl Signed<InviteBody> {
    /// The text form, `closedmesh1…`.
    pub fn to_text(&self) -> String {
        let bytes = postcard::to_allocvec(self)
            .expect("postcard encoding of an in-memory invite into a Vec cannot fail");
        format!("{TEXT_PREFIX}{}", base32().encode(&bytes))
    }

    /// Parses the text form (as read from an argument, a file or the environment). Checks the
    /// shape only; [`check`] decides admission.
    pub fn from_text(text: &str) -> Result<Invite, InviteError> {
        let text = text.trim();
        let rest = text.strip_prefix(TEXT_PREFIX).ok_or_else(|| {
            InviteError::Malformed(format!("does not start with {TEXT_PREFIX:?}"))
        })?;
        let bytes = base32()
            .decode(rest.as_bytes())
            .map_err(|e| InviteError::Malformed(format!("not base32: {e}")))?;
        let (invite, tail) = postcard::take_from_bytes::<Invite>(&bytes)
            .map_err(|e| InviteError::Malformed(e.to_string()))?;
        if !tail.is_empty() {
            return Err(InviteError::Malformed(format!(
                "{} trailing bytes",
                tail.len()
            )));
        }
        if invite.value().dialing_info.len() > MAX_DIALING_INFO {
            return Err(InviteError::Malformed(
                "dialing information too large".into(),
            ));
        }
        Ok(invite)
    }
}

impl fmt::Display for Signed<InviteBody> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_text())
    }
}

impl FromStr for Signed<InviteBody> {
    type Err = InviteError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::from_text(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand_core::SeedableRng;
    use rand_pcg::Pcg64;
    use std::collections::BTreeSet;

    struct Ctx {
        members: BTreeSet<PeerId>,
        revoked: BTreeSet<(PeerId, InviteId)>,
    }

    impl AdmissionContext for Ctx {
        fn is_member(&self, peer: &PeerId) -> bool {
            self.members.contains(peer)
        }
        fn is_revoked(&self, inviter: &PeerId, id: &InviteId) -> bool {
            self.revoked.contains(&(*inviter, *id))
        }
    }

    fn setup() -> (SecretKey, Ctx, Pcg64) {
        let mut rng = Pcg64::seed_from_u64(9);
        let key = SecretKey::generate(&mut rng);
        let ctx = Ctx {
            members: [key.peer_id()].into(),
            revoked: BTreeSet::new(),
        };
        (key, ctx, rng)
    }

    const NOW: Timestamp = Timestamp::from_secs(1_750_000_000);

    #[test]
    fn fresh_invite_from_a_member_is_accepted_until_it_expires() {
        let (key, ctx, mut rng) = setup();
        let inv = mint(&key, "mesh-a", b"addr".to_vec(), DEFAULT_TTL, NOW, &mut rng);
        assert_eq!(check(&inv, "mesh-a", NOW, &ctx), Ok(()));
        let last_valid = NOW + DEFAULT_TTL - Duration::from_micros(1);
        assert_eq!(check(&inv, "mesh-a", last_valid, &ctx), Ok(()));
        assert_eq!(
            check(&inv, "mesh-a", NOW + DEFAULT_TTL, &ctx),
            Err(InviteError::Expired {
                expires_at: NOW + DEFAULT_TTL,
                now: NOW + DEFAULT_TTL
            })
        );
    }

    #[test]
    fn invite_for_another_mesh_is_refused_as_wrong_mesh() {
        let (key, ctx, mut rng) = setup();
        let inv = mint(&key, "mesh-b", vec![], DEFAULT_TTL, NOW, &mut rng);
        assert_eq!(
            check(&inv, "mesh-a", NOW, &ctx),
            Err(InviteError::WrongMesh {
                expected: "mesh-a".into(),
                found: "mesh-b".into()
            })
        );
    }

    #[test]
    fn invite_with_an_extended_expiry_fails_its_signature() {
        let (key, ctx, mut rng) = setup();
        let inv = mint(
            &key,
            "mesh-a",
            vec![],
            Duration::from_secs(60),
            NOW,
            &mut rng,
        );
        let mut body = inv.value().clone();
        body.expires_at = NOW + Duration::from_secs(365 * 24 * 3600);
        let stretched =
            Invite::from_parts(postcard::to_allocvec(&body).unwrap(), *inv.signature()).unwrap();
        assert_eq!(
            check(&stretched, "mesh-a", NOW, &ctx),
            Err(InviteError::BadSignature)
        );
    }

    #[test]
    fn revoked_invite_is_refused_and_revocation_names_only_its_signers_invites() {
        let (key, mut ctx, mut rng) = setup();
        let inv = mint(&key, "mesh-a", vec![], DEFAULT_TTL, NOW, &mut rng);
        let id = inv.value().id;
        ctx.revoked.insert((key.peer_id(), id));
        assert_eq!(
            check(&inv, "mesh-a", NOW, &ctx),
            Err(InviteError::Revoked(id))
        );

        let r = revoke(&key, "mesh-a", id, inv.value().expires_at);
        assert!(r.verify());
        assert_eq!(r.value().inviter, key.peer_id());
    }

    #[test]
    fn invite_minted_by_a_stranger_is_refused() {
        let (_, ctx, mut rng) = setup();
        let stranger = SecretKey::generate(&mut rng);
        let inv = mint(&stranger, "mesh-a", vec![], DEFAULT_TTL, NOW, &mut rng);
        assert_eq!(
            check(&inv, "mesh-a", NOW, &ctx),
            Err(InviteError::UnknownInviter(stranger.peer_id()))
        );
    }

    #[test]
    fn text_form_roundtrips_through_a_file_with_a_trailing_newline() {
        let (key, ctx, mut rng) = setup();
        let inv = mint(
            &key,
            "mesh-a",
            b"relay=disabled;127.0.0.1:4433".to_vec(),
            DEFAULT_TTL,
            NOW,
            &mut rng,
        );
        let text = inv.to_text();
        assert!(text.starts_with("closedmesh1"));
        assert!(
            text[TEXT_PREFIX.len()..]
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit())
        );
        let file_contents = format!("  {text}\n");
        let back: Invite = file_contents.parse().unwrap();
        assert_eq!(back, inv);
        assert_eq!(check(&back, "mesh-a", NOW, &ctx), Ok(()));
        // Upper case (a shouting terminal) reads the same.
        let upper = format!("{TEXT_PREFIX}{}", text[TEXT_PREFIX.len()..].to_uppercase());
        assert_eq!(upper.parse::<Invite>().unwrap(), inv);
    }

    #[test]
    fn garbage_text_is_malformed_not_a_panic() {
        for text in [
            "",
            "closedmesh1",
            "closedmesh1!!!!",
            "hello",
            "closedmesh1aaaa",
            "closedmesh1zzzzzzzzzzzzzzzz",
        ] {
            assert!(
                matches!(Invite::from_text(text), Err(InviteError::Malformed(_))),
                "{text:?}"
            );
        }
    }
}
