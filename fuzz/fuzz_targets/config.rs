//! The config loader on arbitrary text: an error names the file and a line
//! inside the text (or no line), never a panic; a config that parses yields
//! a policy or an error the same way, and describes itself. Durations that
//! parse print back to text that parses to the same duration.
#![no_main]

use libfuzzer_sys::fuzz_target;
use mtguard::config::{format_duration, parse_duration, Config};

fuzz_target!(|text: &str| {
    let lines = text.lines().count().max(1);
    match Config::parse(text, "fuzz.toml") {
        Ok(config) => {
            for level in [None, Some(0), Some(3), Some(9)] {
                match config.effective_policy(level) {
                    Ok(policy) => {
                        let _ = config.describe(&policy);
                    }
                    Err(e) => check_error(&e.to_string(), e.line(), lines),
                }
            }
        }
        Err(e) => {
            assert_eq!(e.file(), "fuzz.toml");
            check_error(&e.to_string(), e.line(), lines);
        }
    }
    if let Ok(d) = parse_duration(text) {
        let printed = format_duration(d);
        assert_eq!(parse_duration(&printed), Ok(d), "{printed:?}");
    }
});

fn check_error(shown: &str, line: Option<usize>, lines: usize) {
    assert!(
        shown.starts_with("fuzz.toml") || shown.starts_with("command line"),
        "{shown}"
    );
    assert!(
        !shown.contains('\n'),
        "a config error is one line: {shown:?}"
    );
    if let Some(line) = line {
        // A line past the end is allowed only by one: TOML reports an
        // unterminated construct at the end of the text.
        assert!(
            (1..=lines + 1).contains(&line),
            "line {line} of {lines}: {shown}"
        );
    }
}
