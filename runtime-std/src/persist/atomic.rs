//! Atomic files: writes go to a temporary file in the same directory, are
//! fsynced, then renamed over the old file (and the directory fsynced), so a
//! crash at any moment leaves either the old content or the new one, never
//! a torn file; reads refuse anything that is not a regular file.

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::path::Path;

use anyhow::Context;

/// Writes `bytes` to `path` atomically: the file holds either its previous
/// content or `bytes`, whatever happens during the call.
///
/// The temporary is created exclusively (`O_EXCL`, so never through a link
/// planted at its name) under a random name, `.<name>.<random>.tmp`, in
/// `path`'s directory: nobody can predict it, and a planted name only makes
/// `tempfile` pick another. An existing file's permissions are kept; a new
/// one gets 0644 less the umask, as a plain create would.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    // `Path::new("out.conf").parent()` is `Some("")`, which names no directory.
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    let name = path.file_name().ok_or_else(|| {
        std::io::Error::new(std::io::ErrorKind::InvalidInput, "no file name to write")
    })?;
    let mut prefix = std::ffi::OsString::from(".");
    prefix.push(name);
    prefix.push(".");
    let mut builder = tempfile::Builder::new();
    builder.prefix(&prefix).suffix(TMP_SUFFIX).rand_bytes(12);
    #[cfg(unix)]
    builder.permissions(match fs::symlink_metadata(path) {
        Ok(meta) if meta.is_file() => meta.permissions(),
        _ => std::os::unix::fs::PermissionsExt::from_mode(0o644),
    });
    let mut tmp = builder.tempfile_in(dir)?;
    tmp.write_all(bytes)?;
    tmp.as_file().sync_all()?;
    // On failure the temporary is dropped, which removes it.
    tmp.persist(path).map_err(|e| e.error)?;
    // The rename is durable only once the directory entry is.
    File::open(dir)?.sync_all()
}

pub(crate) const TMP_SUFFIX: &str = ".tmp";

/// Reads a file that must be a regular one. A FIFO would block the read
/// forever and a socket or device is no state anyone wrote: both are refused
/// before anything opens them, and the opened file is checked again (the
/// name may have been swapped in between), opened non-blocking so even a
/// FIFO swapped in cannot stall the start. `Ok(None)`: no such file.
pub fn read_regular(path: &Path, what: &str) -> anyhow::Result<Option<Vec<u8>>> {
    use std::io::Read;
    let refuse = |kind: &str| {
        anyhow::anyhow!(
            "{what} {} is not a regular file (it is {kind}); remove it or move it away \
             (mtguard writes a new one)",
            path.display()
        )
    };
    let meta = match fs::metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
    };
    if !meta.is_file() {
        return Err(refuse(file_kind(&meta)));
    }
    let mut options = OpenOptions::new();
    options.read(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.custom_flags(libc::O_NONBLOCK);
    }
    let mut file = options
        .open(path)
        .with_context(|| format!("reading {}", path.display()))?;
    let meta = file
        .metadata()
        .with_context(|| format!("reading {}", path.display()))?;
    if !meta.is_file() {
        return Err(refuse(file_kind(&meta)));
    }
    let mut bytes = Vec::new();
    file.read_to_end(&mut bytes)
        .with_context(|| format!("reading {}", path.display()))?;
    Ok(Some(bytes))
}

fn file_kind(meta: &fs::Metadata) -> &'static str {
    #[cfg(unix)]
    {
        use std::os::unix::fs::FileTypeExt;
        let t = meta.file_type();
        if t.is_fifo() {
            return "a FIFO";
        }
        if t.is_socket() {
            return "a socket";
        }
        if t.is_block_device() || t.is_char_device() {
            return "a device";
        }
    }
    if meta.is_dir() {
        "a directory"
    } else {
        "not a file"
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
