//! Shared rig for the tests: the one RAM NOR flash they use, which behaves like the real thing
//! (programming only clears bits, erase sets 4 KiB sectors to 0xFF, 4-byte writes), the
//! fixtures, a flash laid out like an ESP32 with the two-OTA table, and an image builder.
#![allow(dead_code)]

use embedded_storage::nor_flash::{
    ErrorType, NorFlash, NorFlashError, NorFlashErrorKind, ReadNorFlash,
};
use sha2::{Digest, Sha256};

use ota_core::esp::Chip;

/// One flash operation, as recorded by [`RamFlash`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    Erase { from: u32, to: u32 },
    Write { at: u32, len: usize },
}

/// A NOR flash in RAM: reads anywhere, writes in 4-byte units, erases 4 KiB sectors, and a write can
/// only clear bits (`new = old & data`), so writing over unerased bytes shows up in the result.
pub struct RamFlash {
    pub mem: Vec<u8>,
    pub ops: Vec<Op>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RamFlashError(pub NorFlashErrorKind);

impl NorFlashError for RamFlashError {
    fn kind(&self) -> NorFlashErrorKind {
        self.0
    }
}

impl std::ops::Deref for RamFlash {
    type Target = Vec<u8>;
    fn deref(&self) -> &Vec<u8> {
        &self.mem
    }
}

impl std::ops::DerefMut for RamFlash {
    fn deref_mut(&mut self) -> &mut Vec<u8> {
        &mut self.mem
    }
}

impl PartialEq<Vec<u8>> for RamFlash {
    fn eq(&self, other: &Vec<u8>) -> bool {
        self.mem == *other
    }
}

/// A [`RamFlash`] lent to the code under test (the device keeps owning it).
pub struct MemFlash<'a>(pub &'a mut RamFlash);

impl<'a> MemFlash<'a> {
    pub fn new(flash: &'a mut RamFlash) -> Self {
        MemFlash(flash)
    }
}

impl ErrorType for MemFlash<'_> {
    type Error = RamFlashError;
}

impl ReadNorFlash for MemFlash<'_> {
    const READ_SIZE: usize = RamFlash::READ_SIZE;
    fn read(&mut self, offset: u32, bytes: &mut [u8]) -> Result<(), Self::Error> {
        self.0.read(offset, bytes)
    }
    fn capacity(&self) -> usize {
        self.0.capacity()
    }
}

impl NorFlash for MemFlash<'_> {
    const WRITE_SIZE: usize = RamFlash::WRITE_SIZE;
    const ERASE_SIZE: usize = RamFlash::ERASE_SIZE;
    fn erase(&mut self, from: u32, to: u32) -> Result<(), Self::Error> {
        self.0.erase(from, to)
    }
    fn write(&mut self, offset: u32, bytes: &[u8]) -> Result<(), Self::Error> {
        self.0.write(offset, bytes)
    }
}

impl RamFlash {
    /// An erased flash of `size` bytes.
    pub fn new(size: usize) -> Self {
        RamFlash {
            mem: vec![0xFF; size],
            ops: Vec::new(),
        }
    }

    /// Copies `bytes` to `at` directly (as a programmer would flash them).
    pub fn load(&mut self, at: u32, bytes: &[u8]) {
        self.mem[at as usize..at as usize + bytes.len()].copy_from_slice(bytes);
    }

    pub fn slice(&self, at: u32, len: u32) -> &[u8] {
        &self.mem[at as usize..(at + len) as usize]
    }

    pub fn erase_count(&self) -> usize {
        self.ops
            .iter()
            .filter(|o| matches!(o, Op::Erase { .. }))
            .count()
    }

    pub fn write_count(&self) -> usize {
        self.ops
            .iter()
            .filter(|o| matches!(o, Op::Write { .. }))
            .count()
    }

    fn range(&self, at: u32, len: usize) -> Result<std::ops::Range<usize>, RamFlashError> {
        let start = at as usize;
        match start.checked_add(len) {
            Some(end) if end <= self.mem.len() => Ok(start..end),
            _ => Err(RamFlashError(NorFlashErrorKind::OutOfBounds)),
        }
    }
}

impl ErrorType for RamFlash {
    type Error = RamFlashError;
}

