//! Partition table: the §5 vectors parse, round-trip byte for byte, and bad tables are refused
//! with the right error under app (MD5 required) and bootloader (MD5 optional) rules.

mod common;

use common::*;
use ota_core::esp::partition::{
    MAX_PARTITIONS, Md5Policy, PARTITION_TABLE_MAX_LEN, Partition, PartitionError, PartitionTable,
};
use proptest::prelude::*;

const BOTH: [Md5Policy; 2] = [Md5Policy::Required, Md5Policy::Optional];

fn row(name: &str, ty: u8, subtype: u8, offset: u32, size: u32) -> Partition {
    Partition {
        ty,
        subtype,
        offset,
        size,
        label: Partition::label_from_str(name),
        flags: 0,
    }
}

#[test]
fn two_ota_parses_to_the_documented_layout() {
    let expected = [
        ("nvs", 1, 2, 0x9000, 0x4000),
        ("otadata", 1, 0, 0xD000, 0x2000),
        ("phy_init", 1, 1, 0xF000, 0x1000),
        ("factory", 0, 0, 0x10000, 0x100000),
        ("ota_0", 0, 0x10, 0x110000, 0x100000),
        ("ota_1", 0, 0x11, 0x210000, 0x100000),
    ];
    for policy in BOTH {
        let t = PartitionTable::parse(TABLE_TWO_OTA, policy, Some(FLASH_SIZE)).unwrap();
        assert_eq!(t.partitions().len(), 6);
        for (p, (name, ty, st, off, size)) in t.partitions().iter().zip(expected) {
            assert_eq!(*p, row(name, ty, st, off, size), "{name}");
            assert_eq!(p.name(), name);
        }
        assert_eq!(t.factory().unwrap().offset, 0x10000);
        assert_eq!(t.otadata().unwrap().offset, 0xD000);
        assert_eq!(t.ota(0).unwrap().offset, 0x110000);
        assert_eq!(t.ota(1).unwrap().offset, 0x210000);
        assert!(t.ota(2).is_none() && t.ota(200).is_none() && t.test().is_none());
        assert_eq!(t.ota_count(), 2);
        assert_eq!(t.find("phy_init").unwrap().subtype, 1);
        assert!(t.find("ota_2").is_none());
        assert_eq!(t.app_at(0x110000).unwrap().name(), "ota_0");
        assert_eq!(t.app_at(0x20FFFF).unwrap().name(), "ota_0");
        assert_eq!(t.app_at(0x210000).unwrap().name(), "ota_1");
        assert!(t.app_at(0xD000).is_none(), "otadata is not an app");
        assert!(t.app_at(0x310000).is_none());
    }
}

#[test]
fn two_ota_round_trips_byte_identical() {
    let t = PartitionTable::parse(TABLE_TWO_OTA, Md5Policy::Required, None).unwrap();
    let out = t.to_bytes();
    assert_eq!(out.len(), PARTITION_TABLE_MAX_LEN);
    assert_eq!(&out[..], TABLE_TWO_OTA);
    assert_eq!(&out[..], TABLE_TWO_OTA_IDF_PART);
    // The MD5 row as §1.7 prints it.
    assert_eq!(
        &out[0xC0..0xD0],
        &[
            0xEB, 0xEB, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF,
            0xFF, 0xFF
        ]
    );
    assert_eq!(
        hex::encode(&out[0xD0..0xE0]),
        "bf25822c0fa6d8641bd930251e06b4c4"
    );
    assert!(out[0xE0..].iter().all(|b| *b == 0xFF));
    assert_eq!(
        hex::encode(sha256(&out)),
        "d1c0e9d02fa9d26cd2e1984e7b5dd20157204f501ddc83ce82229e5f3175ee8b"
    );
    // Rebuilt from rows.
    let again = PartitionTable::from_partitions(t.partitions());
    assert_eq!(again, t);
    assert_eq!(&again.to_bytes()[..], TABLE_TWO_OTA);
    // Rows one by one.
    for (i, p) in t.partitions().iter().enumerate() {
        assert_eq!(&p.to_bytes()[..], &TABLE_TWO_OTA[i * 32..i * 32 + 32]);
    }
}

