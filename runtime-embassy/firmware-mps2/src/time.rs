//! The embassy-time driver: time from the LAN9118's FREE_RUN counter,
//! alarms from the CMSDK APB timer 0.
//!
//! Not SysTick: QEMU's SysTick loses ticks when the host is busy, and a
//! guard whose clock runs slow keeps blocks and handshake deadlines too
//! long. FREE_RUN reads QEMU's virtual clock directly (25 MHz, 32 bits, so
//! it wraps every 171.8 s); the driver extends it to 64 bits by counting
//! wraps, which is exact as long as it is read at least once per wrap. The
//! alarm timer therefore never sleeps longer than [`MAX_SLEEP_TICKS`],
//! even with no timer queued.

use core::cell::{Cell, RefCell};
use core::task::Waker;

use embassy_sync::blocking_mutex::raw::CriticalSectionRawMutex;
use embassy_sync::blocking_mutex::Mutex;
use embassy_time_queue_utils::Queue;

use crate::lan9118;

/// CMSDK APB timer 0 (`hw/arm/mps2.c`), and its interrupt line.
const TIMER0: usize = 0x4000_0000;
pub const IRQ: u16 = 8;
const CTRL: usize = 0x00;
const VALUE: usize = 0x04;
const RELOAD: usize = 0x08;
const INTCLEAR: usize = 0x0C;
const CTRL_ENABLE: u32 = 1;
const CTRL_IRQ: u32 = 1 << 3;

/// FREE_RUN and the APB clock are both 25 MHz; embassy-time counts in
/// microseconds (the `tick-hz-1_000_000` feature).
const CYCLES_PER_TICK: u64 = 25;
/// One second: well inside FREE_RUN's 171 s wrap.
const MAX_SLEEP_TICKS: u64 = 1_000_000;

fn timer_write(offset: usize, value: u32) {
    // SAFETY: TIMER0 + offset is a 32-bit register of the CMSDK APB timer
    // mapped at TIMER0 on the AN500 (hw/arm/mps2.c); naturally aligned,
    // and a store there touches no memory the program owns.
    unsafe { core::ptr::write_volatile((TIMER0 + offset) as *mut u32, value) }
}

struct State {
    /// Wraps of FREE_RUN counted so far, and its last value seen.
    high: Cell<u32>,
    last: Cell<u32>,
    queue: RefCell<Queue>,
}

pub struct Driver {
    state: Mutex<CriticalSectionRawMutex, State>,
}

embassy_time_driver::time_driver_impl!(static DRIVER: Driver = Driver {
    state: Mutex::new(State {
        high: Cell::new(0),
        last: Cell::new(0),
        queue: RefCell::new(Queue::new()),
    }),
});

impl Driver {
    fn cycles(&self, s: &State) -> u64 {
        let low = lan9118::free_run();
        if low < s.last.get() {
            s.high.set(s.high.get().wrapping_add(1));
        }
        s.last.set(low);
        u64::from(s.high.get()) << 32 | u64::from(low)
    }

    /// Wakes what is due and sets the timer for what comes next.
    fn rearm(&self, s: &State) {
        let now = self.cycles(s) / CYCLES_PER_TICK;
        let next = s.queue.borrow_mut().next_expiration(now);
        let sleep = next.saturating_sub(now).clamp(1, MAX_SLEEP_TICKS);
        // Fits in u32: at most 25 million cycles.
        let cycles = (sleep * CYCLES_PER_TICK) as u32;
        timer_write(CTRL, 0);
        timer_write(INTCLEAR, 1);
        timer_write(RELOAD, cycles);
        timer_write(VALUE, cycles);
        timer_write(CTRL, CTRL_ENABLE | CTRL_IRQ);
    }
}

impl embassy_time_driver::Driver for Driver {
    fn now(&self) -> u64 {
        self.state.lock(|s| self.cycles(s) / CYCLES_PER_TICK)
    }

    fn schedule_wake(&self, at: u64, waker: &Waker) {
        self.state.lock(|s| {
            if s.queue.borrow_mut().schedule_wake(at, waker) {
                self.rearm(s);
            }
        })
    }
}

/// Starts the alarm timer (the first interrupt comes within a second).
pub fn init() {
    DRIVER.state.lock(|s| DRIVER.rearm(s));
}

/// Called from the timer 0 interrupt.
pub fn on_interrupt() {
    DRIVER.state.lock(|s| DRIVER.rearm(s));
}

/// FREE_RUN's 64-bit count, for the boot seed.
pub fn cycles() -> u64 {
    DRIVER.state.lock(|s| DRIVER.cycles(s))
}
