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

/// A NOR flash in a caller-provided RAM buffer, for tests and host tools: programming only
/// clears bits, erase sets 4 KiB sectors to 0xFF, writes are 4-byte aligned like esp-storage.
#[derive(Debug)]
pub struct MemFlash<'a> {
    mem: &'a mut [u8],
    /// Count of program operations performed.
    pub writes: u32,
    /// Count of sector erases performed.
    pub erases: u32,
}

/// Why a [`MemFlash`] operation was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MemFlashError(pub NorFlashErrorKind);

impl NorFlashError for MemFlashError {
    fn kind(&self) -> NorFlashErrorKind {
        self.0
    }
}

impl<'a> MemFlash<'a> {
    /// Wraps `mem` (its length is the flash size).
    pub fn new(mem: &'a mut [u8]) -> Self {
        MemFlash {
            mem,
            writes: 0,
            erases: 0,
        }
    }

    /// Returns the whole flash contents.
    pub fn bytes(&self) -> &[u8] {
        self.mem
    }

    fn range(&self, offset: u32, len: usize) -> Result<core::ops::Range<usize>, MemFlashError> {
        let start = offset as usize;
        match start.checked_add(len) {
            Some(end) if end <= self.mem.len() => Ok(start..end),
            _ => Err(MemFlashError(NorFlashErrorKind::OutOfBounds)),
        }
    }
}

impl embedded_storage::nor_flash::ErrorType for MemFlash<'_> {
    type Error = MemFlashError;
}

impl embedded_storage::nor_flash::ReadNorFlash for MemFlash<'_> {
    const READ_SIZE: usize = 1;

    fn read(&mut self, offset: u32, bytes: &mut [u8]) -> Result<(), Self::Error> {
        let r = self.range(offset, bytes.len())?;
        bytes.copy_from_slice(&self.mem[r]);
        Ok(())
    }

    fn capacity(&self) -> usize {
        self.mem.len()
    }
}

impl NorFlash for MemFlash<'_> {
    const WRITE_SIZE: usize = 4;
    const ERASE_SIZE: usize = SECTOR_SIZE as usize;

    fn erase(&mut self, from: u32, to: u32) -> Result<(), Self::Error> {
        if !from.is_multiple_of(SECTOR_SIZE) || !to.is_multiple_of(SECTOR_SIZE) || to < from {
            return Err(MemFlashError(NorFlashErrorKind::NotAligned));
        }
        let r = self.range(from, (to - from) as usize)?;
        self.mem[r].fill(0xFF);
        self.erases += (to - from) / SECTOR_SIZE;
        Ok(())
    }

    fn write(&mut self, offset: u32, bytes: &[u8]) -> Result<(), Self::Error> {
        if !offset.is_multiple_of(4) || !bytes.len().is_multiple_of(4) {
            return Err(MemFlashError(NorFlashErrorKind::NotAligned));
        }
        let r = self.range(offset, bytes.len())?;
        for (cell, b) in self.mem[r].iter_mut().zip(bytes) {
            *cell &= *b;
        }
        self.writes += 1;
        Ok(())
    }
}
