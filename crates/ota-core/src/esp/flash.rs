//! The flash the rules act on: any `embedded_storage` NOR flash.
//!
//! On the chip this is `esp_storage::FlashStorage`; on the host, the virtual ESP32. Addresses
//! are absolute flash addresses, as in the partition table.

use embedded_storage::nor_flash::{NorFlash, NorFlashError, NorFlashErrorKind};

/// Size of an erasable flash sector on every ESP32 (and of one otadata entry's sector).
pub const SECTOR_SIZE: u32 = 0x1000;

/// A flash operation failed; the reason as `embedded_storage` classifies it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
#[error(
    "flash {op} at {addr:#x} failed ({kind:?}); check the flash driver and the partition table"
)]
pub struct FlashError {
    /// What was attempted.
    pub op: FlashOp,
    /// The absolute flash address of the operation.
    pub addr: u32,
    /// The driver's error kind.
    pub kind: NorFlashErrorKind,
}

/// A kind of flash operation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum FlashOp {
    /// Reading bytes.
    Read,
    /// Programming bytes (clearing bits).
    Write,
    /// Erasing sectors to 0xFF.
    Erase,
}

impl core::fmt::Display for FlashOp {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str(match self {
            FlashOp::Read => "read",
            FlashOp::Write => "write",
            FlashOp::Erase => "erase",
        })
    }
}

/// Reads `buf.len()` bytes at `addr`.
pub fn read<F: NorFlash>(flash: &mut F, addr: u32, buf: &mut [u8]) -> Result<(), FlashError> {
    flash.read(addr, buf).map_err(|e| FlashError {
        op: FlashOp::Read,
        addr,
        kind: e.kind(),
    })
}

/// Programs `data` at `addr` (which must already be erased).
pub fn write<F: NorFlash>(flash: &mut F, addr: u32, data: &[u8]) -> Result<(), FlashError> {
    flash.write(addr, data).map_err(|e| FlashError {
        op: FlashOp::Write,
        addr,
        kind: e.kind(),
    })
}

/// Erases the sectors covering `from..to` (both sector aligned).
pub fn erase<F: NorFlash>(flash: &mut F, from: u32, to: u32) -> Result<(), FlashError> {
    flash.erase(from, to).map_err(|e| FlashError {
        op: FlashOp::Erase,
        addr: from,
        kind: e.kind(),
    })
}

/// Flash program page: one program command covers at most one page.
pub const PAGE_SIZE: u32 = 256;

/// Returns true if every byte of `from..to` reads 0xFF (erased), reading 256 bytes at a time
/// and stopping at the first other byte.
pub fn is_blank<F: NorFlash>(flash: &mut F, from: u32, to: u32) -> Result<bool, FlashError> {
    let mut buf = [0u8; 256];
    let mut at = from;
    while at < to {
        let n = ((to - at) as usize).min(buf.len());
        read(flash, at, &mut buf[..n])?;
        if buf[..n].iter().any(|b| *b != 0xFF) {
            return Ok(false);
        }
        at += n as u32;
    }
    Ok(true)
}

/// The flash work of some engine calls, command by command as the engine issued them: what
/// a device model charges time for (`ble_link_model::FlashTiming::ops_time`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct FlashWork {
    /// 4 KiB sector-erase commands.
    pub sector_erases: u64,
    /// Page-program commands (one per 256-byte page a write touches).
    pub page_programs: u64,
    /// Bytes read.
    pub bytes_read: u64,
}

impl core::ops::AddAssign for FlashWork {
    fn add_assign(&mut self, o: FlashWork) {
        self.sector_erases += o.sector_erases;
        self.page_programs += o.page_programs;
        self.bytes_read += o.bytes_read;
    }
}

/// A flash that counts the work done through it ([`FlashWork`]).
pub struct Metered<'a, F> {
    inner: &'a mut F,
    /// What went through so far.
    pub work: FlashWork,
}

impl<'a, F> Metered<'a, F> {
    /// Counts what goes to `inner`.
    pub fn new(inner: &'a mut F) -> Self {
        Metered {
            inner,
            work: FlashWork::default(),
        }
    }
}

impl<F: NorFlash> embedded_storage::nor_flash::ErrorType for Metered<'_, F> {
    type Error = F::Error;
}

impl<F: NorFlash> embedded_storage::nor_flash::ReadNorFlash for Metered<'_, F> {
    const READ_SIZE: usize = F::READ_SIZE;
    fn read(&mut self, offset: u32, bytes: &mut [u8]) -> Result<(), Self::Error> {
        self.work.bytes_read += bytes.len() as u64;
        self.inner.read(offset, bytes)
    }
    fn capacity(&self) -> usize {
        self.inner.capacity()
    }
}

impl<F: NorFlash> NorFlash for Metered<'_, F> {
    const WRITE_SIZE: usize = F::WRITE_SIZE;
    const ERASE_SIZE: usize = F::ERASE_SIZE;
    fn erase(&mut self, from: u32, to: u32) -> Result<(), Self::Error> {
        self.work.sector_erases += u64::from(to.saturating_sub(from).div_ceil(SECTOR_SIZE));
        self.inner.erase(from, to)
    }
    fn write(&mut self, offset: u32, bytes: &[u8]) -> Result<(), Self::Error> {
        if !bytes.is_empty() {
            let last = offset + bytes.len() as u32 - 1;
            self.work.page_programs += u64::from(last / PAGE_SIZE - offset / PAGE_SIZE + 1);
        }
        self.inner.write(offset, bytes)
    }
}
