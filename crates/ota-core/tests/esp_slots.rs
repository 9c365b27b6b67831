//! The app side of otadata (§2.7, §2.8, §2.10): the writer from blank produces the §5 vectors
//! byte for byte, in-place state changes, invalidation before an update, and where the
//! bootloader will go.

mod common;

use common::*;
use ota_core::esp::partition::{Md5Policy, Partition, PartitionTable};
use ota_core::esp::slots::next_seq;
use ota_core::esp::{OtaData, OtaEntry, OtaImgState, OtaSlots, SlotError};

fn slots(table: &[u8]) -> OtaSlots {
    OtaSlots::new(PartitionTable::parse(table, Md5Policy::Required, Some(FLASH_SIZE)).unwrap())
        .unwrap()
}

fn part(s: &OtaSlots, name: &str) -> Partition {
    *s.table().find(name).unwrap()
}

fn sector(f: &RamFlash, i: u32) -> [u8; 32] {
    f.slice(OTADATA_OFFSET + i * 0x1000, 32).try_into().unwrap()
}

#[test]
fn new_requires_otadata_and_ota_0() {
    let t = PartitionTable::parse(TABLE_TWO_OTA, Md5Policy::Required, None).unwrap();
    let s = OtaSlots::new(t.clone()).unwrap();
    assert_eq!(s.otadata_partition().offset, OTADATA_OFFSET);
    assert_eq!(s.ota_count(), 2);
    assert_eq!(s.table(), &t);
    let without = |pred: &dyn Fn(&Partition) -> bool| {
        let rows: Vec<_> = t
            .partitions()
            .iter()
            .copied()
            .filter(|p| !pred(p))
            .collect();
        OtaSlots::new(PartitionTable::from_partitions(&rows)).err()
    };
    assert_eq!(without(&|p| p.is_otadata()), Some(SlotError::NoOtadata));
    assert_eq!(
        without(&|p| p.ota_slot().is_some()),
        Some(SlotError::NoOtaSlots)
    );
    assert_eq!(
        without(&|p| p.ota_slot() == Some(0)),
        Some(SlotError::NoOtaSlots),
        "ota_1 alone is no slot"
    );
    let mut rows = t.partitions().to_vec();
    rows[1].size = 0x1000;
    assert_eq!(
        OtaSlots::new(PartitionTable::from_partitions(&rows)).err(),
        Some(SlotError::NoOtadata)
    );
}

/// §2.7 "Typical 2-slot sequence from blank", both rollback settings, byte for byte.
#[test]
fn writer_sequence_from_blank() {
    let s = slots(TABLE_TWO_OTA);
    let (ota0, ota1) = (part(&s, "ota_0"), part(&s, "ota_1"));
    for (state, first_vector) in [
        (OtaImgState::New, OTADATA_SEQ1_NEW),
        (OtaImgState::Undefined, OTADATA_SEQ1_UNDEFINED),
    ] {
        let mut f = esp_flash(TABLE_TWO_OTA, OTADATA_BLANK);
        s.set_boot_partition(&mut f, &ota0, state).unwrap();
        assert_eq!(otadata_bytes(&f), first_vector);
        // IDF erases the sector, then programs the entry. A sector that reads blank is not
        // erased again (the radio stops during every erase): the bytes are the same.
        assert_eq!(
            f.ops,
            [Op::Write {
                at: 0xD000,
                len: 32
            }]
        );
        assert_eq!(s.boot_partition(&mut f).unwrap(), ota0);

        let raw = state.to_raw();
        // A sector that holds an entry is erased first, as IDF does.
        f.ops.clear();
        s.set_boot_partition(&mut f, &ota0, state).unwrap();
        assert!(matches!(f.ops[0], Op::Erase { .. }), "{:?}", f.ops);
        let mut f = esp_flash(TABLE_TWO_OTA, first_vector);
        s.set_boot_partition(&mut f, &ota1, state).unwrap();
        let expected = with_entry(first_vector, 1, entry_bytes(2, raw, 0x55F6_3774));
        assert_eq!(otadata_bytes(&f), &expected[..]);
        assert_eq!(s.boot_partition(&mut f).unwrap(), ota1);

        s.set_boot_partition(&mut f, &ota0, state).unwrap();
        let expected = with_entry(&expected, 0, entry_bytes(3, raw, 0xED4A_5011));
        assert_eq!(otadata_bytes(&f), &expected[..]);
        assert_eq!(s.boot_partition(&mut f).unwrap(), ota0);

        s.set_boot_partition(&mut f, &ota1, state).unwrap();
        let expected = with_entry(&expected, 1, entry_bytes(4, raw, 0x709D_68A8));
        assert_eq!(otadata_bytes(&f), &expected[..]);
        assert_eq!(s.boot_partition(&mut f).unwrap(), ota1);
    }
}

