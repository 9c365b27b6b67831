//! Builds small but valid ESP-IDF app images for demos and tests (no toolchain needed).
//!
//! Layout (as `esptool elf2image` would lay out an app with one rodata and one code section):
//!
//! | Image offset | What |
//! |---|---|
//! | 0x00 | `esp_image_header_t`: magic 0xE9, 2 segments, DIO, 4MB, entry = segment 1's address, chip id, `wp_pin` 0xEE, chip revision range (default: min 0, max 0xFFFF = not set), `hash_appended` 1 |
//! | 0x18 | segment 0 header: DROM address + 0x20, 256 bytes |
//! | 0x20 | `esp_app_desc_t`: magic 0xABCD5432, secure_version, version, project_name, time, date, idf_ver, app_elf_sha256, mmu_page_size 16 (64 KiB) |
//! | 0x120 | segment 1 header: an IROM address congruent to its file offset modulo 64 KiB |
//! | 0x128 | `payload_len` (rounded up to 4) bytes of deterministic pseudo-random filler |
//! | … | zero padding, the checksum byte (0xEF XOR every segment data byte) at the end of a 16-byte block, then the SHA-256 of everything before it |
//!
//! Both segments are flash-mapped and satisfy the bootloader's MMU rule
//! (`flash address % 64 KiB == load address % 64 KiB`) when the image sits at a 64 KiB aligned
//! app partition, as app partitions always are. On the ESP32 the filler is zero-padded so the
//! segment does not end less than 0x24 bytes past a 64 KiB boundary (esptool's work-around for
//! an old bootloader bug). The code is filler: the virtual ESP32 never executes it.

use ota_core::esp::Chip;
use ota_core::esp::image::{APP_DESC_MAGIC, IMAGE_MAGIC};
use sha2::{Digest, Sha256};

/// Size of `esp_app_desc_t`.
pub const APP_DESC_LEN: usize = 256;
/// MMU page / `IROM_ALIGN`.
const MMU_PAGE: u32 = 0x1_0000;

/// Everything the builder puts in an image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AppImageSpec<'a> {
    /// Target chip (header chip id and the address windows).
    pub chip: Chip,
    /// `project_name` (at most 31 bytes).
    pub project_name: &'a str,
    /// `version` (at most 31 bytes).
    pub version: &'a str,
    /// Length of the filler code segment; rounded up to a multiple of 4.
    pub payload_len: usize,
    /// Seed of the filler: the same spec always gives the same bytes.
    pub seed: u64,
    /// `secure_version` (anti-rollback).
    pub secure_version: u32,
    /// `time` (at most 15 bytes), as `__TIME__`.
    pub time: &'a str,
    /// `date` (at most 15 bytes), as `__DATE__`.
    pub date: &'a str,
    /// `idf_ver` (at most 31 bytes).
    pub idf_ver: &'a str,
    /// `min_chip_rev_full` (`major * 100 + minor`); the legacy `min_chip_rev` byte gets its
    /// minor on the ESP32-C3, as ESP-IDF writes it for old bootloaders.
    pub min_chip_rev_full: u16,
    /// `max_chip_rev_full` (0xFFFF or 0: no limit).
    pub max_chip_rev_full: u16,
    /// The payload is words drawn at random from a small vocabulary, which deflate shrinks
    /// about as much as firmware code (to roughly half), instead of random bytes, which do
    /// not shrink.
    pub code_like: bool,
}

impl<'a> AppImageSpec<'a> {
    /// A spec with fixed time/date, `idf_ver` "virtual-esp32" and secure version 0.
    pub fn new(
        chip: Chip,
        project_name: &'a str,
        version: &'a str,
        payload_len: usize,
        seed: u64,
    ) -> Self {
        AppImageSpec {
            chip,
            project_name,
            version,
            payload_len,
            seed,
            secure_version: 0,
            time: "12:00:00",
            date: "Jan  1 2025",
            idf_ver: "virtual-esp32",
            min_chip_rev_full: 0,
            max_chip_rev_full: 0xFFFF,
            code_like: false,
        }
    }
}

/// Builds a valid app image; see the [module docs](self) for the layout.
///
/// # Panics
/// If `project_name` or `version` is longer than 31 bytes (ESP-IDF's limit).
pub fn build(
    chip: Chip,
    project_name: &str,
    version: &str,
    payload_len: usize,
    seed: u64,
) -> Vec<u8> {
    build_with(&AppImageSpec::new(
        chip,
        project_name,
        version,
        payload_len,
        seed,
    ))
}

