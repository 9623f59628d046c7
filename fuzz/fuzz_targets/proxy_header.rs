//! The PROXY protocol headers the relay writes, for arbitrary client and
//! local addresses, read back by `ppp`'s parser (a well-kept, independent
//! reader: the one mtg-style backends in Rust use): each must parse in full
//! and carry the client and local addresses the relay meant to announce.
#![no_main]

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use mtguard::config::ProxyProtocol;
use mtguard::proxy::proxy_header;

#[derive(Arbitrary, Debug)]
enum Addr {
    V4([u8; 4], u16),
    V6([u8; 16], u16),
    /// IPv4-mapped IPv6, as a dual-stack listener reports IPv4 peers.
    Mapped([u8; 4], u16),
}

impl Addr {
    fn socket(&self) -> SocketAddr {
        match *self {
            Addr::V4(ip, port) => SocketAddr::new(Ipv4Addr::from(ip).into(), port),
            Addr::V6(ip, port) => SocketAddr::new(Ipv6Addr::from(ip).into(), port),
            Addr::Mapped(ip, port) => {
                SocketAddr::new(Ipv4Addr::from(ip).to_ipv6_mapped().into(), port)
            }
        }
    }
}

/// What the header must say, written from the documented rule rather than
/// from the relay's code: mapped addresses are IPv4; if the two families
/// still differ, both are written as IPv6 (IPv4 as mapped).
fn expected(client: SocketAddr, local: SocketAddr) -> (SocketAddr, SocketAddr) {
    let canon = |s: SocketAddr| SocketAddr::new(s.ip().to_canonical(), s.port());
    let (c, l) = (canon(client), canon(local));
    if c.is_ipv4() == l.is_ipv4() {
        return (c, l);
    }
    let v6 = |s: SocketAddr| match s.ip() {
        IpAddr::V4(v4) => SocketAddr::new(v4.to_ipv6_mapped().into(), s.port()),
        IpAddr::V6(_) => s,
    };
    (v6(c), v6(l))
}

fuzz_target!(|input: (Addr, Addr)| {
    let (client, local) = (input.0.socket(), input.1.socket());
    let (c, l) = expected(client, local);

    let v1 = proxy_header(ProxyProtocol::V1, client, local)
        .unwrap()
        .unwrap();
    // The v1 specification caps a header at 107 bytes, CRLF included.
    assert!(v1.len() <= 107, "{} bytes", v1.len());
    let text = std::str::from_utf8(&v1).unwrap();
    let parsed = ppp::v1::Header::try_from(text).unwrap();
    let want = ppp::v1::Addresses::from((c, l));
    assert_eq!(parsed.addresses, want, "{text:?}");
    assert_eq!(
        parsed.header.len(),
        v1.len(),
        "v1 header not parsed in full"
    );

    let v2 = proxy_header(ProxyProtocol::V2, client, local)
        .unwrap()
        .unwrap();
    let parsed = ppp::v2::Header::try_from(v2.as_slice()).unwrap();
    assert_eq!(parsed.addresses, ppp::v2::Addresses::from((c, l)));
    assert_eq!(parsed.command, ppp::v2::Command::Proxy);
    assert_eq!(parsed.protocol, ppp::v2::Protocol::Stream);
    assert_eq!(parsed.len(), v2.len(), "v2 header not parsed in full");

    assert!(proxy_header(ProxyProtocol::None, client, local)
        .unwrap()
        .is_none());
});
