//! One script of client behaviour (limits, a scanner, blocks, releases)
//! and what the server runtime's guard decides for it: the appliance must
//! decide alike, over its in-memory network (same_as_server.rs) and booted
//! in QEMU (qemu.rs).
#![allow(dead_code)]

use std::net::{IpAddr, Ipv4Addr};

use mtguard::engine::{Capacity, EventSink, Guard as ServerGuard};
use mtguard_core::mtproto::{Secret, SecretSet};
use mtguard_core::{Event, HandshakeOutcome, Policy, RejectReason};

#[derive(Clone, Copy, Debug)]
pub enum Step {
    /// Connects with a valid handshake and keeps the connection.
    Hold(usize),
    /// Connects and sends bytes that are no handshake.
    Probe(usize),
    /// Closes every held connection.
    Release,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Seen {
    Admitted,
    Refused(RejectReason),
    ProbeClosed,
    Released,
}

pub const SCRIPT: [Step; 12] = [
    Step::Hold(0),
    Step::Hold(0),
    Step::Hold(0),  // over the per-client limit
    Step::Probe(1), // one failed handshake
    Step::Hold(2),
    Step::Hold(0),  // second refusal: blocked
    Step::Probe(1), // second failure: a scanner, blocked
    Step::Probe(1), // refused before a byte is read
    Step::Release,
    Step::Hold(0), // still blocked with no connection left
    Step::Hold(3),
    Step::Hold(2),
];

pub fn secrets() -> SecretSet {
    let mut set = SecretSet::new();
    for s in [
        "0123456789abcdef0123456789abcdef",
        "dd0123456789abcdef0123456789abcdef",
    ] {
        set.push(Secret::parse(s).unwrap()).unwrap();
    }
    set
}

struct Quiet;
impl EventSink for Quiet {
    fn event(&self, _: &Event, _: mtguard_core::Instant) {}
}

/// The script against the server runtime's guard, enforcing `policy`.
pub fn on_server(policy: Policy, client: impl Fn(usize) -> Ipv4Addr) -> Vec<Seen> {
    let guard = ServerGuard::new(
        policy,
        Capacity {
            clients: 64,
            connections: 16,
            prefixes: 8,
            networks: 16,
        },
        Box::new(Quiet),
    )
    .unwrap();
    let mut held = Vec::new();
    SCRIPT
        .iter()
        .map(|step| match *step {
            Step::Hold(c) | Step::Probe(c) => match guard.connect(IpAddr::V4(client(c))) {
                Err(reason) => Seen::Refused(reason),
                Ok(admitted) => {
                    if matches!(step, Step::Hold(_)) {
                        guard.handshake(admitted.id, HandshakeOutcome::Valid);
                        held.push(admitted.id);
                        Seen::Admitted
                    } else {
                        guard.handshake(admitted.id, HandshakeOutcome::Invalid);
                        guard.close(admitted.id);
                        Seen::ProbeClosed
                    }
                }
            },
            Step::Release => {
                for id in held.drain(..) {
                    guard.close(id);
                }
                Seen::Released
            }
        })
        .collect()
}