#[test]
fn rollback_update_from_ota_0_gives_the_s1_new_vector() {
    // ota_0 confirmed (what the bootloader writes after booting ota_0 on a blank otadata).
    let s = slots(TABLE_TWO_OTA);
    let mut f = esp_flash(TABLE_TWO_OTA, OTADATA_SEQ1_VALID);
    s.set_boot_partition(&mut f, &part(&s, "ota_1"), OtaImgState::New)
        .unwrap();
    assert_eq!(otadata_bytes(&f), OTADATA_S1_NEW);
}

#[test]
fn first_switch_from_factory_to_ota_1_writes_seq_2_into_sector_0() {
    let s = slots(TABLE_TWO_OTA);
    let mut f = esp_flash(TABLE_TWO_OTA, OTADATA_BLANK);
    s.set_boot_partition(&mut f, &part(&s, "ota_1"), OtaImgState::Undefined)
        .unwrap();
    assert_eq!(sector(&f, 0), entry_bytes(2, u32::MAX, 0x55F6_3774));
    assert_eq!(sector(&f, 1), [0xFF; 32]);
    assert_eq!(s.boot_partition(&mut f).unwrap(), part(&s, "ota_1"));
}

/// IDF v6.0+: selecting the active slot again rewrites its entry in place, same seq.
#[test]
fn selecting_the_active_slot_rewrites_in_place() {
    let s = slots(TABLE_TWO_OTA);
    let mut f = esp_flash(TABLE_TWO_OTA, OTADATA_S1_NEW);
    s.set_boot_partition(&mut f, &part(&s, "ota_1"), OtaImgState::Undefined)
        .unwrap();
    assert_eq!(
        otadata_bytes(&f),
        &with_entry(OTADATA_S1_NEW, 1, entry_bytes(2, u32::MAX, 0x55F6_3774))[..]
    );
    assert_eq!(
        f.ops,
        [
            Op::Erase {
                from: 0xE000,
                to: 0xF000
            },
            Op::Write {
                at: 0xE000,
                len: 32
            }
        ]
    );
    // s0 seq 3 (ota_0) active, s1 seq 2: ota_0 again -> sector 0 in place.
    let mut f = esp_flash(TABLE_TWO_OTA, OTADATA_S0SEQ3_S1SEQ2);
    s.set_boot_partition(&mut f, &part(&s, "ota_0"), OtaImgState::New)
        .unwrap();
    assert_eq!(sector(&f, 0), entry_bytes(3, 0, 0xED4A_5011));
    assert_eq!(
        sector(&f, 1),
        OtaEntry::new(2, OtaImgState::Valid).to_bytes()
    );
    // ... and ota_1 -> sector 1 with seq 4.
    s.set_boot_partition(&mut f, &part(&s, "ota_1"), OtaImgState::New)
        .unwrap();
    assert_eq!(sector(&f, 1), entry_bytes(4, 0, 0x709D_68A8));
}