/// Reads at any offset and length, as esp-storage's `bytewise-read` feature (which the
/// firmware enables) and the virtual ESP32 allow.
impl ReadNorFlash for RamFlash {
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

impl NorFlash for RamFlash {
    const WRITE_SIZE: usize = 4;
    const ERASE_SIZE: usize = 4096;

    fn erase(&mut self, from: u32, to: u32) -> Result<(), Self::Error> {
        if !from.is_multiple_of(4096) || !to.is_multiple_of(4096) || to < from {
            return Err(RamFlashError(NorFlashErrorKind::NotAligned));
        }
        let r = self.range(from, (to - from) as usize)?;
        self.mem[r].fill(0xFF);
        self.ops.push(Op::Erase { from, to });
        Ok(())
    }

    fn write(&mut self, offset: u32, bytes: &[u8]) -> Result<(), Self::Error> {
        if !offset.is_multiple_of(4) || !bytes.len().is_multiple_of(4) {
            return Err(RamFlashError(NorFlashErrorKind::NotAligned));
        }
        let r = self.range(offset, bytes.len())?;
        for (cell, b) in self.mem[r].iter_mut().zip(bytes) {
            *cell &= *b;
        }
        self.ops.push(Op::Write {
            at: offset,
            len: bytes.len(),
        });
        Ok(())
    }
}

// ----- fixtures -----

macro_rules! fixture {
    ($name:literal) => {
        include_bytes!(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/fixtures/",
            $name
        )) as &[u8]
    };
}

pub const TABLE_TWO_OTA: &[u8] = fixture!("partitions_two_ota.bin");
pub const TABLE_TWO_OTA_IDF_PART: &[u8] = fixture!("partitions_two_ota.esp-idf-part.bin");
pub const TABLE_TWO_OTA_NOMD5: &[u8] = fixture!("partitions_two_ota_nomd5.bin");
pub const TABLE_NOFACTORY: &[u8] = fixture!("partitions_ota_nofactory.bin");

pub const OTADATA_BLANK: &[u8] = fixture!("otadata_blank.bin");
pub const OTADATA_SEQ1_VALID: &[u8] = fixture!("otadata_seq1_valid.bin");
pub const OTADATA_SEQ1_UNDEFINED: &[u8] = fixture!("otadata_seq1_undefined.bin");
pub const OTADATA_SEQ1_NEW: &[u8] = fixture!("otadata_seq1_new.bin");
pub const OTADATA_S1_NEW: &[u8] = fixture!("otadata_s0seq1valid_s1seq2new.bin");
pub const OTADATA_S1_PENDING: &[u8] = fixture!("otadata_s0seq1valid_s1seq2pending.bin");
pub const OTADATA_S1_ABORTED: &[u8] = fixture!("otadata_s0seq1valid_s1seq2aborted.bin");
pub const OTADATA_S0SEQ3_S1SEQ2: &[u8] = fixture!("otadata_s0seq3valid_s1seq2valid.bin");
pub const OTADATA_S1_BADCRC: &[u8] = fixture!("otadata_s0seq1valid_s1seq2badcrc.bin");

pub const TINY_C3_ELF: &[u8] = fixture!("tiny_c3.elf");
pub const TINY_C3_APP: &[u8] = fixture!("tiny_c3_app.bin");
pub const HANDMADE_C3_APP: &[u8] = fixture!("handmade_c3_app.bin");
pub const HANDMADE_C3_APP_CORRUPT: &[u8] = fixture!("handmade_c3_app_corrupt.bin");

// ----- an ESP32 flash -----

pub const FLASH_SIZE: u32 = 4 << 20;
pub const TABLE_OFFSET: u32 = 0x8000;
pub const OTADATA_OFFSET: u32 = 0xD000;
pub const OTADATA_LEN: u32 = 0x2000;

/// A 4 MiB flash with `table` at 0x8000 and `otadata` (8 KiB) at 0xD000; the other bytes are
/// erased.
pub fn esp_flash(table: &[u8], otadata: &[u8]) -> RamFlash {
    let mut f = RamFlash::new(FLASH_SIZE as usize);
    f.load(TABLE_OFFSET, table);
    f.load(OTADATA_OFFSET, otadata);
    f
}

/// The 8 KiB otadata partition's current bytes.
pub fn otadata_bytes(f: &RamFlash) -> &[u8] {
    f.slice(OTADATA_OFFSET, OTADATA_LEN)
}

