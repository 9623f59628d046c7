//! The appliance's config block: what makes one firmware image serve any
//! place in any network. The host writes it (`mtguard appliance-config`),
//! the firmware reads it from a fixed flash address at boot; both use this
//! crate, so the two sides cannot disagree on the format.
//!
//! The block is small, versioned and checksummed, and strict on read: the
//! firmware refuses a block that is missing, of another version, cut short,
//! damaged, or carrying any value the guard would not accept, and then
//! serves nobody. A guard that ran on a half-read config (a wrong backend,
//! no secrets, a level 0 policy) would serve what nobody intended; one that
//! refuses to start is noticed at once.
//!
//! Layout (all integers little-endian):
//!
//! | bytes | field |
//! |---|---|
//! | 0..4 | magic `MTGA` |
//! | 4..6 | format version ([`VERSION`]) |
//! | 6..8 | payload length `N` |
//! | 8..8+N | payload, see [`ApplianceConfig::encode`] |
//! | 8+N..40+N | SHA-256 of bytes 0..8+N |
//!
//! SHA-256 rather than a CRC: the core already carries it, so it costs the
//! firmware no flash, and it catches every corruption a CRC would. It is a
//! checksum, not a signature: whoever can write the flash can write a
//! block with a valid digest (the board's own flash protection is what
//! keeps an attacker from rewriting the config).
#![no_std]
#![forbid(unsafe_code)]
#![warn(missing_docs)]

use core::fmt;
use core::net::{Ipv4Addr, SocketAddrV4};
use core::time::Duration;

use mtguard_core::mtproto::secret::MAX_SECRETS;
use mtguard_core::mtproto::{Secret, SecretKind, SecretSet, TimeWindow};
use mtguard_core::{Level, Policy};
use sha2::{Digest, Sha256};

/// The first bytes of every block. Erased flash (`FF`) and absent memory
/// (`00`, QEMU without `-device loader`) never look like it.
pub const MAGIC: [u8; 4] = *b"MTGA";
/// The format this crate writes and reads.
pub const VERSION: u16 = 1;
/// Bytes reserved for the block in flash; a block never exceeds it.
pub const BLOCK_MAX: usize = 4096;
const HEADER: usize = 8;
const DIGEST: usize = 32;
/// A duration the block stores as "none" (`handshake_timeout = "off"`).
const NONE_MS: u64 = u64::MAX;

/// How the appliance gets its IPv4 address.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum Network {
    /// From a DHCPv4 server.
    Dhcp,
    /// A fixed address.
    Static {
        /// The appliance's address.
        address: Ipv4Addr,
        /// The network's prefix length (0 to 32).
        prefix: u8,
        /// The default gateway, if the backend or clients are beyond the
        /// local network.
        gateway: Option<Ipv4Addr>,
    },
}

/// Everything the appliance needs to know about its place in the network
/// and the policy it enforces.
#[derive(Clone, Debug)]
pub struct ApplianceConfig {
    /// Address by DHCP or a fixed one.
    pub network: Network,
    /// The Ethernet address of the appliance (boards without one of their
    /// own need a distinct one each).
    pub mac: [u8; 6],
    /// The TCP port clients connect to.
    pub listen_port: u16,
    /// The proxy behind the guard.
    pub backend: SocketAddrV4,
    /// The SNTP server that sets the clock; without one, fake-TLS
    /// handshakes are refused (they carry a timestamp).
    pub ntp: Option<SocketAddrV4>,
    /// How long connecting to the backend may take.
    pub connect_timeout: Duration,
    /// A connection with no traffic either way for this long is closed.
    pub idle_timeout: Duration,
    /// How far fake-TLS timestamps may stray from the appliance's clock.
    pub window: TimeWindow,
    /// The policy: a level's preset with the `[limits]` overrides applied.
    pub policy: Policy,
    /// The proxy's secrets; empty: no handshake inspection.
    pub secrets: SecretSet,
    /// Random bytes the host drew for this appliance, mixed into the boot
    /// seed on boards that have no hardware random number generator.
    pub seed: [u8; 32],
}

