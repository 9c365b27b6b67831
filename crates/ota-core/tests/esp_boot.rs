//! The bootloader's choice (§2.5, §2.6) on every §5 otadata vector, with and without rollback
//! support, including the otadata it writes; and the app's early-boot rollback guard.

mod common;

use common::*;
use ota_core::esp::boot::{
    BootError, Booted, BootloaderConfig, GuardOutcome, rollback_guard, run_bootloader,
    run_bootloader_with_revision,
};
use ota_core::esp::image::ImageError;
use ota_core::esp::partition::{Md5Policy, PartitionError, PartitionTable};
use ota_core::esp::{Chip, OtaEntry, OtaImgState, OtaSlots, SlotError};

const OFF: BootloaderConfig = BootloaderConfig { rollback: false };
const ON: BootloaderConfig = BootloaderConfig { rollback: true };

fn table(bytes: &[u8]) -> PartitionTable {
    PartitionTable::parse(bytes, Md5Policy::Optional, Some(FLASH_SIZE)).unwrap()
}

/// A flash with `table`, `otadata` and a valid image named after its partition in each app slot.
fn device(table_bytes: &[u8], otadata: &[u8]) -> RamFlash {
    let mut f = esp_flash(table_bytes, otadata);
    for p in table(table_bytes)
        .partitions()
        .iter()
        .filter(|p| p.is_app())
    {
        f.load(p.offset, &build_image(&ImageSpec::app(p.name(), 200)));
    }
    f
}

fn boot(f: &mut RamFlash, config: BootloaderConfig) -> Booted {
    run_bootloader(f, TABLE_OFFSET, FLASH_SIZE, Chip::Esp32c3, config).unwrap()
}

fn booted_name(b: &Booted) -> String {
    let name = cstr(&b.image.app.unwrap().project_name).to_string();
    assert_eq!(
        name,
        b.partition.name(),
        "the image comes from the booted partition"
    );
    name
}

fn corrupt(f: &mut RamFlash, table_bytes: &[u8], name: &str) {
    let p = *table(table_bytes).find(name).unwrap();
    let at = (p.offset + 0x80) as usize;
    f.mem[at] ^= 0x01;
}

/// §5's table, both tables, both bootloader builds: slot, and otadata afterwards.
#[test]
fn every_vector_boots_as_documented() {
    let pending_after_new = with_entry(OTADATA_SEQ1_NEW, 0, entry_bytes(1, 1, 0x4743_989A));
    // (vector, expected boot without rollback, with rollback, otadata after rollback boot)
    type Case = (
        &'static str,
        &'static [u8],
        &'static str,
        &'static str,
        Vec<u8>,
    );
    let cases: [Case; 9] = [
        (
            "blank",
            OTADATA_BLANK,
            "factory",
            "factory",
            OTADATA_BLANK.to_vec(),
        ),
        (
            "seq1_valid",
            OTADATA_SEQ1_VALID,
            "ota_0",
            "ota_0",
            OTADATA_SEQ1_VALID.to_vec(),
        ),
        (
            "seq1_undefined",
            OTADATA_SEQ1_UNDEFINED,
            "ota_0",
            "ota_0",
            OTADATA_SEQ1_UNDEFINED.to_vec(),
        ),
        (
            "seq1_new",
            OTADATA_SEQ1_NEW,
            "ota_0",
            "ota_0",
            pending_after_new,
        ),
        (
            "s1 new",
            OTADATA_S1_NEW,
            "ota_1",
            "ota_1",
            OTADATA_S1_PENDING.to_vec(),
        ),
        (
            "s1 pending",
            OTADATA_S1_PENDING,
            "ota_1",
            "ota_0",
            OTADATA_S1_ABORTED.to_vec(),
        ),
        (
            "s1 aborted",
            OTADATA_S1_ABORTED,
            "ota_0",
            "ota_0",
            OTADATA_S1_ABORTED.to_vec(),
        ),
        (
            "s0 seq3",
            OTADATA_S0SEQ3_S1SEQ2,
            "ota_0",
            "ota_0",
            OTADATA_S0SEQ3_S1SEQ2.to_vec(),
        ),
        (
            "s1 bad crc",
            OTADATA_S1_BADCRC,
            "ota_0",
            "ota_0",
            OTADATA_S1_BADCRC.to_vec(),
        ),
    ];
    for (name, otadata, without, with, after) in cases {
        // Without rollback support the bootloader never writes (except the initial case).
        let mut f = device(TABLE_TWO_OTA, otadata);
        let b = boot(&mut f, OFF);
        assert_eq!(booted_name(&b), without, "{name} without rollback");
        assert!(b.skipped.is_empty());
        assert_eq!(otadata_bytes(&f), otadata, "{name}: otadata untouched");
        assert_eq!(f.erase_count() + f.write_count(), 0, "{name}");

        let mut f = device(TABLE_TWO_OTA, otadata);
        let b = boot(&mut f, ON);
        assert_eq!(booted_name(&b), with, "{name} with rollback");
        assert_eq!(
            otadata_bytes(&f),
            &after[..],
            "{name}: otadata after a rollback boot"
        );
    }
}

