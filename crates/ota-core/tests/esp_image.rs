//! App image validation: the §5 image vectors with their exact checksum, hash and offsets, the
//! refusals, the bootloader's chip-revision and segment-placement rules, bytes after the image
//! (ignored), split-independence, verification from flash, and property tests.

mod common;

use common::*;
use ota_core::esp::Chip;
use ota_core::esp::image::{
    ImageError, ImageInfo, ImageValidator, Rev, Segment, parse_chip_revision, verify_in_flash,
};
use ota_core::protocol::Reason;
use proptest::prelude::*;

fn feed_all(bytes: &[u8], chip: Option<Chip>, max: u32) -> Result<ImageInfo, ImageError> {
    let mut v = ImageValidator::new(chip, max);
    v.feed(bytes)?;
    v.finish()
}

fn feed_split(
    bytes: &[u8],
    split: usize,
    chip: Option<Chip>,
    max: u32,
) -> Result<ImageInfo, ImageError> {
    let mut v = ImageValidator::new(chip, max);
    for piece in bytes.chunks(split) {
        v.feed(piece)?;
    }
    v.finish()
}

fn seg(load_addr: u32, data_len: u32, file_offset: u32) -> Segment {
    Segment {
        load_addr,
        data_len,
        file_offset,
    }
}

#[test]
fn tiny_c3_app_is_valid() {
    let info = feed_all(TINY_C3_APP, Some(Chip::Esp32c3), 0x10_0000).unwrap();
    let h = info.header;
    assert_eq!(h.segment_count, 4);
    assert_eq!(h.spi_mode, 2, "DIO");
    assert_eq!(h.spi_speed_size, 0x2F, "4MB, 80m");
    assert_eq!(h.entry_addr, 0x4038_0000);
    assert_eq!(h.chip_id, 5);
    assert_eq!(h.min_chip_rev, 0);
    assert_eq!(h.min_chip_rev_full, 0);
    assert_eq!(h.max_chip_rev_full, 0xFFFF);
    assert!(h.hash_appended);
    assert_eq!(
        &info.segments[..],
        &[
            seg(0x3C00_0020, 0x100, 0x20),
            seg(0x4200_0128, 0x40, 0x128),
            seg(0x3FC8_8000, 0x10, 0x170),
            seg(0x4038_0000, 0x20, 0x188),
        ]
    );
    assert_eq!(info.checksum_stored, 0xE1);
    assert_eq!(info.checksum_computed, 0xE1);
    assert_eq!(TINY_C3_APP[0x1AF], 0xE1, "checksum at 0x1AF");
    let hash = unhex::<32>("3805bfe898f63b8340a3a5edbd4cdd592ab35578239daefa1a92a08cd74ec942");
    assert_eq!(info.hash_stored, Some(hash));
    assert_eq!(info.hash_computed, hash);
    assert_eq!(&TINY_C3_APP[0x1B0..0x1D0], &hash);
    assert_eq!(info.len, 464);
    let app = info.app.unwrap();
    assert_eq!(cstr(&app.project_name), "ota_vectors");
    assert_eq!(cstr(&app.version), "1.0.0");
    assert_eq!(cstr(&app.idf_ver), "v5.4-synthetic");
    assert_eq!(cstr(&app.time), "12:00:00");
    assert_eq!(cstr(&app.date), "Jan  1 2025");
    assert_eq!(app.secure_version, 1);
    assert_eq!(app.min_efuse_blk_rev_full, 0);
    assert_eq!(app.max_efuse_blk_rev_full, 199);
    assert_eq!(app.mmu_page_size, 16);
    // esptool patched the ELF's SHA-256 at image offset 0xB0.
    assert_eq!(app.app_elf_sha256, sha256(TINY_C3_ELF));
    assert_eq!(
        hex::encode(app.app_elf_sha256),
        "f28cdc767ee6a5c3e8aa232a3221538b4f9d30ee0570b2dafc1cfe26277cdfe7"
    );
}

#[test]
fn handmade_c3_app_is_valid() {
    let info = feed_all(HANDMADE_C3_APP, Some(Chip::Esp32c3), 336).unwrap();
    assert_eq!(info.header.segment_count, 1);
    assert_eq!(info.header.entry_addr, 0x4200_0020);
    assert_eq!(info.header.max_chip_rev_full, 199);
    assert_eq!(&info.segments[..], &[seg(0x3C00_0020, 0x100, 0x20)]);
    assert_eq!((info.checksum_stored, info.checksum_computed), (0x40, 0x40));
    assert_eq!(HANDMADE_C3_APP[0x12F], 0x40);
    let hash = unhex::<32>("a5a38d949ca014917e867e22b56934d09e4c0a130b911dbd5b1566a117dce8ba");
    assert_eq!(info.hash_stored, Some(hash));
    assert_eq!(info.hash_computed, hash);
    assert_eq!(&HANDMADE_C3_APP[0x130..0x150], &hash);
    assert_eq!(info.len, 0x150);
    assert_eq!(cstr(&info.app.unwrap().project_name), "handmade");
}

#[test]
fn corrupt_vector_is_refused_with_checksum_mismatch() {
    assert_eq!(
        feed_all(HANDMADE_C3_APP_CORRUPT, Some(Chip::Esp32c3), u32::MAX),
        Err(ImageError::ChecksumMismatch {
            stored: 0x40,
            computed: 0x41
        })
    );
    let mut v = ImageValidator::new(None, u32::MAX);
    v.feed(HANDMADE_C3_APP_CORRUPT).unwrap();
    let info = v.report().unwrap();
    assert_eq!(info.checksum_stored, 0x40);
    assert_eq!(info.checksum_computed, 0x41);
    assert_ne!(info.hash_stored, Some(info.hash_computed));
    assert_eq!(cstr(&info.app.unwrap().project_name), "iandmade");
}

