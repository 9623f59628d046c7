//! What outlives a restart: atomic files, the saved engine state, pins
//! files, and the seals that protect them.

pub mod atomic;
pub mod pinfile;
pub mod seal;
pub mod state;
