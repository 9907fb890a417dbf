//! Invites (SPEC §9): minting and checking signed, expiring, revocable mesh invites.