#[test]
fn every_split_gives_the_same_result() {
    for (bytes, max) in [
        (TINY_C3_APP, u32::MAX),
        (HANDMADE_C3_APP, u32::MAX),
        (HANDMADE_C3_APP_CORRUPT, u32::MAX),
        (TINY_C3_APP, 463),
        (&TINY_C3_APP[..300], u32::MAX),
    ] {
        let whole = feed_all(bytes, Some(Chip::Esp32c3), max);
        for split in 1..=64 {
            assert_eq!(
                feed_split(bytes, split, Some(Chip::Esp32c3), max),
                whole,
                "split {split}"
            );
        }
        // Also report(), piece by piece.
        for split in [1, 3, 16, 64] {
            let mut v = ImageValidator::new(None, u32::MAX);
            for piece in bytes.chunks(split) {
                v.feed(piece).unwrap();
            }
            let mut w = ImageValidator::new(None, u32::MAX);
            w.feed(bytes).unwrap();
            assert_eq!(v.report(), w.report());
        }
    }
}

#[test]
fn progress_getters() {
    let mut v = ImageValidator::new(Some(Chip::Esp32c3), u32::MAX);
    assert_eq!(v.position(), 0);
    assert!(v.header().is_none() && v.total_len().is_none() && v.app_descriptor().is_none());
    v.feed(&TINY_C3_APP[..23]).unwrap();
    assert!(v.header().is_none());
    v.feed(&TINY_C3_APP[23..24]).unwrap();
    assert_eq!(v.header().unwrap().segment_count, 4);
    v.feed(&TINY_C3_APP[24..0x11F]).unwrap();
    assert!(v.app_descriptor().is_none(), "one descriptor byte missing");
    v.feed(&TINY_C3_APP[0x11F..0x120]).unwrap();
    assert_eq!(
        cstr(&v.app_descriptor().unwrap().project_name),
        "ota_vectors"
    );
    // The last segment header ends at 0x188: then the length is known.
    v.feed(&TINY_C3_APP[0x120..0x187]).unwrap();
    assert_eq!(v.total_len(), None);
    v.feed(&TINY_C3_APP[0x187..0x188]).unwrap();
    assert_eq!(v.total_len(), Some(464));
    v.feed(&TINY_C3_APP[0x188..]).unwrap();
    assert_eq!(v.position(), 464);
    assert!(v.is_complete());
    assert!(v.finish().is_ok());
}

#[test]
fn wrong_chip_is_refused_at_the_header() {
    let mut v = ImageValidator::new(Some(Chip::Esp32s3), u32::MAX);
    v.feed(&TINY_C3_APP[..23]).unwrap();
    assert_eq!(
        v.feed(&TINY_C3_APP[23..24]),
        Err(ImageError::WrongChip {
            expected: Chip::Esp32s3,
            found: 5
        })
    );
    // Spent: it keeps answering with the same error.
    assert_eq!(
        v.feed(&TINY_C3_APP[24..]),
        Err(ImageError::WrongChip {
            expected: Chip::Esp32s3,
            found: 5
        })
    );
    assert_eq!(
        v.clone().report(),
        Err(ImageError::WrongChip {
            expected: Chip::Esp32s3,
            found: 5
        })
    );
    assert_eq!(
        v.finish(),
        Err(ImageError::WrongChip {
            expected: Chip::Esp32s3,
            found: 5
        })
    );
    // Without a chip, any chip is fine.
    assert!(feed_all(TINY_C3_APP, None, u32::MAX).is_ok());
}

#[test]
fn bad_magic_is_refused_at_the_first_byte() {
    let mut v = ImageValidator::new(None, u32::MAX);
    assert_eq!(
        v.feed(&TINY_C3_ELF[..1]),
        Err(ImageError::BadMagic { found: 0x7F })
    );
    assert_eq!(
        feed_all(&[0xFF; 64], None, u32::MAX),
        Err(ImageError::BadMagic { found: 0xFF })
    );
}

#[test]
fn truncated_images_are_refused() {
    for bytes in [TINY_C3_APP, HANDMADE_C3_APP] {
        for len in 0..bytes.len() {
            let r = feed_all(&bytes[..len], None, u32::MAX);
            match r {
                Err(ImageError::Truncated { got, needed }) => {
                    assert_eq!(got as usize, len);
                    assert!(
                        needed as usize > len && needed as usize <= bytes.len(),
                        "len {len}: needed {needed}"
                    );
                }
                other => panic!("len {len}: {other:?}"),
            }
        }
    }
    // Once every segment header was seen the exact length is reported.
    assert_eq!(
        feed_all(&TINY_C3_APP[..0x190], None, u32::MAX),
        Err(ImageError::Truncated {
            got: 0x190,
            needed: 464
        })
    );
    assert_eq!(
        feed_all(&[], None, u32::MAX),
        Err(ImageError::Truncated { got: 0, needed: 24 })
    );
}

