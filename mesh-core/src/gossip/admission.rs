//! Admission: who may gossip with this node.
//!
//! A connection is admitted when it presents a [`Hello`] whose signed announcement verifies, is
//! signed by the connection's transport identity (the iroh endpoint id the shell passes in), is
//! for this mesh, and either comes with a valid invite or is from a peer this node already knows
//! as a member (live, or remembered after it went away). A member's later connections need no new
//! Hello: its transport identity is already tied to a signed announcement in the mesh state.

use crate::gossip::wire::Hello;
use crate::id::PeerId;
use crate::invite::{self, AdmissionContext, InviteError, InviteId};
use crate::time::Timestamp;
use serde::{Deserialize, Serialize};

/// Why a peer was refused. Sent back to it (as `Message::Refused`) and surfaced to the shell,
/// which logs it; each says what the operator must fix.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error, Serialize, Deserialize)]
pub enum AdmissionError {
    #[error("not admitted: present a Hello with a signed announcement and an invite first")]
    NotAdmitted,
    #[error("hello announcement signature does not verify")]
    BadAnnouncementSignature,
    #[error("hello announcement is signed by {claimed} but the connection is from {transport}")]
    IdentityMismatch { claimed: PeerId, transport: PeerId },
    #[error("hello announcement is for mesh {found:?}, this is mesh {expected:?}")]
    WrongMesh { expected: String, found: String },
    #[error("no invite presented and the peer is not a known member of this mesh")]
    MissingInvite,
    #[error("invite refused: {0}")]
    Invite(#[from] InviteError),
}

/// On what grounds a peer was admitted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum AdmittedBy {
    /// Already known as a member (live or remembered).
    Membership,
    /// A valid invite.
    Invite(InviteId),
}

/// Decides a [`Hello`] that arrived on a connection from `transport`.
pub fn admit(
    hello: &Hello,
    transport: PeerId,
    mesh_id: &str,
    now: Timestamp,
    ctx: &impl AdmissionContext,
) -> Result<AdmittedBy, AdmissionError> {
    let ann = &hello.announcement;
    if !ann.verify() {
        return Err(AdmissionError::BadAnnouncementSignature);
    }
    if ann.signer() != transport {
        return Err(AdmissionError::IdentityMismatch {
            claimed: ann.signer(),
            transport,
        });
    }
    if ann.value().mesh_id != mesh_id {
        return Err(AdmissionError::WrongMesh {
            expected: mesh_id.to_string(),
            found: ann.value().mesh_id.clone(),
        });
    }
    match &hello.invite {
        Some(inv) => match invite::check(inv, mesh_id, now, ctx) {
            Ok(()) => Ok(AdmittedBy::Invite(inv.value().id)),
            // A remembered member whose old invite lapsed is still a member.
            Err(_) if ctx.is_member(&transport) => Ok(AdmittedBy::Membership),
            Err(e) => Err(e.into()),
        },
        None if ctx.is_member(&transport) => Ok(AdmittedBy::Membership),
        None => Err(AdmissionError::MissingInvite),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // The shell logs these verbatim: each must say what was wrong and, where it can, what to do.
    #[test]
    fn refusal_reasons_read_as_clear_log_lines() {
        let expired = AdmissionError::Invite(InviteError::Expired {
            expires_at: Timestamp::from_secs(1_750_086_400),
            now: Timestamp::from_secs(1_750_090_000),
        });
        assert_eq!(
            expired.to_string(),
            "invite refused: invite expired at t=1750086400.000s (now t=1750090000.000s); \
             mint a new one with `mesh-node invite`"
        );
        let wrong_mesh = AdmissionError::Invite(InviteError::WrongMesh {
            expected: "mesh-a".into(),
            found: "mesh-b".into(),
        });
        assert_eq!(
            wrong_mesh.to_string(),
            "invite refused: invite is for mesh \"mesh-b\", this is mesh \"mesh-a\""
        );
        assert_eq!(
            AdmissionError::Invite(InviteError::BadSignature).to_string(),
            "invite refused: invite signature does not verify: altered or not signed by its inviter"
        );
        let mismatch = AdmissionError::IdentityMismatch {
            claimed: PeerId([0xaa; 32]),
            transport: PeerId([0xbb; 32]),
        };
        assert_eq!(
            mismatch.to_string(),
            "hello announcement is signed by aaaaaaaaaa but the connection is from bbbbbbbbbb"
        );
    }
}
