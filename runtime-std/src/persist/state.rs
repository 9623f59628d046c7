//! Persistence of the engine's state: blocks, offence history, manual list
//! entries and pins survive a restart. Files are written through
//! [`crate::persist::atomic`], so a crash at any moment leaves either the old
//! state or the new one, never a torn file.

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;

use crate::engine::Guard;
use crate::jobs::{self, Job, Shutdown};
use crate::node::Handles;
use crate::persist::atomic::{read_regular, write_atomic, TMP_SUFFIX};
use crate::persist::seal::{self as integrity, Purpose, Sealer};
use crate::telemetry::JobKind;

/// Name of the state file inside the state directory.
pub const STATE_FILE: &str = "state.bin";

/// The state file of a state directory.
pub fn state_path(dir: &Path) -> PathBuf {
    dir.join(STATE_FILE)
}

/// Restores the engine from `dir`'s state file, if there is one, its seal
/// checked with `sealer`. A corrupt
/// file stops the start with a message, unless `reset` is set: then it is
/// moved aside (never deleted) and the guard starts clean.
pub fn restore(
    guard: &Guard,
    dir: &Path,
    reset: bool,
    sealer: Option<&Sealer>,
) -> anyhow::Result<()> {
    remove_stale_temporaries(dir);
    let path = state_path(dir);
    let Some(bytes) = read_regular(&path, "state file")? else {
        return Ok(());
    };
    let checked = integrity::open_file(sealer, Purpose::State, &bytes).map_err(|e| {
        anyhow::anyhow!(
            "state file {} is refused: {e}. Start with --reset-state to move it aside and start clean",
            path.display()
        )
    });
    let bytes = match checked {
        Ok(payload) => payload,
        Err(e) if reset => {
            move_aside(&path, &e)?;
            return Ok(());
        }
        Err(e) => return Err(e),
    };
    match guard.with(|engine, now| engine.restore(now, &bytes)) {
        Ok(r) => {
            tracing::info!(
                file = %path.display(),
                blocks = r.blocks,
                clients = r.clients,
                pins = r.pins,
                "state restored"
            );
            Ok(())
        }
        Err(e) if reset => move_aside(&path, &e),
        Err(e) => anyhow::bail!(
            "state file {} is unusable: {e}. Start with --reset-state to move it aside and start clean",
            path.display()
        ),
    }
}

/// Moves an unusable state file aside (never deletes it).
fn move_aside(path: &Path, error: &dyn std::fmt::Display) -> anyhow::Result<()> {
    let aside = path.with_extension(format!(
        "corrupt-{}",
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0)
    ));
    fs::rename(path, &aside).with_context(|| format!("moving {} aside", path.display()))?;
    tracing::warn!(
        file = %path.display(),
        moved_to = %aside.display(),
        error = %error,
        "corrupt state file moved aside; starting clean"
    );
    Ok(())
}

/// A writer killed between creating its temporary and renaming it (SIGKILL,
/// power loss) leaves the temporary behind under a name no later writer
/// reuses: without this, every crash would leave one more state-sized file.
/// Both the current names (`.state.bin.<random>.tmp`) and those of older
/// versions (`.state.bin.tmp.<pid>`) are removed; a link is removed itself,
/// never what it points at, and a directory is left alone. Only called at
/// start, before any save of ours.
fn remove_stale_temporaries(dir: &Path) {
    let prefix = format!(".{STATE_FILE}.");
    let legacy = format!(".{STATE_FILE}.tmp.");
    let Ok(entries) = fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let name = name.to_string_lossy();
        let ours =
            name.starts_with(&legacy) || (name.starts_with(&prefix) && name.ends_with(TMP_SUFFIX));
        // DirEntry::file_type does not follow links.
        let not_a_dir = entry.file_type().is_ok_and(|t| !t.is_dir());
        if ours && not_a_dir {
            let _ = fs::remove_file(entry.path());
        }
    }
}

/// Writes the engine's state to `dir` now, sealed with the node's sealer;
/// counted (ok or failed) for the metrics.
pub fn save(node: &Handles, dir: &Path) -> anyhow::Result<u64> {
    let saved = save_uncounted(node, dir);
    node.telemetry.ops.saved(saved.is_ok());
    saved
}

/// [`save`] without the count.
fn save_uncounted(node: &Handles, dir: &Path) -> anyhow::Result<u64> {
    let _one_at_a_time = node.saving.lock().unwrap_or_else(|e| e.into_inner());
    let (bytes, generation) = node.guard.with(|engine, now| {
        let mut buf = vec![0; engine.snapshot_len()];
        let n = engine
            .write_snapshot(now, &mut buf)
            .expect("buffer sized by snapshot_len");
        buf.truncate(n);
        (buf, engine.state_generation())
    });
    fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let bytes = integrity::seal_file(node.sealer(), Purpose::State, &bytes)?;
    write_atomic(&state_path(dir), &bytes)
        .with_context(|| format!("writing {}", state_path(dir).display()))?;
    Ok(generation)
}

/// [`save`], with failures logged once per episode (see [`crate::episode`])
/// and counted in the persistence job's telemetry; returns the pause a
/// retrying caller should wait after a failure.
pub fn save_logged(node: &Handles, dir: &Path) -> Result<u64, (anyhow::Error, Duration)> {
    let result = save(node, dir);
    let status = node.telemetry.jobs.get(JobKind::Persist);
    let mut trouble = node
        .telemetry
        .save_trouble
        .lock()
        .unwrap_or_else(|e| e.into_inner());
    let now = tokio::time::Instant::now();
    match result {
        Ok(generation) => {
            status.succeeded();
            if let Some(failures) = trouble.succeeded(now) {
                tracing::info!(failures, dir = %dir.display(), "saving state works again");
            }
            Ok(generation)
        }
        Err(e) => {
            status.failed(&format!("{e:#}"));
            let failure = trouble.failed(now);
            if failure.first {
                tracing::error!(
                    error = %format!("{e:#}"),
                    "saving state failed; retrying with backoff (logged once until a save works)"
                );
            }
            Err((e, failure.pause))
        }
    }
}

/// The persistence job: saves shortly after each change, checking every
/// `interval` whether the state changed since the last save. A failed save
/// is retried with an exponential backoff and logged once until a save
/// works; the previous file stays intact. The last save, at shutdown, is
/// the caller's (after the drain).
pub struct Persist {
    /// The state directory.
    pub dir: PathBuf,
    /// How often the state's generation is looked at.
    pub interval: Duration,
}

impl Job for Persist {
    const KIND: JobKind = JobKind::Persist;

    async fn run(self, node: Arc<Handles>, mut shutdown: Shutdown) {
        let mut saved = node.guard.with(|e, _| e.state_generation());
        let mut pause = self.interval;
        loop {
            tokio::select! {
                () = tokio::time::sleep(pause) => {}
                () = jobs::stopped(&mut shutdown) => return,
            }
            pause = self.interval;
            let current = node.guard.with(|e, _| e.state_generation());
            if current == saved {
                continue;
            }
            let (n, d) = (node.clone(), self.dir.clone());
            match tokio::task::spawn_blocking(move || save_logged(&n, &d)).await {
                Ok(Ok(generation)) => saved = generation,
                Ok(Err((_, backoff))) => pause = backoff.max(self.interval),
                Err(e) => tracing::error!(error = %e, "state save task failed"),
            }
        }
    }
}