#[test]
fn trailing_bytes_are_ignored_and_counted() {
    // ESP-IDF's esp_image_verify reads up to the image's length only; esptool too.
    let mut long = TINY_C3_APP.to_vec();
    long.extend_from_slice(&[0xFF; 5]);
    let info = feed_all(&long, Some(Chip::Esp32c3), u32::MAX).unwrap();
    assert_eq!((info.len, info.ignored_trailing), (464, 5));
    assert_eq!(
        ImageInfo {
            ignored_trailing: 0,
            ..info
        },
        feed_all(TINY_C3_APP, Some(Chip::Esp32c3), u32::MAX).unwrap()
    );
    // Any split gives the same verdict.
    for split in 1..=64 {
        assert_eq!(
            feed_split(&long, split, Some(Chip::Esp32c3), u32::MAX)
                .unwrap()
                .ignored_trailing,
            5,
            "split {split}"
        );
    }
    // Fed after the end, in separate pieces; report() counts them too.
    let mut v = ImageValidator::new(None, u32::MAX);
    v.feed(TINY_C3_APP).unwrap();
    assert!(v.is_complete());
    v.feed(&[0]).unwrap();
    v.feed(&[]).unwrap();
    v.feed(&[1, 2]).unwrap();
    assert_eq!((v.position(), v.ignored_trailing()), (464, 3));
    assert_eq!(v.clone().report().unwrap().ignored_trailing, 3);
    assert_eq!(v.finish().unwrap().ignored_trailing, 3);
    // A whole second image after the first (a padded or concatenated file): the first counts.
    let mut twice = HANDMADE_C3_APP.to_vec();
    twice.extend_from_slice(TINY_C3_APP);
    let info = feed_all(&twice, None, u32::MAX).unwrap();
    assert_eq!((info.len, info.ignored_trailing), (0x150, 464));
    assert_eq!(cstr(&info.app.unwrap().project_name), "handmade");
    // Without an appended hash the image ends at the checksum byte.
    let mut spec = ImageSpec::app("nohash", 40);
    spec.hash = false;
    let mut img = build_image(&spec);
    let len = img.len() as u32;
    img.extend_from_slice(&[0u8; 100]);
    let info = feed_all(&img, None, u32::MAX).unwrap();
    assert_eq!((info.len, info.ignored_trailing), (len, 100));
    // The trailing bytes still land in the slot: the whole file must fit.
    assert!(feed_all(&long, None, 469).is_ok());
    assert_eq!(
        feed_all(&long, None, 468),
        Err(ImageError::TooLarge {
            needed: 469,
            max: 468
        })
    );
    // A corrupt image stays corrupt with bytes after it.
    let mut bad = HANDMADE_C3_APP_CORRUPT.to_vec();
    bad.extend_from_slice(&[0; 16]);
    assert!(matches!(
        feed_all(&bad, None, u32::MAX),
        Err(ImageError::ChecksumMismatch { .. })
    ));
}

/// Returns `img` (a built image with an appended hash and nothing after it) with the header's
/// chip revision fields set, its hash recomputed.
fn with_chip_revs(img: &[u8], legacy_min: u8, min: u16, max: u16) -> Vec<u8> {
    let mut img = img.to_vec();
    img[14] = legacy_min;
    img[15..17].copy_from_slice(&min.to_le_bytes());
    img[17..19].copy_from_slice(&max.to_le_bytes());
    let body = img.len() - 32;
    let h = sha256(&img[..body]);
    img[body..].copy_from_slice(&h);
    img
}

fn feed_rev(img: &[u8], revision: Option<u16>) -> Result<ImageInfo, ImageError> {
    let mut v = ImageValidator::new(Some(Chip::Esp32c3), u32::MAX).with_chip_revision(revision);
    v.feed(img)?;
    v.finish()
}

#[test]
fn min_chip_revision_above_the_chip_is_refused_at_the_header() {
    let base = build_image(&ImageSpec::app("rev", 64));
    let img = with_chip_revs(&base, 1, 101, 199); // v1.1 ..= v1.99
    assert_eq!(
        feed_rev(&img, Some(100)),
        Err(ImageError::ChipRevisionTooLow {
            min: 101,
            revision: 100
        })
    );
    assert_eq!(
        feed_rev(&img, Some(4)),
        Err(ImageError::ChipRevisionTooLow {
            min: 101,
            revision: 4
        })
    );
    assert!(feed_rev(&img, Some(101)).is_ok());
    assert!(feed_rev(&img, Some(199)).is_ok());
    // Unknown revision: not checked.
    assert!(feed_rev(&img, None).is_ok());
    // Refused as soon as the header is complete.
    let mut v = ImageValidator::new(None, u32::MAX).with_chip_revision(Some(100));
    v.feed(&img[..23]).unwrap();
    assert!(matches!(
        v.feed(&img[23..24]),
        Err(ImageError::ChipRevisionTooLow { .. })
    ));
    // min 0 always passes; min has no special value (0xFFFF fails every real chip).
    assert!(feed_rev(&with_chip_revs(&base, 0, 0, 0xFFFF), Some(0)).is_ok());
    assert!(matches!(
        feed_rev(&with_chip_revs(&base, 0, 0xFFFF, 0xFFFF), Some(9999)),
        Err(ImageError::ChipRevisionTooLow { min: 0xFFFF, .. })
    ));
    // The legacy min_chip_rev byte is ignored (ESP-IDF >= v4.4.5 / v5.0.1).
    assert!(feed_rev(&with_chip_revs(&base, 9, 0, 0xFFFF), Some(3)).is_ok());
    // The message says what is needed, what the chip is, and what to do.
    let msg = ImageError::ChipRevisionTooLow {
        min: 101,
        revision: 4,
    }
    .to_string();
    assert!(
        msg.contains("min v1.1") && msg.contains("(v0.4)") && msg.contains("rebuild"),
        "{msg}"
    );
    assert_eq!(
        Reason::from(ImageError::ChipRevisionTooLow {
            min: 101,
            revision: 4
        }),
        Reason::ChipRevision
    );
}

