//! mtguard on a NUCLEO-H743ZI: the appliance sits on the wire in front of an
//! MTProto proxy, admits clients through the core's engine, inspects their
//! handshakes and forwards the good ones.
//!
//! Network settings, the secret and the backend are constants below: an
//! appliance image is built for its place in the network. Flash and watch
//! the defmt log with `cargo run --release` (probe-rs).
#![no_std]
#![no_main]

use defmt::{info, unwrap};
use embassy_executor::Spawner;
use embassy_net::{Ipv4Address, Ipv4Cidr, StackResources, StaticConfigV4};
use embassy_stm32::eth::{Ethernet, GenericPhy, PacketQueue, Sma};
use embassy_stm32::peripherals::{ETH, ETH_SMA};
use embassy_stm32::rng::Rng;
use embassy_stm32::{bind_interrupts, eth, peripherals, rng, Config as HalConfig};
use embassy_time::Duration;
use mtguard_core::mtproto::replay::{Entry, APPLIANCE_CAPACITY};
use mtguard_core::mtproto::{Secret, SecretSet};
use mtguard_core::storage::{AppliancePreset, Borrowed};
use mtguard_core::{Policy, Seed, Tables};
use mtguard_embassy::{Config, Guard, Slot};
use static_cell::{ConstStaticCell, StaticCell};
use {defmt_rtt as _, panic_probe as _};

/// The appliance's address and the proxy it guards.
const ADDRESS: Ipv4Address = Ipv4Address::new(192, 168, 1, 20);
const PREFIX: u8 = 24;
const GATEWAY: Ipv4Address = Ipv4Address::new(192, 168, 1, 1);
const BACKEND: Ipv4Address = Ipv4Address::new(192, 168, 1, 21);
const PORT: u16 = 443;
/// The proxy's secret (empty: no inspection, every client's first bytes
/// are forwarded).
const SECRET: &str = "dd0123456789abcdef0123456789abcdef";

/// Concurrent connections the appliance serves; one more client is
/// refused by the stack (a reset) until a slot frees up.
const SLOTS: usize = 8;
/// Socket buffer per direction and per socket, and the longest ClientHello
/// judged (current clients send up to about 2 KiB).
type AppSlot = Slot<1024, 2048>;
type AppGuard = Guard<'static, Borrowed<'static>, SLOTS>;
type Device = Ethernet<'static, ETH, GenericPhy<Sma<'static, ETH_SMA>>>;

bind_interrupts!(struct Irqs {
    ETH => eth::InterruptHandler;
    RNG => rng::InterruptHandler<peripherals::RNG>;
});

// Every large table is a `static`, so the linker's figures are the guard's
// memory. The big ones start with non-zero empty markers: filled in place at
// boot (`init_with`) they stay in `.bss`, instead of costing their whole
// initial image in flash as `.data` would.
static TABLES: StaticCell<Tables<AppliancePreset>> = StaticCell::new();
static REPLAY: StaticCell<[Entry; APPLIANCE_CAPACITY]> = StaticCell::new();
static SLOT_BUFFERS: StaticCell<[AppSlot; SLOTS]> = StaticCell::new();
static PACKETS: ConstStaticCell<PacketQueue<4, 4>> = ConstStaticCell::new(PacketQueue::new());
// Two sockets per slot, and room for a DHCP or DNS socket later.
static RESOURCES: ConstStaticCell<StackResources<{ 2 * SLOTS + 2 }>> =
    ConstStaticCell::new(StackResources::new());
static GUARD: StaticCell<AppGuard> = StaticCell::new();

#[embassy_executor::task]
async fn net_task(mut runner: embassy_net::Runner<'static, Device>) -> ! {
    runner.run().await
}

#[embassy_executor::task]
async fn guard_task(
    guard: &'static AppGuard,
    stack: embassy_net::Stack<'static>,
    slots: &'static mut [AppSlot; SLOTS],
) -> ! {
    guard.run(stack, slots).await
}

#[embassy_executor::task]
async fn log_task(guard: &'static AppGuard) -> ! {
    guard.log_events().await
}