#[test]
fn nomd5_is_accepted_by_the_bootloader_rules_only() {
    let t =
        PartitionTable::parse(TABLE_TWO_OTA_NOMD5, Md5Policy::Optional, Some(FLASH_SIZE)).unwrap();
    let with = PartitionTable::parse(TABLE_TWO_OTA, Md5Policy::Optional, Some(FLASH_SIZE)).unwrap();
    assert_eq!(t, with);
    assert_eq!(
        PartitionTable::parse(TABLE_TWO_OTA_NOMD5, Md5Policy::Required, Some(FLASH_SIZE)),
        Err(PartitionError::Md5Missing)
    );
    // A writer always emits the MD5 row: re-serialising gives the MD5 vector.
    assert_eq!(&t.to_bytes()[..], TABLE_TWO_OTA);
}

#[test]
fn nofactory_layout() {
    for policy in BOTH {
        let t = PartitionTable::parse(TABLE_NOFACTORY, policy, Some(FLASH_SIZE)).unwrap();
        let names: Vec<_> = t.partitions().iter().map(|p| p.name()).collect();
        assert_eq!(names, ["nvs", "otadata", "phy_init", "ota_0", "ota_1"]);
        assert!(t.factory().is_none());
        assert_eq!(*t.ota(0).unwrap(), row("ota_0", 0, 0x10, 0x10000, 0x100000));
        assert_eq!(
            *t.ota(1).unwrap(),
            row("ota_1", 0, 0x11, 0x110000, 0x100000)
        );
        assert_eq!(t.ota_count(), 2);
        assert_eq!(&t.to_bytes()[..], TABLE_NOFACTORY);
        assert_eq!(
            hex::encode(&TABLE_NOFACTORY[0xB0..0xC0]),
            "b0ecdc2f5ad6b35f066fb60bf4b54c84"
        );
    }
}

#[test]
fn md5_mismatch_is_refused_by_both() {
    let mut bad = TABLE_TWO_OTA.to_vec();
    bad[0x20 + 8] ^= 0x10; // otadata size
    for policy in BOTH {
        assert_eq!(
            PartitionTable::parse(&bad, policy, None),
            Err(PartitionError::Md5Mismatch)
        );
    }
    let mut bad = TABLE_TWO_OTA.to_vec();
    bad[0xDF] ^= 1; // the digest itself
    for policy in BOTH {
        assert_eq!(
            PartitionTable::parse(&bad, policy, None),
            Err(PartitionError::Md5Mismatch)
        );
    }
}

#[test]
fn md5_row_filler_is_not_checked() {
    // Bytes 2..16 of the MD5 row are not part of any check (only magic and digest).
    let mut t = TABLE_TWO_OTA.to_vec();
    t[0xC5] = 0x00;
    for policy in BOTH {
        assert!(PartitionTable::parse(&t, policy, None).is_ok());
    }
}

#[test]
fn erased_sector_is_bad_magic_at_row_0() {
    for policy in BOTH {
        assert_eq!(
            PartitionTable::parse(&[0xFF; 0xC00], policy, None),
            Err(PartitionError::BadMagic { row: 0 })
        );
        assert_eq!(
            PartitionTable::parse(&[0x00; 0xC00], policy, None),
            Err(PartitionError::BadMagic { row: 0 })
        );
    }
}

#[test]
fn garbage_row_is_bad_magic() {
    let mut t = TABLE_TWO_OTA_NOMD5.to_vec();
    t[0x40] = 0x12;
    for policy in BOTH {
        assert_eq!(
            PartitionTable::parse(&t, policy, None),
            Err(PartitionError::BadMagic { row: 2 })
        );
    }
}

#[test]
fn end_marker_only_needs_four_ff_bytes() {
    // Bootloader: a row whose first 4 bytes are FF ends the table, whatever follows.
    let mut t = TABLE_TWO_OTA.to_vec();
    t[0xE8] = 0x00;
    let parsed = PartitionTable::parse(&t, Md5Policy::Optional, None).unwrap();
    assert_eq!(parsed.partitions().len(), 6);
}

