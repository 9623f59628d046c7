//! Log lines over the CMSDK UART0, which QEMU shows on its serial output
//! (`-serial stdio`): what the host tests read.

use core::fmt::{self, Write};

const UART0: usize = 0x4000_4000;
const DATA: usize = 0x00;
const STATE: usize = 0x04;
const CTRL: usize = 0x08;
const BAUDDIV: usize = 0x10;
const STATE_TX_FULL: u32 = 1;
const CTRL_TX_ENABLE: u32 = 1;

fn read(offset: usize) -> u32 {
    // SAFETY: UART0 + offset is a 32-bit register of the CMSDK UART mapped
    // at UART0 on the AN500 (hw/arm/mps2.c), naturally aligned.
    unsafe { core::ptr::read_volatile((UART0 + offset) as *const u32) }
}

fn write(offset: usize, value: u32) {
    // SAFETY: as in `read`; the store goes to a device register.
    unsafe { core::ptr::write_volatile((UART0 + offset) as *mut u32, value) }
}

/// Enables the transmitter. The emulation ignores the baud rate, but
/// refuses to send with a divider below 16.
pub fn init() {
    write(BAUDDIV, 16);
    write(CTRL, CTRL_TX_ENABLE);
}

struct Uart;

impl Write for Uart {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        for b in s.bytes() {
            // Bounded: a transmitter that never drains loses the line
            // rather than hang the guard.
            for _ in 0..100_000 {
                if read(STATE) & STATE_TX_FULL == 0 {
                    break;
                }
            }
            write(DATA, u32::from(b));
        }
        Ok(())
    }
}

/// Writes one line, stamped with the uptime in milliseconds. Lines from
/// interrupt handlers and tasks do not interleave.
pub fn line(args: fmt::Arguments<'_>) {
    let ms = embassy_time::Instant::now().as_millis();
    cortex_m::interrupt::free(|_| {
        let _ = writeln!(Uart, "[{:>6}.{:03}] {}", ms / 1000, ms % 1000, args);
    });
}