#[test]
fn blank_otadata_without_factory_boots_ota_0_and_writes_seq_1_valid() {
    for config in [OFF, ON] {
        let mut f = device(TABLE_NOFACTORY, OTADATA_BLANK);
        let b = boot(&mut f, config);
        assert_eq!(booted_name(&b), "ota_0");
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
        // Next boot: nothing more is written.
        f.ops.clear();
        assert_eq!(booted_name(&boot(&mut f, config)), "ota_0");
        assert!(f.ops.is_empty());
    }
}

#[test]
fn initial_contents_write_the_slot_that_actually_loads() {
    // No factory, blank otadata, ota_0 broken: ota_1 loads and sector 0 gets seq 2, VALID.
    let mut f = device(TABLE_NOFACTORY, OTADATA_BLANK);
    corrupt(&mut f, TABLE_NOFACTORY, "ota_0");
    let b = boot(&mut f, OFF);
    assert_eq!(booted_name(&b), "ota_1");
    assert_eq!(b.skipped.len(), 1);
    assert_eq!(b.skipped[0].0.name(), "ota_0");
    assert!(matches!(
        b.skipped[0].1,
        ImageError::ChecksumMismatch { .. }
    ));
    assert_eq!(
        &otadata_bytes(&f)[..32],
        &OtaEntry::new(2, OtaImgState::Valid).to_bytes()
    );
    // Blank plus an ABORTED entry with a bad CRC: both `invalid()`, both blank-or-bad-CRC, so
    // initial contents: written.
    let bad = with_entry(OTADATA_BLANK, 1, entry_bytes(2, 4, 2));
    let mut f = device(TABLE_NOFACTORY, &bad);
    assert_eq!(booted_name(&boot(&mut f, OFF)), "ota_0");
    assert_eq!(
        &otadata_bytes(&f)[..32],
        &OtaEntry::new(1, OtaImgState::Valid).to_bytes()
    );
    // Both entries with bad CRCs but selectable states are not `invalid()`: step 4 does not
    // apply; no entry is active, so "try all partitions" from factory: ota_0 boots and
    // nothing is written.
    let bad = with_entry(
        &with_entry(OTADATA_BLANK, 0, entry_bytes(1, 2, 1)),
        1,
        entry_bytes(2, 2, 2),
    );
    let mut f = device(TABLE_NOFACTORY, &bad);
    assert_eq!(booted_name(&boot(&mut f, OFF)), "ota_0");
    assert_eq!(otadata_bytes(&f), &bad[..]);
    // ABORTED entries with good CRCs are not "initial": ota_0 boots, nothing is written.
    let aborted = with_entry(
        &with_entry(
            OTADATA_BLANK,
            0,
            OtaEntry::new(1, OtaImgState::Aborted).to_bytes(),
        ),
        1,
        OtaEntry::new(2, OtaImgState::Invalid).to_bytes(),
    );
    let mut f = device(TABLE_NOFACTORY, &aborted);
    assert_eq!(booted_name(&boot(&mut f, OFF)), "ota_0");
    assert_eq!(otadata_bytes(&f), &aborted[..]);
}