/// Why a block was refused. Each names what was wrong, for the boot log.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum BlockError {
    /// No block: the magic is absent (erased or never written).
    Missing,
    /// A block of a format this firmware does not read.
    Version(u16),
    /// The length field points beyond the reserved area or the bytes given.
    Length,
    /// The bytes do not match their digest: damaged or cut short.
    Checksum,
    /// A field holds a value the guard does not accept; its name.
    Field(&'static str),
    /// The payload ends before its last field, or has bytes after it.
    Truncated,
}

impl fmt::Display for BlockError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BlockError::Missing => f.write_str("no config block (magic absent)"),
            BlockError::Version(v) => {
                write!(f, "config block version {v}, this firmware reads {VERSION}")
            }
            BlockError::Length => f.write_str("config block length out of range"),
            BlockError::Checksum => f.write_str("config block checksum mismatch (damaged)"),
            BlockError::Field(name) => write!(f, "config block field {name} is invalid"),
            BlockError::Truncated => f.write_str("config block payload has the wrong length"),
        }
    }
}

impl core::error::Error for BlockError {}

/// Why a config cannot be written as a block.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EncodeError {
    /// It does not fit in [`BLOCK_MAX`] bytes (or the buffer given).
    TooLarge,
    /// A field the decoder would refuse; its name.
    Field(&'static str),
}

impl fmt::Display for EncodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            EncodeError::TooLarge => write!(f, "the config does not fit in {BLOCK_MAX} bytes"),
            EncodeError::Field(name) => write!(f, "{name} is invalid"),
        }
    }
}

impl core::error::Error for EncodeError {}

struct Writer<'a> {
    out: &'a mut [u8],
    at: usize,
}

impl Writer<'_> {
    fn bytes(&mut self, b: &[u8]) -> Result<(), EncodeError> {
        let end = self.at.checked_add(b.len()).ok_or(EncodeError::TooLarge)?;
        self.out
            .get_mut(self.at..end)
            .ok_or(EncodeError::TooLarge)?
            .copy_from_slice(b);
        self.at = end;
        Ok(())
    }
    fn u8(&mut self, v: u8) -> Result<(), EncodeError> {
        self.bytes(&[v])
    }
    fn u16(&mut self, v: u16) -> Result<(), EncodeError> {
        self.bytes(&v.to_le_bytes())
    }
    fn u32(&mut self, v: u32) -> Result<(), EncodeError> {
        self.bytes(&v.to_le_bytes())
    }
    fn ms(&mut self, d: Duration) -> Result<(), EncodeError> {
        // Anything beyond u64::MAX - 1 ms (585 million years) is "forever"
        // anyway; it must not turn into the "none" marker.
        let ms = u64::try_from(d.as_millis()).unwrap_or(NONE_MS - 1);
        self.bytes(&ms.min(NONE_MS - 1).to_le_bytes())
    }
    fn endpoint(&mut self, e: SocketAddrV4) -> Result<(), EncodeError> {
        self.bytes(&e.ip().octets())?;
        self.u16(e.port())
    }
}

struct Reader<'a> {
    data: &'a [u8],
}

impl<'a> Reader<'a> {
    fn take<const N: usize>(&mut self) -> Result<[u8; N], BlockError> {
        let (head, rest) = self
            .data
            .split_first_chunk::<N>()
            .ok_or(BlockError::Truncated)?;
        self.data = rest;
        Ok(*head)
    }
    fn slice(&mut self, n: usize) -> Result<&'a [u8], BlockError> {
        if self.data.len() < n {
            return Err(BlockError::Truncated);
        }
        let (head, rest) = self.data.split_at(n);
        self.data = rest;
        Ok(head)
    }
    fn u8(&mut self) -> Result<u8, BlockError> {
        Ok(self.take::<1>()?[0])
    }
    fn u16(&mut self) -> Result<u16, BlockError> {
        Ok(u16::from_le_bytes(self.take()?))
    }
    fn u32(&mut self) -> Result<u32, BlockError> {
        Ok(u32::from_le_bytes(self.take()?))
    }
    fn u64(&mut self) -> Result<u64, BlockError> {
        Ok(u64::from_le_bytes(self.take()?))
    }
    fn bool(&mut self, name: &'static str) -> Result<bool, BlockError> {
        match self.u8()? {
            0 => Ok(false),
            1 => Ok(true),
            _ => Err(BlockError::Field(name)),
        }
    }
    fn ms(&mut self, name: &'static str) -> Result<Duration, BlockError> {
        match self.u64()? {
            NONE_MS => Err(BlockError::Field(name)),
            ms => Ok(Duration::from_millis(ms)),
        }
    }
    fn ip(&mut self) -> Result<Ipv4Addr, BlockError> {
        Ok(Ipv4Addr::from(self.take::<4>()?))
    }
    fn endpoint(&mut self) -> Result<SocketAddrV4, BlockError> {
        let ip = self.ip()?;
        Ok(SocketAddrV4::new(ip, self.u16()?))
    }
}

