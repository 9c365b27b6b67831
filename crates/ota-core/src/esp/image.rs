//! ESP-IDF app images, validated as a stream: the device never holds the image in RAM.
//!
//! Layout: a 24-byte header, up to 16 segments (8-byte header + data), a checksum byte (0xEF
//! XOR every data byte) at the end of a 16-byte block, then an optional SHA-256 of all that.
//! The first segment starts with the 256-byte `esp_app_desc_t`. Bytes after that are ignored,
//! as ESP-IDF and esptool ignore them.

use embedded_storage::nor_flash::NorFlash;
use sha2::{Digest, Sha256};

use super::chip::Chip;
use super::flash::FlashError;

/// Magic byte of an app image header.
pub const IMAGE_MAGIC: u8 = 0xE9;

/// Returns a NUL-padded C string field of an image (project name, version, ...) as text, up to
/// the first NUL or the first byte that is not UTF-8.
pub fn c_str(field: &[u8]) -> &str {
    let end = field.iter().position(|b| *b == 0).unwrap_or(field.len());
    match core::str::from_utf8(&field[..end]) {
        Ok(s) => s,
        Err(e) => core::str::from_utf8(&field[..e.valid_up_to()]).unwrap_or(""),
    }
}
/// Magic word of `esp_app_desc_t`.
pub const APP_DESC_MAGIC: u32 = 0xABCD_5432;
/// Most segments an image may have.
pub const MAX_SEGMENTS: usize = 16;
/// Length of `esp_image_header_t`.
pub const HEADER_LEN: u32 = 24;
/// Length of `esp_image_segment_header_t`.
pub const SEGMENT_HEADER_LEN: u32 = 8;
/// Image offset of `esp_app_desc_t` (header + first segment header).
pub const APP_DESC_OFFSET: u32 = HEADER_LEN + SEGMENT_HEADER_LEN;
/// Length of `esp_app_desc_t`.
pub const APP_DESC_LEN: u32 = 256;
/// A segment must be shorter than this (`data_len < 16 MiB`).
pub const MAX_SEGMENT_LEN: u32 = 16 << 20;
/// Initial value of the XOR checksum (`ESP_ROM_CHECKSUM_INITIAL`).
pub const CHECKSUM_INIT: u8 = 0xEF;
/// Length of the appended SHA-256.
pub const HASH_LEN: u32 = 32;
/// MMU page size when the image does not set one (`CONFIG_MMU_PAGE_SIZE`'s default): a
/// flash-mapped segment's image offset and load address must agree modulo it.
pub const MMU_PAGE_DEFAULT: u32 = 0x1_0000;
/// Offset of `mmu_page_size` (log2) in `esp_app_desc_t`.
const APP_DESC_MMU_PAGE_AT: u16 = 180;
/// Segments loading below this address are never copied to RAM (`should_load`: 0 is a
/// padding segment).
const LOAD_ADDR_MIN: u32 = 0x1000_0000;

/// Where a chip's bootloader lets segments go (`esp_image_format.c`: `should_map`,
/// `verify_segment_header`, `verify_load_addresses`; addresses from `soc/<chip>/soc.h` and the
/// bootloader's linker script).
#[derive(Debug)]
struct MemoryMap {
    /// Flash-mapped (IROM/DROM) windows, `[start, end)`.
    mapped: &'static [(u32, u32)],
    /// The MMU page size comes from the app descriptor (`SOC_MMU_PAGE_SIZE_CONFIGURABLE`).
    page_from_desc: bool,
    /// RAM regions (DRAM, IRAM, RTC), `[start, end)`: a loaded segment lies inside one.
    ram: &'static [(u32, u32)],
    /// RAM the bootloader runs from while it loads the app (stack, data, loader code), in each
    /// view it is reachable through. Conservative: the app linker's own limit.
    loader: &'static [(u32, u32)],
}

/// ESP32-C3: DROM, IROM; DRAM, IRAM (DRAM + 0x700000), RTC. The bootloader occupies
/// 0x3FCCE710..0x3FCDE710 (DRAM view) = 0x403CE710..0x403DE710 (IRAM view).
const C3_MAP: MemoryMap = MemoryMap {
    mapped: &[(0x3C00_0000, 0x3C80_0000), (0x4200_0000, 0x4280_0000)],
    page_from_desc: false,
    ram: &[
        (0x3FC8_0000, 0x3FCE_0000),
        (0x4037_C000, 0x403E_0000),
        (0x5000_0000, 0x5000_2000),
    ],
    loader: &[(0x3FCC_E710, 0x3FCD_E710), (0x403C_E710, 0x403D_E710)],
};

/// ESP32-C6: one IROM/DROM window (64 KiB pages); HP SRAM (one address for data and code), LP
/// RAM. The app linker ends app SRAM at 0x4086E610, where the bootloader's region starts.
const C6_MAP: MemoryMap = MemoryMap {
    mapped: &[(0x4200_0000, 0x4300_0000)],
    page_from_desc: true,
    ram: &[(0x4080_0000, 0x4088_0000), (0x5000_0000, 0x5000_4000)],
    loader: &[(0x4086_E610, 0x4088_0000)],
};

impl MemoryMap {
    /// Returns the map of the chip with header id `chip_id`, for the chips whose map is known.
    fn of(chip_id: u16) -> Option<&'static MemoryMap> {
        match Chip::from_id(chip_id)? {
            Chip::Esp32c3 => Some(&C3_MAP),
            Chip::Esp32c6 => Some(&C6_MAP),
            _ => None,
        }
    }

    fn is_mapped(&self, addr: u32) -> bool {
        self.mapped.iter().any(|&(lo, hi)| (lo..hi).contains(&addr))
    }
}

