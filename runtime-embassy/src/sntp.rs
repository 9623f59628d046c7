//! A minimal SNTP client (RFC 4330): the appliance's wall clock, without
//! which no fake-TLS handshake can be judged (each carries a timestamp).
//!
//! Written here rather than taken from a crate: the guard needs one
//! request, one reply and a strict check of that reply, on the embassy-net
//! UDP socket it already has. `sntpc`, the maintained no_std client, brings
//! its own socket and timestamp traits to implement around embassy-net,
//! which is more code than the 48-byte packet below, and it leaves the
//! checks that matter to a guard (the reply answers our request, the
//! server is synchronised) to the caller anyway.
//!
//! The request carries 8 random bytes as its transmit timestamp (RFC 4330,
//! section 5, allows any value there); a reply counts only if it echoes
//! them as its originate timestamp, so an off-path attacker who cannot see
//! the request cannot set the clock (and with it, which fake-TLS hellos
//! pass). The round-trip delay is not corrected for: the fake-TLS window is
//! seconds wide, a LAN round trip is under a millisecond.

use core::fmt;

use embassy_net::udp::{PacketMetadata, UdpSocket};
use embassy_net::{IpEndpoint, Stack};
use embassy_time::{with_timeout, Duration, Timer};
use mtguard_core::Storage;

use crate::Guard;

/// Bytes of an SNTP packet without extensions.
pub const PACKET: usize = 48;
/// Seconds from the NTP epoch (1900) to the Unix epoch (1970).
const NTP_TO_UNIX: u64 = 2_208_988_800;
/// Leap indicator 0, version 4, mode 3 (client).
const CLIENT_FIRST: u8 = 4 << 3 | 3;
const MODE_SERVER: u8 = 4;
const ORIGINATE: core::ops::Range<usize> = 24..32;
const TRANSMIT: core::ops::Range<usize> = 40..48;

/// Why a reply does not set the clock.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum SntpError {
    /// Shorter than 48 bytes.
    Short,
    /// Not a server reply (mode), or a version before 3.
    NotAReply,
    /// The server says it is not synchronised (leap indicator 3, or
    /// stratum 0: a "kiss-o'-death", or beyond 15).
    Unsynchronised,
    /// The originate timestamp is not our request's: a stale or forged
    /// reply.
    NotOurs,
    /// The transmit timestamp is zero, or before 1970.
    NoTime,
}

impl fmt::Display for SntpError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            SntpError::Short => "reply too short",
            SntpError::NotAReply => "not an SNTP server reply",
            SntpError::Unsynchronised => "server not synchronised",
            SntpError::NotOurs => "reply does not answer our request",
            SntpError::NoTime => "reply carries no time",
        })
    }
}

/// The request whose transmit timestamp is `nonce`.
pub fn request(nonce: [u8; 8]) -> [u8; PACKET] {
    let mut packet = [0u8; PACKET];
    packet[0] = CLIENT_FIRST;
    packet[TRANSMIT].copy_from_slice(&nonce);
    packet
}

/// The Unix time (seconds) in a reply to the request made with `nonce`.
pub fn parse_reply(reply: &[u8], nonce: [u8; 8]) -> Result<u64, SntpError> {
    let reply = reply.first_chunk::<PACKET>().ok_or(SntpError::Short)?;
    let leap = reply[0] >> 6;
    let version = (reply[0] >> 3) & 7;
    let mode = reply[0] & 7;
    if mode != MODE_SERVER || !(3..=4).contains(&version) {
        return Err(SntpError::NotAReply);
    }
    let stratum = reply[1];
    if leap == 3 || stratum == 0 || stratum > 15 {
        return Err(SntpError::Unsynchronised);
    }
    if reply[ORIGINATE] != nonce {
        return Err(SntpError::NotOurs);
    }
    let secs = u32::from_be_bytes([reply[40], reply[41], reply[42], reply[43]]);
    let frac = u32::from_be_bytes([reply[44], reply[45], reply[46], reply[47]]);
    if secs == 0 && frac == 0 {
        return Err(SntpError::NoTime);
    }
    // RFC 4330, section 3: with the top bit clear the time is in NTP era 1
    // (from 2036 on), not in 1900-1968.
    let secs = if secs & 0x8000_0000 == 0 {
        u64::from(secs) + (1 << 32)
    } else {
        u64::from(secs)
    };
    // Era 0 from 1968 to 1970 is before the Unix epoch: no clock a guard
    // could use.
    let unix = secs.checked_sub(NTP_TO_UNIX).ok_or(SntpError::NoTime)?;
    // Rounded to the nearest second.
    Ok(unix + u64::from(frac >> 31))
}

