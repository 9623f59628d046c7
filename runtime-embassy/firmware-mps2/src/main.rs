//! mtguard on QEMU's `mps2-an500` (Cortex-M7, SMSC LAN9118): the appliance
//! image CI boots. It runs the same application as the NUCLEO-H743ZI image
//! (`mtguard_embassy::app`: the config block, the guard, SNTP, DHCP); this
//! crate holds only what is this board's: the LAN9118 driver, the time
//! driver, the UART log, the interrupt vectors, the memory map, and every
//! `unsafe` line of the image.
//!
//! One image serves any network: addresses, backend, secrets, policy and
//! NTP server come from the config block QEMU loads at `0x3ff000`
//! (`-device loader,file=block.bin,addr=0x3ff000`), written by
//! `mtguard appliance-config`. Without a valid block it logs why and
//! serves nobody.
#![no_std]
#![no_main]

mod lan9118;
mod time;
mod uart;

use core::fmt;
use core::sync::atomic::{AtomicBool, Ordering};

use cortex_m_rt::{entry, exception};
use embassy_executor::{raw, Spawner};
use embassy_net::{IpEndpoint, StackResources};
use mtguard_config_block::{ApplianceConfig, BLOCK_MAX};
use mtguard_core::mtproto::replay::{Entry, APPLIANCE_CAPACITY};
use mtguard_core::storage::{AppliancePreset, Borrowed};
use mtguard_core::{Seed, Tables};
use mtguard_embassy::app::{self, Summary};
use mtguard_embassy::sntp::{self, SntpConfig};
use mtguard_embassy::{Guard, Slot};
use sha2::{Digest, Sha256};
use static_cell::{ConstStaticCell, StaticCell};

use lan9118::Lan9118;

/// Concurrent connections; the next client gets a reset at SYN.
const SLOTS: usize = 8;
/// Socket buffers of 4 KiB each way (RAM is plentiful here: 4 MiB), and
/// ClientHellos up to 2 KiB, as on the NUCLEO image.
type AppSlot = Slot<4096, 2048>;
type AppGuard = Guard<'static, Borrowed<'static>, SLOTS>;

static TABLES: StaticCell<Tables<AppliancePreset>> = StaticCell::new();
static REPLAY: StaticCell<[Entry; APPLIANCE_CAPACITY]> = StaticCell::new();
static SLOT_BUFFERS: StaticCell<[AppSlot; SLOTS]> = StaticCell::new();
// Two sockets per slot, the SNTP socket and the DHCP socket.
static RESOURCES: ConstStaticCell<StackResources<{ 2 * SLOTS + 2 }>> =
    ConstStaticCell::new(StackResources::new());
static GUARD: StaticCell<AppGuard> = StaticCell::new();
static DEVICE: StaticCell<Lan9118> = StaticCell::new();
static EXECUTOR: StaticCell<raw::Executor> = StaticCell::new();

macro_rules! log {
    ($($t:tt)*) => { uart::line(format_args!($($t)*)) };
}

fn log_line(args: fmt::Arguments<'_>) {
    uart::line(args);
}

/// The config block's 4 KiB, at `__config_block` (memory.x).
fn config_block() -> &'static [u8; BLOCK_MAX] {
    extern "C" {
        static __config_block: [u8; BLOCK_MAX];
    }
    // SAFETY: memory.x reserves BLOCK_MAX bytes at __config_block, inside
    // the board's SSRAM1, which reads as zeros when QEMU loaded no block.
    // Nothing in the program writes there (the image is linked below it),
    // so a shared reference for the whole run aliases no mutable access.
    unsafe { &*core::ptr::addr_of!(__config_block) }
}

/// Set by the executor's pender; cleared by the idle loop.
static WORK: AtomicBool = AtomicBool::new(true);

// SAFETY: the symbol embassy-executor calls when a task is woken (there is
// no platform feature here, so this crate provides it); it only sets a flag.
#[unsafe(export_name = "__pender")]
fn pender(_context: *mut ()) {
    WORK.store(true, Ordering::Release);
}

#[entry]
fn main() -> ! {
    uart::init();
    lan9118::reset();
    time::init();
    log!("mtguard: boot, mps2-an500");
    let executor: &'static raw::Executor = EXECUTOR.init(raw::Executor::new(core::ptr::null_mut()));
    executor
        .spawner()
        .spawn(start(executor.spawner()).expect("one start task"));
    unmask(time::IRQ);
    loop {
        // SAFETY: `poll` is called from this one thread only, never
        // re-entered from an interrupt.
        unsafe { executor.poll() };
        // Sleep with WFI, not the WFE of embassy's cortex-m executor: QEMU
        // treats WFE as a no-op, and the guard would spin a host core.
        // Interrupts are masked around the check so a wake between the
        // check and the WFI is not lost (WFI still returns on a pending
        // interrupt; it runs once they are unmasked).
        cortex_m::interrupt::free(|_| {
            if !WORK.swap(false, Ordering::AcqRel) {
                cortex_m::asm::wfi();
            }
        });
    }
}

