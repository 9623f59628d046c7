//! `mtguard fetch`: a pinned download that replaces a file atomically.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, ValueEnum};

use super::{init_logging_at, runtime, LogFormat};

#[derive(Args)]
pub struct FetchArgs {
    /// https:// URL, e.g. https://core.telegram.org/getProxyConfig.
    url: String,
    /// A pin: sha256/<base64> (SPKI) or cert-sha256/<hex>, optionally
    /// followed by " expires=YYYY-MM-DD". Repeat for backups.
    #[arg(long = "pin")]
    pins: Vec<String>,
    /// A pins file (one pin a line), in addition to --pin.
    #[arg(long)]
    pins_file: Option<PathBuf>,
    /// The config whose [hsm] token sealed the pins file: its seal is
    /// checked as `mtguard run` checks it.
    #[arg(long)]
    config: Option<PathBuf>,
    /// Trust the CAs of this file (PEM or DER) instead of the built-in
    /// Mozilla roots.
    #[arg(long, conflicts_with = "pins_only")]
    ca: Option<PathBuf>,
    /// No CA validation: accept the server on a pin of its leaf
    /// certificate alone (self-signed or private-CA servers).
    #[arg(long)]
    pins_only: bool,
    /// When every pin has expired: refuse (fail-closed, the default),
    /// or accept on CA validation alone (webpki).
    #[arg(long, value_enum, default_value_t = ExpiredArg::FailClosed)]
    on_expired: ExpiredArg,
    /// What the file must be; guessed from the URL or OUT when absent.
    #[arg(long, value_enum)]
    kind: Option<KindArg>,
    /// The file to replace.
    #[arg(long)]
    out: PathBuf,
    /// Seconds the whole download may take.
    #[arg(long, default_value_t = 30)]
    timeout: u64,
}

#[derive(Clone, Copy, ValueEnum)]
enum ExpiredArg {
    FailClosed,
    Webpki,
}

#[derive(Clone, Copy, ValueEnum)]
enum KindArg {
    Config,
    Secret,
}

pub fn fetch(args: FetchArgs, format: LogFormat) -> anyhow::Result<()> {
    fetch_options(args).and_then(|opts| {
        // The error message already says what a warning would; errors
        // (a fallback on WebPKI alone) still show.
        init_logging_at(format, "error");
        let rt = runtime()?;
        let fetched = rt.block_on(mtguard::pinning::fetch::fetch(&opts, None))?;
        if fetched.changed {
            outln!("{}: wrote {} bytes", opts.out.display(), fetched.bytes)?;
        } else {
            outln!(
                "{}: unchanged ({} bytes)",
                opts.out.display(),
                fetched.bytes
            )?;
        }
        Ok(())
    })
}

fn fetch_options(args: FetchArgs) -> anyhow::Result<mtguard::pinning::fetch::FetchOptions> {
    let FetchArgs {
        url,
        pins,
        pins_file,
        config,
        ca,
        pins_only,
        on_expired,
        kind,
        out,
        timeout,
    } = args;
    use mtguard::config::{ContentKind, OnExpired, Trust};
    let mut given = Vec::new();
    for text in &pins {
        let pin = mtguard_core::pins::parse_pin_line(text)
            .map_err(|e| anyhow::anyhow!("--pin {text:?}: {e}"))?
            .ok_or_else(|| anyhow::anyhow!("--pin {text:?}: empty"))?;
        given.push(pin);
    }
    if let Some(path) = pins_file.as_deref() {
        // The seal is checked with the config's token, opened as `run`
        // opens it; without --config only a plain file passes.
        let keyring = match config.as_deref() {
            Some(c) => mtguard::server::bootstrap::Keyring::open(
                &mtguard::server::bootstrap::load_config(c)?,
            )?,
            None => mtguard::server::bootstrap::Keyring::default(),
        };
        given.extend(mtguard::server::bootstrap::load_pins_file(
            path,
            keyring.sealer.as_deref(),
        )?);
    }
    anyhow::ensure!(
        !given.is_empty(),
        "give at least one --pin (or --pins-file); `mtguard pin CERT.pem` prints a certificate's pins"
    );
    // The set the fetch will verify with decides what is too many or twice.
    let mut set: mtguard_core::pins::PinSet = mtguard_core::pins::PinSet::new();
    let total = given.len();
    for pin in given {
        let shown = pin.to_string();
        match set.add(pin) {
            Ok(()) => {}
            Err(mtguard_core::pins::PinSetError::Full { capacity }) => {
                anyhow::bail!("{total} pins given: at most {capacity} per host")
            }
            Err(e @ mtguard_core::pins::PinSetError::Duplicate) => {
                anyhow::bail!("pin {shown}: {e}")
            }
        }
    }
    let all = set.as_slice().to_vec();
    let trust = if pins_only {
        Trust::PinsOnly
    } else {
        Trust::WebPki
    };
    let on_expired = match on_expired {
        ExpiredArg::FailClosed => OnExpired::FailClosed,
        ExpiredArg::Webpki => {
            anyhow::ensure!(
                !pins_only,
                "--on-expired webpki needs CA validation, not --pins-only"
            );
            OnExpired::WebPki
        }
    };
    let kind = match kind {
        Some(KindArg::Config) => ContentKind::ProxyConfig,
        Some(KindArg::Secret) => ContentKind::ProxySecret,
        None => ContentKind::guess(&url, &out).ok_or_else(|| {
            anyhow::anyhow!("cannot tell from the URL or --out whether this is a proxy config or a secret: give --kind")
        })?,
    };
    Ok(mtguard::pinning::fetch::FetchOptions {
        url,
        pins: all,
        trust,
        ca_file: ca,
        on_expired,
        out,
        kind,
        timeout: Duration::from_secs(timeout.max(1)),
    })
}