/// Writes a chip revision (`major * 100 + minor`) as ESP-IDF and esptool do: `v1.99`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rev(pub u16);

impl core::fmt::Display for Rev {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(f, "v{}.{}", self.0 / 100, self.0 % 100)
    }
}

/// Parses a chip revision written `X.Y` or `vX.Y` (minor below 100) into ESP-IDF's
/// `major * 100 + minor`, as `efuse_hal_chip_revision` returns it.
pub fn parse_chip_revision(s: &str) -> Option<u16> {
    let s = s.trim();
    let s = s.strip_prefix(['v', 'V']).unwrap_or(s);
    let (major, minor) = s.split_once('.')?;
    let digits = |t: &str| !t.is_empty() && t.len() <= 5 && t.bytes().all(|b| b.is_ascii_digit());
    if !digits(major) || !digits(minor) {
        return None;
    }
    let (major, minor): (u32, u32) = (major.parse().ok()?, minor.parse().ok()?);
    if minor >= 100 {
        return None;
    }
    u16::try_from(major * 100 + minor).ok()
}

/// Returns the image offset of the checksum byte for an unpadded length `unpadded`
/// (header + segment headers + data): the last byte of the 16-byte block after it.
pub fn checksum_offset(unpadded: u32) -> u64 {
    ((u64::from(unpadded) + 16) & !15) - 1
}

/// `esp_image_header_t` (24 bytes).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct ImageHeader {
    /// Number of segments, at most 16.
    pub segment_count: u8,
    /// SPI mode (0 QIO, 1 QOUT, 2 DIO, 3 DOUT, 4 FAST_READ, 5 SLOW_READ).
    pub spi_mode: u8,
    /// Low nibble: speed code; high nibble: size code.
    pub spi_speed_size: u8,
    /// Entry point.
    pub entry_addr: u32,
    /// Raw chip id (see [`Chip::from_id`]).
    pub chip_id: u16,
    /// Legacy minimum chip revision.
    pub min_chip_rev: u8,
    /// Minimum chip revision, major*100+minor.
    pub min_chip_rev_full: u16,
    /// Maximum chip revision, major*100+minor (0 and 0xFFFF: not set).
    pub max_chip_rev_full: u16,
    /// Whether a SHA-256 follows the checksum.
    pub hash_appended: bool,
}

/// One segment's header and where its data sits in the image.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct Segment {
    /// Load address.
    pub load_addr: u32,
    /// Data length.
    pub data_len: u32,
    /// Offset of the data in the image file.
    pub file_offset: u32,
}

/// `esp_app_desc_t` (256 bytes at image offset 0x20).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct AppDescriptor {
    /// Anti-rollback version.
    pub secure_version: u32,
    /// `version[32]`, NUL padded.
    pub version: [u8; 32],
    /// `project_name[32]`, NUL padded.
    pub project_name: [u8; 32],
    /// `time[16]`.
    pub time: [u8; 16],
    /// `date[16]`.
    pub date: [u8; 16],
    /// `idf_ver[32]`.
    pub idf_ver: [u8; 32],
    /// `app_elf_sha256[32]`.
    pub app_elf_sha256: [u8; 32],
    /// `min_efuse_blk_rev_full`.
    pub min_efuse_blk_rev_full: u16,
    /// `max_efuse_blk_rev_full`.
    pub max_efuse_blk_rev_full: u16,
    /// `mmu_page_size` as log2 (0 in older images).
    pub mmu_page_size: u8,
}

/// What a complete image holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageInfo {
    /// The header.
    pub header: ImageHeader,
    /// Every segment, in file order.
    pub segments: heapless::Vec<Segment, MAX_SEGMENTS>,
    /// The app descriptor, when segment 0 starts with its magic.
    pub app: Option<AppDescriptor>,
    /// Checksum byte stored in the image.
    pub checksum_stored: u8,
    /// Checksum computed over the segment data.
    pub checksum_computed: u8,
    /// SHA-256 stored after the checksum (when `hash_appended`).
    pub hash_stored: Option<[u8; 32]>,
    /// SHA-256 computed over the image up to and including the checksum byte.
    pub hash_computed: [u8; 32],
    /// Length of the image: header, segments, padding, checksum and hash.
    pub len: u32,
    /// Bytes fed after the image's end. ESP-IDF (`esp_image_verify` reads up to the image's
    /// length only) and esptool ignore them, so they are counted, not refused.
    pub ignored_trailing: u32,
}

impl ImageInfo {
    /// Returns what makes a complete image invalid, in the order ESP-IDF checks it: the
    /// checksum, the appended SHA-256, the app descriptor. All `None`: the image is valid.
    pub fn problems(&self) -> [Option<ImageError>; 3] {
        [
            (self.checksum_stored != self.checksum_computed).then_some(
                ImageError::ChecksumMismatch {
                    stored: self.checksum_stored,
                    computed: self.checksum_computed,
                },
            ),
            self.hash_stored
                .is_some_and(|h| h != self.hash_computed)
                .then_some(ImageError::HashMismatch),
            self.app.is_none().then_some(ImageError::NoAppDescriptor),
        ]
    }
}

