//! The PROXY protocol header (v1 text, v2 binary) that tells the backend
//! which client a relayed connection is from.

use std::io;
use std::net::SocketAddr;

use super::{canonical, ProxyProtocol};

/// The PROXY protocol header announcing `client` connected to `local`.
/// Public so the fuzz target can round-trip it through `ppp`'s parser.
pub fn proxy_header(
    version: ProxyProtocol,
    client: SocketAddr,
    local: SocketAddr,
) -> io::Result<Option<Vec<u8>>> {
    let (client, local) = same_family(canonical(client), canonical(local));
    Ok(match version {
        ProxyProtocol::None => None,
        ProxyProtocol::V1 => Some(
            ppp::v1::Addresses::from((client, local))
                .to_string()
                .into_bytes(),
        ),
        ProxyProtocol::V2 => Some(
            ppp::v2::Builder::with_addresses(
                ppp::v2::Version::Two | ppp::v2::Command::Proxy,
                ppp::v2::Protocol::Stream,
                (client, local),
            )
            .build()?,
        ),
    })
}

/// A header carries two addresses of one family: if they differ, both are
/// written as IPv6 (IPv4 as IPv4-mapped).
fn same_family(a: SocketAddr, b: SocketAddr) -> (SocketAddr, SocketAddr) {
    if a.is_ipv4() == b.is_ipv4() {
        return (a, b);
    }
    let v6 = |s: SocketAddr| match s {
        SocketAddr::V4(v4) => SocketAddr::new(v4.ip().to_ipv6_mapped().into(), v4.port()),
        v6 => v6,
    };
    (v6(a), v6(b))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    #[test]
    fn v1_header_carries_both_addresses() {
        let h = proxy_header(
            ProxyProtocol::V1,
            addr("127.0.0.9:40000"),
            addr("127.0.0.1:443"),
        )
        .unwrap()
        .unwrap();
        assert_eq!(h, b"PROXY TCP4 127.0.0.9 127.0.0.1 40000 443\r\n");
    }

    #[test]
    fn mapped_addresses_of_a_dual_stack_listener_are_written_as_ipv4() {
        let h = proxy_header(
            ProxyProtocol::V2,
            addr("[::ffff:192.0.2.7]:5000"),
            addr("[::ffff:198.51.100.1]:443"),
        )
        .unwrap()
        .unwrap();
        let parsed = ppp::v2::Header::try_from(h.as_slice()).unwrap();
        assert_eq!(
            parsed.addresses,
            ppp::v2::Addresses::from((addr("192.0.2.7:5000"), addr("198.51.100.1:443")))
        );
    }

    #[test]
    fn mixed_families_become_ipv6() {
        let h = proxy_header(
            ProxyProtocol::V1,
            addr("192.0.2.7:5000"),
            addr("[2001:db8::1]:443"),
        )
        .unwrap()
        .unwrap();
        assert_eq!(
            h,
            b"PROXY TCP6 ::ffff:192.0.2.7 2001:db8::1 5000 443\r\n".as_slice()
        );
    }

    #[test]
    fn no_header_without_proxy_protocol() {
        let h = proxy_header(
            ProxyProtocol::None,
            addr("192.0.2.7:5000"),
            addr("192.0.2.1:443"),
        );
        assert!(h.unwrap().is_none());
    }
}