/// Builds a valid app image from a full spec.
///
/// # Panics
/// If a string field is longer than its C field allows (with the NUL): 31 bytes for
/// `project_name`, `version` and `idf_ver`, 15 for `time` and `date`.
pub fn build_with(spec: &AppImageSpec<'_>) -> Vec<u8> {
    let (drom, irom) = map_windows(spec.chip);

    let len = spec.payload_len.div_ceil(4) * 4;
    let mut payload = if spec.code_like {
        code_like_filler(len, spec.seed)
    } else {
        filler(len, spec.seed)
    };
    // Segment 1's data starts after the header, segment 0 and two segment headers.
    let seg1_data_off = 24 + 8 + APP_DESC_LEN as u32 + 8;
    if spec.chip == Chip::Esp32 {
        let rem = (seg1_data_off + payload.len() as u32) % MMU_PAGE;
        if rem < 0x24 {
            payload.resize(payload.len() + (0x24 - rem) as usize, 0);
        }
    }
    // When DROM and IROM share one window (C5, P4), put code in the next 64 KiB virtual page so
    // the two segments never share an MMU page (esptool refuses that).
    let irom_page = if drom == irom { MMU_PAGE } else { 0 };
    let seg1_addr = irom + irom_page + seg1_data_off % MMU_PAGE;

    let mut elf_sha = Sha256::new();
    elf_sha.update(spec.project_name.as_bytes());
    elf_sha.update([0]);
    elf_sha.update(spec.version.as_bytes());
    elf_sha.update([0]);
    elf_sha.update(&payload);
    let desc = app_desc(spec, &elf_sha.finalize().into());

    let segments: [(u32, &[u8]); 2] = [(drom + 0x20, &desc), (seg1_addr, &payload)];

    let mut img = Vec::with_capacity(payload.len() + 400);
    img.push(IMAGE_MAGIC);
    img.push(segments.len() as u8);
    img.push(0x02); // DIO
    img.push(0x20 | speed_code(spec.chip)); // 4MB, fastest flash clock esptool knows
    img.extend_from_slice(&seg1_addr.to_le_bytes()); // entry
    img.push(0xEE); // wp_pin disabled
    img.extend_from_slice(&[0, 0, 0]); // spi_pin_drv
    img.extend_from_slice(&spec.chip.id().to_le_bytes());
    // min_chip_rev (legacy), min_chip_rev_full, max_chip_rev_full (esptool elf2image's
    // --min-rev, --min-rev-full, --max-rev-full).
    let legacy_min = match spec.chip {
        Chip::Esp32c3 => (spec.min_chip_rev_full % 100) as u8,
        _ => 0,
    };
    img.push(legacy_min);
    img.extend_from_slice(&spec.min_chip_rev_full.to_le_bytes());
    img.extend_from_slice(&spec.max_chip_rev_full.to_le_bytes());
    img.extend_from_slice(&[0; 4]); // reserved
    img.push(1); // hash_appended
    debug_assert_eq!(img.len(), 24);

    let mut checksum = 0xEFu8;
    for (addr, data) in segments {
        img.extend_from_slice(&addr.to_le_bytes());
        img.extend_from_slice(&(data.len() as u32).to_le_bytes());
        img.extend_from_slice(data);
        checksum = data.iter().fold(checksum, |c, b| c ^ b);
    }
    while img.len() % 16 != 15 {
        img.push(0);
    }
    img.push(checksum);
    let hash = Sha256::digest(&img);
    img.extend_from_slice(&hash);
    img
}

/// Returns the 256-byte `esp_app_desc_t` for `spec`.
fn app_desc(spec: &AppImageSpec<'_>, elf_sha256: &[u8; 32]) -> [u8; APP_DESC_LEN] {
    let mut d = [0u8; APP_DESC_LEN];
    d[0x00..0x04].copy_from_slice(&APP_DESC_MAGIC.to_le_bytes());
    d[0x04..0x08].copy_from_slice(&spec.secure_version.to_le_bytes());
    put_str(&mut d[0x10..0x30], spec.version, "version");
    put_str(&mut d[0x30..0x50], spec.project_name, "project_name");
    put_str(&mut d[0x50..0x60], spec.time, "time");
    put_str(&mut d[0x60..0x70], spec.date, "date");
    put_str(&mut d[0x70..0x90], spec.idf_ver, "idf_ver");
    d[0x90..0xB0].copy_from_slice(elf_sha256);
    // min/max_efuse_blk_rev_full (0xB0, 0xB2): 0 = not set.
    d[0xB4] = 16; // mmu_page_size: log2(64 KiB)
    d
}

fn put_str(field: &mut [u8], s: &str, name: &str) {
    assert!(
        s.len() < field.len(),
        "app descriptor field `{name}` holds at most {} bytes, got {:?}",
        field.len() - 1,
        s
    );
    field[..s.len()].copy_from_slice(s.as_bytes());
}