#[embassy_executor::main]
async fn main(spawner: Spawner) {
    let p = embassy_stm32::init(hal_config());
    info!("mtguard appliance starting");

    // Hash keys and jitter must be unpredictable: the hardware RNG.
    let mut rng = Rng::new(p.RNG, Irqs);
    let mut hash_key = [0u8; 16];
    rng.fill_bytes(&mut hash_key);
    let seed = Seed {
        hash_key,
        jitter: rng.next_u64(),
    };
    let stack_seed = rng.next_u64();

    // The NUCLEO-H743ZI wiring of its LAN8742A PHY (RMII).
    let mac_addr = [0x02, 0x00, 0x6d, 0x74, 0x67, 0x01];
    let device = Ethernet::new(
        PACKETS.take(),
        p.ETH,
        Irqs,
        p.PA1,
        p.PA7,
        p.PC4,
        p.PC5,
        p.PG13,
        p.PB13,
        p.PG11,
        mac_addr,
        p.ETH_SMA,
        p.PA2,
        p.PC1,
    );
    let net_config = embassy_net::Config::ipv4_static(StaticConfigV4 {
        address: Ipv4Cidr::new(ADDRESS, PREFIX),
        gateway: Some(GATEWAY),
        dns_servers: heapless::Vec::new(),
    });
    let (stack, runner) = embassy_net::new(device, net_config, RESOURCES.take(), stack_seed);
    spawner.spawn(unwrap!(net_task(runner)));

    let mut secrets = SecretSet::new();
    if !SECRET.is_empty() {
        unwrap!(secrets.push(unwrap!(Secret::parse(SECRET).ok())).ok());
    }
    let tables = TABLES.init_with(AppliancePreset::tables);
    let guard = GUARD.init(unwrap!(Guard::new(
        Tables {
            clients: &mut tables.clients[..],
            buckets: &mut tables.buckets[..],
            connections: &mut tables.connections[..],
            allow: &mut tables.allow[..],
            deny: &mut tables.deny[..],
        },
        Policy::default(),
        seed,
        secrets,
        &mut REPLAY.init_with(|| [Entry::EMPTY; APPLIANCE_CAPACITY])[..],
        Config {
            port: PORT,
            backend: (BACKEND, PORT).into(),
            connect_timeout: Duration::from_secs(5),
            idle_timeout: Duration::from_secs(300),
        },
    )));
    spawner.spawn(unwrap!(log_task(guard)));

    stack.wait_config_up().await;
    info!("listening on port {}, forwarding to {}", PORT, BACKEND);
    let slots = SLOT_BUFFERS.init_with(|| [const { AppSlot::new() }; SLOTS]);
    spawner.spawn(unwrap!(guard_task(guard, stack, slots)));
}

/// 400 MHz from the internal oscillator (the board's HSE comes from the
/// ST-LINK and is not fitted on every revision), 100 MHz on PLL1.Q.
fn hal_config() -> HalConfig {
    use embassy_stm32::rcc::*;
    let mut config = HalConfig::default();
    config.rcc.hsi = Some(HSIPrescaler::DIV1);
    config.rcc.csi = true;
    config.rcc.hsi48 = Some(Default::default());
    config.rcc.pll1 = Some(Pll {
        source: PllSource::HSI,
        prediv: PllPreDiv::DIV4,
        mul: PllMul::MUL50,
        fracn: None,
        divp: Some(PllDiv::DIV2),
        divq: Some(PllDiv::DIV8),
        divr: None,
    });
    config.rcc.sys = Sysclk::PLL1_P;
    config.rcc.ahb_pre = AHBPrescaler::DIV2;
    config.rcc.apb1_pre = APBPrescaler::DIV2;
    config.rcc.apb2_pre = APBPrescaler::DIV2;
    config.rcc.apb3_pre = APBPrescaler::DIV2;
    config.rcc.apb4_pre = APBPrescaler::DIV2;
    config.rcc.voltage_scale = VoltageScale::Scale1;
    config
}
