//! An `embassy-net-driver` for the SMSC LAN9118 as QEMU emulates it
//! (`hw/net/lan9118.c`): programmed I/O through the RX and TX FIFOs, no
//! DMA. What the emulation needs, and the real chip would need too, is
//! written down where it is done; what only the emulation allows (no PHY
//! negotiation, a TX FIFO that drains at once) is marked as such.
//!
//! Every register access goes through [`Regs`], the only `unsafe` here: a
//! volatile 32-bit load or store at an offset of the controller's block.
//! QEMU aborts on an unknown offset (`hw_error`), so the offsets are
//! constants, never computed from data.

use core::task::Context;

use embassy_net_driver::{Capabilities, HardwareAddress, LinkState};
use embassy_sync::waitqueue::AtomicWaker;

/// Where `hw/arm/mps2.c` maps the controller on the AN500, and its
/// interrupt line.
const BASE: usize = 0xA000_0000;
pub const IRQ: u16 = 13;

const RX_DATA_FIFO: usize = 0x00;
const TX_DATA_FIFO: usize = 0x20;
const RX_STATUS_FIFO: usize = 0x40;
const ID_REV: usize = 0x50;
const IRQ_CFG: usize = 0x54;
const INT_STS: usize = 0x58;
const INT_EN: usize = 0x5C;
const BYTE_TEST: usize = 0x64;
const TX_CFG: usize = 0x70;
const HW_CFG: usize = 0x74;
const RX_FIFO_INF: usize = 0x7C;
const TX_FIFO_INF: usize = 0x80;
/// A 25 MHz counter that runs from reset: the time driver's clock.
pub const FREE_RUN: usize = 0x9C;
const MAC_CSR_CMD: usize = 0xA4;
const MAC_CSR_DATA: usize = 0xA8;

const MAC_CR: u32 = 1;
const ADDRH: u32 = 2;
const ADDRL: u32 = 3;

const CSR_BUSY: u32 = 1 << 31;
const CSR_READ: u32 = 1 << 30;
const MAC_CR_RXEN: u32 = 1 << 2;
const MAC_CR_TXEN: u32 = 1 << 3;
const MAC_CR_FDPX: u32 = 1 << 20;
const HW_CFG_SRST: u32 = 1;
const TX_CFG_TX_ON: u32 = 1 << 1;
/// Let the TX status FIFO overrun: nobody reads it, and a full one would
/// stop the transmitter.
const TX_CFG_TXSAO: u32 = 1 << 2;
/// IRQ_EN, active high, push-pull. Without it the line stays asserted
/// whatever INT_EN says: an interrupt storm once IRQ 13 is unmasked.
const IRQ_CFG_VALUE: u32 = 0x111;
/// RX status FIFO level: a frame is waiting.
const INT_RSFL: u32 = 1 << 3;
const RX_ERROR: u32 = 1 << 15;
const CMD_A_FIRST: u32 = 1 << 13;
const CMD_A_LAST: u32 = 1 << 12;

/// The emulated chip's identity: a driver that finds anything else at
/// `BASE` stops rather than poke registers of an unknown device.
const ID_LAN9118: u32 = 0x0118_0001;
const BYTE_TEST_VALUE: u32 = 0x8765_4321;

/// An Ethernet frame without FCS, as embassy-net counts it.
pub const MTU: usize = 1514;
/// Ethernet's minimum frame without FCS; the emulation sends what it is
/// given, so short frames are padded here.
const MIN_FRAME: usize = 60;
/// Room a frame and its two command words take in the TX FIFO.
const TX_NEED: u32 = (MTU + 8) as u32;

/// Woken by the interrupt handler when a frame arrives.
static RX_WAKER: AtomicWaker = AtomicWaker::new();

/// The controller's registers.
#[derive(Clone, Copy)]
struct Regs;

impl Regs {
    fn read(self, offset: usize) -> u32 {
        // SAFETY: BASE + offset is one of the LAN9118's 32-bit registers,
        // mapped by the board at BASE (hw/arm/mps2.c) and naturally
        // aligned; a volatile load has no effect on Rust-visible memory.
        unsafe { core::ptr::read_volatile((BASE + offset) as *const u32) }
    }

    fn write(self, offset: usize, value: u32) {
        // SAFETY: as in `read`; the store goes to a device register, not
        // to memory the program owns.
        unsafe { core::ptr::write_volatile((BASE + offset) as *mut u32, value) }
    }