/// The bytes `Secret::from_bytes` reads back into `secret`.
fn secret_bytes(secret: &Secret, out: &mut [u8; 1 + 16 + 253]) -> usize {
    let key = secret.key();
    let domain = secret.domain().as_bytes();
    match secret.kind() {
        SecretKind::Classic => {
            out[..16].copy_from_slice(key);
            16
        }
        SecretKind::Padded => {
            out[0] = 0xdd;
            out[1..17].copy_from_slice(key);
            17
        }
        SecretKind::FakeTls => {
            out[0] = 0xee;
            out[1..17].copy_from_slice(key);
            out[17..17 + domain.len()].copy_from_slice(domain);
            17 + domain.len()
        }
    }
}

impl ApplianceConfig {
    /// Writes the block into `out` (at most [`BLOCK_MAX`] bytes are used)
    /// and returns its length. Refuses what [`decode`](Self::decode) would
    /// refuse, so a block the host wrote is one the firmware accepts.
    ///
    /// Payload, in order: flags (bit 0: DHCP), address, prefix, gateway
    /// (`0.0.0.0`: none), MAC, listen port, backend address and port, NTP
    /// address and port (port 0: none), connect and idle timeouts (u32
    /// ms), the time window (u32 s ahead, behind), the policy field by
    /// field in [`Policy`]'s order (durations u64 ms, `u64::MAX` for
    /// "off"; `attack_enter_per_second` 0 for off), the secret count and
    /// each secret's bytes (length, then mode, key and domain as
    /// `Secret::from_bytes` reads them), the 32-byte seed.
    pub fn encode(&self, out: &mut [u8]) -> Result<usize, EncodeError> {
        self.check().map_err(|e| match e {
            BlockError::Field(name) => EncodeError::Field(name),
            _ => EncodeError::Field("config"),
        })?;
        let limit = out.len().min(BLOCK_MAX);
        let out = &mut out[..limit];
        if out.len() < HEADER + DIGEST {
            return Err(EncodeError::TooLarge);
        }
        let (head, rest) = out.split_at_mut(HEADER);
        let body_room = rest.len() - DIGEST;
        let mut w = Writer {
            out: &mut rest[..body_room],
            at: 0,
        };
        self.write_payload(&mut w)?;
        let n = w.at;
        head[..4].copy_from_slice(&MAGIC);
        head[4..6].copy_from_slice(&VERSION.to_le_bytes());
        // Fits: BLOCK_MAX is below u16::MAX.
        head[6..8].copy_from_slice(&(n as u16).to_le_bytes());
        let mut hash = Sha256::new();
        hash.update(&*head);
        hash.update(&rest[..n]);
        rest[n..n + DIGEST].copy_from_slice(&hash.finalize());
        Ok(HEADER + n + DIGEST)
    }

    fn write_payload(&self, w: &mut Writer<'_>) -> Result<(), EncodeError> {
        let (dhcp, address, prefix, gateway) = match self.network {
            Network::Dhcp => (1, Ipv4Addr::UNSPECIFIED, 0, None),
            Network::Static {
                address,
                prefix,
                gateway,
            } => (0, address, prefix, gateway),
        };
        w.u8(dhcp)?;
        w.bytes(&address.octets())?;
        w.u8(prefix)?;
        w.bytes(&gateway.unwrap_or(Ipv4Addr::UNSPECIFIED).octets())?;
        w.bytes(&self.mac)?;
        w.u16(self.listen_port)?;
        w.endpoint(self.backend)?;
        w.endpoint(
            self.ntp
                .unwrap_or(SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 0)),
        )?;
        w.u32(ms32(self.connect_timeout))?;
        w.u32(ms32(self.idle_timeout))?;
        w.u32(self.window.ahead_secs)?;
        w.u32(self.window.behind_secs)?;

