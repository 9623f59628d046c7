//! Persistence of the engine's state: blocks, offence history, manual list
//! entries and pins survive a restart.
//!
//! Writes go to a temporary file in the same directory, are fsynced, then
//! renamed over the old file (and the directory fsynced), so a crash at any
//! moment leaves either the old state or the new one, never a torn file.

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;

use crate::engine::Guard;
use crate::integrity::{self, Purpose};

/// Name of the state file inside the state directory.
pub const STATE_FILE: &str = "state.bin";

/// Writes `bytes` to `path` atomically: the file holds either its previous
/// content or `bytes`, whatever happens during the call.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("state");
    let tmp = dir.join(format!(".{name}.tmp.{}", std::process::id()));
    let result = (|| {
        let mut f = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .open(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        fs::rename(&tmp, path)?;
        // The rename is durable only once the directory entry is.
        File::open(dir)?.sync_all()
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

/// The state file of a state directory.
pub fn state_path(dir: &Path) -> PathBuf {
    dir.join(STATE_FILE)
}

/// Restores the engine from `dir`'s state file, if there is one. A corrupt
/// file stops the start with a message, unless `reset` is set: then it is
/// moved aside (never deleted) and the guard starts clean.
pub fn restore(guard: &Guard, dir: &Path, reset: bool) -> anyhow::Result<()> {
    let path = state_path(dir);
    let bytes = match fs::read(&path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
    };
    let checked = integrity::open_file(Purpose::State, &bytes).map_err(|e| {
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

/// Saves from the persistence loop, the admin API and shutdown can race;
/// one at a time keeps the temporary file theirs alone and the newest
/// snapshot last on disk.
static SAVING: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// Writes the engine's state to `dir` now.
pub fn save(guard: &Guard, dir: &Path) -> anyhow::Result<u64> {
    let _one_at_a_time = SAVING.lock().unwrap_or_else(|e| e.into_inner());
    let (bytes, generation) = guard.with(|engine, now| {
        let mut buf = vec![0; engine.snapshot_len()];
        let n = engine
            .write_snapshot(now, &mut buf)
            .expect("buffer sized by snapshot_len");
        buf.truncate(n);
        (buf, engine.state_generation())
    });
    fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let bytes = integrity::seal_file(Purpose::State, &bytes)?;
    write_atomic(&state_path(dir), &bytes)
        .with_context(|| format!("writing {}", state_path(dir).display()))?;
    Ok(generation)
}

/// Saves shortly after each change: checks every `interval` whether the
/// state changed since the last save. A failed save is logged and retried;
/// the previous file stays intact.
pub async fn persist_loop(guard: Arc<Guard>, dir: PathBuf, interval: Duration) {
    let mut saved = guard.with(|e, _| e.state_generation());
    loop {
        tokio::time::sleep(interval).await;
        let current = guard.with(|e, _| e.state_generation());
        if current == saved {
            continue;
        }
        let (g, d) = (guard.clone(), dir.clone());
        match tokio::task::spawn_blocking(move || save(&g, &d)).await {
            Ok(Ok(generation)) => saved = generation,
            Ok(Err(e)) => {
                tracing::error!(error = %format!("{e:#}"), "saving state failed; will retry")
            }
            Err(e) => tracing::error!(error = %e, "state save task failed"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn atomic_write_replaces_the_whole_file_and_leaves_no_temporary() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.bin");
        write_atomic(&path, b"old state").unwrap();
        write_atomic(&path, b"new").unwrap();
        assert_eq!(fs::read(&path).unwrap(), b"new");
        let names: Vec<_> = fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, vec![std::ffi::OsString::from("s.bin")]);
    }

    #[test]
    fn a_failed_write_leaves_the_previous_file_intact() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.bin");
        write_atomic(&path, b"precious").unwrap();
        // Renaming over a directory fails after the temporary was written.
        let blocked = dir.path().join("sub");
        fs::create_dir(&blocked).unwrap();
        fs::write(blocked.join("x"), b"x").unwrap();
        assert!(write_atomic(&blocked, b"lost").is_err());
        assert_eq!(fs::read(&path).unwrap(), b"precious");
        assert!(fs::read_dir(dir.path()).unwrap().all(|e| !e
            .unwrap()
            .file_name()
            .to_string_lossy()
            .contains(".tmp.")));
    }
}