#[test]
fn max_chip_revision_0_and_ffff_mean_no_limit() {
    let base = build_image(&ImageSpec::app("rev", 64));
    for max in [0u16, 0xFFFF] {
        let img = with_chip_revs(&base, 0, 3, max);
        for rev in [3u16, 99, 100, 199, 300, 9999] {
            assert!(feed_rev(&img, Some(rev)).is_ok(), "max {max:#x} rev {rev}");
        }
        let h = feed_all(&img, None, u32::MAX).unwrap().header;
        assert_eq!(h.max_chip_rev_limit(), None);
    }
    // A set maximum is a limit: v1.99 runs on v1.99, not on v2.0.
    let img = with_chip_revs(&base, 3, 3, 199);
    assert!(feed_rev(&img, Some(199)).is_ok());
    assert_eq!(
        feed_rev(&img, Some(200)),
        Err(ImageError::ChipRevisionTooHigh {
            max: 199,
            revision: 200
        })
    );
    let h = feed_all(&img, None, u32::MAX).unwrap().header;
    assert_eq!(h.max_chip_rev_limit(), Some(199));
    assert_eq!(
        h.check_chip_revision(2),
        Err(ImageError::ChipRevisionTooLow {
            min: 3,
            revision: 2
        })
    );
    assert_eq!(h.check_chip_revision(104), Ok(()));
    let msg = ImageError::ChipRevisionTooHigh {
        max: 199,
        revision: 200,
    }
    .to_string();
    assert!(msg.contains("v1.99") && msg.contains("v2.0"), "{msg}");
    // The project's vectors: tiny (0 ..= unset) and handmade (0 ..= v1.99).
    assert!(feed_rev(TINY_C3_APP, Some(9999)).is_ok());
    assert!(feed_rev(HANDMADE_C3_APP, Some(199)).is_ok());
    assert!(matches!(
        feed_rev(HANDMADE_C3_APP, Some(200)),
        Err(ImageError::ChipRevisionTooHigh { max: 199, .. })
    ));
}

#[test]
fn chip_revisions_parse_and_print_like_esp_idf() {
    for (text, rev) in [
        ("0.4", 4u16),
        ("v0.4", 4),
        ("1.99", 199),
        ("V3.1", 301),
        ("0.0", 0),
        ("655.35", 65535),
    ] {
        assert_eq!(parse_chip_revision(text), Some(rev), "{text}");
    }
    for text in [
        "", "4", "1.100", "655.36", "x.1", "1.", ".1", "-1.0", "1.2.3", "v",
    ] {
        assert_eq!(parse_chip_revision(text), None, "{text:?}");
    }
    assert_eq!(Rev(4).to_string(), "v0.4");
    assert_eq!(Rev(199).to_string(), "v1.99");
    assert_eq!(Rev(101).to_string(), "v1.1");
}

/// A C6 image: descriptor in DROM with `mmu_log2` as its page size, code at `irom`.
fn c6_image(mmu_log2: u8, irom: u32) -> Vec<u8> {
    let mut desc = app_desc("c6", "1.0.0");
    desc[0xB4] = mmu_log2;
    build_image(&ImageSpec {
        chip_id: Chip::Esp32c6.id(),
        segments: vec![(0x4280_0020, desc), (irom, vec![7; 64])],
        hash: true,
    })
}

#[test]
fn misaligned_flash_mapped_segments_are_refused() {
    // Code (IROM) data at image offset 0x128 mapped at ...0120: the bootloader cannot map it.
    let mut spec = ImageSpec::app("mis", 64);
    spec.segments[1].0 = 0x4200_0120;
    let img = build_image(&spec);
    let refusal = ImageError::MisalignedSegment {
        index: 1,
        load_addr: 0x4200_0120,
        offset: 0x128,
        page: 0x1_0000,
    };
    assert_eq!(feed_all(&img, Some(Chip::Esp32c3), u32::MAX), Err(refusal));
    // Refused at its segment header, before its data.
    let mut v = ImageValidator::new(None, u32::MAX);
    v.feed(&img[..0x127]).unwrap();
    assert_eq!(v.feed(&img[0x127..0x128]), Err(refusal));
    assert_eq!(Reason::from(refusal), Reason::BadImageFormat);
    let msg = refusal.to_string();
    assert!(
        msg.contains("0x128") && msg.contains("0x10000") && msg.contains("rebuild"),
        "{msg}"
    );
    // Only the offset within the page matters: another 64 KiB page is fine.
    spec.segments[1].0 = 0x4201_0128;
    assert!(feed_all(&build_image(&spec), Some(Chip::Esp32c3), u32::MAX).is_ok());
    // DROM too, and segment 0 (checked at the end of its data: its descriptor may set the page).
    let mut spec = ImageSpec::app("mis0", 8);
    spec.segments[0].0 = 0x3C00_0024;
    assert_eq!(
        feed_all(&build_image(&spec), None, u32::MAX),
        Err(ImageError::MisalignedSegment {
            index: 0,
            load_addr: 0x3C00_0024,
            offset: 0x20,
            page: 0x1_0000
        })
    );
    // Chips whose memory map this crate does not hold are not checked (here an ESP32-S3).
    let mut spec = ImageSpec::app("s3", 64);
    spec.chip_id = Chip::Esp32s3.id();
    spec.segments[1].0 = 0x4200_0120;
    assert!(feed_all(&build_image(&spec), Some(Chip::Esp32s3), u32::MAX).is_ok());
}