/// Why an image was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
#[non_exhaustive]
pub enum ImageError {
    /// The first byte is not 0xE9.
    #[error(
        "not an ESP app image (first byte {found:#04x}, expected 0xe9); pass the .bin from `espflash save-image`, not the ELF"
    )]
    BadMagic {
        /// The first byte.
        found: u8,
    },
    /// More than 16 segments (or none).
    #[error("image declares {count} segments (1..=16 allowed); the file is corrupt")]
    BadSegmentCount {
        /// The header's segment count.
        count: u8,
    },
    /// The image is built for another chip.
    #[error("image is for chip id {found} but this device is {expected}; build for the right chip")]
    WrongChip {
        /// The chip the validator was made for.
        expected: Chip,
        /// The header's chip id.
        found: u16,
    },
    /// A segment length is not a multiple of 4 or too large.
    #[error("segment {index} has bad length {len:#x}; the file is corrupt")]
    BadSegmentLength {
        /// Segment index (0-based).
        index: u8,
        /// Its data length.
        len: u32,
    },
    /// The image is larger than the slot it goes to.
    #[error(
        "image needs {needed} bytes but the slot holds {max}; enlarge the partition or shrink the app"
    )]
    TooLarge {
        /// Bytes the image needs (at least; exact once every segment header was seen). With
        /// bytes after the image's end: every byte fed, as all of them land in the slot.
        needed: u32,
        /// Bytes allowed.
        max: u32,
    },
    /// The stream ended before the image did.
    #[error("image truncated: {got} bytes of {needed}; the transfer or the file is incomplete")]
    Truncated {
        /// Bytes fed.
        got: u32,
        /// Bytes the image needs (at least, when its segment headers were not all seen).
        needed: u32,
    },
    /// The chip is older than the image allows (`min_chip_rev_full`).
    #[error(
        "image needs a newer chip revision (min {}) than this device has ({}): rebuild with a lower minimum chip revision (ESP-IDF: CONFIG_<CHIP>_REV_MIN; esptool elf2image --min-rev-full)",
        Rev(*.min),
        Rev(*.revision)
    )]
    ChipRevisionTooLow {
        /// The header's `min_chip_rev_full`.
        min: u16,
        /// The chip's revision, `major * 100 + minor`.
        revision: u16,
    },
    /// The chip is newer than the image allows (`max_chip_rev_full`, when set).
    #[error(
        "image supports chip revisions up to {} but this device is {}: rebuild with a higher maximum chip revision (ESP-IDF: CONFIG_<CHIP>_REV_MAX_FULL; esptool elf2image --max-rev-full)",
        Rev(*.max),
        Rev(*.revision)
    )]
    ChipRevisionTooHigh {
        /// The header's `max_chip_rev_full`.
        max: u16,
        /// The chip's revision, `major * 100 + minor`.
        revision: u16,
    },
    /// A flash-mapped segment's image offset and load address disagree modulo the MMU page:
    /// the bootloader could not map it.
    #[error(
        "segment {index} is mapped at {load_addr:#010x} but its data starts at image offset {offset:#x}; they must agree modulo the {page:#x}-byte MMU page or the bootloader refuses the image: rebuild the .bin with espflash or esptool elf2image instead of editing it"
    )]
    MisalignedSegment {
        /// Segment index (0-based).
        index: u8,
        /// Its load address.
        load_addr: u32,
        /// Image offset of its data.
        offset: u32,
        /// The MMU page size it must agree with.
        page: u32,
    },
    /// A RAM segment does not lie inside one of the chip's RAM regions.
    #[error(
        "segment {index} loads {len:#x} bytes to {load_addr:#010x}, outside this chip's DRAM, IRAM and RTC memory; the bootloader refuses it: build for the right chip and check the linker script"
    )]
    BadLoadAddress {
        /// Segment index (0-based).
        index: u8,
        /// Its load address.
        load_addr: u32,
        /// Its data length.
        len: u32,
    },
    /// A RAM segment overlaps the RAM the second-stage bootloader runs from while loading.
    #[error(
        "segment {index} loads {len:#x} bytes to {load_addr:#010x}, over the RAM the bootloader uses while loading ({from:#010x}..{to:#010x}); the bootloader refuses it: shrink the app's static RAM (.data, .rodata in RAM, IRAM code)"
    )]
    OverlapsBootloader {
        /// Segment index (0-based).
        index: u8,
        /// Its load address.
        load_addr: u32,
        /// Its data length.
        len: u32,
        /// Start of the bootloader's region it overlaps.
        from: u32,
        /// End of that region (exclusive).
        to: u32,
    },
    /// The XOR checksum does not match.
    #[error(
        "image checksum mismatch (stored {stored:#04x}, computed {computed:#04x}); the file is corrupt"
    )]
    ChecksumMismatch {
        /// The checksum byte in the image.
        stored: u8,
        /// The checksum of the segment data.
        computed: u8,
    },
    /// The appended SHA-256 does not match.
    #[error("image SHA-256 mismatch; the file is corrupt")]
    HashMismatch,
    /// Segment 0 does not start with `esp_app_desc_t`.
    #[error(
        "image has no app descriptor (esp_app_desc_t); build it with esp-bootloader-esp-idf's esp_app_desc!()"
    )]
    NoAppDescriptor,
    /// Reading the image from flash failed.
    #[error(transparent)]
    Flash(#[from] FlashError),
}

impl ImageHeader {
    /// Returns the header at the start of `bytes` if they begin with an image header (the
    /// magic byte and 24 bytes): to tell which chip a file or a flash region is for.
    pub fn sniff(bytes: &[u8]) -> Option<ImageHeader> {
        let header: &[u8; HEADER_LEN as usize] =
            bytes.get(..HEADER_LEN as usize)?.try_into().ok()?;
        (header[0] == IMAGE_MAGIC).then(|| ImageHeader::from_bytes(header))
    }

    /// Returns the chip the image is for, if the id is one ESP-IDF knows.
    pub fn chip(&self) -> Option<Chip> {
        Chip::from_id(self.chip_id)
    }

