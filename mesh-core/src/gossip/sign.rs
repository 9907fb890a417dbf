//! Origin signatures: every record that gossip relays (announcements, leavings, invite
//! revocations, invites) is signed by the peer it speaks for (heartbeats are reveals of a hash
//! chain whose end the signed announcement carries: [`crate::gossip::beat`]), so a relay can forward it but
//! never forge or alter it (the original let relays forge metrics).
//!
//! A [`Signed`] record is the exact postcard bytes its origin signed plus the signature, with the
//! decoded value alongside. The signature covers `DOMAIN || body`, where each record kind has its
//! own domain-separation prefix, so a signature over one kind never verifies as another. Relays
//! forward the original bytes verbatim, so nothing depends on re-encoding being canonical.

use crate::id::PeerId;
use crate::peer::PeerAnnouncement;
use ed25519_dalek::{Signer, SigningKey, VerifyingKey};
use serde::de::{self, DeserializeOwned, SeqAccess, Visitor};
use serde::ser::SerializeTuple;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::fmt;
use std::sync::{Arc, OnceLock};

pub const ANNOUNCE_DOMAIN: &[u8] = b"closedmesh/announce/v1\0";
pub const LEAVING_DOMAIN: &[u8] = b"closedmesh/leaving/v1\0";

/// A node's Ed25519 secret key. In the node it is iroh's `SecretKey` (same curve, same bytes), so
/// the [`PeerId`] it signs as is the node's iroh `EndpointId`.
pub struct SecretKey(SigningKey);

impl SecretKey {
    pub fn from_bytes(bytes: [u8; 32]) -> Self {
        SecretKey(SigningKey::from_bytes(&bytes))
    }

    /// A fresh key from a caller-seeded generator (tests and the simulator; the node uses iroh's).
    pub fn generate(rng: &mut impl rand_core::Rng) -> Self {
        let mut bytes = [0u8; 32];
        rng.fill_bytes(&mut bytes);
        Self::from_bytes(bytes)
    }

    pub fn to_bytes(&self) -> [u8; 32] {
        self.0.to_bytes()
    }

    pub fn peer_id(&self) -> PeerId {
        PeerId(self.0.verifying_key().to_bytes())
    }

    fn sign_raw(&self, domain: &[u8], body: &[u8]) -> Signature {
        Signature(self.0.sign(&signed_message(domain, body)).to_bytes())
    }
}

impl Clone for SecretKey {
    fn clone(&self) -> Self {
        SecretKey(self.0.clone())
    }
}

impl fmt::Debug for SecretKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SecretKey(for {})", self.peer_id())
    }
}

fn signed_message(domain: &[u8], body: &[u8]) -> Vec<u8> {
    let mut msg = Vec::with_capacity(domain.len() + body.len());
    msg.extend_from_slice(domain);
    msg.extend_from_slice(body);
    msg
}

fn verify_raw(signer: &PeerId, domain: &[u8], body: &[u8], signature: &Signature) -> bool {
    let Ok(key) = VerifyingKey::from_bytes(signer.as_bytes()) else {
        return false;
    };
    let sig = ed25519_dalek::Signature::from_bytes(&signature.0);
    key.verify_strict(&signed_message(domain, body), &sig)
        .is_ok()
}

/// A 64-byte Ed25519 signature.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Signature(pub [u8; 64]);

impl fmt::Debug for Signature {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Signature({}…)", hex::encode(&self.0[..6]))
    }
}

/// A value that is signed by the peer it speaks for.
pub trait Signable: Serialize + DeserializeOwned {
    /// The domain-separation prefix of this record kind.
    const DOMAIN: &'static [u8];
    /// Whose key must have signed it.
    fn signer(&self) -> PeerId;
}

impl Signable for PeerAnnouncement {
    const DOMAIN: &'static [u8] = ANNOUNCE_DOMAIN;
    fn signer(&self) -> PeerId {
        self.peer_id
    }
}

/// The origin leaves the mesh: everyone removes it at once.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Leaving {
    pub peer: PeerId,
    pub mesh_id: String,
    pub seq: u64,
}

impl Signable for Leaving {
    const DOMAIN: &'static [u8] = LEAVING_DOMAIN;
    fn signer(&self) -> PeerId {
        self.peer
    }
}

pub type SignedAnnouncement = Signed<PeerAnnouncement>;
pub type SignedLeaving = Signed<Leaving>;

