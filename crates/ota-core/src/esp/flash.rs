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