#[test]
fn the_written_sector_keeps_its_label() {
    let s = slots(TABLE_TWO_OTA);
    let mut otadata = OTADATA_SEQ1_VALID.to_vec();
    otadata[0x1004..0x1018].copy_from_slice(b"old label in sector1");
    otadata[0x1018..0x101C].copy_from_slice(&4u32.to_le_bytes()); // and an ABORTED state
    let mut f = esp_flash(TABLE_TWO_OTA, &otadata);
    s.set_boot_partition(&mut f, &part(&s, "ota_1"), OtaImgState::New)
        .unwrap();
    let e = OtaEntry::from_bytes(&sector(&f, 1));
    assert_eq!(&e.label, b"old label in sector1");
    assert_eq!((e.seq, e.state, e.crc), (2, OtaImgState::New, 0x55F6_3774));
    // Blank-otadata case: sector 0's old label stays too.
    let mut otadata = OTADATA_BLANK.to_vec();
    otadata[4..24].copy_from_slice(b"xxxxxxxxxxxxxxxxxxxx");
    let mut f = esp_flash(TABLE_TWO_OTA, &otadata);
    s.set_boot_partition(&mut f, &part(&s, "ota_0"), OtaImgState::New)
        .unwrap();
    assert_eq!(&sector(&f, 0)[4..24], b"xxxxxxxxxxxxxxxxxxxx");
}

#[test]
fn selecting_factory_erases_otadata() {
    let s = slots(TABLE_TWO_OTA);
    let mut f = esp_flash(TABLE_TWO_OTA, OTADATA_S1_PENDING);
    s.set_boot_partition(&mut f, &part(&s, "factory"), OtaImgState::New)
        .unwrap();
    assert_eq!(otadata_bytes(&f), OTADATA_BLANK);
    assert_eq!(
        f.ops,
        [Op::Erase {
            from: 0xD000,
            to: 0xF000
        }]
    );
    assert_eq!(s.boot_partition(&mut f).unwrap(), part(&s, "factory"));
}

#[test]
fn set_boot_partition_refuses_non_ota_targets() {
    let s = slots(TABLE_TWO_OTA);
    let mut f = esp_flash(TABLE_TWO_OTA, OTADATA_BLANK);
    for name in ["nvs", "otadata", "phy_init"] {
        assert_eq!(
            s.set_boot_partition(&mut f, &part(&s, name), OtaImgState::New),
            Err(SlotError::NotOtaSlot)
        );
    }
    let mut ota5 = part(&s, "ota_1");
    ota5.subtype = 0x15;
    assert_eq!(
        s.set_boot_partition(&mut f, &ota5, OtaImgState::New),
        Err(SlotError::NotOtaSlot)
    );
    let mut elsewhere = part(&s, "ota_1");
    elsewhere.offset = 0x30_0000;
    assert_eq!(
        s.set_boot_partition(&mut f, &elsewhere, OtaImgState::New),
        Err(SlotError::NotOtaSlot)
    );
    let test = Partition {
        subtype: 0x20,
        ..part(&s, "ota_1")
    };
    assert_eq!(
        s.set_boot_partition(&mut f, &test, OtaImgState::New),
        Err(SlotError::NotOtaSlot)
    );
    assert!(f.ops.is_empty());
}

#[test]
fn next_sequence_numbers() {
    // §2.7's examples.
    assert_eq!(next_seq(1, 1, 2), Some(2));
    assert_eq!(next_seq(2, 0, 2), Some(3));
    assert_eq!(next_seq(3, 1, 2), Some(4));
    assert_eq!(next_seq(2, 0, 3), Some(4));
    assert_eq!(next_seq(3, 1, 3), Some(5));
    // The target already active: the same seq.
    assert_eq!(next_seq(5, 0, 2), Some(5));
    assert_eq!(next_seq(0, 0, 2), Some(1));
    assert_eq!(next_seq(7, 0, 1), Some(7));
    // Near the top: 0xFFFFFFFF would read as erased.
    assert_eq!(next_seq(0xFFFF_FFFD, 1, 2), Some(0xFFFF_FFFE));
    assert_eq!(next_seq(0xFFFF_FFFE, 0, 2), None);
    assert_eq!(next_seq(3, 0, 0), None);
    for n in 1..=16u8 {
        for slot in 0..n {
            for cur in [1u32, 2, 3, 17, 100, 1000] {
                let seq = next_seq(cur, slot, n).unwrap();
                assert_eq!((seq - 1) % u32::from(n), u32::from(slot));
                assert!(seq >= cur && seq < cur + u32::from(n));
            }
        }
    }
}