#[test]
fn rows_outside_the_flash_are_refused() {
    // ota_1 ends at 0x310000.
    for policy in BOTH {
        assert_eq!(
            PartitionTable::parse(TABLE_TWO_OTA, policy, Some(0x30_0000)),
            Err(PartitionError::OutOfFlash {
                row: 5,
                flash_size: 0x30_0000
            })
        );
        assert!(PartitionTable::parse(TABLE_TWO_OTA, policy, Some(0x31_0000)).is_ok());
        // offset + size overflowing u32 must not wrap around into "fits".
        let huge = PartitionTable::from_partitions(&[row("x", 1, 0x81, 0x10000, u32::MAX - 0x100)]);
        assert!(matches!(
            PartitionTable::parse(&huge.to_bytes(), policy, Some(FLASH_SIZE)),
            Err(PartitionError::OutOfFlash { row: 0, .. })
        ));
    }
}

#[test]
fn short_input_is_unterminated() {
    for policy in BOTH {
        for len in [0, 1, 31, 32, 64, 0xC0, 0xDF] {
            assert_eq!(
                PartitionTable::parse(&TABLE_TWO_OTA[..len], policy, None),
                Err(PartitionError::Unterminated),
                "len {len}"
            );
        }
    }
    // With the MD5 row, the app rules stop there: 0xE0 bytes are enough.
    assert!(PartitionTable::parse(&TABLE_TWO_OTA[..0xE0], Md5Policy::Required, None).is_ok());
    assert_eq!(
        PartitionTable::parse(&TABLE_TWO_OTA[..0xE0], Md5Policy::Optional, None),
        Err(PartitionError::Unterminated)
    );
    // The bootloader's end marker.
    assert!(PartitionTable::parse(&TABLE_TWO_OTA[..0x100], Md5Policy::Optional, None).is_ok());
}

#[test]
fn a_second_md5_row_is_refused_by_the_bootloader_rules() {
    let mut t = TABLE_TWO_OTA.to_vec();
    let md5_row = t[0xC0..0xE0].to_vec();
    t[0xE0..0x100].copy_from_slice(&md5_row);
    assert_eq!(
        PartitionTable::parse(&t, Md5Policy::Optional, None),
        Err(PartitionError::DuplicateMd5 { row: 7 })
    );
    // The app stops at the first MD5 row.
    assert!(PartitionTable::parse(&t, Md5Policy::Required, None).is_ok());
}

#[test]
fn full_tables() {
    let parts: Vec<Partition> = (0..MAX_PARTITIONS as u32)
        .map(|i| row(&format!("p{i}"), 1, 0x81, 0x10000 + i * 0x1000, 0x1000))
        .collect();
    // 94 partitions + MD5 row + end marker: what gen_esp32part allows at most.
    let t94 = PartitionTable::from_partitions(&parts[..94]);
    let b = t94.to_bytes();
    for policy in BOTH {
        assert_eq!(PartitionTable::parse(&b, policy, None).unwrap(), t94);
    }
    // 95 partitions + MD5 row fill all 96 rows: the app accepts it, the bootloader finds no end.
    let t95 = PartitionTable::from_partitions(&parts);
    assert_eq!(t95.partitions().len(), 95);
    let b = t95.to_bytes();
    assert_eq!(
        PartitionTable::parse(&b, Md5Policy::Required, None).unwrap(),
        t95
    );
    assert_eq!(
        PartitionTable::parse(&b, Md5Policy::Optional, None),
        Err(PartitionError::Unterminated)
    );
    // 96 partition rows: nothing accepts it.
    let mut b96 = b.to_vec();
    b96[95 * 32..].copy_from_slice(&row("p95", 1, 0x81, 0x80000, 0x1000).to_bytes());
    for policy in BOTH {
        assert_eq!(
            PartitionTable::parse(&b96, policy, None),
            Err(PartitionError::Unterminated)
        );
    }
    // More rows than fit are cut.
    let mut many = parts.clone();
    many.push(row("extra", 1, 0x81, 0, 0));
    assert_eq!(
        PartitionTable::from_partitions(&many).partitions().len(),
        MAX_PARTITIONS
    );
}

