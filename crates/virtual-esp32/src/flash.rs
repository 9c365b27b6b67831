//! The virtual ESP32's SPI NOR flash: a whole flash image kept in RAM and written through to a
//! plain file, with NOR semantics, operation counters and power-cut injection.
//!
//! # Persistence
//!
//! Every operation that changes the flash (a write, an erase, a torn one included) updates the
//! backing file *before* the in-memory copy, with one positioned write of exactly the bytes the
//! operation changed. So the file always equals the flash after the last operation that
//! returned (if the file write fails, the operation fails and memory is unchanged), and a
//! process killed at any point leaves a file that is a state the real flash could be in. The
//! file is not `fsync`ed per operation (the OS page cache survives a killed process, not a host
//! crash); call [`Flash::sync`] for that.
//!
//! # NOR semantics (as esp-storage on the chip)
//!
//! - Reads: any offset and length ([`ReadNorFlash::READ_SIZE`] = 1).
//! - Writes: offset and length multiples of 4 ([`NorFlash::WRITE_SIZE`] = 4); programming only
//!   clears bits (`new = old & data`), so writing over unerased bytes corrupts them exactly as
//!   real flash does. Writing over already-programmed bytes is allowed (hence
//!   [`MultiwriteNorFlash`]).
//! - Erases: 4 KiB aligned ranges ([`NorFlash::ERASE_SIZE`] = 4096) set to 0xFF. The range is
//!   erased with 64 KiB block-erase commands where it is 64 KiB aligned and 4 KiB sector-erase
//!   commands elsewhere (as ESP-IDF's `spi_flash` does); [`FlashStats`] counts both, so a
//!   timing model can charge each command its datasheet time.
//!
//! # Power cuts
//!
//! A mutating operation is a `write` or `erase` call that passes the alignment and bounds checks
//! and covers at least one byte. [`Flash::arm`] a [`FaultPlan`] to cut power at the N-th such
//! operation from then on; that operation is torn as its [`Tear`] says, and from then on every
//! flash operation (reads too) fails with [`FlashError::PowerLost`] until [`Flash::power_on`]
//! (which [`VirtualEsp32::boot`](crate::VirtualEsp32::boot) calls).

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use embedded_storage::nor_flash::{
    ErrorType, MultiwriteNorFlash, NorFlash, NorFlashError, NorFlashErrorKind, ReadNorFlash,
};

/// Size of an erase sector.
pub const SECTOR_SIZE: u32 = 0x1000;
/// Size of an erase block (one 64 KiB block-erase command).
pub const BLOCK_SIZE: u32 = 0x1_0000;
/// Size of a program page (one page-program command covers at most one page).
pub const PAGE_SIZE: u32 = 0x100;

/// Why a flash operation failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum FlashError {
    /// Power was cut (by a [`FaultPlan`] or [`Flash::cut_power`]); nothing works until reboot.
    #[error("power lost: the virtual ESP32 is off until it reboots")]
    PowerLost,
    /// The range lies (partly) outside the flash.
    #[error("flash range {offset:#x}+{len:#x} is outside the {capacity:#x}-byte flash")]
    OutOfBounds {
        /// Start of the range.
        offset: u32,
        /// Length of the range.
        len: usize,
        /// Flash size.
        capacity: u32,
    },
    /// A write not 4-byte aligned, or an erase not 4 KiB aligned.
    #[error("flash range {offset:#x}+{len:#x} is not aligned for this operation")]
    NotAligned {
        /// Start of the range.
        offset: u32,
        /// Length of the range.
        len: usize,
    },
    /// The backing file could not be written or synced.
    #[error("backing file I/O failed: {0}")]
    Io(std::io::ErrorKind),
}

impl NorFlashError for FlashError {
    fn kind(&self) -> NorFlashErrorKind {
        match self {
            FlashError::OutOfBounds { .. } => NorFlashErrorKind::OutOfBounds,
            FlashError::NotAligned { .. } => NorFlashErrorKind::NotAligned,
            FlashError::PowerLost | FlashError::Io(_) => NorFlashErrorKind::Other,
        }
    }
}