/// A record as its origin signed it: the signed bytes, the signature, and the decoded value.
///
/// Cheap to clone (shared). Constructing one (by [`Signed::sign`] or by decoding) never checks the
/// signature; [`Signed::verify`] does, once, and remembers the answer. The memo is sound because
/// the bytes, signature and value of one instance never change; every decode makes a new instance.
pub struct Signed<T>(Arc<SignedInner<T>>);

struct SignedInner<T> {
    body: Vec<u8>,
    signature: Signature,
    value: T,
    verified: OnceLock<bool>,
}

impl<T: Signable> Signed<T> {
    /// Signs `value` with `key`. The result verifies only if `value.signer()` is `key`'s id.
    pub fn sign(key: &SecretKey, value: T) -> Self {
        let body = postcard::to_allocvec(&value)
            .expect("postcard encoding of plain in-memory data into a Vec cannot fail");
        let signature = key.sign_raw(T::DOMAIN, &body);
        let verified = OnceLock::new();
        // Signing with the signer's own key verifies by construction; skip the curve arithmetic.
        if value.signer() == key.peer_id() {
            let _ = verified.set(true);
        }
        Signed(Arc::new(SignedInner {
            body,
            signature,
            value,
            verified,
        }))
    }

    /// Rebuilds a record from signed bytes and a signature (as received). Fails if the bytes are
    /// not exactly one encoded `T`; the signature is not checked here.
    pub fn from_parts(body: Vec<u8>, signature: Signature) -> Result<Self, postcard::Error> {
        let (value, rest) = postcard::take_from_bytes::<T>(&body)?;
        if !rest.is_empty() {
            return Err(postcard::Error::DeserializeBadEncoding);
        }
        Ok(Signed(Arc::new(SignedInner {
            body,
            signature,
            value,
            verified: OnceLock::new(),
        })))
    }

    /// Whether the signature is valid for these bytes under `value().signer()`'s key.
    pub fn verify(&self) -> bool {
        *self.0.verified.get_or_init(|| {
            verify_raw(
                &self.0.value.signer(),
                T::DOMAIN,
                &self.0.body,
                &self.0.signature,
            )
        })
    }

    pub fn signer(&self) -> PeerId {
        self.0.value.signer()
    }
}

impl<T> Signed<T> {
    pub fn value(&self) -> &T {
        &self.0.value
    }

    pub fn body(&self) -> &[u8] {
        &self.0.body
    }

    pub fn signature(&self) -> &Signature {
        &self.0.signature
    }
}

impl<T> Clone for Signed<T> {
    fn clone(&self) -> Self {
        Signed(Arc::clone(&self.0))
    }
}

impl<T> PartialEq for Signed<T> {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.0, &other.0)
            || (self.0.signature == other.0.signature && self.0.body == other.0.body)
    }
}

impl<T: fmt::Debug> fmt::Debug for Signed<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Signed")
            .field("value", &self.0.value)
            .field("signature", &self.0.signature)
            .finish()
    }
}

// Wire form: (body as bytes, signature as 64 raw bytes). In postcard that is a varint length,
// the body, and exactly 64 bytes.
impl<T> Serialize for Signed<T> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut t = s.serialize_tuple(2)?;
        t.serialize_element(&BytesRef(&self.0.body))?;
        t.serialize_element(&self.0.signature)?;
        t.end()
    }
}

impl<'de, T: Signable> Deserialize<'de> for Signed<T> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let (ByteBuf(body), signature) = <(ByteBuf, Signature)>::deserialize(d)?;
        Signed::from_parts(body, signature).map_err(|e| de::Error::custom(e.to_string()))
    }
}

struct BytesRef<'a>(&'a [u8]);

impl Serialize for BytesRef<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_bytes(self.0)
    }
}

/// Owned bytes that deserialize from a byte string (postcard) or a sequence of numbers (JSON).
struct ByteBuf(Vec<u8>);

impl<'de> Deserialize<'de> for ByteBuf {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = ByteBuf;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("bytes")
            }
            fn visit_bytes<E: de::Error>(self, v: &[u8]) -> Result<ByteBuf, E> {
                Ok(ByteBuf(v.to_vec()))
            }
            fn visit_byte_buf<E: de::Error>(self, v: Vec<u8>) -> Result<ByteBuf, E> {
                Ok(ByteBuf(v))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<ByteBuf, A::Error> {
                // Never trust a claimed length for preallocation.
                let mut out = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(4096));
                while let Some(b) = seq.next_element::<u8>()? {
                    out.push(b);
                }
                Ok(ByteBuf(out))
            }
        }
        d.deserialize_byte_buf(V)
    }
}