#[test]
fn seq_exhaustion_is_an_error() {
    let s = slots(TABLE_TWO_OTA);
    let otadata = with_entry(
        OTADATA_BLANK,
        0,
        OtaEntry::new(0xFFFF_FFFE, OtaImgState::Valid).to_bytes(),
    );
    let mut f = esp_flash(TABLE_TWO_OTA, &otadata);
    // 0xFFFFFFFE selects ota_1 ((0xFFFFFFFE - 1) % 2 = 1); ota_0 would need 0xFFFFFFFF.
    assert_eq!(
        s.set_boot_partition(&mut f, &part(&s, "ota_0"), OtaImgState::New),
        Err(SlotError::SeqExhausted)
    );
    s.set_boot_partition(&mut f, &part(&s, "ota_1"), OtaImgState::New)
        .unwrap();
}

#[test]
fn set_active_state_rewrites_in_place() {
    let s = slots(TABLE_TWO_OTA);
    // NEW -> VALID gives the seq1_valid vector.
    let mut f = esp_flash(TABLE_TWO_OTA, OTADATA_SEQ1_NEW);
    s.set_active_state(&mut f, OtaImgState::Valid).unwrap();
    assert_eq!(otadata_bytes(&f), OTADATA_SEQ1_VALID);
    assert_eq!(
        f.ops,
        [
            Op::Erase {
                from: 0xD000,
                to: 0xE000
            },
            Op::Write {
                at: 0xD000,
                len: 32
            }
        ]
    );
    // Already VALID: nothing written.
    f.ops.clear();
    s.set_active_state(&mut f, OtaImgState::Valid).unwrap();
    assert!(f.ops.is_empty());
    // s1 NEW -> PENDING_VERIFY -> ABORTED gives the vectors.
    let mut f = esp_flash(TABLE_TWO_OTA, OTADATA_S1_NEW);
    s.set_active_state(&mut f, OtaImgState::PendingVerify)
        .unwrap();
    assert_eq!(otadata_bytes(&f), OTADATA_S1_PENDING);
    s.set_active_state(&mut f, OtaImgState::Aborted).unwrap();
    assert_eq!(otadata_bytes(&f), OTADATA_S1_ABORTED);
    // Now sector 0 is active again.
    assert_eq!(s.boot_partition(&mut f).unwrap(), part(&s, "ota_0"));
    s.set_active_state(&mut f, OtaImgState::Invalid).unwrap();
    assert_eq!(
        sector(&f, 0),
        OtaEntry::new(1, OtaImgState::Invalid).to_bytes()
    );
    // Both invalid: no active entry; the default is factory.
    assert_eq!(
        s.set_active_state(&mut f, OtaImgState::Valid),
        Err(SlotError::NoActiveEntry)
    );
    assert_eq!(s.boot_partition(&mut f).unwrap(), part(&s, "factory"));
    let mut f = esp_flash(TABLE_TWO_OTA, OTADATA_BLANK);
    assert_eq!(
        s.set_active_state(&mut f, OtaImgState::Valid),
        Err(SlotError::NoActiveEntry)
    );
    assert!(f.ops.is_empty());
}

/// §2.10 for every vector, with and without a factory partition.
#[test]
fn boot_partition_of_every_vector() {
    for (table, default) in [(TABLE_TWO_OTA, "factory"), (TABLE_NOFACTORY, "ota_0")] {
        let s = slots(table);
        let cases: [(&[u8], &str); 9] = [
            (OTADATA_BLANK, default),
            (OTADATA_SEQ1_VALID, "ota_0"),
            (OTADATA_SEQ1_UNDEFINED, "ota_0"),
            (OTADATA_SEQ1_NEW, "ota_0"),
            (OTADATA_S1_NEW, "ota_1"),
            (OTADATA_S1_PENDING, "ota_1"),
            (OTADATA_S1_ABORTED, "ota_0"),
            (OTADATA_S0SEQ3_S1SEQ2, "ota_0"),
            (OTADATA_S1_BADCRC, "ota_0"),
        ];
        for (otadata, expected) in cases {
            let mut f = esp_flash(table, otadata);
            assert_eq!(s.boot_partition(&mut f).unwrap().name(), expected);
            assert!(f.ops.is_empty(), "no side effects");
        }
        // Both CRCs bad (seq != FF): no active entry, so the default.
        let otadata = with_entry(
            &with_entry(OTADATA_BLANK, 0, entry_bytes(1, 2, 0x1234)),
            1,
            entry_bytes(2, 2, 0x5678),
        );
        let mut f = esp_flash(table, &otadata);
        assert_eq!(s.boot_partition(&mut f).unwrap().name(), default);
    }
}