#[test]
fn nofactory_table_with_every_vector() {
    for (otadata, expected) in [
        (OTADATA_SEQ1_VALID, "ota_0"),
        (OTADATA_S1_NEW, "ota_1"),
        (OTADATA_S1_PENDING, "ota_1"),
        (OTADATA_S1_ABORTED, "ota_0"),
        (OTADATA_S0SEQ3_S1SEQ2, "ota_0"),
        (OTADATA_S1_BADCRC, "ota_0"),
    ] {
        let mut f = device(TABLE_NOFACTORY, otadata);
        assert_eq!(booted_name(&boot(&mut f, OFF)), expected);
        assert_eq!(otadata_bytes(&f), otadata);
    }
}

#[test]
fn loading_order_falls_back_without_touching_otadata() {
    // ota_1 selected but broken: ota_0 (start-1) is next.
    let mut f = device(TABLE_TWO_OTA, OTADATA_S1_NEW);
    corrupt(&mut f, TABLE_TWO_OTA, "ota_1");
    let b = boot(&mut f, OFF);
    assert_eq!(booted_name(&b), "ota_0");
    assert_eq!(
        b.skipped.iter().map(|s| s.0.name()).collect::<Vec<_>>(),
        ["ota_1"]
    );
    assert_eq!(otadata_bytes(&f), OTADATA_S1_NEW);
    // ota_1 and ota_0 broken: factory.
    corrupt(&mut f, TABLE_TWO_OTA, "ota_0");
    let b = boot(&mut f, OFF);
    assert_eq!(booted_name(&b), "factory");
    assert_eq!(
        b.skipped.iter().map(|s| s.0.name()).collect::<Vec<_>>(),
        ["ota_1", "ota_0"]
    );
    // ota_0 selected and broken: factory comes before ota_1 (start-1 .. 0, factory, start+1 ..).
    let mut f = device(TABLE_TWO_OTA, OTADATA_SEQ1_VALID);
    corrupt(&mut f, TABLE_TWO_OTA, "ota_0");
    assert_eq!(booted_name(&boot(&mut f, OFF)), "factory");
    corrupt(&mut f, TABLE_TWO_OTA, "factory");
    let b = boot(&mut f, OFF);
    assert_eq!(booted_name(&b), "ota_1");
    assert_eq!(
        b.skipped.iter().map(|s| s.0.name()).collect::<Vec<_>>(),
        ["ota_0", "factory"]
    );
    assert_eq!(otadata_bytes(&f), OTADATA_SEQ1_VALID);
    // Everything broken.
    corrupt(&mut f, TABLE_TWO_OTA, "ota_1");
    assert_eq!(
        run_bootloader(&mut f, TABLE_OFFSET, FLASH_SIZE, Chip::Esp32c3, OFF),
        Err(BootError::NoBootableApp)
    );
}

#[test]
fn an_image_for_another_chip_revision_is_skipped_like_an_invalid_one() {
    // ota_1 (selected by otadata) needs chip v1.1; the bootloader on a v0.4 falls back to ota_0.
    let mut f = device(TABLE_TWO_OTA, OTADATA_S1_NEW);
    let p = *table(TABLE_TWO_OTA).find("ota_1").unwrap();
    let mut img = build_image(&ImageSpec::app("ota_1", 200));
    img[15..17].copy_from_slice(&101u16.to_le_bytes());
    let body = img.len() - 32;
    let h = sha256(&img[..body]);
    img[body..].copy_from_slice(&h);
    f.load(p.offset, &img);
    let on = |f: &mut RamFlash, rev| {
        run_bootloader_with_revision(f, TABLE_OFFSET, FLASH_SIZE, Chip::Esp32c3, rev, OFF).unwrap()
    };
    let b = on(&mut f, Some(4));
    assert_eq!(booted_name(&b), "ota_0");
    assert_eq!(
        b.skipped
            .iter()
            .map(|s| (s.0.name(), s.1))
            .collect::<Vec<_>>(),
        [(
            "ota_1",
            ImageError::ChipRevisionTooLow {
                min: 101,
                revision: 4
            }
        )]
    );
    assert_eq!(booted_name(&on(&mut f, Some(101))), "ota_1");
    assert_eq!(booted_name(&on(&mut f, None)), "ota_1");
    assert_eq!(booted_name(&boot(&mut f, OFF)), "ota_1");
}