impl Serialize for Signature {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        if s.is_human_readable() {
            return s.serialize_str(&hex::encode(self.0));
        }
        let mut t = s.serialize_tuple(64)?;
        for b in &self.0 {
            t.serialize_element(b)?;
        }
        t.end()
    }
}

impl<'de> Deserialize<'de> for Signature {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        if d.is_human_readable() {
            let s = String::deserialize(d)?;
            let mut out = [0u8; 64];
            hex::decode_to_slice(&s, &mut out).map_err(de::Error::custom)?;
            return Ok(Signature(out));
        }
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Signature;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("64 signature bytes")
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Signature, A::Error> {
                let mut out = [0u8; 64];
                for (i, slot) in out.iter_mut().enumerate() {
                    *slot = seq
                        .next_element()?
                        .ok_or_else(|| de::Error::invalid_length(i, &self))?;
                }
                Ok(Signature(out))
            }
        }
        d.deserialize_tuple(64, V)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::peer::Role;
    use rand_core::SeedableRng;

    fn key(seed: u64) -> SecretKey {
        SecretKey::generate(&mut rand_pcg::Pcg64::seed_from_u64(seed))
    }

    fn announcement(key: &SecretKey) -> PeerAnnouncement {
        let mut a = PeerAnnouncement::new(key.peer_id(), "mesh-a", Role::Worker);
        a.seq = 7;
        a.fast_memory_bytes = 17_200_000_000;
        a
    }

    #[test]
    fn raw_secret_bytes_give_the_same_identity() {
        let k = key(1);
        let again = SecretKey::from_bytes(k.to_bytes());
        assert_eq!(again.peer_id(), k.peer_id());
    }

    #[test]
    fn a_signed_announcement_verifies_after_a_wire_roundtrip() {
        let k = key(1);
        let signed = Signed::sign(&k, announcement(&k));
        let bytes = postcard::to_allocvec(&signed).unwrap();
        let back: SignedAnnouncement = postcard::from_bytes(&bytes).unwrap();
        assert_eq!(back, signed);
        assert!(back.verify());
        assert_eq!(back.value().fast_memory_bytes, 17_200_000_000);
    }

    #[test]
    fn relay_that_inflates_a_metric_breaks_the_signature() {
        let k = key(1);
        let signed = Signed::sign(&k, announcement(&k));
        let mut forged = signed.value().clone();
        forged.fast_memory_bytes *= 4;
        let tampered = SignedAnnouncement::from_parts(
            postcard::to_allocvec(&forged).unwrap(),
            *signed.signature(),
        )
        .unwrap();
        assert!(!tampered.verify());
    }

    #[test]
    fn announcement_signed_by_another_key_does_not_verify_as_the_origin() {
        let origin = key(1);
        let forger = key(2);
        let forged = Signed::sign(&forger, announcement(&origin));
        assert!(!forged.verify());
    }

    #[test]
    fn a_signature_over_one_record_kind_never_verifies_as_another() {
        // Same bytes, different domain: a signature made for another kind of record must not pass
        // as a leaving.
        let k = key(3);
        let leaving = Leaving {
            peer: k.peer_id(),
            mesh_id: "m".into(),
            seq: 5,
        };
        let body = postcard::to_allocvec(&leaving).unwrap();
        let other_kind = k.sign_raw(ANNOUNCE_DOMAIN, &body);
        let replayed = SignedLeaving::from_parts(body.clone(), other_kind).unwrap();
        assert!(!replayed.verify());
        let genuine = SignedLeaving::from_parts(
            body,
            k.sign_raw(LEAVING_DOMAIN, &{
                postcard::to_allocvec(&leaving).unwrap()
            }),
        )
        .unwrap();
        assert!(
            genuine.verify(),
            "the same bytes under their own domain verify"
        );
    }

    #[test]
    fn trailing_bytes_after_the_body_are_rejected() {
        let k = key(4);
        let signed = Signed::sign(&k, announcement(&k));
        let mut body = signed.body().to_vec();
        body.push(0);
        assert!(SignedAnnouncement::from_parts(body, *signed.signature()).is_err());
    }

    #[test]
    fn signature_json_form_is_hex() {
        let sig = Signature([0xab; 64]);
        let json = serde_json::to_string(&sig).unwrap();
        assert_eq!(json, format!("\"{}\"", "ab".repeat(64)));
        assert_eq!(serde_json::from_str::<Signature>(&json).unwrap(), sig);
    }
}