#[test]
fn c6_mmu_page_comes_from_the_app_descriptor() {
    // 0x4200_8128: congruent to offset 0x128 modulo 32 KiB and 8 KiB, not modulo 64 KiB.
    for (log2, ok) in [
        (15u8, true),
        (13, true),
        (16, false),
        (0, false),
        (20, false),
    ] {
        let r = feed_all(&c6_image(log2, 0x4200_8128), Some(Chip::Esp32c6), u32::MAX);
        if ok {
            assert!(r.is_ok(), "mmu_page_size {log2}: {r:?}");
        } else {
            assert_eq!(
                r,
                Err(ImageError::MisalignedSegment {
                    index: 1,
                    load_addr: 0x4200_8128,
                    offset: 0x128,
                    page: 0x1_0000
                }),
                "mmu_page_size {log2} (out of 13..=18: 64 KiB)"
            );
        }
    }
    assert!(feed_all(&c6_image(16, 0x4201_0128), Some(Chip::Esp32c6), u32::MAX).is_ok());
    // A 16 KiB page: 0x4200_8128 agrees modulo 16 KiB too; 0x4200_6128 does not.
    assert!(feed_all(&c6_image(14, 0x4200_8128), None, u32::MAX).is_ok());
    assert!(matches!(
        feed_all(&c6_image(14, 0x4200_6128), None, u32::MAX),
        Err(ImageError::MisalignedSegment { page: 0x4000, .. })
    ));
}

/// A C3 or C6 image whose second segment loads `len` bytes to `addr`.
fn ram_image(chip: Chip, addr: u32, len: usize) -> Vec<u8> {
    let drom = if chip == Chip::Esp32c6 {
        0x4280_0020
    } else {
        0x3C00_0020
    };
    build_image(&ImageSpec {
        chip_id: chip.id(),
        segments: vec![(drom, app_desc("ram", "1.0.0")), (addr, vec![0x11; len])],
        hash: true,
    })
}

#[test]
fn ram_segments_overlapping_the_bootloader_are_refused() {
    let c3 = |addr, len| {
        feed_all(
            &ram_image(Chip::Esp32c3, addr, len),
            Some(Chip::Esp32c3),
            u32::MAX,
        )
    };
    let c6 = |addr, len| {
        feed_all(
            &ram_image(Chip::Esp32c6, addr, len),
            Some(Chip::Esp32c6),
            u32::MAX,
        )
    };
    // C3, DRAM view: up to 0x3FCCE710 is the app's; from there the bootloader's.
    assert!(c3(0x3FC8_0000, 0x100).is_ok());
    assert!(c3(0x3FCC_E700, 0x10).is_ok());
    let over = ImageError::OverlapsBootloader {
        index: 1,
        load_addr: 0x3FCC_E700,
        len: 0x14,
        from: 0x3FCC_E710,
        to: 0x3FCD_E710,
    };
    assert_eq!(c3(0x3FCC_E700, 0x14), Err(over));
    assert_eq!(Reason::from(over), Reason::BadImageFormat);
    let msg = over.to_string();
    assert!(
        msg.contains("0x3fcce710") && msg.contains("shrink"),
        "{msg}"
    );
    assert!(matches!(
        c3(0x3FCD_5710, 0x100),
        Err(ImageError::OverlapsBootloader { .. })
    ));
    // C3, IRAM view (DRAM + 0x700000) of the same region.
    assert!(c3(0x4038_0000, 0x100).is_ok());
    assert!(c3(0x403C_E700, 0x10).is_ok());
    assert_eq!(
        c3(0x403C_E700, 0x20),
        Err(ImageError::OverlapsBootloader {
            index: 1,
            load_addr: 0x403C_E700,
            len: 0x20,
            from: 0x403C_E710,
            to: 0x403D_E710
        })
    );
    // Outside every RAM region, or straddling a region's end.
    for (addr, len) in [
        (0x3FC7_FF00, 0x10),
        (0x3FCD_FFF0, 0x20),
        (0x6000_0000, 4),
        (0x5000_1FF0, 0x20),
    ] {
        assert_eq!(
            c3(addr, len),
            Err(ImageError::BadLoadAddress {
                index: 1,
                load_addr: addr,
                len: len as u32
            }),
            "{addr:#x}"
        );
    }
    // RTC memory, padding segments (address 0) and empty segments are fine.
    assert!(c3(0x5000_0000, 0x100).is_ok());
    assert!(c3(0, 0x100).is_ok());
    assert!(c3(0x6000_0000, 0).is_ok());
    // C6: HP SRAM up to 0x4086E610, where the app linker ends it.
    assert!(c6(0x4080_0000, 0x100).is_ok());
    assert!(c6(0x4086_E600, 0x10).is_ok());
    assert_eq!(
        c6(0x4086_E600, 0x14),
        Err(ImageError::OverlapsBootloader {
            index: 1,
            load_addr: 0x4086_E600,
            len: 0x14,
            from: 0x4086_E610,
            to: 0x4088_0000
        })
    );
    assert!(c6(0x5000_0000, 0x100).is_ok());
    assert!(matches!(
        c6(0x3FC8_8000, 0x10),
        Err(ImageError::BadLoadAddress { .. })
    ));
}