/// Counts of flash operations, for a timing model and for fault-injection loops.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct FlashStats {
    /// `read` calls.
    pub reads: u64,
    /// Bytes read.
    pub bytes_read: u64,
    /// `write` calls (mutating operations that program).
    pub writes: u64,
    /// Bytes programmed.
    pub bytes_programmed: u64,
    /// Page-program commands: each write is split at 256-byte page boundaries.
    pub page_programs: u64,
    /// `erase` calls (mutating operations that erase).
    pub erases: u64,
    /// 4 KiB sectors set to 0xFF, whichever command did it.
    pub sectors_erased: u64,
    /// 4 KiB sector-erase commands.
    pub sector_erase_cmds: u64,
    /// 64 KiB block-erase commands.
    pub block_erase_cmds: u64,
    /// Mutating operations (`writes + erases`): what [`FaultPlan::cut_at`] counts.
    pub mutating_ops: u64,
}

/// What happens to the operation during which power is cut.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Tear {
    /// The operation is half done (the default):
    /// - a write programs only the first `len / 2` bytes (byte granularity); the rest keep their
    ///   old contents;
    /// - an erase of `n` sectors erases the first `n / 2` sectors completely, then the first
    ///   half (2 KiB) of the next sector; that sector's second half and any later sectors keep
    ///   their old contents.
    #[default]
    Half,
    /// The operation has no effect at all (power died just before it).
    Nothing,
    /// The operation completes, then power dies before the caller learns it did (the call
    /// still fails with [`FlashError::PowerLost`]).
    Complete,
}

/// When to cut power, and how the interrupted operation ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FaultPlan {
    /// Cut power during the N-th mutating operation after [`Flash::arm`] (1-based; 0 cuts at
    /// the next one too).
    pub cut_at: u64,
    /// What the interrupted operation leaves behind.
    pub tear: Tear,
}

impl FaultPlan {
    /// Cuts power during the `n`-th mutating operation from now (1-based), tearing it in half.
    pub fn cut_at(n: u64) -> Self {
        FaultPlan {
            cut_at: n,
            tear: Tear::Half,
        }
    }

    /// Returns the plan with another [`Tear`].
    pub fn with_tear(self, tear: Tear) -> Self {
        FaultPlan { tear, ..self }
    }
}

/// A NOR flash held in RAM, optionally written through to a file. See the [module docs](self).
#[derive(Debug)]
pub struct Flash {
    mem: Vec<u8>,
    file: Option<(File, PathBuf)>,
    stats: FlashStats,
    /// The armed plan and the mutating operations seen since it was armed.
    plan: Option<(FaultPlan, u64)>,
    powered: bool,
}

impl Flash {
    /// A flash in RAM only (no file), holding `contents` (its length is the flash size).
    pub fn in_memory(contents: Vec<u8>) -> Self {
        Flash {
            mem: contents,
            file: None,
            stats: FlashStats::default(),
            plan: None,
            powered: true,
        }
    }

    /// An erased (all 0xFF) flash of `size` bytes in RAM only.
    pub fn erased(size: u32) -> Self {
        Flash::in_memory(vec![0xFF; size as usize])
    }

    /// Creates the file at `path` holding `contents` (see [`save_as`](Self::save_as): an
    /// existing file is replaced whole or not at all).
    pub fn create(path: impl AsRef<Path>, contents: Vec<u8>) -> std::io::Result<Self> {
        let mut flash = Flash::in_memory(contents);
        flash.save_as(path)?;
        Ok(flash)
    }