#[test]
fn rollback_boot_marks_pending_before_loading() {
    // With rollback, NEW -> PENDING_VERIFY is written even if the image then fails.
    let mut f = device(TABLE_TWO_OTA, OTADATA_S1_NEW);
    corrupt(&mut f, TABLE_TWO_OTA, "ota_1");
    assert_eq!(booted_name(&boot(&mut f, ON)), "ota_0");
    assert_eq!(otadata_bytes(&f), OTADATA_S1_PENDING);
    // The next boot aborts it.
    assert_eq!(booted_name(&boot(&mut f, ON)), "ota_0");
    assert_eq!(otadata_bytes(&f), OTADATA_S1_ABORTED);
}

#[test]
fn both_pending_entries_are_aborted() {
    let otadata = with_entry(
        &with_entry(
            OTADATA_BLANK,
            0,
            OtaEntry::new(1, OtaImgState::PendingVerify).to_bytes(),
        ),
        1,
        OtaEntry::new(2, OtaImgState::PendingVerify).to_bytes(),
    );
    let mut f = device(TABLE_TWO_OTA, &otadata);
    assert_eq!(booted_name(&boot(&mut f, ON)), "factory");
    let after = otadata_bytes(&f);
    assert_eq!(
        &after[..32],
        &OtaEntry::new(1, OtaImgState::Aborted).to_bytes()
    );
    assert_eq!(
        &after[0x1000..0x1020],
        &OtaEntry::new(2, OtaImgState::Aborted).to_bytes()
    );
}

#[test]
fn wrong_chip_images_are_skipped() {
    let mut f = device(TABLE_TWO_OTA, OTADATA_S1_NEW);
    let b = run_bootloader(&mut f, TABLE_OFFSET, FLASH_SIZE, Chip::Esp32s3, OFF);
    assert_eq!(b, Err(BootError::NoBootableApp));
    let mut spec = ImageSpec::app("ota_1", 8);
    spec.chip_id = Chip::Esp32s3.id();
    f.load(0x21_0000, &build_image(&spec));
    let b = boot(&mut f, OFF);
    assert_eq!(booted_name(&b), "ota_0");
    assert!(matches!(
        b.skipped[0].1,
        ImageError::WrongChip { found: 9, .. }
    ));
}

#[test]
fn bad_tables_and_otadata() {
    let mut f = device(TABLE_TWO_OTA, OTADATA_BLANK);
    f.mem[0x8000 + 0x20 + 8] ^= 1;
    assert_eq!(
        run_bootloader(&mut f, TABLE_OFFSET, FLASH_SIZE, Chip::Esp32c3, OFF),
        Err(BootError::PartitionTable(PartitionError::Md5Mismatch))
    );
    // The bootloader accepts a table without MD5.
    let mut f = device(TABLE_TWO_OTA_NOMD5, OTADATA_S1_NEW);
    assert_eq!(booted_name(&boot(&mut f, OFF)), "ota_1");
    // A flash smaller than the table says.
    let mut f = device(TABLE_TWO_OTA, OTADATA_BLANK);
    assert!(matches!(
        run_bootloader(&mut f, TABLE_OFFSET, 0x30_0000, Chip::Esp32c3, OFF),
        Err(BootError::PartitionTable(PartitionError::OutOfFlash {
            row: 5,
            ..
        }))
    ));
    // Erased table sector.
    let mut f = RamFlash::new(FLASH_SIZE as usize);
    assert_eq!(
        run_bootloader(&mut f, TABLE_OFFSET, FLASH_SIZE, Chip::Esp32c3, OFF),
        Err(BootError::PartitionTable(PartitionError::BadMagic {
            row: 0
        }))
    );
    // A table beyond the flash: a read error.
    assert!(matches!(
        run_bootloader(&mut f, FLASH_SIZE, FLASH_SIZE, Chip::Esp32c3, OFF),
        Err(BootError::Flash(_))
    ));
    // otadata smaller than 0x2000: the bootloader resets.
    let mut rows = table(TABLE_TWO_OTA).partitions().to_vec();
    rows[1].size = 0x1000;
    let small = PartitionTable::from_partitions(&rows).to_bytes();
    let mut f = device(&small, OTADATA_BLANK);
    assert_eq!(
        run_bootloader(&mut f, TABLE_OFFSET, FLASH_SIZE, Chip::Esp32c3, OFF),
        Err(BootError::Slots(SlotError::NoOtadata))
    );
    // No otadata at all: factory.
    let rows: Vec<_> = table(TABLE_TWO_OTA)
        .partitions()
        .iter()
        .copied()
        .filter(|p| !p.is_otadata())
        .collect();
    let t = PartitionTable::from_partitions(&rows).to_bytes();
    let mut f = device(&t, OTADATA_S1_NEW);
    assert_eq!(booted_name(&boot(&mut f, ON)), "factory");
    assert_eq!(
        otadata_bytes(&f),
        OTADATA_S1_NEW,
        "not otadata any more: not touched"
    );
}

