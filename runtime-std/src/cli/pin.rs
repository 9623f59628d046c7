//! `mtguard pin`: the pins of the certificates of a file.

use std::path::PathBuf;

use clap::Args;

#[derive(Args)]
pub struct PinArgs {
    /// PEM (any number of certificates) or DER (one certificate).
    file: PathBuf,
}

pub fn print_pins(args: PinArgs) -> anyhow::Result<()> {
    pins_of(&args.file)
}

fn pins_of(file: &std::path::Path) -> anyhow::Result<()> {
    let certs = mtguard::pinning::verifier::load_certs(file)?;
    for (i, cert) in certs.iter().enumerate() {
        let (spki, whole) = mtguard_core::pins::presented_pins(cert)
            .map_err(|e| anyhow::anyhow!("{}: certificate {i}: {e:?}", file.display()))?;
        outln!("# certificate {i} of {}", file.display())?;
        outln!("{spki}")?;
        outln!("{whole}")?;
    }
    Ok(())
}