    /// Returns the flash size the header's size nibble names (codes 0-7: 1 MB to 128 MB).
    pub fn flash_size(&self) -> Option<u32> {
        let code = self.spi_speed_size >> 4;
        (code <= 7).then(|| (1u32 << 20) << code)
    }

    /// Parses the 24-byte header (the magic byte is not checked here).
    pub fn from_bytes(b: &[u8; 24]) -> Self {
        let u16_at = |at: usize| u16::from_le_bytes([b[at], b[at + 1]]);
        ImageHeader {
            segment_count: b[1],
            spi_mode: b[2],
            spi_speed_size: b[3],
            entry_addr: u32::from_le_bytes([b[4], b[5], b[6], b[7]]),
            chip_id: u16_at(0x0C),
            min_chip_rev: b[0x0E],
            min_chip_rev_full: u16_at(0x0F),
            max_chip_rev_full: u16_at(0x11),
            // esptool writes 0 or 1; IDF tests the byte for non-zero.
            hash_appended: b[0x17] != 0,
        }
    }

    /// Returns the maximum chip revision, or `None` when the field is not set (0 or 0xFFFF,
    /// ESP-IDF's `IS_FIELD_SET`).
    pub fn max_chip_rev_limit(&self) -> Option<u16> {
        (self.max_chip_rev_full != 0 && self.max_chip_rev_full != 0xFFFF)
            .then_some(self.max_chip_rev_full)
    }

    /// Checks that a chip of `revision` (`major * 100 + minor`) may run this app, as
    /// `bootloader_common_check_chip_revision_validity` does: `min_chip_rev_full <= revision`
    /// always (no special values), `revision <= max_chip_rev_full` when the maximum is set.
    pub fn check_chip_revision(&self, revision: u16) -> Result<(), ImageError> {
        if self.min_chip_rev_full > revision {
            return Err(ImageError::ChipRevisionTooLow {
                min: self.min_chip_rev_full,
                revision,
            });
        }
        match self.max_chip_rev_limit() {
            Some(max) if revision > max => Err(ImageError::ChipRevisionTooHigh { max, revision }),
            _ => Ok(()),
        }
    }
}

impl AppDescriptor {
    const EMPTY: AppDescriptor = AppDescriptor {
        secure_version: 0,
        version: [0; 32],
        project_name: [0; 32],
        time: [0; 16],
        date: [0; 16],
        idf_ver: [0; 32],
        app_elf_sha256: [0; 32],
        min_efuse_blk_rev_full: 0,
        max_efuse_blk_rev_full: 0,
        mmu_page_size: 0,
    };

    /// Parses the 256 bytes of `esp_app_desc_t`; `None` without its magic word.
    pub fn from_bytes(bytes: &[u8; 256]) -> Option<Self> {
        let mut d = AppDescriptor::EMPTY;
        let mut magic = 0u32;
        for (i, b) in bytes.iter().enumerate() {
            d.set_byte(&mut magic, i, *b);
        }
        (magic == APP_DESC_MAGIC).then_some(d)
    }

    /// Stores byte `at` (descriptor offset) of the raw descriptor into its field.
    fn set_byte(&mut self, magic: &mut u32, at: usize, b: u8) {
        fn put_u32(w: &mut u32, i: usize, b: u8) {
            let shift = 8 * (i as u32 & 3);
            *w = (*w & !(0xFF << shift)) | (u32::from(b) << shift);
        }
        fn put_u16(w: &mut u16, i: usize, b: u8) {
            let shift = 8 * (i as u16 & 1);
            *w = (*w & !(0xFF << shift)) | (u16::from(b) << shift);
        }
        fn put(field: &mut [u8], i: usize, b: u8) {
            if let Some(slot) = field.get_mut(i) {
                *slot = b;
            }
        }
        match at {
            0x00..0x04 => put_u32(magic, at, b),
            0x04..0x08 => put_u32(&mut self.secure_version, at, b),
            0x10..0x30 => put(&mut self.version, at - 0x10, b),
            0x30..0x50 => put(&mut self.project_name, at - 0x30, b),
            0x50..0x60 => put(&mut self.time, at - 0x50, b),
            0x60..0x70 => put(&mut self.date, at - 0x60, b),
            0x70..0x90 => put(&mut self.idf_ver, at - 0x70, b),
            0x90..0xB0 => put(&mut self.app_elf_sha256, at - 0x90, b),
            0xB0..0xB2 => put_u16(&mut self.min_efuse_blk_rev_full, at, b),
            0xB2..0xB4 => put_u16(&mut self.max_efuse_blk_rev_full, at, b),
            0xB4 => self.mmu_page_size = b,
            _ => {}
        }
    }
}

/// Where the validator is in the image.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Collecting the 24-byte header.
    Header,
    /// Collecting the 8-byte header of segment `index`.
    SegmentHeader { index: u8 },
    /// In the data of segment `index`, `left` bytes to go.
    SegmentData { index: u8, left: u32 },
    /// Between the last segment's data and the checksum byte (hashed, not checked).
    Padding,
    /// The next byte is the checksum.
    Checksum,
    /// Collecting the appended SHA-256.
    Hash,
    /// The image is complete; any further byte is ignored (counted in `trailing`).
    Done,
}