    /// Opens an existing flash file (its length is the flash size) and locks it for this
    /// process: a second process gets an error of kind
    /// [`ResourceBusy`](std::io::ErrorKind::ResourceBusy) until this flash is dropped.
    pub fn open(path: impl AsRef<Path>) -> std::io::Result<Self> {
        let path = path.as_ref();
        let mut file = OpenOptions::new().read(true).write(true).open(path)?;
        lock_exclusive(&file, path)?;
        if !file.metadata()?.is_file() {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                format!("{} is not a regular file", path.display()),
            ));
        }
        let mut mem = Vec::new();
        (&mut file).take(MAX_FLASH_FILE + 1).read_to_end(&mut mem)?;
        if mem.len() as u64 > MAX_FLASH_FILE {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!(
                    "{} is larger than any ESP32 flash ({} MiB)",
                    path.display(),
                    MAX_FLASH_FILE >> 20
                ),
            ));
        }
        let mut flash = Flash::in_memory(mem);
        flash.file = Some((file, path.to_path_buf()));
        Ok(flash)
    }

    /// Writes the whole flash to the file at `path` and writes every later operation through
    /// to it, holding the same lock as [`open`](Self::open). The file is replaced atomically
    /// (a locked temporary file beside it, synced, then renamed over it), so a failure leaves
    /// an existing file as it was; a file another process holds open is not replaced.
    pub fn save_as(&mut self, path: impl AsRef<Path>) -> std::io::Result<()> {
        let path = path.as_ref();
        // Held until the rename: nobody opens the old file meanwhile.
        let _old = match OpenOptions::new().read(true).write(true).open(path) {
            Ok(f) => {
                lock_exclusive(&f, path)?;
                Some(f)
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            Err(e) => return Err(e),
        };
        let tmp = sibling(path, &format!(".tmp-{}", std::process::id()));
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&tmp)?;
        let written = lock_exclusive(&file, &tmp)
            .and_then(|()| file.write_all(&self.mem))
            .and_then(|()| file.sync_all())
            .and_then(|()| std::fs::rename(&tmp, path));
        if let Err(e) = written {
            let _ = std::fs::remove_file(&tmp);
            return Err(e);
        }
        self.file = Some((file, path.to_path_buf()));
        Ok(())
    }

    /// Returns the whole flash contents.
    pub fn bytes(&self) -> &[u8] {
        &self.mem
    }

    /// Returns the flash size in bytes.
    pub fn size(&self) -> u32 {
        self.mem.len() as u32
    }

    /// Returns the backing file's path, if any.
    pub fn path(&self) -> Option<&Path> {
        self.file.as_ref().map(|(_, p)| p.as_path())
    }

    /// Returns the operation counters.
    pub fn stats(&self) -> FlashStats {
        self.stats
    }

    /// Zeroes the operation counters.
    pub fn reset_stats(&mut self) {
        self.stats = FlashStats::default();
    }

    /// Returns the mutating operations counted so far (see [`FlashStats::mutating_ops`]).
    pub fn mutating_ops(&self) -> u64 {
        self.stats.mutating_ops
    }

    /// Arms `plan` (replacing any armed plan); its count starts now.
    pub fn arm(&mut self, plan: FaultPlan) {
        self.plan = Some((plan, 0));
    }

    /// Disarms the armed plan, if any.
    pub fn disarm(&mut self) {
        self.plan = None;
    }

    /// Returns the armed plan that has not fired yet.
    pub fn armed(&self) -> Option<FaultPlan> {
        self.plan.map(|(p, _)| p)
    }

    /// Returns false after a power cut, until [`power_on`](Self::power_on).
    pub fn is_powered(&self) -> bool {
        self.powered
    }

    /// Cuts power now, between operations.
    pub fn cut_power(&mut self) {
        self.powered = false;
    }

    /// Restores power (a reboot). An armed plan that has not fired stays armed.
    pub fn power_on(&mut self) {
        self.powered = true;
    }

    /// Syncs the backing file to the storage device (`fsync`).
    pub fn sync(&mut self) -> std::io::Result<()> {
        match &mut self.file {
            Some((f, _)) => f.sync_data(),
            None => Ok(()),
        }
    }

    /// Sets bytes exactly, as an external programmer does (`esptool write-flash` erases and
    /// then programs): no NOR semantics, no counters, no fault plan, works without power.
    /// Written through to the file.
    pub fn write_raw(&mut self, offset: u32, data: &[u8]) -> Result<(), FlashError> {
        let r = self.range(offset, data.len())?;
        self.commit(r.start, data)
    }

    fn range(&self, offset: u32, len: usize) -> Result<core::ops::Range<usize>, FlashError> {
        let start = offset as usize;
        match start.checked_add(len) {
            Some(end) if end <= self.mem.len() => Ok(start..end),
            _ => Err(FlashError::OutOfBounds {
                offset,
                len,
                capacity: self.size(),
            }),
        }
    }

    /// Writes `data` at `start` to the file, then to memory.
    fn commit(&mut self, start: usize, data: &[u8]) -> Result<(), FlashError> {
        if data.is_empty() {
            return Ok(());
        }
        if let Some((f, _)) = &mut self.file {
            f.seek(SeekFrom::Start(start as u64))
                .and_then(|_| f.write_all(data))
                .map_err(|e| FlashError::Io(e.kind()))?;
        }
        self.mem[start..start + data.len()].copy_from_slice(data);
        Ok(())
    }

    /// Counts one mutating operation; returns the tear to apply if power is cut during it.
    fn next_mutating_op(&mut self) -> Option<Tear> {
        self.stats.mutating_ops += 1;
        let (plan, seen) = self.plan.as_mut()?;
        *seen += 1;
        if *seen >= plan.cut_at {
            let tear = plan.tear;
            self.plan = None;
            Some(tear)
        } else {
            None
        }
    }

    fn check_powered(&self) -> Result<(), FlashError> {
        if self.powered {
            Ok(())
        } else {
            Err(FlashError::PowerLost)
        }
    }

    fn count_erase_cmds(&mut self, from: u32, to: u32) {
        let mut a = from;
        while a < to {
            if a.is_multiple_of(BLOCK_SIZE) && to - a >= BLOCK_SIZE {
                self.stats.block_erase_cmds += 1;
                a += BLOCK_SIZE;
            } else {
                self.stats.sector_erase_cmds += 1;
                a += SECTOR_SIZE;
            }
        }
    }
}

