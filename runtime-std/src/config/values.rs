//! The value types of config keys that the rest of the crate acts on: the
//! enums a key chooses from and the rules a single value must follow.
//!
//! They live here, below the relay, the verifier and the downloader that
//! use them, so the config depends on nothing else of the crate: the relay
//! imports `ProxyProtocol` from the config, not the other way round.

use std::path::Path;

/// Whether, and in which version, the backend is sent a PROXY protocol
/// header carrying the client's address. mtg and telemt accept it; the
/// original MTProxy does not, so it is a per-backend option.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum ProxyProtocol {
    /// No header: the backend sees the guard's address.
    #[default]
    None,
    /// The text header (`PROXY TCP4 ...\r\n`).
    V1,
    /// The binary header.
    V2,
}

/// What happens to a connection whose first bytes are not a valid handshake.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum OnProbe {
    /// Reset the connection; the backend never hears of it.
    #[default]
    Close,
    /// Relay it to the mask backend (the real website of the fake-TLS
    /// domain), so a prober sees an ordinary HTTPS site.
    Mask,
}

impl OnProbe {
    /// The config file's name for it.
    pub fn as_str(self) -> &'static str {
        match self {
            OnProbe::Close => "close",
            OnProbe::Mask => "mask",
        }
    }
}

/// What a refused source sees (`[refusal]`): an answer a censor's prober
/// cannot tell from an ordinary server's is the point of the last two.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Answer {
    /// A TCP reset (SO_LINGER 0) at once: the cheapest, and the one a
    /// prober reads as "a filter is here".
    Reset,
    /// No answer at all: the connection is held silently (what it sends is
    /// read and discarded) until `drop_timeout`, then closed.
    Drop,
    /// Relayed to the cover site (`[mtproto] mask_backend`), bytes already
    /// read first, as if the handshake had reached that site.
    Mask,
}

impl Answer {
    /// Every answer, in metrics order.
    pub const ALL: [Answer; 3] = [Answer::Reset, Answer::Drop, Answer::Mask];

    /// The config file's name for it.
    pub fn as_str(self) -> &'static str {
        match self {
            Answer::Reset => "reset",
            Answer::Drop => "drop",
            Answer::Mask => "mask",
        }
    }
}

/// What, besides the pins, a peer's certificate must satisfy.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Trust {
    /// A chain to a trusted root that is valid for the server name, and a
    /// pin match.
    WebPki,
    /// A pin match on the leaf alone (self-signed or private-CA peers).
    PinsOnly,
}

impl Trust {
    /// The name the config and the command line use.
    pub fn as_str(self) -> &'static str {
        match self {
            Trust::WebPki => "webpki",
            Trust::PinsOnly => "pins-only",
        }
    }
}

/// What to do once every pin of a host has expired (or, for the backend,
/// the admin API removed them all).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OnExpired {
    /// Refuse every connection until the pins are renewed.
    FailClosed,
    /// Accept on ordinary WebPKI validation alone, with a warning at every
    /// connection. Impossible with [`Trust::PinsOnly`].
    WebPki,
}

impl OnExpired {
    /// The default of a security level: levels 2 and 3 fail closed, the
    /// lower ones keep working on WebPKI (a guard that stops forwarding
    /// because nobody renewed a pin is the worse outcome for them).
    pub fn default_for_level(level: u8) -> OnExpired {
        if level >= 2 {
            OnExpired::FailClosed
        } else {
            OnExpired::WebPki
        }
    }

    /// The name the config uses.
    pub fn as_str(self) -> &'static str {
        match self {
            OnExpired::FailClosed => "fail-closed",
            OnExpired::WebPki => "webpki",
        }
    }
}

/// What a download is expected to be.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ContentKind {
    /// `proxy-multi.conf` (`getProxyConfig`, `getProxyConfigV6`).
    ProxyConfig,
    /// `proxy-secret` (`getProxySecret`).
    ProxySecret,
}

impl ContentKind {
    /// Guesses from the URL's last path segment, then from the output file
    /// name: `getProxySecret`/`*secret*` and `getProxyConfig*`/`*.conf`.
    pub fn guess(url: &str, out: &Path) -> Option<ContentKind> {
        let url_path = url.split(['?', '#']).next().unwrap_or(url);
        let last = url_path
            .rsplit('/')
            .next()
            .unwrap_or("")
            .to_ascii_lowercase();
        let file = out
            .file_name()
            .map(|n| n.to_string_lossy().to_ascii_lowercase())
            .unwrap_or_default();
        for name in [last, file] {
            if name.contains("secret") {
                return Some(ContentKind::ProxySecret);
            }
            if name.starts_with("getproxyconfig") || name.ends_with(".conf") {
                return Some(ContentKind::ProxyConfig);
            }
        }
        None
    }

    /// The name the command line and the config use.
    pub fn as_str(self) -> &'static str {
        match self {
            ContentKind::ProxyConfig => "config",
            ContentKind::ProxySecret => "secret",
        }
    }
}

/// Why a `[refresh]` or `mtguard fetch` URL cannot be fetched pinned.
#[derive(Debug, thiserror::Error)]
pub enum UrlError {
    /// Not a URL at all.
    #[error("{url:?} is not a URL")]
    NotUrl {
        /// The text given.
        url: String,
        /// What the URL parser refused.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// A scheme other than `https`: a pin means nothing without TLS.
    #[error("{url:?}: only https:// URLs can be pinned")]
    NotHttps {
        /// The text given.
        url: String,
    },
    /// No host to pin.
    #[error("{url:?} has no host")]
    NoHost {
        /// The text given.
        url: String,
    },
}

/// The host of an `https://` URL, for messages and the verifier.
pub fn url_host(url: &str) -> Result<String, UrlError> {
    let parsed = reqwest::Url::parse(url).map_err(|e| UrlError::NotUrl {
        url: url.to_owned(),
        source: Box::new(e),
    })?;
    if parsed.scheme() != "https" {
        return Err(UrlError::NotHttps {
            url: url.to_owned(),
        });
    }
    parsed
        .host_str()
        .map(str::to_owned)
        .ok_or_else(|| UrlError::NoHost {
            url: url.to_owned(),
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_are_guessed_from_url_or_file() {
        let p = Path::new;
        let guess = ContentKind::guess;
        let tg = "https://core.telegram.org";
        assert_eq!(
            guess(&format!("{tg}/getProxySecret"), p("x")),
            Some(ContentKind::ProxySecret)
        );
        assert_eq!(
            guess(&format!("{tg}/getProxyConfig"), p("x")),
            Some(ContentKind::ProxyConfig)
        );
        assert_eq!(
            guess(&format!("{tg}/getProxyConfigV6?x=1"), p("x")),
            Some(ContentKind::ProxyConfig)
        );
        assert_eq!(
            guess("https://h/f", p("/etc/proxy-multi.conf")),
            Some(ContentKind::ProxyConfig)
        );
        assert_eq!(
            guess("https://h/f", p("proxy-secret")),
            Some(ContentKind::ProxySecret)
        );
        assert_eq!(guess("https://h/f", p("data.bin")), None);
    }
}