/// Validates an app image fed in pieces of any size, holding only a few hundred bytes.
///
/// It checks what IDF's `esp_image_verify` and the bootloader's image load check that can be
/// told from the bytes: magic, chip id, chip revision range (when
/// [`with_chip_revision`](Self::with_chip_revision) gave the chip's), segment count (1..=16),
/// segment lengths (multiple of 4, below 16 MiB), on the ESP32-C3 and C6 where segments go
/// (flash-mapped ones congruent to their address modulo the MMU page, RAM ones inside RAM and
/// clear of the bootloader), the image fitting `max_len`, the XOR checksum, the appended
/// SHA-256 and (in [`finish`](Self::finish)) the app descriptor at the start of segment 0.
/// Bytes after the image's end are counted and ignored, as IDF and esptool ignore them.
#[derive(Debug, Clone)]
pub struct ImageValidator {
    chip: Option<Chip>,
    /// The running chip's revision (`major * 100 + minor`); `None`: not checked.
    chip_revision: Option<u16>,
    max_len: u32,
    /// Bytes of the image consumed.
    pos: u32,
    /// Bytes fed after the image's end (ignored).
    trailing: u32,
    phase: Phase,
    /// Bytes collected of the current fixed-size field (header, segment header, hash).
    buf: [u8; 32],
    fill: u8,
    header: Option<ImageHeader>,
    segments: heapless::Vec<Segment, MAX_SEGMENTS>,
    /// Image offset of the checksum byte, once every segment header was read.
    checksum_at: Option<u32>,
    /// Whole image length, once every segment header was read.
    total: Option<u32>,
    checksum: u8,
    checksum_stored: Option<u8>,
    hash_stored: Option<[u8; 32]>,
    /// The validation hash, unless the caller hashes the same bytes itself
    /// ([`ImageValidator::with_external_hash`]).
    sha: Option<Sha256>,
    desc: AppDescriptor,
    desc_magic: u32,
    /// Bytes of the descriptor seen (it is complete at 256).
    desc_seen: u16,
    /// The first error; every later call returns it again.
    failed: Option<ImageError>,
    /// The validation hash the caller computed, with [`ImageValidator::with_external_hash`].
    external_digest: Option<[u8; 32]>,
}

impl ImageValidator {
    /// Starts a validation. `chip`: refuse images for another chip; `max_len`: refuse images
    /// longer than the destination slot.
    pub fn new(chip: Option<Chip>, max_len: u32) -> Self {
        ImageValidator {
            chip,
            chip_revision: None,
            max_len,
            pos: 0,
            trailing: 0,
            phase: Phase::Header,
            buf: [0; 32],
            fill: 0,
            header: None,
            segments: heapless::Vec::new(),
            checksum_at: None,
            total: None,
            checksum: CHECKSUM_INIT,
            checksum_stored: None,
            hash_stored: None,
            sha: Some(Sha256::new()),
            desc: AppDescriptor::EMPTY,
            desc_magic: 0,
            desc_seen: 0,
            failed: None,
            external_digest: None,
        }
    }
    /// Leaves the validation hash (SHA-256 of the image up to its checksum byte) to the caller,
    /// who hashes the same stream anyway: the device's update engine hashes every byte for the
    /// session and snapshots its hasher at [`hashed_len`](Self::hashed_len), so each byte is
    /// hashed once. End with [`finish_with_digest`](Self::finish_with_digest).
    pub fn with_external_hash(mut self) -> Self {
        self.sha = None;
        self
    }

    /// Returns the length the validation hash covers (header to checksum byte), once every
    /// segment header was read.
    pub fn hashed_len(&self) -> Option<u32> {
        self.checksum_at.map(|at| at + 1)
    }

    /// Also refuses images whose chip revision range excludes `revision` (`major * 100 +
    /// minor`, as `efuse_hal_chip_revision` gives it); `None`: revision unknown, not checked.
    pub fn with_chip_revision(mut self, revision: Option<u16>) -> Self {
        self.chip_revision = revision;
        self
    }
    /// Feeds the next bytes. Fails as soon as the bytes seen prove the image bad (magic, chip,
    /// chip revision, segment count, length or placement, size over `max_len`). Bytes after
    /// the image's end are counted ([`ignored_trailing`](Self::ignored_trailing)); they must
    /// still fit `max_len`, as the whole file lands in the slot.
    ///
    /// After an error the validator is spent: every later call returns that error again.
    pub fn feed(&mut self, data: &[u8]) -> Result<(), ImageError> {
        let used = self.consume(data)?;
        if used < data.len() {
            let extra = u32::try_from(data.len() - used).unwrap_or(u32::MAX);
            self.trailing = self.trailing.saturating_add(extra);
            let fed = self.pos.saturating_add(self.trailing);
            if fed > self.max_len {
                return Err(self.fail(ImageError::TooLarge {
                    needed: fed,
                    max: self.max_len,
                }));
            }
        }
        Ok(())
    }
    /// Returns the bytes of the image consumed so far (ignored trailing bytes not included).
    pub fn position(&self) -> u32 {
        self.pos
    }
    /// Returns how many bytes were fed after the image's end (and ignored).
    pub fn ignored_trailing(&self) -> u32 {
        self.trailing
    }
    /// Returns the header once 24 bytes were fed.
    pub fn header(&self) -> Option<&ImageHeader> {
        self.header.as_ref()
    }
    /// Returns the app descriptor once its bytes were fed.
    ///
    /// That is the 256 bytes at image offset 0x20, which must start with the magic word
    /// 0xABCD5432 and lie inside segment 0 (whose data must be at least 256 bytes, as IDF
    /// master requires of an app image).
    pub fn app_descriptor(&self) -> Option<&AppDescriptor> {
        (self.desc_seen as u32 == APP_DESC_LEN && self.desc_magic == APP_DESC_MAGIC)
            .then_some(&self.desc)
    }
    /// Returns the whole image length once the last segment header was fed.
    pub fn total_len(&self) -> Option<u32> {
        self.total
    }
    /// Returns true once every byte of the image was fed.
    pub fn is_complete(&self) -> bool {
        self.phase == Phase::Done
    }
    /// Ends the stream: the image must be complete, its checksum and hash must match and
    /// segment 0 must hold an app descriptor.
    pub fn finish(self) -> Result<ImageInfo, ImageError> {
        self.finish_with_digest(None)
    }