/// The largest flash file opened: 128 MiB, the largest flash ESP-IDF's partition tools know.
const MAX_FLASH_FILE: u64 = 128 << 20;

/// Returns `path` with `suffix` appended to its file name (a file beside it).
pub fn sibling(path: &Path, suffix: &str) -> PathBuf {
    let mut s = path.as_os_str().to_owned();
    s.push(suffix);
    s.into()
}

/// Takes the advisory lock that keeps two processes off one virtual ESP32. On a file system
/// without locks the file is used unlocked.
fn lock_exclusive(file: &File, path: &Path) -> std::io::Result<()> {
    match file.try_lock() {
        Ok(()) => Ok(()),
        Err(std::fs::TryLockError::WouldBlock) => Err(std::io::Error::new(
            std::io::ErrorKind::ResourceBusy,
            format!(
                "{} is in use by another ble-ota process (a `ble-ota device` serving it, or an update); wait for it to finish or stop it",
                path.display()
            ),
        )),
        Err(std::fs::TryLockError::Error(e)) if e.kind() == std::io::ErrorKind::Unsupported => {
            Ok(())
        }
        Err(std::fs::TryLockError::Error(e)) => Err(e),
    }
}

/// Replaces the file at `path` with `contents` atomically (a temporary file renamed over it).
pub fn write_atomically(path: &Path, contents: &[u8]) -> std::io::Result<()> {
    let tmp = sibling(path, &format!(".tmp-{}", std::process::id()));
    let written = std::fs::write(&tmp, contents).and_then(|()| std::fs::rename(&tmp, path));
    if written.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    written
}

