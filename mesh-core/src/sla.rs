//! SLA gate, tiers, fallback decision, response headers and mesh-share math (SPEC §6).

use serde::{Deserialize, Serialize};
use std::fmt;

/// A model's service tier: what latency the mesh promises for it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Tier {
    DailyDriver,
    Capacity,
    Experimental,
}

impl Tier {
    pub fn as_str(self) -> &'static str {
        match self {
            Tier::DailyDriver => "daily-driver",
            Tier::Capacity => "capacity",
            Tier::Experimental => "experimental",
        }
    }
}

impl fmt::Display for Tier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}