/// The project's firmware images (`cargo xtask firmware`) pass every rule on the chip
/// revisions the virtual ESP32 defaults to.
#[test]
#[ignore = "needs the firmware images: run via cargo xtask test (it runs cargo xtask firmware first)"]
fn firmware_images_pass_every_rule() {
    for (chip, rev) in [(Chip::Esp32c3, 4u16), (Chip::Esp32c6, 1)] {
        let path = format!(
            "{}/../../firmware/target/images/{}.bin",
            env!("CARGO_MANIFEST_DIR"),
            chip.name()
        );
        let img = std::fs::read(&path)
            .unwrap_or_else(|e| panic!("{path}: {e}; build it with `cargo xtask firmware`"));
        let mut v = ImageValidator::new(Some(chip), 1 << 20).with_chip_revision(Some(rev));
        v.feed(&img).unwrap_or_else(|e| panic!("{chip}: {e}"));
        let info = v.finish().unwrap_or_else(|e| panic!("{chip}: {e}"));
        assert_eq!(info.len as usize, img.len());
        assert_eq!(info.ignored_trailing, 0);
    }
}

#[test]
fn too_large_fails_early() {
    assert!(feed_all(TINY_C3_APP, None, 464).is_ok());
    // Fed byte by byte, the refusal comes no later than the last segment header.
    let mut v = ImageValidator::new(None, 463);
    let mut failed_at = None;
    for (i, b) in TINY_C3_APP.iter().enumerate() {
        if let Err(e) = v.feed(&[*b]) {
            assert_eq!(
                e,
                ImageError::TooLarge {
                    needed: 464,
                    max: 463
                }
            );
            failed_at = Some(i);
            break;
        }
    }
    assert_eq!(failed_at, Some(0x187));
    // A header that cannot fit at all is refused at once.
    // (4 segment headers, checksum block and hash: at least 96 bytes.)
    let mut v = ImageValidator::new(None, 95);
    assert_eq!(
        v.feed(&TINY_C3_APP[..0x18]),
        Err(ImageError::TooLarge {
            needed: 96,
            max: 95
        })
    );
    let mut v = ImageValidator::new(None, 96);
    v.feed(&TINY_C3_APP[..0x18]).unwrap();
    let mut v = ImageValidator::new(None, 0);
    assert!(matches!(
        v.feed(&TINY_C3_APP[..0x18]),
        Err(ImageError::TooLarge { max: 0, .. })
    ));
    // A huge first segment is refused at its header, long before its data.
    let mut big = ImageSpec::app("big", 16);
    big.segments[1].1 = vec![0; 0x8000];
    let img = build_image(&big);
    let mut v = ImageValidator::new(None, 0x4000);
    assert!(matches!(
        v.feed(&img[..0x128 + 8]),
        Err(ImageError::TooLarge { max: 0x4000, .. })
    ));
}

#[test]
fn segment_count_limits() {
    for count in [0u8, 17, 255] {
        let mut img = HANDMADE_C3_APP.to_vec();
        img[1] = count;
        let mut v = ImageValidator::new(None, u32::MAX);
        assert_eq!(
            v.feed(&img[..24]),
            Err(ImageError::BadSegmentCount { count })
        );
    }
    // 16 segments are fine.
    let mut spec = ImageSpec::app("sixteen", 0);
    spec.segments.truncate(1);
    for i in 0..15 {
        spec.segments
            .push((0x3FC8_8000 + i * 0x100, vec![i as u8; 4 * i as usize]));
    }
    let img = build_image(&spec);
    let info = feed_all(&img, Some(Chip::Esp32c3), u32::MAX).unwrap();
    assert_eq!(info.segments.len(), 16);
    assert_eq!(info.len as usize, img.len());
}

#[test]
fn segment_length_rules() {
    let mut img = HANDMADE_C3_APP.to_vec();
    img[0x1C] = 0x01; // data_len 0x101
    let mut v = ImageValidator::new(None, u32::MAX);
    assert_eq!(
        v.feed(&img),
        Err(ImageError::BadSegmentLength {
            index: 0,
            len: 0x101
        })
    );
    for len in [16u32 << 20, u32::MAX - 3] {
        let mut img = HANDMADE_C3_APP.to_vec();
        img[0x1C..0x20].copy_from_slice(&len.to_le_bytes());
        let mut v = ImageValidator::new(None, u32::MAX);
        assert_eq!(
            v.feed(&img),
            Err(ImageError::BadSegmentLength { index: 0, len })
        );
    }
    // The largest legal length is accepted as a header (then the image is just short).
    let mut img = HANDMADE_C3_APP.to_vec();
    img[0x1C..0x20].copy_from_slice(&((16u32 << 20) - 4).to_le_bytes());
    let mut v = ImageValidator::new(None, u32::MAX);
    v.feed(&img).unwrap();
    assert!(matches!(v.finish(), Err(ImageError::Truncated { .. })));
    // In the second segment the index is reported.
    let mut spec = ImageSpec::app("two", 8);
    spec.segments[1].1 = vec![1, 2, 3, 4, 5, 6];
    let mut v = ImageValidator::new(None, u32::MAX);
    assert_eq!(
        v.feed(&build_image(&spec)),
        Err(ImageError::BadSegmentLength { index: 1, len: 6 })
    );
}

