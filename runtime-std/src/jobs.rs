//! The one shape of every background job (persistence, refresh, CrowdSec
//! bouncer and watcher, nftables mirror, token monitor): built with what it
//! needs, started with the node's handles and a shutdown signal, reporting
//! how it is doing through the telemetry.

use std::future::Future;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::node::Handles;
use crate::telemetry::JobKind;

/// Becomes `true` when the node shuts down (a dropped sender counts too).
pub type Shutdown = watch::Receiver<bool>;

/// A background job of the node.
pub trait Job: Send + 'static {
    /// Its slot in the telemetry.
    const KIND: JobKind;

    /// Runs until `shutdown` (or until the job has nothing left to do),
    /// reporting each round through `handles.telemetry.jobs`.
    fn run(self, handles: Arc<Handles>, shutdown: Shutdown) -> impl Future<Output = ()> + Send;
}

/// Starts `job` on the runtime; its telemetry shows it running until it
/// returns.
pub fn spawn<J: Job>(job: J, handles: &Arc<Handles>, shutdown: &Shutdown) -> JoinHandle<()> {
    let (handles, shutdown) = (handles.clone(), shutdown.clone());
    handles
        .telemetry
        .jobs
        .get(J::KIND)
        .running
        .store(true, Ordering::Relaxed);
    tokio::spawn(async move {
        let telemetry = handles.telemetry.clone();
        job.run(handles, shutdown).await;
        telemetry
            .jobs
            .get(J::KIND)
            .running
            .store(false, Ordering::Relaxed);
    })
}

/// Waits until `shutdown` says stop; for a job's `select!`.
pub async fn stopped(shutdown: &mut Shutdown) {
    // An error means the sender is gone: the node is ending.
    let _ = shutdown.wait_for(|stop| *stop).await;
}