    fn mac_csr_wait(self) {
        // The emulation completes CSR commands at once; real silicon takes
        // a few cycles. Bounded, so a wedged chip cannot hang the boot.
        for _ in 0..10_000 {
            if self.read(MAC_CSR_CMD) & CSR_BUSY == 0 {
                return;
            }
        }
    }

    fn mac_write(self, reg: u32, value: u32) {
        self.mac_csr_wait();
        self.write(MAC_CSR_DATA, value);
        self.write(MAC_CSR_CMD, CSR_BUSY | reg);
        self.mac_csr_wait();
    }

    fn mac_read(self, reg: u32) -> u32 {
        self.mac_csr_wait();
        self.write(MAC_CSR_CMD, CSR_BUSY | CSR_READ | reg);
        self.mac_csr_wait();
        self.read(MAC_CSR_DATA)
    }
}

/// Soft-resets the controller. A reset also restarts FREE_RUN from zero,
/// which the time driver would take for a wrap (171 s lost in a moment):
/// so it is done once, first thing at boot, before the time driver starts.
pub fn reset() {
    let r = Regs;
    if r.read(BYTE_TEST) != BYTE_TEST_VALUE {
        return;
    }
    r.write(HW_CFG, HW_CFG_SRST);
    for _ in 0..10_000 {
        if r.read(HW_CFG) & HW_CFG_SRST == 0 {
            break;
        }
    }
}

/// Reads the free-running 25 MHz counter.
pub fn free_run() -> u32 {
    Regs.read(FREE_RUN)
}

/// Why the controller was not brought up.
#[derive(Debug)]
pub enum InitError {
    /// ID_REV or BYTE_TEST do not read as a LAN9118's.
    NotFound {
        /// What ID_REV read.
        id: u32,
        /// What BYTE_TEST read.
        byte_test: u32,
    },
}

impl core::fmt::Display for InitError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            InitError::NotFound { id, byte_test } => write!(
                f,
                "no LAN9118 (ID_REV {id:#010x}, BYTE_TEST {byte_test:#010x})"
            ),
        }
    }
}

/// The driver: a frame buffer each way (the FIFOs are read and written
/// by the CPU, so a frame passes through one of these).
pub struct Lan9118 {
    mac: [u8; 6],
    rx: [u8; MTU],
    tx: [u8; MTU],
}

impl Lan9118 {
    /// Starts the controller (reset by [`reset`] at boot) with `mac`.
    pub fn new(mac: [u8; 6]) -> Result<Self, InitError> {
        let r = Regs;
        let (id, byte_test) = (r.read(ID_REV), r.read(BYTE_TEST));
        if id != ID_LAN9118 || byte_test != BYTE_TEST_VALUE {
            return Err(InitError::NotFound { id, byte_test });
        }
        r.mac_write(ADDRL, u32::from_le_bytes([mac[0], mac[1], mac[2], mac[3]]));
        r.mac_write(ADDRH, u32::from(mac[4]) | u32::from(mac[5]) << 8);
        r.write(TX_CFG, TX_CFG_TX_ON | TX_CFG_TXSAO);
        let cr = r.mac_read(MAC_CR);
        r.mac_write(MAC_CR, cr | MAC_CR_TXEN | MAC_CR_RXEN | MAC_CR_FDPX);
        r.write(INT_STS, u32::MAX);
        r.write(INT_EN, 0);
        r.write(IRQ_CFG, IRQ_CFG_VALUE);
        Ok(Lan9118 {
            mac,
            rx: [0; MTU],
            tx: [0; MTU],
        })
    }

    /// Pops the next frame into `self.rx`; its length, or `None` if the
    /// RX FIFO is empty. Frames with errors or too long for embassy-net
    /// are read out and dropped.
    fn pop_frame(&mut self) -> Option<usize> {
        let r = Regs;
        loop {
            if (r.read(RX_FIFO_INF) >> 16) & 0xFF == 0 {
                return None;
            }
            let status = r.read(RX_STATUS_FIFO);
            // Bits 29:16 count the frame with its 4 FCS bytes. The
            // emulation's FCS is not a CRC anyone could check: strip it.
            let with_fcs = ((status >> 16) & 0x3FFF) as usize;
            let len = with_fcs.saturating_sub(4);
            let words = with_fcs.div_ceil(4);
            let keep = status & RX_ERROR == 0 && (14..=MTU).contains(&len);
            for i in 0..words {
                let word = r.read(RX_DATA_FIFO).to_le_bytes();
                if keep {
                    for (k, b) in word.iter().enumerate() {
                        if let Some(slot) = self.rx.get_mut(i * 4 + k) {
                            *slot = *b;
                        }
                    }
                }
            }
            if keep {
                return Some(len);
            }
        }
    }
}