#[test]
fn built_images_are_valid() {
    for filler in [0usize, 4, 8, 12, 16, 100, 1000, 4096] {
        let img = build_image(&ImageSpec::app("app", filler));
        let info = feed_all(&img, Some(Chip::Esp32c3), img.len() as u32).unwrap();
        assert_eq!(info.len as usize, img.len());
        assert_eq!(info.len % 16, 0);
    }
    // No appended hash: the image ends at the checksum byte.
    let mut spec = ImageSpec::app("nohash", 40);
    spec.hash = false;
    let img = build_image(&spec);
    let info = feed_all(&img, None, u32::MAX).unwrap();
    assert!(!info.header.hash_appended && info.hash_stored.is_none());
    assert_eq!(info.len as usize, img.len());
    assert_eq!(img.len() % 16, 0);
    // A zero-length segment (the code segment moves 8 bytes on: so does its address).
    let mut spec = ImageSpec::app("zero", 8);
    spec.segments.insert(1, (0x3FC8_8000, vec![]));
    spec.segments[2].0 += 8;
    let img = build_image(&spec);
    assert_eq!(
        feed_all(&img, None, u32::MAX).unwrap().segments[1].data_len,
        0
    );
    // The padding is not checked (but hashed): non-zero padding with a matching hash is fine.
    let mut img = build_image(&ImageSpec::app("pad", 4));
    let cs_at = img.len() - 33;
    img[cs_at - 1] = 0xAA;
    img.truncate(cs_at + 1);
    let h = sha256(&img);
    img.extend_from_slice(&h);
    assert!(feed_all(&img, None, u32::MAX).is_ok());
}

#[test]
fn app_descriptor_is_required_by_finish_only() {
    // Segment 0 without the magic word.
    let mut spec = ImageSpec::app("nodesc", 8);
    spec.segments[0].1[0] = 0x33;
    let img = build_image(&spec);
    assert_eq!(
        feed_all(&img, None, u32::MAX),
        Err(ImageError::NoAppDescriptor)
    );
    let mut v = ImageValidator::new(None, u32::MAX);
    v.feed(&img).unwrap();
    assert!(v.app_descriptor().is_none());
    let info = v.report().unwrap();
    assert!(info.app.is_none());
    assert_eq!(info.checksum_stored, info.checksum_computed);
    // The magic word, but segment 0 shorter than the 256-byte descriptor (IDF master refuses).
    let mut spec = ImageSpec::app("short", 8);
    spec.segments[0].1.truncate(128);
    spec.segments[1].0 -= 128; // keep the code segment congruent to its offset
    assert_eq!(
        feed_all(&build_image(&spec), None, u32::MAX),
        Err(ImageError::NoAppDescriptor)
    );
    // Checksum problems are reported before the descriptor.
    let mut img = build_image(&ImageSpec::app("x", 8));
    img[0x20] ^= 1;
    assert!(matches!(
        feed_all(&img, None, u32::MAX),
        Err(ImageError::ChecksumMismatch { .. })
    ));
}

#[test]
fn hash_mismatch() {
    let mut img = TINY_C3_APP.to_vec();
    img[0x1C0] ^= 0x80; // inside the stored hash
    assert_eq!(
        feed_all(&img, None, u32::MAX),
        Err(ImageError::HashMismatch)
    );
    let mut img = TINY_C3_APP.to_vec();
    img[2] = 3; // the header is hashed but not in the checksum
    assert_eq!(
        feed_all(&img, None, u32::MAX),
        Err(ImageError::HashMismatch)
    );
    let mut img = TINY_C3_APP.to_vec();
    img[0x1AC] = 1; // padding
    assert_eq!(
        feed_all(&img, None, u32::MAX),
        Err(ImageError::HashMismatch)
    );
}

#[test]
fn validator_state_is_small() {
    let size = core::mem::size_of::<ImageValidator>();
    eprintln!("ImageValidator: {size} bytes");
    assert!(size <= 768, "ImageValidator is {size} bytes");
}

#[test]
fn verify_in_flash_reads_the_image_and_nothing_after_it() {
    let mut f = RamFlash::new(0x20_0000);
    let slot = 0x11_0000u32;
    f.load(slot, TINY_C3_APP);
    // Garbage right after the image must not matter.
    let junk: Vec<u8> = (0..4096u32).map(|i| (i * 7) as u8).collect();
    f.load(slot + 464, &junk);
    let info = verify_in_flash(&mut f, slot, 0x10_0000, Some(Chip::Esp32c3)).unwrap();
    assert_eq!(
        info,
        feed_all(TINY_C3_APP, Some(Chip::Esp32c3), u32::MAX).unwrap()
    );
    // The handmade image, a built image spanning many blocks.
    let big = build_image(&ImageSpec::app("big", 5000));
    f.load(0, &big);
    let info = verify_in_flash(&mut f, 0, 0x10000, None).unwrap();
    assert_eq!(info.len as usize, big.len());
    // Exactly the slot size is fine; one byte less is not.
    assert!(verify_in_flash(&mut f, slot, 464, None).is_ok());
    assert_eq!(
        verify_in_flash(&mut f, slot, 463, None),
        Err(ImageError::TooLarge {
            needed: 464,
            max: 463
        })
    );
    // Corrupt in flash.
    f.load(slot, HANDMADE_C3_APP_CORRUPT);
    assert_eq!(
        verify_in_flash(&mut f, slot, 0x10_0000, Some(Chip::Esp32c3)),
        Err(ImageError::ChecksumMismatch {
            stored: 0x40,
            computed: 0x41
        })
    );
    // Erased flash.
    assert_eq!(
        verify_in_flash(&mut f, 0x1F_0000, 0x10000, None),
        Err(ImageError::BadMagic { found: 0xFF })
    );
    // Wrong chip.
    f.load(slot, TINY_C3_APP);
    assert!(matches!(
        verify_in_flash(&mut f, slot, 0x10_0000, Some(Chip::Esp32)),
        Err(ImageError::WrongChip { .. })
    ));
    // The image runs off the end of the flash: a read error.
    f.load(0x20_0000 - 0x100, &TINY_C3_APP[..0x100]);
    assert!(matches!(
        verify_in_flash(&mut f, 0x20_0000 - 0x100, 0x10_0000, None),
        Err(ImageError::Flash(_))
    ));
    // A tiny slot.
    assert!(matches!(
        verify_in_flash(&mut f, slot, 10, None),
        Err(ImageError::Truncated { got: 10, .. })
    ));
    assert!(matches!(
        verify_in_flash(&mut f, slot, 0, None),
        Err(ImageError::Truncated { got: 0, .. })
    ));
}

