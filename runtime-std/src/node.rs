//! The handles of one running node, built once at start and passed down to
//! whatever needs them, instead of process-global state.

use std::sync::{Arc, Mutex};

use crate::engine::Guard;
use crate::persist::seal::Sealer;
use crate::telemetry::Telemetry;

/// The engine guard, the sealer (with an `[hsm]` token) and the telemetry
/// of one node: what the listeners, the admin API and every background job
/// share.
pub struct Handles {
    /// The engine and its clock.
    pub guard: Arc<Guard>,
    /// Seals the state and pins files; `None` writes and reads them plain.
    pub sealer: Option<Arc<Sealer>>,
    /// What the admin API and the metrics read.
    pub telemetry: Arc<Telemetry>,
    /// Saves of the state file from the persistence job, the admin API and
    /// shutdown can race: one at a time keeps the temporary file theirs
    /// alone and the newest snapshot last on disk.
    pub(crate) saving: Mutex<()>,
}

impl Handles {
    /// The handles of a node around `guard`, without a sealer.
    pub fn new(guard: Arc<Guard>) -> Handles {
        Handles::with(guard, None, Arc::new(Telemetry::default()))
    }

    /// The handles of a node from its parts.
    pub fn with(
        guard: Arc<Guard>,
        sealer: Option<Arc<Sealer>>,
        telemetry: Arc<Telemetry>,
    ) -> Handles {
        Handles {
            guard,
            sealer,
            telemetry,
            saving: Mutex::new(()),
        }
    }

    /// The sealer, borrowed, as the file functions take it.
    pub fn sealer(&self) -> Option<&Sealer> {
        self.sealer.as_deref()
    }
}