        let p = &self.policy;
        w.u8(p.level.number())?;
        w.u8(p.ipv6_prefix)?;
        w.u16(p.max_connections_per_client)?;
        w.ms(p.rate_window)?;
        w.u16(p.max_new_connections_per_window)?;
        w.u32(p.global_max_connections)?;
        w.u32(p.global_max_new_per_second)?;
        w.u8(p.ip_blocking.into())?;
        w.u8(p.block_after_violations)?;
        w.ms(p.block_duration)?;
        w.ms(p.max_block_duration)?;
        w.u16(p.block_jitter_permille)?;
        w.ms(p.offence_memory)?;
        w.u8(p.scanner_failures)?;
        w.u8(p.block_on_replay.into())?;
        match p.handshake_timeout {
            Some(d) => w.ms(d)?,
            None => w.bytes(&NONE_MS.to_le_bytes())?,
        }
        w.u8(p.slowloris_timeouts)?;
        w.u32(p.attack_enter_per_second.unwrap_or(0))?;
        w.u32(p.attack_exit_per_second)?;
        w.ms(p.attack_cooldown)?;
        w.u8(p.attack_limit_percent)?;

        let secrets = self.secrets.as_slice();
        // A SecretSet holds at most MAX_SECRETS (16).
        w.u8(secrets.len() as u8)?;
        let mut buf = [0u8; 1 + 16 + 253];
        for s in secrets {
            let n = secret_bytes(s, &mut buf);
            w.u16(n as u16)?;
            w.bytes(&buf[..n])?;
        }
        w.bytes(&self.seed)
    }

    /// Reads a block: `flash` is the reserved area (or any slice starting
    /// at the block; bytes after it are ignored). Validates everything
    /// before returning anything.
    pub fn decode(flash: &[u8]) -> Result<ApplianceConfig, BlockError> {
        let head = flash.first_chunk::<HEADER>().ok_or(BlockError::Missing)?;
        if head[..4] != MAGIC {
            return Err(BlockError::Missing);
        }
        let version = u16::from_le_bytes([head[4], head[5]]);
        if version != VERSION {
            return Err(BlockError::Version(version));
        }
        let n = usize::from(u16::from_le_bytes([head[6], head[7]]));
        let total = HEADER + n + DIGEST;
        if total > BLOCK_MAX || total > flash.len() {
            return Err(BlockError::Length);
        }
        let digest = Sha256::digest(&flash[..HEADER + n]);
        if digest[..] != flash[HEADER + n..total] {
            return Err(BlockError::Checksum);
        }
        let mut r = Reader {
            data: &flash[HEADER..HEADER + n],
        };
        let config = Self::read_payload(&mut r)?;
        if !r.data.is_empty() {
            return Err(BlockError::Truncated);
        }
        config.check()?;
        Ok(config)
    }

    fn read_payload(r: &mut Reader<'_>) -> Result<ApplianceConfig, BlockError> {
        let dhcp = r.bool("network")?;
        let address = r.ip()?;
        let prefix = r.u8()?;
        let gateway = r.ip()?;
        // Every block has one encoding (the fuzz target checks that a block
        // writes itself back unchanged): fields a setting leaves unused
        // must be zero.
        let network = if dhcp {
            if !address.is_unspecified() || prefix != 0 || !gateway.is_unspecified() {
                return Err(BlockError::Field("network"));
            }
            Network::Dhcp
        } else {
            Network::Static {
                address,
                prefix,
                gateway: (!gateway.is_unspecified()).then_some(gateway),
            }
        };
        let mac = r.take::<6>()?;
        let listen_port = r.u16()?;
        let backend = r.endpoint()?;
        let ntp = r.endpoint()?;
        let ntp = match (ntp.ip().is_unspecified(), ntp.port()) {
            (true, 0) => None,
            (false, 0) => return Err(BlockError::Field("ntp")),
            _ => Some(ntp),
        };
        let connect_timeout = Duration::from_millis(r.u32()?.into());
        let idle_timeout = Duration::from_millis(r.u32()?.into());
        let window = TimeWindow {
            ahead_secs: r.u32()?,
            behind_secs: r.u32()?,
        };

        let level = Level::from_number(r.u8()?).ok_or(BlockError::Field("level"))?;
        let policy = Policy {
            level,
            ipv6_prefix: r.u8()?,
            max_connections_per_client: r.u16()?,
            rate_window: r.ms("rate_window")?,
            max_new_connections_per_window: r.u16()?,
            global_max_connections: r.u32()?,
            global_max_new_per_second: r.u32()?,
            ip_blocking: r.bool("ip_blocking")?,
            block_after_violations: r.u8()?,
            block_duration: r.ms("block_duration")?,
            max_block_duration: r.ms("max_block_duration")?,
            block_jitter_permille: r.u16()?,
            offence_memory: r.ms("offence_memory")?,
            scanner_failures: r.u8()?,
            block_on_replay: r.bool("block_on_replay")?,
            handshake_timeout: match r.u64()? {
                NONE_MS => None,
                ms => Some(Duration::from_millis(ms)),
            },
            slowloris_timeouts: r.u8()?,
            attack_enter_per_second: match r.u32()? {
                0 => None,
                n => Some(n),
            },
            attack_exit_per_second: r.u32()?,
            attack_cooldown: r.ms("attack_cooldown")?,
            attack_limit_percent: r.u8()?,
            // Not in the block (format 1): the level's preset. An appliance
            // serves few enough clients that the preset's room for shared
            // addresses fits them.
            max_authenticated_per_client: Policy::for_level(level).max_authenticated_per_client,
            shared_failure_percent: Policy::for_level(level).shared_failure_percent,
            // Nor is the network tier (issue 17): the level's preset, off at
            // levels 0 and 1.
            max_connections_per_network: Policy::for_level(level).max_connections_per_network,
            max_new_connections_per_network: Policy::for_level(level)
                .max_new_connections_per_network,
            network_prefix_v4: Policy::for_level(level).network_prefix_v4,
            network_prefix_v6: Policy::for_level(level).network_prefix_v6,
        };

        let count = usize::from(r.u8()?);
        if count > MAX_SECRETS {
            return Err(BlockError::Field("secrets"));
        }
        let mut secrets = SecretSet::new();
        for _ in 0..count {
            let len = usize::from(r.u16()?);
            let bytes = r.slice(len)?;
            let secret = Secret::from_bytes(bytes).map_err(|_| BlockError::Field("secrets"))?;
            secrets
                .push(secret)
                .map_err(|_| BlockError::Field("secrets"))?;
        }
        let seed = r.take::<32>()?;
        Ok(ApplianceConfig {
            network,
            mac,
            listen_port,
            backend,
            ntp,
            connect_timeout,
            idle_timeout,
            window,
            policy,
            secrets,
            seed,
        })
    }

    /// The checks both sides make: what the guard cannot run with.
    fn check(&self) -> Result<(), BlockError> {
        if let Network::Static {
            address, prefix, ..
        } = self.network
        {
            if prefix > 32 {
                return Err(BlockError::Field("prefix"));
            }
            if address.is_unspecified() || address.is_broadcast() || address.is_multicast() {
                return Err(BlockError::Field("address"));
            }
        }
        // A multicast (group) bit in the source MAC breaks every peer's ARP.
        if self.mac[0] & 1 != 0 || self.mac == [0; 6] {
            return Err(BlockError::Field("mac"));
        }
        if self.listen_port == 0 {
            return Err(BlockError::Field("listen_port"));
        }
        if self.backend.port() == 0 || self.backend.ip().is_unspecified() {
            return Err(BlockError::Field("backend"));
        }
        if self.ntp.is_some_and(|n| n.ip().is_unspecified()) {
            return Err(BlockError::Field("ntp"));
        }
        if self.connect_timeout.is_zero() || self.connect_timeout.as_millis() > u128::from(u32::MAX)
        {
            return Err(BlockError::Field("connect_timeout"));
        }
        if self.idle_timeout.is_zero() || self.idle_timeout.as_millis() > u128::from(u32::MAX) {
            return Err(BlockError::Field("idle_timeout"));
        }
        self.policy
            .validate()
            .map_err(|e| BlockError::Field(e.field))
    }
}

fn ms32(d: Duration) -> u32 {
    u32::try_from(d.as_millis()).unwrap_or(u32::MAX)
}