/// How the client paces itself.
#[derive(Clone, Copy, Debug)]
pub struct SntpConfig {
    /// The server.
    pub server: IpEndpoint,
    /// How long a reply may take.
    pub timeout: Duration,
    /// Pause between attempts while the clock is not set (or a refresh
    /// failed).
    pub retry: Duration,
    /// Pause between refreshes once it is set. Keep it well below the
    /// guard's `clock_max_age`, so that a few lost replies do not turn
    /// fake-TLS off.
    pub refresh: Duration,
}

impl SntpConfig {
    /// 2 s per reply, a retry every 5 s, a refresh every 15 minutes.
    pub const fn new(server: IpEndpoint) -> Self {
        SntpConfig {
            server,
            timeout: Duration::from_secs(2),
            retry: Duration::from_secs(5),
            refresh: Duration::from_secs(15 * 60),
        }
    }
}

/// Sets `guard`'s wall clock from the SNTP server and keeps it fresh,
/// forever. `nonce_seed` must be random (it makes the request nonces);
/// `log` receives a line for every clock set and every failed attempt.
pub async fn run<S: Storage, const SLOTS: usize>(
    stack: Stack<'_>,
    config: SntpConfig,
    guard: &Guard<'_, S, SLOTS>,
    nonce_seed: u64,
    log: impl Fn(fmt::Arguments<'_>),
) -> ! {
    let mut rx_meta = [PacketMetadata::EMPTY; 2];
    let mut tx_meta = [PacketMetadata::EMPTY; 2];
    let mut rx = [0u8; 2 * PACKET];
    let mut tx = [0u8; 2 * PACKET];
    let mut socket = UdpSocket::new(stack, &mut rx_meta, &mut rx, &mut tx_meta, &mut tx);
    // Any local port: replies are matched by nonce, not by port.
    while socket.bind(0).is_err() {
        Timer::after(config.retry).await;
    }
    let mut state = nonce_seed | 1;
    loop {
        // xorshift64: the nonces need only be unpredictable to someone who
        // does not know the seed, and distinct from one request to the next.
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        let nonce = state.to_le_bytes();
        let ok = match exchange(&mut socket, &config, nonce).await {
            Ok(unix) => {
                guard.set_unix_time(unix);
                log(format_args!(
                    "sntp: clock set to {unix} from {}",
                    config.server
                ));
                true
            }
            Err(e) => {
                log(format_args!("sntp: {} ({e})", config.server));
                false
            }
        };
        Timer::after(if ok { config.refresh } else { config.retry }).await;
    }
}

/// One request and the first reply that answers it.
async fn exchange(
    socket: &mut UdpSocket<'_>,
    config: &SntpConfig,
    nonce: [u8; 8],
) -> Result<u64, Attempt> {
    socket
        .send_to(&request(nonce), config.server)
        .await
        .map_err(|_| Attempt::Send)?;
    let mut buf = [0u8; PACKET];
    let wait = async {
        loop {
            match socket.recv_from(&mut buf).await {
                Ok((n, meta)) if meta.endpoint == config.server => {
                    match parse_reply(&buf[..n], nonce) {
                        Ok(unix) => return Ok(unix),
                        // A stale reply to an earlier request is expected
                        // after a timeout; keep waiting for ours.
                        Err(SntpError::NotOurs) => continue,
                        Err(e) => return Err(Attempt::Reply(e)),
                    }
                }
                // Someone else's datagram, or one cut short.
                _ => continue,
            }
        }
    };
    with_timeout(config.timeout, wait)
        .await
        .unwrap_or(Err(Attempt::Timeout))
}

enum Attempt {
    Send,
    Timeout,
    Reply(SntpError),
}

impl fmt::Display for Attempt {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Attempt::Send => f.write_str("request not sent (no route yet?)"),
            Attempt::Timeout => f.write_str("no reply"),
            Attempt::Reply(e) => write!(f, "{e}"),
        }
    }
}
