//! Standard output for every command.
//!
//! `println!` panics when stdout is a closed pipe (`mtguard check-config
//! FILE | head -1`): Rust ignores SIGPIPE, so the write fails with EPIPE
//! and the macro turns that into a panic. Every command prints through
//! [`outln!`] instead, which returns the error; `dispatch` then treats a
//! broken pipe as the reader having seen enough, a clean exit.

/// `println!` that returns the write's `io::Result` instead of panicking.
macro_rules! outln {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        writeln!(std::io::stdout().lock(), $($arg)*)
    }};
}

/// `print!` likewise.
macro_rules! out {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        write!(std::io::stdout().lock(), $($arg)*)
    }};
}

/// Whether `e` is, anywhere in its chain, a write to a closed pipe.
pub fn is_broken_pipe(e: &anyhow::Error) -> bool {
    e.chain().any(|cause| {
        cause
            .downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe)
    })
}

/// Flushes what `out!` left in stdout's buffer, so a broken pipe there is
/// seen too (at exit, std would drop that error silently, and with it
/// the knowledge that the output was cut).
pub fn flush() -> std::io::Result<()> {
    use std::io::Write as _;
    std::io::stdout().lock().flush()
}
