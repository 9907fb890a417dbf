//! Status classifier and the `/api/status` / `/api/models` payloads (SPEC §4).

pub mod payload;

pub use payload::*;
