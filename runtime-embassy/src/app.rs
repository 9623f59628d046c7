//! The application both firmware images run, board-independent: from the
//! config block to a serving guard. A board crate brings the Ethernet
//! driver, the time driver, the seed and a way to print a line; everything
//! it decides about the network and the guard comes from here, so the QEMU
//! image CI boots runs the code the NUCLEO board runs.
//!
//! This lives in the library rather than in a third "app" crate: it is
//! safe code on embassy-net, like the rest of the library, and here the
//! host tests reach it with the in-memory stacks. The board crates keep
//! only what must differ (registers, interrupts, memory maps) and every
//! `unsafe` line.

use core::fmt;

use embassy_net::{IpEndpoint, Ipv4Cidr, Stack, StaticConfigV4};
use embassy_time::Duration;
use mtguard_core::Storage;

pub use mtguard_config_block as block;
use mtguard_config_block::{ApplianceConfig, Network};

use crate::{Config, Guard, GuardEvent};

/// How long an SNTP time is trusted: four missed refreshes (of 15
/// minutes). A crystal drifts by well under a second in that time.
pub const CLOCK_MAX_AGE: Duration = Duration::from_secs(60 * 60);

/// The stack's configuration: the block's fixed address, or DHCPv4.
pub fn net_config(c: &ApplianceConfig) -> embassy_net::Config {
    match c.network {
        Network::Dhcp => embassy_net::Config::dhcpv4(Default::default()),
        Network::Static {
            address,
            prefix,
            gateway,
        } => embassy_net::Config::ipv4_static(StaticConfigV4 {
            address: Ipv4Cidr::new(address, prefix),
            gateway,
            dns_servers: Default::default(),
        }),
    }
}

/// The guard's settings from the block.
pub fn guard_config(c: &ApplianceConfig) -> Config {
    Config {
        port: c.listen_port,
        backend: IpEndpoint::new((*c.backend.ip()).into(), c.backend.port()),
        connect_timeout: ms(c.connect_timeout),
        idle_timeout: ms(c.idle_timeout),
        window: c.window,
        clock_max_age: CLOCK_MAX_AGE,
    }
}

fn ms(d: core::time::Duration) -> Duration {
    Duration::from_millis(u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// The block in one line, for the boot log (secrets by kind only).
pub struct Summary<'a>(pub &'a ApplianceConfig);

impl fmt::Display for Summary<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let c = self.0;
        match c.network {
            Network::Dhcp => f.write_str("address dhcp")?,
            Network::Static {
                address, prefix, ..
            } => write!(f, "address {address}/{prefix}")?,
        }
        write!(
            f,
            ", port {}, backend {}, level {}, {} secret(s)",
            c.listen_port,
            c.backend,
            c.policy.level.number(),
            c.secrets.as_slice().len()
        )?;
        match c.ntp {
            Some(ntp) => write!(f, ", ntp {ntp}"),
            None => f.write_str(", no ntp (fake-TLS refused)"),
        }
    }
}

/// Logs every guard event as one line (`event: ...`), forever.
pub async fn log_events<S: Storage, const SLOTS: usize>(
    guard: &Guard<'_, S, SLOTS>,
    log: impl Fn(fmt::Arguments<'_>),
) -> ! {
    let events = guard.events();
    let mut dropped = 0;
    loop {
        let event: GuardEvent = events.receive().await;
        log(format_args!("event: {event:?}"));
        let now = guard.dropped_events();
        if now != dropped {
            log(format_args!("events: {} dropped", now - dropped));
            dropped = now;
        }
    }
}

/// Waits until the stack has an address (at once with a fixed one, after
/// the lease with DHCP) and logs it.
pub async fn announce(stack: Stack<'_>, log: impl Fn(fmt::Arguments<'_>)) {
    stack.wait_config_up().await;
    match stack.config_v4() {
        Some(v4) => log(format_args!("net: up, address {}", v4.address)),
        None => log(format_args!("net: up")),
    }
}