    /// [`finish`](Self::finish) for a validator made [`with_external_hash`](Self::with_external_hash):
    /// `digest` is the SHA-256 of the first [`hashed_len`](Self::hashed_len) bytes.
    pub fn finish_with_digest(mut self, digest: Option<[u8; 32]>) -> Result<ImageInfo, ImageError> {
        if let Some(d) = digest {
            self.external_digest = Some(d);
        }
        let info = self.report()?;
        match info.problems().into_iter().flatten().next() {
            Some(e) => Err(e),
            None => Ok(info),
        }
    }
    /// Ends the stream like [`finish`](Self::finish) but reports checksum, hash and descriptor
    /// problems in the returned info instead of failing (for `image inspect`).
    pub fn report(self) -> Result<ImageInfo, ImageError> {
        if let Some(e) = self.failed {
            return Err(e);
        }
        let (Some(header), Some(total), Some(checksum_stored), true) = (
            self.header,
            self.total,
            self.checksum_stored,
            self.phase == Phase::Done,
        ) else {
            return Err(ImageError::Truncated {
                got: self.pos,
                needed: self.min_total(),
            });
        };
        let app = self.app_descriptor().copied();
        Ok(ImageInfo {
            header,
            segments: self.segments,
            app,
            checksum_stored,
            checksum_computed: self.checksum,
            hash_stored: self.hash_stored,
            hash_computed: match self.sha {
                Some(sha) => sha.finalize().into(),
                None => self.external_digest.unwrap_or([0; 32]),
            },
            len: total,
            ignored_trailing: self.trailing,
        })
    }

    /// Records the first error and returns it.
    fn fail(&mut self, e: ImageError) -> ImageError {
        *self.failed.get_or_insert(e)
    }

    /// The smallest image length consistent with the bytes seen so far.
    fn min_total(&self) -> u32 {
        let Some(h) = &self.header else {
            return HEADER_LEN;
        };
        let known: u64 = self
            .segments
            .iter()
            .map(|s| u64::from(SEGMENT_HEADER_LEN) + u64::from(s.data_len))
            .sum();
        let unknown = u64::from(h.segment_count).saturating_sub(self.segments.len() as u64);
        let unpadded = u64::from(HEADER_LEN) + known + unknown * u64::from(SEGMENT_HEADER_LEN);
        let hash = if h.hash_appended {
            u64::from(HASH_LEN)
        } else {
            0
        };
        let total = ((unpadded + 16) & !15) + hash;
        u32::try_from(total).unwrap_or(u32::MAX)
    }

    /// Consumes bytes up to the image's end; returns how many were used.
    fn consume(&mut self, data: &[u8]) -> Result<usize, ImageError> {
        if let Some(e) = self.failed {
            return Err(e);
        }
        let mut used = 0usize;
        while used < data.len() {
            let rest = &data[used..];
            let n = match self.step(rest) {
                Ok(n) => n,
                Err(e) => return Err(self.fail(e)),
            };
            if n == 0 && self.phase == Phase::Done {
                break; // The rest lies after the image's end.
            }
            used += n;
        }
        Ok(used)
    }

    /// Adds `bytes` to the running SHA-256 when they lie before/at the checksum byte.
    fn hash(&mut self, bytes: &[u8]) {
        if let Some(sha) = &mut self.sha {
            sha.update(bytes);
        }
    }

    /// Collects up to `want` bytes of a fixed-size field into `buf`; returns (used, complete).
    fn collect(&mut self, data: &[u8], want: u8) -> (usize, bool) {
        let n = usize::from(want - self.fill).min(data.len());
        let start = usize::from(self.fill);
        self.buf[start..start + n].copy_from_slice(&data[..n]);
        self.fill += n as u8;
        let done = self.fill == want;
        if done {
            self.fill = 0;
        }
        (n, done)
    }

    /// Processes the start of `data` within the current phase; returns the bytes used (0 when
    /// the image is complete, or when an empty padding moves on to the checksum byte).
    fn step(&mut self, data: &[u8]) -> Result<usize, ImageError> {
        let used = match self.phase {
            Phase::Header => {
                if self.pos == 0 && data[0] != IMAGE_MAGIC {
                    return Err(ImageError::BadMagic { found: data[0] });
                }
                let (n, done) = self.collect(data, HEADER_LEN as u8);
                self.hash(&data[..n]);
                if done {
                    let mut raw = [0u8; 24];
                    raw.copy_from_slice(&self.buf[..24]);
                    self.start(ImageHeader::from_bytes(&raw))?;
                }
                n
            }
            Phase::SegmentHeader { index } => {
                let (n, done) = self.collect(data, SEGMENT_HEADER_LEN as u8);
                self.hash(&data[..n]);
                if done {
                    self.segment_header(index, self.pos + n as u32)?;
                }
                n
            }
            Phase::SegmentData { index, left } => {
                let n = data.len().min(left as usize);
                let bytes = &data[..n];
                self.checksum = bytes.iter().fold(self.checksum, |c, b| c ^ b);
                if index == 0 {
                    self.descriptor_bytes(bytes);
                }
                self.hash(bytes);
                let left = left - n as u32;
                if left == 0 {
                    self.after_segment(index)?;
                } else {
                    self.phase = Phase::SegmentData { index, left };
                }
                n
            }
            Phase::Padding => {
                let until = self.checksum_at.unwrap_or(self.pos);
                let n = data.len().min(until.saturating_sub(self.pos) as usize);
                self.hash(&data[..n]);
                if self.pos + n as u32 >= until {
                    self.phase = Phase::Checksum;
                }
                n
            }
            Phase::Checksum => {
                self.checksum_stored = Some(data[0]);
                self.hash(&data[..1]);
                let hashed = self.header.is_some_and(|h| h.hash_appended);
                self.phase = if hashed { Phase::Hash } else { Phase::Done };
                1
            }
            Phase::Hash => {
                let (n, done) = self.collect(data, HASH_LEN as u8);
                if done {
                    self.hash_stored = Some(self.buf);
                    self.phase = Phase::Done;
                }
                n
            }
            Phase::Done => 0,
        };
        self.pos += used as u32;
        Ok(used)
    }