#[test]
fn a_gap_in_the_ota_slots_follows_the_bootloader() {
    // ota_0 and ota_2 (no ota_1): the bootloader counts 2 apps; seq 2 selects slot 1, which
    // does not exist, so it falls back to ota_0.
    let mut rows = table(TABLE_NOFACTORY).partitions().to_vec();
    rows[4].subtype = 0x12;
    rows[4].label = ota_core::esp::Partition::label_from_str("ota_2");
    let t = PartitionTable::from_partitions(&rows).to_bytes();
    let mut f = device(&t, OTADATA_S1_NEW);
    assert_eq!(booted_name(&boot(&mut f, OFF)), "ota_0");
}

// ----- rollback guard -----

fn guard(
    f: &mut RamFlash,
    table_bytes: &[u8],
    running: &str,
    config: BootloaderConfig,
) -> GuardOutcome {
    let t = table(table_bytes);
    let running = *t.find(running).unwrap();
    let slots = OtaSlots::new(t).unwrap();
    rollback_guard(f, &slots, &running, config).unwrap()
}

/// The stock (no rollback) bootloader plus the guard behaves like a rollback bootloader.
#[test]
fn guard_with_a_stock_bootloader() {
    let mut f = device(TABLE_TWO_OTA, OTADATA_S1_NEW);
    assert_eq!(booted_name(&boot(&mut f, OFF)), "ota_1");
    assert_eq!(
        guard(&mut f, TABLE_TWO_OTA, "ota_1", OFF),
        GuardOutcome::Trial
    );
    assert_eq!(otadata_bytes(&f), OTADATA_S1_PENDING);
    // Rebooted without confirming.
    assert_eq!(booted_name(&boot(&mut f, OFF)), "ota_1");
    assert_eq!(
        guard(&mut f, TABLE_TWO_OTA, "ota_1", OFF),
        GuardOutcome::RolledBack
    );
    assert_eq!(otadata_bytes(&f), OTADATA_S1_ABORTED);
    // The caller reboots: the previous image runs, confirmed.
    assert_eq!(booted_name(&boot(&mut f, OFF)), "ota_0");
    assert_eq!(
        guard(&mut f, TABLE_TWO_OTA, "ota_0", OFF),
        GuardOutcome::Confirmed
    );
    assert_eq!(otadata_bytes(&f), OTADATA_S1_ABORTED);
}

#[test]
fn guard_confirmed_trial_survives() {
    let mut f = device(TABLE_TWO_OTA, OTADATA_S1_NEW);
    assert_eq!(
        guard(&mut f, TABLE_TWO_OTA, "ota_1", OFF),
        GuardOutcome::Trial
    );
    // The app confirms itself.
    let slots = OtaSlots::new(table(TABLE_TWO_OTA)).unwrap();
    slots.set_active_state(&mut f, OtaImgState::Valid).unwrap();
    assert_eq!(
        guard(&mut f, TABLE_TWO_OTA, "ota_1", OFF),
        GuardOutcome::Confirmed
    );
    assert_eq!(booted_name(&boot(&mut f, OFF)), "ota_1");
}

