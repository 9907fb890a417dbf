//! SLA gate, tiers, fallback decision, response headers and mesh-share math (SPEC §6).
