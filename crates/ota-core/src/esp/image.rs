//! ESP-IDF app images, validated as a stream: the device never holds the image in RAM.
//!
//! Layout: a 24-byte header, up to 16 segments (8-byte header + data), a checksum byte (0xEF
//! XOR every data byte) at the end of a 16-byte block, then an optional SHA-256 of all that.
//! The first segment starts with the 256-byte `esp_app_desc_t`.

use embedded_storage::nor_flash::NorFlash;

use super::chip::Chip;
use super::flash::FlashError;

/// Magic byte of an app image header.
pub const IMAGE_MAGIC: u8 = 0xE9;
/// Magic word of `esp_app_desc_t`.
pub const APP_DESC_MAGIC: u32 = 0xABCD_5432;
/// Most segments an image may have.
pub const MAX_SEGMENTS: usize = 16;

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
}

/// Why an image was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
#[non_exhaustive]
pub enum ImageError {
    /// The first byte is not 0xE9.
    #[error("not an ESP app image (first byte {found:#04x}, expected 0xe9); pass the .bin from `espflash save-image`, not the ELF")]
    BadMagic { found: u8 },
    /// More than 16 segments (or none).
    #[error("image declares {count} segments (1..=16 allowed); the file is corrupt")]
    BadSegmentCount { count: u8 },
    /// The image is built for another chip.
    #[error("image is for chip id {found} but this device is {expected}; build for the right chip")]
    WrongChip { expected: Chip, found: u16 },
    /// A segment length is not a multiple of 4 or too large.
    #[error("segment {index} has bad length {len:#x}; the file is corrupt")]
    BadSegmentLength { index: u8, len: u32 },
    /// The image is larger than the slot it goes to.
    #[error("image needs {needed} bytes but the slot holds {max}; enlarge the partition or shrink the app")]
    TooLarge { needed: u32, max: u32 },
    /// The stream ended before the image did.
    #[error("image truncated: {got} bytes of {needed}; the transfer or the file is incomplete")]
    Truncated { got: u32, needed: u32 },
    /// Bytes beyond the image's end.
    #[error("{extra} bytes after the image's end; the file is not a single app image")]
    TrailingData { extra: u32 },
    /// The XOR checksum does not match.
    #[error("image checksum mismatch (stored {stored:#04x}, computed {computed:#04x}); the file is corrupt")]
    ChecksumMismatch { stored: u8, computed: u8 },
    /// The appended SHA-256 does not match.
    #[error("image SHA-256 mismatch; the file is corrupt")]
    HashMismatch,
    /// Segment 0 does not start with `esp_app_desc_t`.
    #[error("image has no app descriptor (esp_app_desc_t); build it with esp-bootloader-esp-idf's esp_app_desc!()")]
    NoAppDescriptor,
    /// Reading the image from flash failed.
    #[error(transparent)]
    Flash(#[from] FlashError),
}

/// Validates an app image fed in pieces of any size, holding only a few hundred bytes.
#[derive(Debug, Clone)]
pub struct ImageValidator {
    // private streaming state (filled in by the implementation)
    _priv: (),
}

impl ImageValidator {
    /// Starts a validation. `chip`: refuse images for another chip; `max_len`: refuse images
    /// longer than the destination slot.
    pub fn new(chip: Option<Chip>, max_len: u32) -> Self {
        todo!()
    }
    /// Feeds the next bytes. Fails as soon as the bytes seen prove the image bad (magic, chip,
    /// segment count or length, size over `max_len`, bytes after the end).
    pub fn feed(&mut self, data: &[u8]) -> Result<(), ImageError> {
        todo!()
    }
    /// Returns the bytes fed so far.
    pub fn position(&self) -> u32 {
        todo!()
    }
    /// Returns the header once 24 bytes were fed.
    pub fn header(&self) -> Option<&ImageHeader> {
        todo!()
    }
    /// Returns the app descriptor once its bytes were fed.
    pub fn app_descriptor(&self) -> Option<&AppDescriptor> {
        todo!()
    }
    /// Returns the whole image length once the last segment header was fed.
    pub fn total_len(&self) -> Option<u32> {
        todo!()
    }
    /// Ends the stream: the image must be complete, its checksum and hash must match and
    /// segment 0 must hold an app descriptor.
    pub fn finish(self) -> Result<ImageInfo, ImageError> {
        todo!()
    }
    /// Ends the stream like [`finish`](Self::finish) but reports checksum, hash and descriptor
    /// problems in the returned info instead of failing (for `image inspect`).
    pub fn report(self) -> Result<ImageInfo, ImageError> {
        todo!()
    }
}

/// Verifies the image stored in flash at `offset` (at most `max_len` bytes), like IDF's
/// `esp_image_verify`, reading it in small blocks.
pub fn verify_in_flash<F: NorFlash>(
    flash: &mut F,
    offset: u32,
    max_len: u32,
    chip: Option<Chip>,
) -> Result<ImageInfo, ImageError> {
    todo!()
}