#[test]
fn guard_first_update_from_factory_rolls_back_to_factory() {
    let mut f = device(TABLE_TWO_OTA, OTADATA_SEQ1_NEW);
    assert_eq!(
        guard(&mut f, TABLE_TWO_OTA, "ota_0", OFF),
        GuardOutcome::Trial
    );
    assert_eq!(
        guard(&mut f, TABLE_TWO_OTA, "ota_0", OFF),
        GuardOutcome::RolledBack
    );
    assert_eq!(
        &otadata_bytes(&f)[..32],
        &OtaEntry::new(1, OtaImgState::Aborted).to_bytes()
    );
    assert_eq!(booted_name(&boot(&mut f, OFF)), "factory");
    assert_eq!(
        guard(&mut f, TABLE_TWO_OTA, "factory", OFF),
        GuardOutcome::NotOta
    );
}

#[test]
fn guard_with_a_rollback_bootloader() {
    let mut f = device(TABLE_TWO_OTA, OTADATA_S1_NEW);
    assert_eq!(booted_name(&boot(&mut f, ON)), "ota_1");
    assert_eq!(otadata_bytes(&f), OTADATA_S1_PENDING);
    f.ops.clear();
    assert_eq!(
        guard(&mut f, TABLE_TWO_OTA, "ota_1", ON),
        GuardOutcome::Trial
    );
    assert!(f.ops.is_empty(), "the bootloader did the writing");
    // Not confirmed: the bootloader aborts it and boots ota_0.
    assert_eq!(booted_name(&boot(&mut f, ON)), "ota_0");
    assert_eq!(
        guard(&mut f, TABLE_TWO_OTA, "ota_0", ON),
        GuardOutcome::Confirmed
    );
}

#[test]
fn guard_outcomes() {
    for (otadata, running, config, outcome) in [
        (OTADATA_BLANK, "factory", OFF, GuardOutcome::NotOta),
        (OTADATA_BLANK, "ota_0", OFF, GuardOutcome::NotOta),
        (OTADATA_SEQ1_VALID, "ota_0", OFF, GuardOutcome::Confirmed),
        (
            OTADATA_SEQ1_UNDEFINED,
            "ota_0",
            OFF,
            GuardOutcome::Confirmed,
        ),
        (OTADATA_SEQ1_UNDEFINED, "ota_0", ON, GuardOutcome::Confirmed),
        (OTADATA_S1_NEW, "ota_0", OFF, GuardOutcome::NotOta), // a fallback boot
        (OTADATA_S1_NEW, "factory", OFF, GuardOutcome::NotOta),
        (OTADATA_S1_PENDING, "ota_1", ON, GuardOutcome::Trial),
        (OTADATA_S1_ABORTED, "ota_0", OFF, GuardOutcome::Confirmed),
        (OTADATA_S0SEQ3_S1SEQ2, "ota_0", ON, GuardOutcome::Confirmed),
    ] {
        let mut f = device(TABLE_TWO_OTA, otadata);
        assert_eq!(
            guard(&mut f, TABLE_TWO_OTA, running, config),
            outcome,
            "{running}"
        );
        if outcome != GuardOutcome::Trial || config == ON {
            assert!(f.ops.is_empty());
        }
    }
    // NEW with a rollback bootloader (written after boot for the running slot): trial, marked.
    let mut f = device(TABLE_TWO_OTA, OTADATA_SEQ1_NEW);
    assert_eq!(
        guard(&mut f, TABLE_TWO_OTA, "ota_0", ON),
        GuardOutcome::Trial
    );
    assert_eq!(
        &otadata_bytes(&f)[..32],
        &OtaEntry::new(1, OtaImgState::PendingVerify).to_bytes()
    );
}