/// Returns the (DROM, IROM) window bases of `chip` (esptool `targets/*.py`).
pub fn map_windows(chip: Chip) -> (u32, u32) {
    match chip {
        Chip::Esp32 => (0x3F40_0000, 0x400D_0000),
        Chip::Esp32s2 => (0x3F00_0000, 0x4008_0000),
        Chip::Esp32c6 | Chip::Esp32h2 | Chip::Esp32c61 => (0x4280_0000, 0x4200_0000),
        Chip::Esp32c5 => (0x4200_0000, 0x4200_0000),
        Chip::Esp32p4 => (0x4000_0000, 0x4000_0000),
        // C3, S3, C2 (and any later chip with the same map).
        _ => (0x3C00_0000, 0x4200_0000),
    }
}

/// The header's flash-speed code for the fastest clock esptool lists for `chip`.
fn speed_code(chip: Chip) -> u8 {
    match chip {
        // esptool writes 0 for "80m" on the C6 (ROM divider work-around).
        Chip::Esp32c6 => 0x0,
        _ => 0xF,
    }
}

/// `len` deterministic pseudo-random bytes (SplitMix64 seeded with `seed`).
fn code_like_filler(len: usize, seed: u64) -> Vec<u8> {
    const WORDS: [&[u8]; 16] = [
        b"lw a0, 8(sp) ",
        b"sw ra, 12(sp) ",
        b"addi sp, sp, -16 ",
        b"jal ra, ",
        b"ret ",
        b"bne a0, zero, ",
        b"li a1, ",
        b"mv a0, s0 ",
        b"lui a5, ",
        b"andi a4, a4, 255 ",
        b"beqz a0, ",
        b"c.addi ",
        b"slli a2, a2, 2 ",
        b"panic ",
        b"esp_ota ",
        b"0x3c0",
    ];
    let mut state = seed ^ 0x5EED_0FE5_3203_2025_u64;
    let mut out = Vec::with_capacity(len + 32);
    while out.len() < len {
        state = state
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        out.extend_from_slice(WORDS[(state >> 60) as usize]);
        // Now and then a literal, as addresses and constants are.
        if state & 0x7 == 0 {
            out.extend_from_slice(&(state >> 20).to_le_bytes()[..3]);
        }
    }
    out.truncate(len);
    out
}

fn filler(len: usize, seed: u64) -> Vec<u8> {
    let mut state = seed ^ 0x5EED_0FE5_3203_2025_u64;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^= z >> 31;
        out.extend_from_slice(&z.to_le_bytes());
    }
    out.truncate(len);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layout_checksum_and_hash() {
        let img = build(Chip::Esp32c3, "demo", "2.0.0", 1001, 7);
        assert_eq!(img[0], IMAGE_MAGIC);
        assert_eq!(img[1], 2);
        assert_eq!(&img[0x0C..0x0E], &5u16.to_le_bytes());
        assert_eq!(&img[0x18..0x1C], &0x3C00_0020u32.to_le_bytes());
        assert_eq!(&img[0x20..0x24], &[0x32, 0x54, 0xCD, 0xAB]);
        assert_eq!(&img[0x50..0x54], b"demo");
        assert_eq!(&img[0x30..0x35], b"2.0.0");
        // Segment 1: IROM, congruent to its file offset.
        let addr = u32::from_le_bytes(img[0x120..0x124].try_into().unwrap());
        let len = u32::from_le_bytes(img[0x124..0x128].try_into().unwrap()) as usize;
        assert_eq!(addr, 0x4200_0128);
        assert_eq!(len, 1004);
        let end = 0x128 + len;
        let csum_at = (end + 1).div_ceil(16) * 16 - 1;
        assert_eq!(img.len(), csum_at + 1 + 32);
        let csum = img[0x20..0x120]
            .iter()
            .chain(&img[0x128..end])
            .fold(0xEF, |c, b| c ^ b);
        assert_eq!(img[csum_at], csum);
        assert_eq!(
            &img[csum_at + 1..],
            Sha256::digest(&img[..=csum_at]).as_slice()
        );
    }

    #[test]
    fn deterministic_and_seed_dependent() {
        let a = build(Chip::Esp32s3, "x", "1", 4096, 1);
        assert_eq!(a, build(Chip::Esp32s3, "x", "1", 4096, 1));
        assert_ne!(a, build(Chip::Esp32s3, "x", "1", 4096, 2));
    }

    #[test]
    fn esp32_segment_end_workaround() {
        // Choose a payload that would end 0x10 bytes past a 64 KiB boundary.
        let payload = 0x1_0000 + 0x10 - 0x128;
        let img = build(Chip::Esp32, "x", "1", payload, 1);
        let len = u32::from_le_bytes(img[0x124..0x128].try_into().unwrap());
        assert_eq!((0x128 + len) % 0x1_0000, 0x24);
    }
}