#[test]
fn errors_read_well() {
    let msg = ImageError::ChecksumMismatch {
        stored: 0x40,
        computed: 0x41,
    }
    .to_string();
    assert!(msg.contains("0x40") && msg.contains("0x41"), "{msg}");
    let msg = ImageError::WrongChip {
        expected: Chip::Esp32c3,
        found: 9,
    }
    .to_string();
    assert!(msg.contains("esp32c3"), "{msg}");
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(400))]

    /// Arbitrary bytes, fed in arbitrary pieces, never panic (with or without a valid start).
    #[test]
    fn never_panics_on_arbitrary_bytes(
        mut bytes in proptest::collection::vec(any::<u8>(), 0..1500),
        splits in proptest::collection::vec(1usize..200, 1..20),
        start_magic in any::<bool>(),
        small_count in any::<bool>(),
        max in prop_oneof![Just(u32::MAX), 0u32..2000],
    ) {
        if start_magic && !bytes.is_empty() {
            bytes[0] = 0xE9;
        }
        if small_count && bytes.len() > 1 {
            bytes[1] %= 5;
        }
        for chip in [None, Some(Chip::Esp32c3)] {
            let mut v = ImageValidator::new(chip, max);
            let mut rest = &bytes[..];
            let mut i = 0;
            while !rest.is_empty() {
                let n = splits[i % splits.len()].min(rest.len());
                let _ = v.feed(&rest[..n]);
                let _ = v.position();
                let _ = v.header();
                let _ = v.total_len();
                let _ = v.app_descriptor();
                rest = &rest[n..];
                i += 1;
            }
            let _ = v.clone().report();
            let _ = v.finish();
        }
    }

    /// Arbitrary segment headers with random lengths (including huge and unaligned) never panic.
    #[test]
    fn never_panics_on_arbitrary_segment_tables(
        count in 0u8..20,
        lens in proptest::collection::vec(any::<u32>(), 20),
        hash in any::<u8>(),
        tail in proptest::collection::vec(any::<u8>(), 0..600),
    ) {
        let mut img = HANDMADE_C3_APP[..24].to_vec();
        img[1] = count;
        img[23] = hash;
        for len in lens.iter().take(count as usize) {
            img.extend_from_slice(&0x3FC8_8000u32.to_le_bytes());
            img.extend_from_slice(&(len % 64).to_le_bytes());
            img.extend_from_slice(&tail[..(*len as usize % 64).min(tail.len())]);
        }
        img.extend_from_slice(&tail);
        let mut v = ImageValidator::new(None, u32::MAX);
        let _ = v.feed(&img);
        let _ = v.finish();
    }

    /// Any change to a valid image is refused by finish().
    #[test]
    fn byte_flips_are_always_refused(
        which in 0usize..3,
        flips in proptest::collection::vec((any::<prop::sample::Index>(), 1u8..=255), 1..4),
    ) {
        let base = [TINY_C3_APP, HANDMADE_C3_APP, &build_image(&ImageSpec::app("p", 64))[..]][which].to_vec();
        let mut img = base.clone();
        let len = img.len();
        for (at, mask) in &flips {
            img[at.index(len)] ^= mask;
        }
        prop_assume!(img != base); // two flips may cancel out
        let r = feed_all(&img, Some(Chip::Esp32c3), u32::MAX);
        prop_assert!(r.is_err(), "accepted a modified image: {:?}", flips);
    }

    /// Splitting the stream anywhere never changes the result.
    #[test]
    fn splits_do_not_matter(
        cuts in proptest::collection::btree_set(1usize..464, 0..12),
        corrupt in any::<Option<(prop::sample::Index, u8)>>(),
    ) {
        let mut img = TINY_C3_APP.to_vec();
        if let Some((at, v)) = corrupt {
            let i = at.index(img.len());
            img[i] = v;
        }
        let whole = feed_all(&img, Some(Chip::Esp32c3), u32::MAX);
        let mut v = ImageValidator::new(Some(Chip::Esp32c3), u32::MAX);
        let mut last = 0;
        let mut r = Ok(());
        for c in cuts.iter().copied().chain([img.len()]) {
            r = r.and_then(|_| v.feed(&img[last..c]));
            last = c;
        }
        let pieces = r.and_then(|_| v.finish());
        prop_assert_eq!(pieces, whole);
    }
}
