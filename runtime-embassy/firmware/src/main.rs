//! mtguard on a NUCLEO-H743ZI: the appliance sits on the wire in front of an
//! MTProto proxy, admits clients through the core's engine, inspects their
//! handshakes and forwards the good ones.
//!
//! It runs the same application as the QEMU image (`mtguard_embassy::app`):
//! address or DHCP, backend, secrets, policy and NTP server come from the
//! config block at 0x081E_0000 (the last 128 KiB sector), written by
//! `mtguard appliance-config` and flashed once per appliance; one image
//! serves every appliance. Without a valid block it logs why and serves
//! nobody. Flash and watch the defmt log with `cargo run --release`
//! (probe-rs).
#![no_std]
#![no_main]

use core::fmt::{self, Write as _};
use defmt::{info, unwrap};
use embassy_executor::Spawner;

use embassy_net::{IpEndpoint, StackResources};
use embassy_stm32::eth::{Ethernet, GenericPhy, PacketQueue, Sma};
use embassy_stm32::peripherals::{ETH, ETH_SMA};
use embassy_stm32::rng::Rng;
use embassy_stm32::{bind_interrupts, eth, peripherals, rng, Config as HalConfig};
use mtguard_core::mtproto::replay::{Entry, APPLIANCE_CAPACITY};
use mtguard_core::storage::{AppliancePreset, Borrowed};
use mtguard_core::{Seed, Tables};
use mtguard_embassy::app::block::{ApplianceConfig, BLOCK_MAX};
use mtguard_embassy::app::{self, Summary};
use mtguard_embassy::sntp::{self, SntpConfig};
use mtguard_embassy::{Guard, Slot};
use static_cell::{ConstStaticCell, StaticCell};
use {defmt_rtt as _, panic_probe as _};

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
// Two sockets per slot, the SNTP socket and the DHCP socket.
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

#[embassy_executor::task]
async fn sntp_task(
    stack: embassy_net::Stack<'static>,
    config: SntpConfig,
    guard: &'static AppGuard,
    nonce: u64,
) -> ! {
    sntp::run(stack, config, guard, nonce, log_line).await
}

/// The shared application's lines, through defmt.
fn log_line(args: fmt::Arguments<'_>) {
    let mut line = heapless::String::<160>::new();
    // A longer line is cut, not lost.
    let _ = line.write_fmt(args);
    info!("{=str}", line.as_str());
}

/// The config block's sector, at `__config_block` (memory.x).
fn config_block() -> &'static [u8; BLOCK_MAX] {
    extern "C" {
        static __config_block: [u8; BLOCK_MAX];
    }
    // SAFETY: memory.x reserves the last flash sector at __config_block,
    // outside the image; flash is memory-mapped and only read here (reads
    // as FF when erased), so a shared reference for the whole run aliases
    // no write.
    unsafe { &*core::ptr::addr_of!(__config_block) }
}

#[embassy_executor::main]
async fn main(spawner: Spawner) {
    let p = embassy_stm32::init(hal_config());
    info!("mtguard: boot, NUCLEO-H743ZI");
    let config = match ApplianceConfig::decode(config_block()) {
        Ok(config) => config,
        Err(e) => {
            // Serving with a half-read or default config would put an
            // unintended guard on the wire; none at all is noticed.
            defmt::error!("config: refused: {}; serving nobody", e);
            return;
        }
    };
    log_line(format_args!("config: {}", Summary(&config)));

    // Hash keys and jitter must be unpredictable: the hardware RNG.
    let mut rng = Rng::new(p.RNG, Irqs);
    let mut hash_key = [0u8; 16];
    rng.fill_bytes(&mut hash_key);
    let seed = Seed {
        hash_key,
        jitter: rng.next_u64(),
    };
    let stack_seed = rng.next_u64();
    let nonce_seed = rng.next_u64();

    // The NUCLEO-H743ZI wiring of its LAN8742A PHY (RMII).
    let mac_addr = config.mac;
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
    let (stack, runner) = embassy_net::new(
        device,
        app::net_config(&config),
        RESOURCES.take(),
        stack_seed,
    );
    spawner.spawn(unwrap!(net_task(runner)));

    let tables = TABLES.init_with(AppliancePreset::tables);
    let guard = GUARD.init(unwrap!(Guard::new(
        Tables {
            clients: &mut tables.clients[..],
            buckets: &mut tables.buckets[..],
            connections: &mut tables.connections[..],
            allow: &mut tables.allow[..],
            deny: &mut tables.deny[..],
            networks: &mut tables.networks[..],
            network_buckets: &mut tables.network_buckets[..],
        },
        config.policy,
        seed,
        config.secrets.clone(),
        &mut REPLAY.init_with(|| [Entry::EMPTY; APPLIANCE_CAPACITY])[..],
        app::guard_config(&config),
    )));
    spawner.spawn(unwrap!(log_task(guard)));
    if let Some(ntp) = config.ntp {
        let server = IpEndpoint::new((*ntp.ip()).into(), ntp.port());
        spawner.spawn(unwrap!(sntp_task(
            stack,
            SntpConfig::new(server),
            guard,
            nonce_seed
        )));
    }

    app::announce(stack, log_line).await;
    info!("guard: listening on port {}", config.listen_port);
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
