//! Blocks shared with the rest of a fleet: the CrowdSec bouncer and watcher,
//! and the nftables mirror of the engine's blocks.

pub mod crowdsec;
pub mod nftables;