/// Returns `base` (a whole otadata vector) with the first 32 bytes of sector `index` replaced.
pub fn with_entry(base: &[u8], index: usize, entry: [u8; 32]) -> Vec<u8> {
    let mut v = base.to_vec();
    v[index * 0x1000..index * 0x1000 + 32].copy_from_slice(&entry);
    v
}

/// The 32 bytes of entry `seq`/`state`/label 0xFF with IDF's CRC, built by hand from §2.2.
pub fn entry_bytes(seq: u32, state: u32, crc: u32) -> [u8; 32] {
    let mut e = [0xFF; 32];
    e[0..4].copy_from_slice(&seq.to_le_bytes());
    e[24..28].copy_from_slice(&state.to_le_bytes());
    e[28..32].copy_from_slice(&crc.to_le_bytes());
    e
}

// ----- images -----

/// What [`build_image`] makes.
#[derive(Clone)]
pub struct ImageSpec {
    pub chip_id: u16,
    /// `(load_addr, data)`; data lengths should be multiples of 4 for a valid image.
    pub segments: Vec<(u32, Vec<u8>)>,
    pub hash: bool,
}

/// A 256-byte `esp_app_desc_t` with `name` and `version` (`secure_version` 7).
pub fn app_desc(name: &str, version: &str) -> Vec<u8> {
    app_desc_with_secure_version(name, version, 7)
}

/// A 256-byte `esp_app_desc_t` with `name`, `version` and `secure_version`.
pub fn app_desc_with_secure_version(name: &str, version: &str, secure_version: u32) -> Vec<u8> {
    let mut d = vec![0u8; 256];
    d[0..4].copy_from_slice(&0xABCD_5432u32.to_le_bytes());
    d[4..8].copy_from_slice(&secure_version.to_le_bytes());
    d[0x10..0x10 + version.len()].copy_from_slice(version.as_bytes());
    d[0x30..0x30 + name.len()].copy_from_slice(name.as_bytes());
    d[0xB4] = 16;
    d
}

impl ImageSpec {
    /// A C3 app: the descriptor segment plus a filler segment of `filler` bytes.
    pub fn app(name: &str, filler: usize) -> Self {
        let data: Vec<u8> = (0..filler)
            .map(|i| (i as u8).wrapping_mul(31) ^ 0x5A)
            .collect();
        ImageSpec {
            chip_id: Chip::Esp32c3.id(),
            segments: vec![(0x3C00_0020, app_desc(name, "1.2.3")), (0x4200_0128, data)],
            hash: true,
        }
    }
}

/// Builds an image the way esptool lays it out (checksum at the end of a 16-byte block,
/// zero padding, optional SHA-256).
pub fn build_image(spec: &ImageSpec) -> Vec<u8> {
    let mut img = vec![0xE9, spec.segments.len() as u8, 0x02, 0x2F];
    img.extend_from_slice(&0x4038_0000u32.to_le_bytes());
    img.extend_from_slice(&[0xEE, 0, 0, 0]);
    img.extend_from_slice(&spec.chip_id.to_le_bytes());
    img.extend_from_slice(&[0, 0, 0, 0xFF, 0xFF, 0, 0, 0, 0, spec.hash as u8]);
    let mut checksum = 0xEFu8;
    for (addr, data) in &spec.segments {
        img.extend_from_slice(&addr.to_le_bytes());
        img.extend_from_slice(&(data.len() as u32).to_le_bytes());
        img.extend_from_slice(data);
        checksum = data.iter().fold(checksum, |c, b| c ^ b);
    }
    while img.len() % 16 != 15 {
        img.push(0);
    }
    img.push(checksum);
    if spec.hash {
        let h = Sha256::digest(&img);
        img.extend_from_slice(&h);
    }
    img
}

pub fn sha256(bytes: &[u8]) -> [u8; 32] {
    Sha256::digest(bytes).into()
}

pub fn unhex<const N: usize>(s: &str) -> [u8; N] {
    hex::decode(s).unwrap().try_into().unwrap()
}

/// Returns the NUL-terminated prefix of a C string field.
pub fn cstr(b: &[u8]) -> &str {
    let end = b.iter().position(|c| *c == 0).unwrap_or(b.len());
    std::str::from_utf8(&b[..end]).unwrap()
}
