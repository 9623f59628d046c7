//! Client identity: which peer addresses count as one client.
//!
//! IPv4 and IPv6 share one 128-bit space in which IPv4 `a.b.c.d` is
//! `::ffff:a.b.c.d`. Dual-stack sockets report IPv4 peers in that form, so
//! both spellings of a peer map to the same value, and one table of keys or
//! prefixes serves both families.
//!
//! One IPv6 host usually owns a whole /64 and can pick any address in it, so
//! counting IPv6 addresses one by one would let it dodge every per-client
//! limit. IPv6 peers are therefore aggregated to a prefix (/64 unless the
//! policy says otherwise); IPv4 peers are counted per address.
//!
//! ```
//! use mtguard_core::addr::{ClientKey, DEFAULT_IPV6_PREFIX};
//! use core::net::IpAddr;
//!
//! let a: IpAddr = "2001:db8:1:2::a".parse().unwrap();
//! let b: IpAddr = "2001:db8:1:2:ffff::b".parse().unwrap();
//! let key = ClientKey::new(a, DEFAULT_IPV6_PREFIX);
//! assert_eq!(key, ClientKey::new(b, DEFAULT_IPV6_PREFIX));
//! assert_eq!(key.display(DEFAULT_IPV6_PREFIX).to_string(), "2001:db8:1:2::/64");
//!
//! let v4: IpAddr = "192.0.2.7".parse().unwrap();
//! let mapped: IpAddr = "::ffff:192.0.2.7".parse().unwrap();
//! assert_eq!(ClientKey::new(v4, 64), ClientKey::new(mapped, 64));
//! ```

use core::fmt;
use core::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// The prefix length IPv6 clients are aggregated to unless configured
/// otherwise: the /64 a single host is normally given.
pub const DEFAULT_IPV6_PREFIX: u8 = 64;

/// `::ffff:0:0/96`, the part of the space that holds IPv4.
const V4_NETWORK: u128 = 0xffff << 32;
const V4_MASK: u128 = !0 << 32;

/// `addr` in the shared 128-bit space: IPv4 `a.b.c.d` as `::ffff:a.b.c.d`,
/// IPv6 unchanged (so `::ffff:a.b.c.d` gives the same value as `a.b.c.d`).
pub fn map_ip(addr: IpAddr) -> u128 {
    match addr {
        IpAddr::V4(v4) => V4_NETWORK | u128::from(u32::from(v4)),
        IpAddr::V6(v6) => u128::from(v6),
    }
}

/// The inverse of [`map_ip`]: values in `::ffff:0:0/96` come back as IPv4.
pub fn unmap(bits: u128) -> IpAddr {
    if is_v4(bits) {
        // Truncation keeps the low 32 bits, which are the IPv4 address.
        IpAddr::V4(Ipv4Addr::from(bits as u32))
    } else {
        IpAddr::V6(Ipv6Addr::from(bits))
    }
}

/// Whether `bits` lies in `::ffff:0:0/96`.
pub(crate) fn is_v4(bits: u128) -> bool {
    bits & V4_MASK == V4_NETWORK
}

/// The netmask of a prefix `len` bits long, `len` in `0..=128`.
pub(crate) fn netmask(len: u8) -> u128 {
    // A shift by 128 overflows; a /0 keeps no bits.
    (!0u128).checked_shl(128 - u32::from(len)).unwrap_or(0)
}

/// The identity a peer is accounted under: its IPv4 address, or the IPv6
/// prefix it belongs to.
///
/// The key is the network address in the shared space and nothing else, so
/// it is as cheap to hash and store as a `u128`. The IPv6 prefix length is
/// not part of it: it is fixed by the policy, and [`ClientKey::display`]
/// takes it back to show the key.
///
/// IPv4 keys and IPv6 keys never collide, whatever the prefix length: an
/// IPv6 key either keeps its first 96 bits, which are not those of
/// `::ffff:0:0/96` (mapped addresses are IPv4), or is cut shorter than 96
/// bits, which clears the last bit of the `ffff`.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct ClientKey(u128);

impl ClientKey {
    /// The key of a peer at `addr`: the address itself for IPv4 (including
    /// IPv4-mapped IPv6), its network of `v6_prefix` bits for IPv6.
    ///
    /// `v6_prefix` is normally in `1..=128` (the policy checks it); longer
    /// lengths count as 128.
    pub fn new(addr: IpAddr, v6_prefix: u8) -> ClientKey {
        let bits = map_ip(addr);
        if is_v4(bits) {
            ClientKey(bits)
        } else {
            ClientKey(bits & netmask(v6_prefix.min(128)))
        }
    }

    /// The key whose [`ClientKey::bits`] are `bits`.
    pub const fn from_bits(bits: u128) -> ClientKey {
        ClientKey(bits)
    }

    /// The network address in the shared space, for tables and snapshots.
    pub const fn bits(self) -> u128 {
        self.0
    }

    /// Whether this is an IPv4 client.
    pub fn is_ipv4(self) -> bool {
        is_v4(self.0)
    }

    /// The IPv4 address, or the IPv6 network address.
    pub fn to_ip(self) -> IpAddr {
        unmap(self.0)
    }

    /// Shows the key as `192.0.2.7`, `2001:db8:1:2::/64` for an IPv6 key
    /// made with `v6_prefix` 64, or a plain IPv6 address for `v6_prefix` 128.
    pub fn display(self, v6_prefix: u8) -> impl fmt::Display {
        KeyDisplay {
            key: self,
            v6_prefix,
        }
    }
}

impl fmt::Debug for ClientKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ClientKey({})", self.to_ip())
    }
}

struct KeyDisplay {
    key: ClientKey,
    v6_prefix: u8,
}

impl fmt::Display for KeyDisplay {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.key.to_ip() {
            IpAddr::V6(v6) if self.v6_prefix < 128 => write!(f, "{v6}/{}", self.v6_prefix),
            ip => write!(f, "{ip}"),
        }
    }
}

#[cfg(test)]
#[path = "../tests/unit/addr.rs"]
mod tests;