#[test]
fn last_one_wins_and_ota_count_is_contiguous() {
    let parts = [
        row("otadata", 1, 0, 0xD000, 0x2000),
        row("factory", 0, 0, 0x10000, 0x10000),
        row("ota_0", 0, 0x10, 0x20000, 0x10000),
        row("ota_2", 0, 0x12, 0x30000, 0x10000),
        row("factory2", 0, 0, 0x40000, 0x10000),
        row("otadata2", 1, 0, 0x50000, 0x2000),
        row("test", 0, 0x20, 0x60000, 0x10000),
        row("tee", 0, 0x30, 0x70000, 0x10000),
    ];
    let t = PartitionTable::from_partitions(&parts);
    assert_eq!(t.factory().unwrap().name(), "factory2");
    assert_eq!(t.otadata().unwrap().name(), "otadata2");
    assert_eq!(t.test().unwrap().name(), "test");
    assert_eq!(t.ota_count(), 1, "ota_0, no ota_1: one slot");
    assert_eq!(t.ota(2).unwrap().name(), "ota_2");
    assert!(t.partitions()[7].ota_slot().is_none() && t.partitions()[7].is_app());
    let back = PartitionTable::parse(&t.to_bytes(), Md5Policy::Required, None).unwrap();
    assert_eq!(back, t);
}

#[test]
fn partition_helpers() {
    let mut p = row("sixteen_chars_ab", 0, 0x1F, 0x100000, 0x1000);
    assert_eq!(p.name(), "sixteen_chars_ab");
    assert_eq!(p.ota_slot(), Some(15));
    assert!(p.is_app() && !p.is_factory() && !p.is_otadata());
    assert!(p.contains(0x100000) && p.contains(0x100FFF));
    assert!(!p.contains(0xFFFFF) && !p.contains(0x101000));
    p.label[0] = 0xFF;
    assert_eq!(p.name(), "?");
    let edge = row("edge", 1, 0, u32::MAX - 0xFFF, 0x1000);
    assert!(edge.is_otadata() && edge.contains(u32::MAX) && !edge.contains(0));
    assert_eq!(
        Partition::label_from_str("a_much_longer_label_than_16"),
        *b"a_much_longer_la"
    );
    // Flags are little-endian at 0x1C; bit 0 encrypted, bit 1 read-only.
    let mut f = row("f", 1, 2, 0x9000, 0x6000);
    f.flags = Partition::FLAG_ENCRYPTED | Partition::FLAG_READONLY;
    assert_eq!(&f.to_bytes()[28..], &[3, 0, 0, 0]);
    let t = PartitionTable::from_partitions(&[f]);
    assert_eq!(
        PartitionTable::parse(&t.to_bytes(), Md5Policy::Required, None)
            .unwrap()
            .partitions()[0]
            .flags,
        3
    );
}

fn arb_partition() -> impl Strategy<Value = Partition> {
    (
        any::<u8>(),
        any::<u8>(),
        any::<u32>(),
        any::<u32>(),
        any::<[u8; 16]>(),
        any::<u32>(),
    )
        .prop_map(|(ty, subtype, offset, size, label, flags)| Partition {
            ty,
            subtype,
            offset,
            size,
            label,
            flags,
        })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn parse_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..3500), size in any::<Option<u32>>()) {
        for policy in BOTH {
            let _ = PartitionTable::parse(&bytes, policy, size);
        }
    }

    #[test]
    fn parse_never_panics_on_mangled_tables(flips in proptest::collection::vec((0usize..0x120, any::<u8>()), 1..6)) {
        let mut t = TABLE_TWO_OTA.to_vec();
        for (at, v) in flips {
            t[at] = v;
        }
        for policy in BOTH {
            let _ = PartitionTable::parse(&t, policy, Some(FLASH_SIZE));
        }
    }

    #[test]
    fn written_tables_read_back(parts in proptest::collection::vec(arb_partition(), 0..=94)) {
        let t = PartitionTable::from_partitions(&parts);
        let bytes = t.to_bytes();
        for policy in BOTH {
            prop_assert_eq!(&PartitionTable::parse(&bytes, policy, None).unwrap(), &t);
        }
    }
}
