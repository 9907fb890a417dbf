//! The gossip wire format: versioned, length-prefixed, bounded frames of postcard-encoded
//! [`Message`]s.
//!
//! A frame is `[generation: u8][body length: u32 big-endian][body]`. The generation comes first
//! so a future generation may change everything after it. Decoding never panics and never
//! allocates more than the input justifies: an unknown generation or a body over
//! [`MAX_FRAME_BODY`] (8 MiB) is refused from the 5-byte header alone, before the body is read.
//!
//! A stream shell reads [`HEADER_LEN`] bytes, calls [`decode_header`] to learn the body length,
//! reads that many bytes and calls [`decode_body`]; a datagram/buffer shell calls [`decode`].

use crate::gossip::admission::AdmissionError;
use crate::gossip::beat::Beat;
use crate::gossip::sign::{SignedAnnouncement, SignedLeaving};
use crate::id::{PeerId, ShortId};
use crate::invite::{Invite, InviteId, SignedRevocation};
use serde::{Deserialize, Serialize};

/// The protocol generation this build speaks.
pub const GENERATION: u8 = 2;
pub const HEADER_LEN: usize = 5;
/// The largest frame body accepted or produced.
pub const MAX_FRAME_BODY: usize = 8 * 1024 * 1024;

/// Everything gossip peers say to each other.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Message {
    /// First message of a joiner (or of a peer the other side forgot): who I am, and my invite.
    Hello(Hello),
    /// The receiver refuses the sender; the reason is for the sender's logs.
    Refused(AdmissionError),
    /// Anti-entropy: the newest `seq` the sender holds per peer.
    Digest(Digest),
    /// Send me your newest records for these.
    Request(Request),
    /// Records the other side lacks (an anti-entropy or request reply): not forwarded further.
    Records(Records),
    /// Eagerly pushed news: the receiver forwards what is new to it (rumour mongering).
    Rumor(Records),
    /// A third party's hint that a peer may be down: the receiver probes it directly.
    PeerDown(PeerId),
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Hello {
    /// Signed by the sender; its `peer_id` must equal the connection's transport identity.
    pub announcement: SignedAnnouncement,
    pub invite: Option<Invite>,
    /// A passive member pulls state but never relays; others don't pick it as a gossip target.
    pub passive: bool,
}

#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct Digest {
    /// The newest seq among `entries`.
    pub base: u64,
    /// `(short id, base − newest seq)` for every peer the sender holds, itself included: 8 bytes
    /// and a small varint per peer instead of 32 and a large one (a thousand-peer digest is
    /// 12 KB, not 39).
    pub entries: Vec<(ShortId, u64)>,
    /// The revocations the sender holds, as `(inviter, invite id)`.
    pub revocations: Vec<(PeerId, InviteId)>,
    pub passive: bool,
}

#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct Request {
    /// `(short id, newest seq the asker holds)`: every held peer with that short id is asked
    /// for what is newer (a missed beat costs a beat in reply, not a whole announcement).
    pub peers: Vec<(ShortId, u64)>,
    pub revocations: Vec<(PeerId, InviteId)>,
}

/// Signed records, forwarded verbatim.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct Records {
    pub announcements: Vec<SignedAnnouncement>,
    pub heartbeats: Vec<Beat>,
    pub leavings: Vec<SignedLeaving>,
    pub revocations: Vec<SignedRevocation>,
}