    /// Checks a complete header.
    fn start(&mut self, h: ImageHeader) -> Result<(), ImageError> {
        self.header = Some(h);
        if let Some(chip) = self.chip
            && h.chip_id != chip.id()
        {
            return Err(ImageError::WrongChip {
                expected: chip,
                found: h.chip_id,
            });
        }
        // `verify_image_header` → `bootloader_common_check_chip_validity`.
        if let Some(revision) = self.chip_revision {
            h.check_chip_revision(revision)?;
        }
        if h.segment_count == 0 || usize::from(h.segment_count) > MAX_SEGMENTS {
            return Err(ImageError::BadSegmentCount {
                count: h.segment_count,
            });
        }
        self.check_fits()?;
        self.phase = Phase::SegmentHeader { index: 0 };
        Ok(())
    }

    /// Refuses the image once its smallest possible length exceeds `max_len`.
    fn check_fits(&self) -> Result<(), ImageError> {
        let needed = self.min_total();
        if needed > self.max_len {
            return Err(ImageError::TooLarge {
                needed,
                max: self.max_len,
            });
        }
        Ok(())
    }

    /// Checks a complete segment header; `data_at` is the image offset of its data.
    fn segment_header(&mut self, index: u8, data_at: u32) -> Result<(), ImageError> {
        let b = &self.buf;
        let load_addr = u32::from_le_bytes([b[0], b[1], b[2], b[3]]);
        let data_len = u32::from_le_bytes([b[4], b[5], b[6], b[7]]);
        if !data_len.is_multiple_of(4) || data_len >= MAX_SEGMENT_LEN {
            return Err(ImageError::BadSegmentLength {
                index,
                len: data_len,
            });
        }
        let seg = Segment {
            load_addr,
            data_len,
            file_offset: data_at,
        };
        // `start` bounded the count by MAX_SEGMENTS.
        self.segments
            .push(seg)
            .map_err(|_| ImageError::BadSegmentCount { count: index + 1 })?;
        let count = self.header.map_or(0, |h| h.segment_count);
        if index + 1 == count {
            let unpadded = u64::from(data_at) + u64::from(data_len);
            let cs = ((unpadded + 16) & !15) - 1;
            let hash = if self.header.is_some_and(|h| h.hash_appended) {
                u64::from(HASH_LEN)
            } else {
                0
            };
            let total = cs + 1 + hash;
            match (u32::try_from(cs), u32::try_from(total)) {
                (Ok(cs), Ok(total)) => {
                    self.checksum_at = Some(cs);
                    self.total = Some(total);
                }
                _ => {
                    return Err(ImageError::TooLarge {
                        needed: u32::MAX,
                        max: self.max_len,
                    });
                }
            }
        }
        self.check_fits()?;
        // Segment 0 holds the descriptor, which may set the MMU page: checked at its end.
        if index > 0 {
            self.check_placement(index)?;
        }
        if data_len == 0 {
            self.after_segment(index)?;
        } else {
            self.phase = Phase::SegmentData {
                index,
                left: data_len,
            };
        }
        Ok(())
    }

    /// Moves past the data of segment `index`.
    fn after_segment(&mut self, index: u8) -> Result<(), ImageError> {
        if index == 0 {
            self.check_placement(0)?;
        }
        let count = self.header.map_or(0, |h| h.segment_count);
        self.phase = if index + 1 < count {
            Phase::SegmentHeader { index: index + 1 }
        } else {
            Phase::Padding
        };
        // `step` advances `pos` after this; Padding compares against the checksum offset.
        Ok(())
    }

    /// Returns the MMU page flash-mapped segments align to: on chips with a configurable page
    /// (C6) the descriptor's `mmu_page_size` when it is 13..=18 (8-256 KiB), else 64 KiB, as
    /// `verify_segment_header` decides.
    fn mmu_page(&self, map: &MemoryMap) -> u32 {
        let known = self.desc_seen > APP_DESC_MMU_PAGE_AT && self.desc_magic == APP_DESC_MAGIC;
        match self.desc.mmu_page_size {
            log2 @ 13..=18 if map.page_from_desc && known => 1 << log2,
            _ => MMU_PAGE_DEFAULT,
        }
    }

