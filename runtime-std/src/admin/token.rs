//! The admin token: read from its file, or generated once in the state
//! directory.

use super::*;

/// The admin token: read from `token_file`, or, without one, from
/// `<state_dir>/admin.token`, which is generated (32 random bytes as hex,
/// mode 0600) on the first start and reused afterwards.
///
/// A token file that is empty, holds whitespace inside the token or
/// non-ASCII text, or can be read or written by group or others is an error
/// naming the file.
pub fn load_or_create_token(token_file: Option<&Path>, state_dir: &Path) -> anyhow::Result<String> {
    if let Some(path) = token_file {
        return read_token(path);
    }
    let path = state_dir.join(TOKEN_FILE);
    if path.symlink_metadata().is_ok() {
        return read_token(&path);
    }
    std::fs::create_dir_all(state_dir)
        .with_context(|| format!("creating the state directory {}", state_dir.display()))?;
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes)
        .map_err(|e| anyhow::anyhow!("the operating system's random source failed: {e}"))?;
    let token = bytes.iter().fold(String::with_capacity(64), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    });
    match create_private(&path, format!("{token}\n").as_bytes()) {
        Ok(()) => {
            tracing::info!(file = %path.display(), "generated the admin API token");
            Ok(token)
        }
        // Another process created it between the check and now: use theirs.
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => read_token(&path),
        Err(e) => {
            Err(e).with_context(|| format!("creating the admin token file {}", path.display()))
        }
    }
}

/// Creates `path` (which must not exist) readable by its owner only.
pub(super) fn create_private(path: &Path, content: &[u8]) -> io::Result<()> {
    use std::io::Write;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        // create_new is O_EXCL, which already refuses a planted link;
        // O_NOFOLLOW says so to whoever reads this, and holds if it changes.
        options.mode(0o600).custom_flags(libc::O_NOFOLLOW);
    }
    let mut file = options.open(path)?;
    let written = file.write_all(content).and_then(|()| file.sync_all());
    if written.is_err() {
        // An empty or partial token file would stop every later start.
        let _ = std::fs::remove_file(path);
    }
    written
}

pub(super) fn read_token(path: &Path) -> anyhow::Result<String> {
    let file = path.display();
    let meta =
        std::fs::metadata(path).with_context(|| format!("reading the admin token file {file}"))?;
    if !meta.is_file() {
        bail!("admin token file {file} is not a regular file");
    }
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = meta.permissions().mode() & 0o777;
        if mode & 0o077 != 0 {
            bail!(
                "admin token file {file} is accessible by group or others (mode {mode:03o}); \
                 run `chmod 600 {file}`"
            );
        }
    }
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("reading the admin token file {file}"))?;
    let token = text.trim();
    if token.is_empty() {
        bail!("admin token file {file} is empty");
    }
    if !token.bytes().all(|b| b.is_ascii_graphic()) {
        bail!("admin token file {file}: the token must be printable ASCII without spaces");
    }
    if token.len() < 16 {
        tracing::warn!(file = %file, "the admin token is shorter than 16 characters: easy to guess");
    }
    Ok(token.to_owned())
}