impl Records {
    pub fn is_empty(&self) -> bool {
        self.announcements.is_empty()
            && self.heartbeats.is_empty()
            && self.leavings.is_empty()
            && self.revocations.is_empty()
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("truncated frame: need {needed} bytes, have {have}")]
    Truncated { needed: usize, have: usize },
    #[error("frame body of {len} bytes exceeds the {max}-byte cap")]
    Oversized { len: usize, max: usize },
    #[error("unknown protocol generation {0} (this build speaks {GENERATION})")]
    UnknownGeneration(u8),
    #[error("malformed frame body: {0}")]
    Malformed(String),
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EncodeError {
    #[error("message encodes to {len} bytes, over the {max}-byte frame cap")]
    Oversized { len: usize, max: usize },
}

/// Encodes one message as a frame.
pub fn encode(message: &Message) -> Result<Vec<u8>, EncodeError> {
    let mut frame = vec![GENERATION, 0, 0, 0, 0];
    let mut frame = postcard::to_extend(message, std::mem::take(&mut frame))
        .expect("postcard encoding of an in-memory message into a Vec cannot fail");
    let len = frame.len() - HEADER_LEN;
    if len > MAX_FRAME_BODY {
        return Err(EncodeError::Oversized {
            len,
            max: MAX_FRAME_BODY,
        });
    }
    let len32 = u32::try_from(len).expect("len ≤ MAX_FRAME_BODY fits in u32");
    frame[1..HEADER_LEN].copy_from_slice(&len32.to_be_bytes());
    Ok(frame)
}

/// The length of `encode(message)`'s frame, computed without building it (simulators count
/// bytes on the wire for every message they pass as a value).
pub fn encoded_len(message: &Message) -> usize {
    HEADER_LEN
        + postcard::serialize_with_flavor(message, postcard::ser_flavors::Size::default())
            .expect("postcard sizing of plain in-memory data cannot fail")
}

/// Reads a frame header; returns the body length that follows.
pub fn decode_header(header: &[u8]) -> Result<usize, DecodeError> {
    let Some(&generation) = header.first() else {
        return Err(DecodeError::Truncated {
            needed: HEADER_LEN,
            have: 0,
        });
    };
    if generation != GENERATION {
        return Err(DecodeError::UnknownGeneration(generation));
    }
    let Some(len_bytes) = header.get(1..HEADER_LEN) else {
        return Err(DecodeError::Truncated {
            needed: HEADER_LEN,
            have: header.len(),
        });
    };
    let len = u32::from_be_bytes(len_bytes.try_into().expect("slice of 4")) as usize;
    if len > MAX_FRAME_BODY {
        return Err(DecodeError::Oversized {
            len,
            max: MAX_FRAME_BODY,
        });
    }
    Ok(len)
}

/// Decodes a frame body (exactly one message, nothing after it).
pub fn decode_body(body: &[u8]) -> Result<Message, DecodeError> {
    if body.len() > MAX_FRAME_BODY {
        return Err(DecodeError::Oversized {
            len: body.len(),
            max: MAX_FRAME_BODY,
        });
    }
    let (message, rest) = postcard::take_from_bytes::<Message>(body)
        .map_err(|e| DecodeError::Malformed(e.to_string()))?;
    if !rest.is_empty() {
        return Err(DecodeError::Malformed(format!(
            "{} bytes after the message",
            rest.len()
        )));
    }
    Ok(message)
}

/// Decodes the frame at the front of `buf`; returns the message and the bytes it used.
/// `Truncated` means more bytes may complete it.
pub fn decode(buf: &[u8]) -> Result<(Message, usize), DecodeError> {
    let len = decode_header(buf)?;
    let total = HEADER_LEN + len;
    let Some(body) = buf.get(HEADER_LEN..total) else {
        return Err(DecodeError::Truncated {
            needed: total,
            have: buf.len(),
        });
    };
    Ok((decode_body(body)?, total))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_with_a_length_over_the_cap_is_refused_before_the_body_arrives() {
        let mut header = vec![GENERATION];
        header.extend_from_slice(&(MAX_FRAME_BODY as u32 + 1).to_be_bytes());
        assert_eq!(
            decode_header(&header),
            Err(DecodeError::Oversized {
                len: MAX_FRAME_BODY + 1,
                max: MAX_FRAME_BODY
            })
        );
        assert_eq!(
            decode(&header),
            Err(DecodeError::Oversized {
                len: MAX_FRAME_BODY + 1,
                max: MAX_FRAME_BODY
            })
        );
    }

    #[test]
    fn unknown_generation_is_refused_whatever_follows() {
        assert_eq!(
            decode(&[GENERATION + 1, 0, 0, 0, 0]),
            Err(DecodeError::UnknownGeneration(GENERATION + 1))
        );
        // Generation 1 heartbeats were signed records; its frames are refused, not misread.
        assert_eq!(
            decode(&[1, 0, 0, 0, 0]),
            Err(DecodeError::UnknownGeneration(1))
        );
        assert_eq!(decode(&[0]), Err(DecodeError::UnknownGeneration(0)));
    }

    #[test]
    fn partial_frames_are_truncated() {
        let frame = encode(&Message::PeerDown(PeerId([7; 32]))).unwrap();
        for cut in 0..frame.len() {
            assert!(
                matches!(decode(&frame[..cut]), Err(DecodeError::Truncated { .. })),
                "cut at {cut}"
            );
        }
        assert_eq!(
            decode(&frame).unwrap(),
            (Message::PeerDown(PeerId([7; 32])), frame.len())
        );
    }

    #[test]
    fn two_frames_back_to_back_decode_in_order() {
        let a = Message::PeerDown(PeerId([1; 32]));
        let b = Message::Request(Request {
            peers: vec![(PeerId([2; 32]).short_id(), 7)],
            revocations: vec![],
        });
        let mut buf = encode(&a).unwrap();
        buf.extend(encode(&b).unwrap());
        let (first, used) = decode(&buf).unwrap();
        assert_eq!(first, a);
        assert_eq!(decode(&buf[used..]).unwrap().0, b);
    }

    #[test]
    fn body_with_trailing_bytes_is_malformed() {
        let mut frame = encode(&Message::PeerDown(PeerId([7; 32]))).unwrap();
        frame.push(0);
        let len = (frame.len() - HEADER_LEN) as u32;
        frame[1..5].copy_from_slice(&len.to_be_bytes());
        assert!(matches!(decode(&frame), Err(DecodeError::Malformed(_))));
    }

    #[test]
    fn encoded_len_is_the_frame_length() {
        let digest = Message::Digest(Digest {
            base: 1 << 40,
            entries: (0..300u64)
                .map(|i| (PeerId([i as u8; 32]).short_id(), i << 20))
                .collect(),
            revocations: vec![],
            passive: true,
        });
        let key = crate::gossip::sign::SecretKey::from_bytes([3; 32]);
        let mut a = crate::peer::PeerAnnouncement::new(
            key.peer_id(),
            "m",
            crate::peer::Role::Host { http_port: 1 },
        );
        a.hosted_models = vec!["Qwen3-8B-Q4_K_M".into()];
        let records = Records {
            announcements: vec![crate::gossip::sign::Signed::sign(&key, a)],
            ..Records::default()
        };
        for m in [
            Message::PeerDown(PeerId([7; 32])),
            digest,
            Message::Records(Records::default()),
            Message::Rumor(records),
        ] {
            assert_eq!(encoded_len(&m), encode(&m).unwrap().len(), "{m:?}");
        }
    }

    #[test]
    fn encoding_a_message_over_the_cap_is_an_error() {
        let huge = Message::Digest(Digest {
            base: u64::MAX,
            entries: (0..800_000u64).map(|i| ([1; 8], i)).collect(),
            revocations: vec![],
            passive: false,
        });
        assert!(matches!(encode(&huge), Err(EncodeError::Oversized { .. })));
    }
}