impl ErrorType for Flash {
    type Error = FlashError;
}

impl ReadNorFlash for Flash {
    const READ_SIZE: usize = 1;

    fn read(&mut self, offset: u32, bytes: &mut [u8]) -> Result<(), FlashError> {
        self.check_powered()?;
        let r = self.range(offset, bytes.len())?;
        bytes.copy_from_slice(&self.mem[r]);
        self.stats.reads += 1;
        self.stats.bytes_read += bytes.len() as u64;
        Ok(())
    }

    fn capacity(&self) -> usize {
        self.mem.len()
    }
}

impl NorFlash for Flash {
    const WRITE_SIZE: usize = 4;
    const ERASE_SIZE: usize = SECTOR_SIZE as usize;

    fn erase(&mut self, from: u32, to: u32) -> Result<(), FlashError> {
        self.check_powered()?;
        if to < from {
            return Err(FlashError::NotAligned {
                offset: from,
                len: 0,
            });
        }
        let len = (to - from) as usize;
        if !from.is_multiple_of(SECTOR_SIZE) || !to.is_multiple_of(SECTOR_SIZE) {
            return Err(FlashError::NotAligned { offset: from, len });
        }
        let r = self.range(from, len)?;
        if len == 0 {
            return Ok(());
        }
        let tear = self.next_mutating_op();
        self.stats.erases += 1;
        let sectors = len / SECTOR_SIZE as usize;
        let erased_len = match tear {
            None | Some(Tear::Complete) => len,
            Some(Tear::Nothing) => 0,
            Some(Tear::Half) => sectors / 2 * SECTOR_SIZE as usize + SECTOR_SIZE as usize / 2,
        };
        let result = self.commit(r.start, &vec![0xFF; erased_len]);
        if result.is_ok() {
            let whole = (erased_len / SECTOR_SIZE as usize) as u32;
            if tear.is_none() {
                self.count_erase_cmds(from, to);
            } else {
                self.count_erase_cmds(from, from + whole * SECTOR_SIZE);
                if erased_len % SECTOR_SIZE as usize != 0 {
                    self.stats.sector_erase_cmds += 1;
                }
            }
            self.stats.sectors_erased += u64::from(whole);
        }
        match tear {
            Some(_) => {
                self.powered = false;
                Err(FlashError::PowerLost)
            }
            None => result,
        }
    }

    fn write(&mut self, offset: u32, bytes: &[u8]) -> Result<(), FlashError> {
        self.check_powered()?;
        if !offset.is_multiple_of(4) || !bytes.len().is_multiple_of(4) {
            return Err(FlashError::NotAligned {
                offset,
                len: bytes.len(),
            });
        }
        let r = self.range(offset, bytes.len())?;
        if bytes.is_empty() {
            return Ok(());
        }
        let tear = self.next_mutating_op();
        self.stats.writes += 1;
        let programmed = match tear {
            None | Some(Tear::Complete) => bytes.len(),
            Some(Tear::Nothing) => 0,
            Some(Tear::Half) => bytes.len() / 2,
        };
        let new: Vec<u8> = self.mem[r.start..r.start + programmed]
            .iter()
            .zip(bytes)
            .map(|(o, d)| o & d)
            .collect();
        let result = self.commit(r.start, &new);
        if result.is_ok() && programmed > 0 {
            self.stats.bytes_programmed += programmed as u64;
            let first_page = offset / PAGE_SIZE;
            let last_page = (offset + programmed as u32 - 1) / PAGE_SIZE;
            self.stats.page_programs += u64::from(last_page - first_page + 1);
        }
        match tear {
            Some(_) => {
                self.powered = false;
                Err(FlashError::PowerLost)
            }
            None => result,
        }
    }
}

/// Programming ANDs bits, so writing a location again can only clear more bits, as the
/// trait requires.
impl MultiwriteNorFlash for Flash {}