    /// Checks where segment `index` goes, on chips whose memory map is known: a flash-mapped
    /// segment's image offset must agree with its address modulo the MMU page
    /// (`verify_segment_header`; app partitions start on a 64 KiB boundary, so the image
    /// offset stands for the flash address), and a segment copied to RAM must lie inside one
    /// RAM region and clear of the bootloader (`verify_load_addresses`).
    fn check_placement(&self, index: u8) -> Result<(), ImageError> {
        let (Some(h), Some(seg)) = (self.header, self.segments.get(usize::from(index))) else {
            return Ok(());
        };
        let Some(map) = MemoryMap::of(h.chip_id) else {
            return Ok(());
        };
        let (addr, len) = (seg.load_addr, seg.data_len);
        if map.is_mapped(addr) {
            let page = self.mmu_page(map);
            if seg.file_offset % page != addr % page {
                return Err(ImageError::MisalignedSegment {
                    index,
                    load_addr: addr,
                    offset: seg.file_offset,
                    page,
                });
            }
            return Ok(());
        }
        // `should_load`: padding and reserved addresses stay in flash; empty segments load
        // nothing.
        if addr < LOAD_ADDR_MIN || len == 0 {
            return Ok(());
        }
        let end = u64::from(addr) + u64::from(len);
        let inside = |&(lo, hi): &(u32, u32)| addr >= lo && end <= u64::from(hi);
        if !map.ram.iter().any(inside) {
            return Err(ImageError::BadLoadAddress {
                index,
                load_addr: addr,
                len,
            });
        }
        let overlaps =
            |&&(lo, hi): &&(u32, u32)| u64::from(addr) < u64::from(hi) && end > u64::from(lo);
        if let Some(&(from, to)) = map.loader.iter().find(overlaps) {
            return Err(ImageError::OverlapsBootloader {
                index,
                load_addr: addr,
                len,
                from,
                to,
            });
        }
        Ok(())
    }

    /// Feeds bytes of segment 0's data into the descriptor (its first 256 bytes).
    fn descriptor_bytes(&mut self, bytes: &[u8]) {
        let seg0_len = self.segments.first().map_or(0, |s| s.data_len);
        if seg0_len < APP_DESC_LEN {
            return;
        }
        for b in bytes {
            let at = usize::from(self.desc_seen);
            if at >= APP_DESC_LEN as usize {
                break;
            }
            self.desc.set_byte(&mut self.desc_magic, at, *b);
            self.desc_seen += 1;
        }
    }
}

/// Verifies the image stored in flash at `offset` (at most `max_len` bytes), like IDF's
/// `esp_image_verify`, reading it in small blocks. The image's length comes from its own
/// headers; the bytes after it are not read.
pub fn verify_in_flash<F: NorFlash>(
    flash: &mut F,
    offset: u32,
    max_len: u32,
    chip: Option<Chip>,
) -> Result<ImageInfo, ImageError> {
    verify_in_flash_with(flash, offset, ImageValidator::new(chip, max_len))
}

/// [`verify_in_flash`] with a validator set up by the caller (for example
/// [`ImageValidator::with_chip_revision`]); it reads at most the validator's `max_len` bytes.
pub fn verify_in_flash_with<F: NorFlash>(
    flash: &mut F,
    offset: u32,
    validator: ImageValidator,
) -> Result<ImageInfo, ImageError> {
    const BLOCK: usize = 256;
    let mut v = validator;
    let max_len = v.max_len;
    let mut buf = [0u8; BLOCK];
    let unit = F::READ_SIZE.clamp(1, BLOCK);
    loop {
        let limit = v.total_len().unwrap_or(max_len).min(max_len);
        let pos = v.position();
        if v.is_complete() || pos >= limit {
            break;
        }
        let want = ((limit - pos) as usize).min(BLOCK);
        // Reads are rounded up to the driver's read unit; only `want` bytes are fed.
        let read_len = want.div_ceil(unit).saturating_mul(unit).min(BLOCK);
        let addr = offset.checked_add(pos).ok_or(ImageError::TooLarge {
            needed: u32::MAX,
            max: max_len,
        })?;
        super::flash::read(flash, addr, &mut buf[..read_len])?;
        let used = v.consume(&buf[..want])?;
        if used == 0 {
            break;
        }
    }
    v.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checksum_sits_at_the_end_of_a_16_byte_block() {
        // tiny_c3_app.bin: unpadded 0x1A8 -> 0x1AF; handmade: 0x120 -> 0x12F.
        assert_eq!(checksum_offset(0x1A8), 0x1AF);
        assert_eq!(checksum_offset(0x120), 0x12F);
        assert_eq!(checksum_offset(0x12F), 0x12F);
        assert_eq!(checksum_offset(0x130), 0x13F);
        assert_eq!(checksum_offset(u32::MAX), 0xFFFF_FFFF);
        assert_eq!(checksum_offset(u32::MAX - 15), 0xFFFF_FFFF);
    }

    #[test]
    fn descriptor_fields_land_at_their_offsets() {
        let mut raw = [0u8; 256];
        raw[0..4].copy_from_slice(&APP_DESC_MAGIC.to_le_bytes());
        raw[4..8].copy_from_slice(&0x0102_0304u32.to_le_bytes());
        raw[0x10] = b'v';
        raw[0x30] = b'p';
        raw[0x50] = b't';
        raw[0x60] = b'd';
        raw[0x70] = b'i';
        raw[0x90] = 0xAB;
        raw[0xAF] = 0xCD;
        raw[0xB0..0xB2].copy_from_slice(&101u16.to_le_bytes());
        raw[0xB2..0xB4].copy_from_slice(&199u16.to_le_bytes());
        raw[0xB4] = 16;
        raw[0xB5] = 3;
        let d = AppDescriptor::from_bytes(&raw).unwrap();
        assert_eq!(d.secure_version, 0x0102_0304);
        assert_eq!(
            (
                d.version[0],
                d.project_name[0],
                d.time[0],
                d.date[0],
                d.idf_ver[0]
            ),
            (b'v', b'p', b't', b'd', b'i')
        );
        assert_eq!((d.app_elf_sha256[0], d.app_elf_sha256[31]), (0xAB, 0xCD));
        assert_eq!(
            (d.min_efuse_blk_rev_full, d.max_efuse_blk_rev_full),
            (101, 199)
        );
        assert_eq!(d.mmu_page_size, 16);
        raw[3] = 0;
        assert!(AppDescriptor::from_bytes(&raw).is_none());
    }
}
