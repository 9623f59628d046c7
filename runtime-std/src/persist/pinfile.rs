//! Pins files: one pin a line, `sha256/<base64>` or `cert-sha256/<hex>`,
//! optionally `expires=YYYY-MM-DD`, optionally `# label`; blank lines and
//! `#` comments are ignored.
//!
//! Every read goes through [`load`] and every write through [`save`]: with
//! an `[hsm]` token configured the file carries the token's integrity seal
//! (see `seal`, the caller passes the node's sealer), checked on every read and made on every write, so a
//! pins file changed behind mtguard's back is refused rather than trusted.

use std::fmt::Write as _;
use std::path::Path;

use anyhow::Context as _;
use mtguard_core::pins::{parse_pin_line, Pin, PinSet, PinSetError};

use crate::persist::seal::{self, Purpose, Sealer};

/// The pins of the file at `path`, in file order. A malformed line, a
/// duplicate or a pin beyond a [`PinSet`]'s capacity is an error naming the file and
/// the line.
pub fn load(path: &Path, sealer: Option<&Sealer>) -> anyhow::Result<Vec<Pin>> {
    let bytes = crate::persist::atomic::read_regular(path, "pins file")
        .with_context(|| format!("cannot read the pins file {}", path.display()))?
        .ok_or_else(|| {
            anyhow::anyhow!("cannot read the pins file {}: no such file", path.display())
        })?;
    let payload = seal::open_file(sealer, Purpose::Pins, &bytes).map_err(|e| {
        anyhow::anyhow!(
            "pins file {} is refused: {e}; after checking its pins, seal it with \
                 `mtguard hsm --config FILE seal-pins {}`",
            path.display(),
            path.display()
        )
    })?;
    let text = String::from_utf8(payload)
        .map_err(|_| anyhow::anyhow!("pins file {} is not UTF-8 text", path.display()))?;
    parse(&text, &path.display().to_string())
}

/// [`load`] on text already read; `name` names it in errors.
pub fn parse(text: &str, name: &str) -> anyhow::Result<Vec<Pin>> {
    let mut pins: PinSet = PinSet::new();
    for (n, line) in text.lines().enumerate() {
        let pin = parse_pin_line(line).map_err(|e| anyhow::anyhow!("{name}:{}: {e}", n + 1))?;
        let Some(pin) = pin else { continue };
        let shown = pin.to_string();
        match pins.add(pin) {
            Ok(()) => {}
            Err(PinSetError::Duplicate) => {
                anyhow::bail!("{name}:{}: {shown} is listed twice", n + 1)
            }
            Err(PinSetError::Full { capacity }) => anyhow::bail!(
                "{name}:{}: too many pins: at most {capacity} per host (the {}st is refused)",
                n + 1,
                capacity + 1
            ),
        }
    }
    Ok(pins.as_slice().to_vec())
}

/// Writes `pins` to `path` atomically (the file holds the old pins or the
/// new ones, never a mix), one line each, as [`load`] reads them.
pub fn save(path: &Path, pins: &[Pin], sealer: Option<&Sealer>) -> anyhow::Result<()> {
    let mut text = String::from("# mtguard pins: one per line, written by mtguard\n");
    for pin in pins {
        let _ = writeln!(text, "{}", pin.display_line());
    }
    let bytes = seal::seal_file(sealer, Purpose::Pins, text.as_bytes())?;
    crate::persist::atomic::write_atomic(path, &bytes)
        .with_context(|| format!("writing the pins file {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pinning::verifier::MAX_PINS;
    use mtguard_core::pins::PinKind;

    #[test]
    fn round_trip_through_a_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("pins");
        let pins = vec![
            Pin::new(PinKind::Spki, [1; 32])
                .with_label("primary")
                .unwrap()
                .with_expiry(Some(1_798_761_600)),
            Pin::new(PinKind::Certificate, [2; 32]),
        ];
        save(&path, &pins, None).unwrap();
        assert_eq!(load(&path, None).unwrap(), pins);
    }

    #[test]
    fn errors_name_the_line() {
        let good = Pin::new(PinKind::Spki, [1; 32]).to_string();
        let e = parse(&format!("# c\n{good}\nsha256/nope\n"), "f").unwrap_err();
        assert!(e.to_string().starts_with("f:3: "), "{e}");
        let e = parse(&format!("{good}\n\n{good}\n"), "f").unwrap_err();
        assert_eq!(e.to_string(), format!("f:3: {good} is listed twice"));
        let many: String = (0..=MAX_PINS)
            .map(|i| {
                let mut h = [0u8; 32];
                h[..8].copy_from_slice(&(i as u64).to_le_bytes());
                format!("{}\n", Pin::new(PinKind::Certificate, h))
            })
            .collect();
        let e = parse(&many, "f").unwrap_err();
        assert_eq!(
            e.to_string(),
            "f:101: too many pins: at most 100 per host (the 101st is refused)"
        );
    }
}