#[embassy_executor::task]
async fn start(spawner: Spawner) {
    let config = match ApplianceConfig::decode(config_block()) {
        Ok(config) => config,
        Err(e) => {
            // Serving with a half-read or default config would put an
            // unintended guard on the wire; none at all is noticed.
            log!("config: refused: {e}; serving nobody");
            return;
        }
    };
    log!("config: {}", Summary(&config));

    let device = match Lan9118::new(config.mac) {
        Ok(d) => {
            // Only now: before IRQ_CFG is written the line is asserted,
            // and an unmasked IRQ 13 would storm before `new` could run.
            unmask(lan9118::IRQ);
            DEVICE.init(d)
        }
        Err(e) => {
            log!("eth: {e}; serving nobody");
            return;
        }
    };
    // No RNG on this board: the host drew 32 random bytes into the block;
    // mixed with the cycle count at boot, two boots of one block differ.
    let seeds = seeds(&config.seed);
    let (stack, runner) = embassy_net::new(
        device,
        app::net_config(&config),
        RESOURCES.take(),
        seeds.stack,
    );
    spawner.spawn(net_task(runner).expect("net task"));

    let tables = TABLES.init_with(AppliancePreset::tables);
    let replay = &mut REPLAY.init_with(|| [Entry::EMPTY; APPLIANCE_CAPACITY])[..];
    let guard = match Guard::new(
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
        seeds.guard,
        config.secrets.clone(),
        replay,
        app::guard_config(&config),
    ) {
        Ok(g) => GUARD.init(g),
        Err(e) => {
            log!("guard: {e:?}; serving nobody");
            return;
        }
    };
    spawner.spawn(log_task(guard).expect("log task"));
    if let Some(ntp) = config.ntp {
        let server = IpEndpoint::new((*ntp.ip()).into(), ntp.port());
        spawner.spawn(sntp_task(stack, SntpConfig::new(server), guard, seeds.nonce).expect("sntp"));
    }
    app::announce(stack, log_line).await;
    log!("guard: listening on port {}", config.listen_port);
    let slots = SLOT_BUFFERS.init_with(|| [const { AppSlot::new() }; SLOTS]);
    spawner.spawn(guard_task(guard, stack, slots).expect("guard task"));
}

type Device = &'static mut Lan9118;

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
    app::log_events(guard, log_line).await
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

struct Seeds {
    guard: Seed,
    stack: u64,
    nonce: u64,
}

fn seeds(block_seed: &[u8; 32]) -> Seeds {
    let cycles = time::cycles();
    let draw = |n: u8| {
        let mut h = Sha256::new();
        h.update(block_seed);
        h.update(cycles.to_le_bytes());
        h.update([n]);
        h.finalize()
    };
    let (a, b) = (draw(0), draw(1));
    let u64_at = |d: &[u8], i: usize| {
        let mut w = [0u8; 8];
        w.copy_from_slice(&d[i..i + 8]);
        u64::from_le_bytes(w)
    };
    let mut hash_key = [0u8; 16];
    hash_key.copy_from_slice(&a[..16]);
    Seeds {
        guard: Seed {
            hash_key,
            jitter: u64_at(&a, 16),
        },
        stack: u64_at(&a, 24),
        nonce: u64_at(&b, 0),
    }
}

/// An interrupt line, for the NVIC.
#[derive(Clone, Copy)]
struct Irq(u16);

// SAFETY: the numbers are the board's interrupt lines (hw/arm/mps2.c),
// below the 32 the AN500's NVIC has.
unsafe impl cortex_m::interrupt::InterruptNumber for Irq {
    fn number(self) -> u16 {
        self.0
    }
}

fn unmask(irq: u16) {
    // SAFETY: the handlers of both lines only touch their own peripheral
    // and wake tasks, and the statics they use are initialised (const).
    unsafe { cortex_m::peripheral::NVIC::unmask(Irq(irq)) }
}

unsafe extern "C" fn timer0_handler() {
    time::on_interrupt();
}

unsafe extern "C" fn lan9118_handler() {
    lan9118::on_interrupt();
}

unsafe extern "C" fn unused_handler() {}

/// The device part of the vector table: 32 lines on the AN500, two used.
#[link_section = ".vector_table.interrupts"]
#[no_mangle]
static __INTERRUPTS: [unsafe extern "C" fn(); 32] = {
    let mut v: [unsafe extern "C" fn(); 32] = [unused_handler; 32];
    v[time::IRQ as usize] = timer0_handler;
    v[lan9118::IRQ as usize] = lan9118_handler;
    v
};

#[exception]
unsafe fn HardFault(frame: &cortex_m_rt::ExceptionFrame) -> ! {
    log!("hardfault at pc {:#010x}", frame.pc());
    loop {
        cortex_m::asm::wfi();
    }
}

#[panic_handler]
fn panic(info: &core::panic::PanicInfo<'_>) -> ! {
    log!("panic: {info}");
    loop {
        cortex_m::asm::wfi();
    }
}