#[test]
fn state_of_and_slot_states() {
    let s = slots(TABLE_TWO_OTA);
    let (ota0, ota1) = (part(&s, "ota_0"), part(&s, "ota_1"));
    let mut f = esp_flash(TABLE_TWO_OTA, OTADATA_S1_PENDING);
    assert_eq!(s.state_of(&mut f, &ota0).unwrap(), Some(OtaImgState::Valid));
    assert_eq!(
        s.state_of(&mut f, &ota1).unwrap(),
        Some(OtaImgState::PendingVerify)
    );
    assert_eq!(
        s.state_of(&mut f, &part(&s, "factory")),
        Err(SlotError::NotOtaSlot)
    );
    let states = s.slot_states(&mut f).unwrap();
    assert_eq!(states.len(), 2);
    assert_eq!(
        (states[0].partition, states[0].state, states[0].is_boot),
        (ota0, Some(OtaImgState::Valid), false)
    );
    assert_eq!(
        (states[1].partition, states[1].state, states[1].is_boot),
        (ota1, Some(OtaImgState::PendingVerify), true)
    );
    // ABORTED is still reported (IDF ignores the state here), a bad CRC is not.
    let mut f = esp_flash(TABLE_TWO_OTA, OTADATA_S1_ABORTED);
    assert_eq!(
        s.state_of(&mut f, &ota1).unwrap(),
        Some(OtaImgState::Aborted)
    );
    let mut f = esp_flash(TABLE_TWO_OTA, OTADATA_S1_BADCRC);
    assert_eq!(s.state_of(&mut f, &ota1).unwrap(), None);
    let mut f = esp_flash(TABLE_TWO_OTA, OTADATA_BLANK);
    assert_eq!(s.state_of(&mut f, &ota0).unwrap(), None);
    let states = s.slot_states(&mut f).unwrap();
    assert!(states.iter().all(|st| st.state.is_none() && !st.is_boot));
    // Sector 0 is looked at first: with both entries on ota_0, its state wins.
    let otadata = with_entry(
        OTADATA_S0SEQ3_S1SEQ2,
        1,
        OtaEntry::new(5, OtaImgState::New).to_bytes(),
    );
    let mut f = esp_flash(TABLE_TWO_OTA, &otadata);
    assert_eq!(s.state_of(&mut f, &ota0).unwrap(), Some(OtaImgState::Valid));
}

#[test]
fn next_update_partition_wraps() {
    let s = slots(TABLE_TWO_OTA);
    let (factory, ota0, ota1) = (part(&s, "factory"), part(&s, "ota_0"), part(&s, "ota_1"));
    assert_eq!(s.next_update_partition(&factory).unwrap(), ota0);
    assert_eq!(s.next_update_partition(&ota0).unwrap(), ota1);
    assert_eq!(s.next_update_partition(&ota1).unwrap(), ota0);
    // A single OTA slot while running it: nothing to update.
    let rows: Vec<_> = s
        .table()
        .partitions()
        .iter()
        .copied()
        .filter(|p| p.ota_slot() != Some(1))
        .collect();
    let one = OtaSlots::new(PartitionTable::from_partitions(&rows)).unwrap();
    assert_eq!(
        one.next_update_partition(&ota0),
        Err(SlotError::RunningPartition)
    );
    assert_eq!(one.next_update_partition(&factory).unwrap(), ota0);
}