/// Called from the LAN9118 interrupt: masks the RX interrupt (the level
/// stays high until the frames are read, so an unmasked one would fire
/// again at once) and wakes the network task, which unmasks it again once
/// the FIFO is empty.
pub fn on_interrupt() {
    let r = Regs;
    let pending = r.read(INT_STS);
    r.write(INT_EN, r.read(INT_EN) & !INT_RSFL);
    r.write(INT_STS, pending);
    RX_WAKER.wake();
}

fn arm_rx_interrupt() {
    let r = Regs;
    cortex_m::interrupt::free(|_| r.write(INT_EN, r.read(INT_EN) | INT_RSFL));
}

impl embassy_net_driver::Driver for Lan9118 {
    type RxToken<'a>
        = RxToken<'a>
    where
        Self: 'a;
    type TxToken<'a>
        = TxToken<'a>
    where
        Self: 'a;

    fn receive(&mut self, cx: &mut Context) -> Option<(Self::RxToken<'_>, Self::TxToken<'_>)> {
        let len = match self.pop_frame() {
            Some(len) => len,
            None => {
                RX_WAKER.register(cx.waker());
                arm_rx_interrupt();
                // A frame that came between the check and the arming has
                // raised the level already; take it now rather than wait.
                self.pop_frame()?
            }
        };
        Some((
            RxToken {
                frame: &mut self.rx[..len],
            },
            TxToken { buf: &mut self.tx },
        ))
    }

    fn transmit(&mut self, cx: &mut Context) -> Option<Self::TxToken<'_>> {
        if Regs.read(TX_FIFO_INF) & 0xFFFF < TX_NEED {
            // The emulation sends a frame the moment its last word is
            // written, so the FIFO is never full here; on silicon this
            // would want the TX-data-available interrupt instead of a
            // retry at the next poll.
            cx.waker().wake_by_ref();
            return None;
        }
        Some(TxToken { buf: &mut self.tx })
    }

    fn link_state(&mut self, _cx: &mut Context) -> LinkState {
        // The emulated PHY has no cable to pull.
        LinkState::Up
    }

    fn capabilities(&self) -> Capabilities {
        let mut caps = Capabilities::default();
        caps.max_transmission_unit = MTU;
        caps.max_burst_size = Some(1);
        caps
    }

    fn hardware_address(&self) -> HardwareAddress {
        HardwareAddress::Ethernet(self.mac)
    }
}

/// A received frame.
pub struct RxToken<'a> {
    frame: &'a mut [u8],
}

impl embassy_net_driver::RxToken for RxToken<'_> {
    fn consume<R, F: FnOnce(&mut [u8]) -> R>(self, f: F) -> R {
        f(self.frame)
    }
}

/// Room for one frame to send.
pub struct TxToken<'a> {
    buf: &'a mut [u8; MTU],
}

impl embassy_net_driver::TxToken for TxToken<'_> {
    fn consume<R, F: FnOnce(&mut [u8]) -> R>(self, len: usize, f: F) -> R {
        let len = len.min(MTU);
        let r = f(&mut self.buf[..len]);
        let wire = len.max(MIN_FRAME);
        self.buf[len..wire].fill(0);
        let regs = Regs;
        // Command A: first and last segment, buffer size; command B: tag
        // (unused) and frame length. Then the frame as little-endian words.
        regs.write(TX_DATA_FIFO, CMD_A_FIRST | CMD_A_LAST | wire as u32);
        regs.write(TX_DATA_FIFO, wire as u32);
        for chunk in self.buf[..wire].chunks(4) {
            let mut word = [0u8; 4];
            word[..chunk.len()].copy_from_slice(chunk);
            regs.write(TX_DATA_FIFO, u32::from_le_bytes(word));
        }
        r
    }
}
