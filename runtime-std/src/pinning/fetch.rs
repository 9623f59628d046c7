//! `mtguard fetch`: a pinned HTTPS download of Telegram's proxy files,
//! checked for shape, written atomically.
//!
//! MTProxy operators fetch `proxy-secret` from
//! `https://core.telegram.org/getProxySecret` and `proxy-multi.conf` from
//! `https://core.telegram.org/getProxyConfig` with curl, trusting whatever
//! certificate the network presents. Here the connection must match the
//! pins (see [`crate::pinning::verifier`]), and what arrives must look like what Telegram
//! serves before it replaces the old file. On any failure the old file is
//! left exactly as it was.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use mtguard_core::pins::{Pin, PinSet};

use crate::config::{url_host, ContentKind, OnExpired, Trust};
use crate::pinning::verifier::{PinSource, PinnedVerifier};

/// The most a download may be. Telegram's proxy config is a few kilobytes
/// and the secret 128 bytes; the cap bounds memory against a server that
/// never stops sending.
pub const MAX_BODY: usize = 1024 * 1024;

/// MTProxy's `net/net-crypto-aes.h`: `MIN_PWD_LEN 32`, `MAX_PWD_LEN 256`;
/// `aes_load_pwd_file` refuses a secret file outside these sizes. Telegram
/// serves 128 bytes.
pub const SECRET_MIN: usize = 32;
/// See [`SECRET_MIN`].
pub const SECRET_MAX: usize = 256;

impl ContentKind {
    /// Checks that `body` looks like this kind of file.
    pub fn check(self, body: &[u8]) -> Result<(), String> {
        match self {
            ContentKind::ProxyConfig => check_proxy_config(body),
            ContentKind::ProxySecret => check_proxy_secret(body),
        }
    }
}

/// A `proxy-multi.conf` as MTProxy's `mtproto/mtproto-config.c` parses it:
/// statements ending in `;` (`proxy_for <dc> <ip:port>;`, `default <dc>;`,
/// `timeout <ms>;`, `min_connections <n>;`, `max_connections <n>;`), `#`
/// comments. MTProxy refuses any other keyword, so do we; and a file without
/// a single `proxy_for` line (an HTML error page, an empty answer) would
/// leave the proxy with nowhere to forward.
pub fn check_proxy_config(body: &[u8]) -> Result<(), String> {
    let text = std::str::from_utf8(body).map_err(|_| "not UTF-8 text".to_owned())?;
    let mut proxies = 0;
    for (n, line) in text.lines().enumerate() {
        let line = line.split('#').next().unwrap_or("").trim();
        if line.is_empty() {
            continue;
        }
        let bad = |why: &str| format!("line {}: {why}: {:?}", n + 1, truncate(line));
        let statement = line
            .strip_suffix(';')
            .ok_or_else(|| bad("a statement must end with ';'"))?;
        let words: Vec<&str> = statement.split_ascii_whitespace().collect();
        match words.as_slice() {
            ["proxy_for", dc, addr] => {
                dc.parse::<i32>()
                    .map_err(|_| bad("the data centre must be a number"))?;
                addr.parse::<std::net::SocketAddr>()
                    .map_err(|_| bad("expected ip:port"))?;
                proxies += 1;
            }
            ["default", n] | ["timeout", n] | ["min_connections", n] | ["max_connections", n] => {
                n.parse::<i64>().map_err(|_| bad("expected a number"))?;
            }
            _ => return Err(bad("not a proxy config statement")),
        }
    }
    if proxies == 0 {
        return Err("no 'proxy_for <dc> <ip:port>;' line".into());
    }
    Ok(())
}

/// A proxy secret: binary, of a size MTProxy accepts. A body that is
/// entirely printable text is an error page, not 32+ random bytes (the
/// chance of that is below 2^-45).
pub fn check_proxy_secret(body: &[u8]) -> Result<(), String> {
    if !(SECRET_MIN..=SECRET_MAX).contains(&body.len()) {
        return Err(format!(
            "{} bytes; a proxy secret has {SECRET_MIN} to {SECRET_MAX} (Telegram serves 128)",
            body.len()
        ));
    }
    if body
        .iter()
        .all(|b| b.is_ascii_graphic() || b.is_ascii_whitespace())
    {
        return Err("printable text, not a binary secret".into());
    }
    Ok(())
}

fn truncate(s: &str) -> String {
    s.chars().take(60).collect()
}

/// One pinned download.
#[derive(Clone, Debug)]
pub struct FetchOptions {
    /// `https://...`.
    pub url: String,
    /// The pins; at least one.
    pub pins: Vec<Pin>,
    /// WebPKI and pins, or pins alone.
    pub trust: Trust,
    /// CA file replacing the built-in roots.
    pub ca_file: Option<PathBuf>,
    /// What to do if every pin has expired.
    pub on_expired: OnExpired,
    /// Where to write.
    pub out: PathBuf,
    /// What the body must look like.
    pub kind: ContentKind,
    /// Bound on the whole download.
    pub timeout: Duration,
}