#[test]
fn invalidate_inactive_before_an_update() {
    let s = slots(TABLE_TWO_OTA);
    let (ota0, ota1) = (part(&s, "ota_0"), part(&s, "ota_1"));
    // Running ota_1 (s1 active), updating ota_0: s0 selects ota_0 -> erased.
    let mut f = esp_flash(TABLE_TWO_OTA, OTADATA_S1_NEW);
    s.invalidate_inactive_for(&mut f, &ota0).unwrap();
    assert_eq!(sector(&f, 0), [0xFF; 32]);
    assert_eq!(sector(&f, 1), OtaEntry::new(2, OtaImgState::New).to_bytes());
    assert_eq!(
        f.ops,
        [Op::Erase {
            from: 0xD000,
            to: 0xE000
        }]
    );
    // Still boots ota_1.
    assert_eq!(s.boot_partition(&mut f).unwrap(), ota1);
    // The inactive entry selects another slot: untouched.
    let mut f = esp_flash(TABLE_TWO_OTA, OTADATA_S1_NEW);
    s.invalidate_inactive_for(&mut f, &ota1).unwrap();
    assert!(f.ops.is_empty());
    // s0 seq 3 active (ota_0), s1 seq 2 (ota_1): updating ota_1 erases sector 1.
    let mut f = esp_flash(TABLE_TWO_OTA, OTADATA_S0SEQ3_S1SEQ2);
    s.invalidate_inactive_for(&mut f, &ota1).unwrap();
    assert_eq!(
        OtaData::from_partition_bytes(otadata_bytes(&f)).entries[1],
        OtaEntry::ERASED
    );
    // Blank, single entry, bad CRC: nothing to do.
    for otadata in [OTADATA_BLANK, OTADATA_SEQ1_NEW, OTADATA_S1_BADCRC] {
        let mut f = esp_flash(TABLE_TWO_OTA, otadata);
        s.invalidate_inactive_for(&mut f, &ota1).unwrap();
        s.invalidate_inactive_for(&mut f, &ota0).unwrap();
        if otadata != OTADATA_S1_BADCRC {
            assert!(f.ops.is_empty());
        }
    }
    // An ABORTED inactive entry with a good CRC is erased too (IDF checks seq and CRC only).
    let otadata = with_entry(
        OTADATA_S0SEQ3_S1SEQ2,
        1,
        OtaEntry::new(2, OtaImgState::Aborted).to_bytes(),
    );
    let mut f = esp_flash(TABLE_TWO_OTA, &otadata);
    s.invalidate_inactive_for(&mut f, &ota1).unwrap();
    assert_eq!(sector(&f, 1), [0xFF; 32]);
    assert_eq!(
        s.invalidate_inactive_for(&mut f, &part(&s, "factory")),
        Err(SlotError::NotOtaSlot)
    );
}

#[test]
fn invalidate_inactive_except_running_is_idf_exact() {
    let s = slots(TABLE_TWO_OTA);
    let (factory, ota0, ota1) = (part(&s, "factory"), part(&s, "ota_0"), part(&s, "ota_1"));
    // Inactive s0 selects ota_0; running ota_0 (a fallback boot): kept.
    let mut f = esp_flash(TABLE_TWO_OTA, OTADATA_S1_NEW);
    s.invalidate_inactive_except(&mut f, &ota0).unwrap();
    assert!(f.ops.is_empty());
    // Running ota_1 or factory: erased.
    for running in [ota1, factory] {
        let mut f = esp_flash(TABLE_TWO_OTA, OTADATA_S1_NEW);
        s.invalidate_inactive_except(&mut f, &running).unwrap();
        assert_eq!(sector(&f, 0), [0xFF; 32]);
    }
}

#[test]
fn otadata_writes_fail_cleanly_on_a_small_flash() {
    // A flash that ends inside otadata: typed errors, no panic.
    let t = PartitionTable::parse(TABLE_TWO_OTA, Md5Policy::Required, None).unwrap();
    let s = OtaSlots::new(t).unwrap();
    let mut f = RamFlash::new(0xE000);
    assert!(matches!(s.read_otadata(&mut f), Err(SlotError::Flash(_))));
    assert!(matches!(s.boot_partition(&mut f), Err(SlotError::Flash(_))));
    assert!(matches!(
        s.set_boot_partition(&mut f, &part(&s, "factory"), OtaImgState::New),
        Err(SlotError::Flash(_))
    ));
}