/// What a successful download wrote.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Fetched {
    /// Bytes written.
    pub bytes: usize,
    /// Whether the file changed (a download equal to the file is not
    /// rewritten).
    pub changed: bool,
}

/// Downloads, checks and writes; on any failure the file at `opts.out` is
/// untouched and the error names the host and, for a certificate failure,
/// the pins the server presented. A chain that matches no pin is reported
/// to `report`'s engine when given.
pub async fn fetch(
    opts: &FetchOptions,
    report: Option<Arc<crate::engine::Guard>>,
) -> anyhow::Result<Fetched> {
    let host = url_host(&opts.url)?;
    anyhow::ensure!(!opts.pins.is_empty(), "{host}: no pin given");
    let mut set = PinSet::new();
    for pin in &opts.pins {
        set.add(pin.clone())
            .map_err(|e| anyhow::anyhow!("pin {pin}: {e}"))?;
    }
    let roots = match opts.trust {
        Trust::WebPki => crate::pinning::verifier::roots(opts.ca_file.as_deref())?,
        Trust::PinsOnly => rustls::RootCertStore::empty(),
    };
    let verifier = PinnedVerifier::new(
        host.clone(),
        PinSource::Fixed {
            pins: Arc::new(set),
            report,
        },
        opts.trust,
        opts.on_expired,
        roots,
    );
    let mut tls = verifier.client_config();
    tls.alpn_protocols = vec![b"http/1.1".to_vec()];
    let client = reqwest::Client::builder()
        .use_preconfigured_tls(tls)
        // A redirect could lead anywhere; Telegram answers directly.
        .redirect(reqwest::redirect::Policy::none())
        .timeout(opts.timeout)
        .connect_timeout(opts.timeout)
        .build()
        .context("building the HTTP client")?;

    let body = download(&client, &opts.url)
        .await
        .map_err(|e| match verifier.last_failure() {
            Some(failure) => anyhow::anyhow!("{failure}"),
            None => anyhow::anyhow!("{host}: download failed: {}", error_chain(&*e)),
        })?;
    opts.kind.check(&body).map_err(|why| {
        anyhow::anyhow!(
            "{host}: refusing to write {}: the answer is not a proxy {} ({why})",
            opts.out.display(),
            opts.kind.as_str()
        )
    })?;
    // Not fs::read: a FIFO planted at the output would block it forever.
    let old = crate::persist::atomic::read_regular(&opts.out, "output file");
    if old.ok().flatten().is_some_and(|old| old == body) {
        return Ok(Fetched {
            bytes: body.len(),
            changed: false,
        });
    }
    let (out, bytes) = (opts.out.clone(), body);
    let len = bytes.len();
    tokio::task::spawn_blocking(move || crate::persist::atomic::write_atomic(&out, &bytes))
        .await
        .context("write task")?
        .with_context(|| format!("writing {}", opts.out.display()))?;
    Ok(Fetched {
        bytes: len,
        changed: true,
    })
}

async fn download(
    client: &reqwest::Client,
    url: &str,
) -> Result<Vec<u8>, Box<dyn std::error::Error + Send + Sync>> {
    let mut response = client.get(url).send().await?;
    let status = response.status();
    if !status.is_success() {
        return Err(format!("HTTP status {status}").into());
    }
    let mut body = Vec::new();
    while let Some(chunk) = response.chunk().await? {
        if body.len() + chunk.len() > MAX_BODY {
            return Err(format!("the answer is larger than {MAX_BODY} bytes").into());
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

/// An error and its sources on one line: reqwest's own message alone says
/// only "error sending request".
pub(crate) fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proxy_config_shape() {
        let good = "# force_probability 10 10\ndefault 2;\nproxy_for 1 149.154.175.50:8888;\n\
                    proxy_for -1 149.154.175.50:8888;\nproxy_for 2 [2001:b28:f23d:f001::d]:8888;\n";
        assert_eq!(check_proxy_config(good.as_bytes()), Ok(()));
        for bad in [
            "",
            "# only comments\n",
            "default 2;\n",
            "<html><body>502 Bad Gateway</body></html>\n",
            "proxy_for 1 149.154.175.50:8888\n",
            "proxy_for one 149.154.175.50:8888;\n",
            "proxy_for 1 149.154.175.50;\n",
            "proxy_for 1 149.154.175.50:8888;\nrm -rf /;\n",
        ] {
            assert!(check_proxy_config(bad.as_bytes()).is_err(), "{bad:?}");
        }
        assert!(check_proxy_config(&[0xff, 0xfe]).is_err());
    }

    #[test]
    fn proxy_secret_shape() {
        let secret: Vec<u8> = (0..128u32).map(|i| (i * 37 % 256) as u8).collect();
        assert_eq!(check_proxy_secret(&secret), Ok(()));
        assert!(check_proxy_secret(&secret[..31]).is_err());
        assert!(check_proxy_secret(&[0u8; 257]).is_err());
        assert!(check_proxy_secret(&[b'a'; 128]).is_err());
        assert!(check_proxy_secret(
            b"<html>404 Not Found</html>\n<!-- padding padding padding -->"
        )
        .is_err());
    }
}
