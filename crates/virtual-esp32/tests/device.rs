//! The virtual ESP32 as a whole: create, open, boot, roll back, power cuts, merged images.
//! These run `ota-core`'s ESP-IDF rules (table parser, bootloader, rollback guard, image
//! validator).

use embedded_storage::nor_flash::{NorFlash, ReadNorFlash};
use ota_core::esp::boot::{BootloaderConfig, GuardOutcome};
use ota_core::esp::image::verify_in_flash;
use ota_core::esp::partition::Md5Policy;
use ota_core::esp::{Chip, ImageError, ImageValidator, OtaImgState, PartitionTable};
use virtual_esp32::{
    DeviceError, DeviceSpec, FaultPlan, Flash, FlashError, Tear, VirtualEsp32, app_image,
};

const CSV: &str = include_str!("../../ota-core/tests/fixtures/partitions_two_ota.csv");
const CSV_NOFACTORY: &str =
    include_str!("../../ota-core/tests/fixtures/partitions_ota_nofactory.csv");
const TABLE_BIN: &[u8] = include_bytes!("../../ota-core/tests/fixtures/partitions_two_ota.bin");
const OTADATA_SEQ1_VALID: &[u8] =
    include_bytes!("../../ota-core/tests/fixtures/otadata_seq1_valid.bin");
const MB4: u32 = 4 << 20;
const NO_ROLLBACK: BootloaderConfig = BootloaderConfig { rollback: false };
const ROLLBACK: BootloaderConfig = BootloaderConfig { rollback: true };

fn factory_image(chip: Chip) -> Vec<u8> {
    app_image::build(chip, "factory-app", "1.0.0", 30_000, 1)
}

fn spec<'a>(chip: Chip, factory: &'a [u8]) -> DeviceSpec<'a> {
    DeviceSpec {
        chip,
        flash_size: MB4,
        partitions_csv: CSV,
        factory_image: factory,
        bootloader: None,
    }
}

/// What the OTA engine does to a slot, reduced to its flash operations: erase the image's
/// sectors, program it in 4 KiB pieces, verify it in flash, select it for the next boot.
fn install(
    dev: &mut VirtualEsp32,
    slot: &str,
    image: &[u8],
    state: OtaImgState,
) -> Result<(), String> {
    let target = *dev.partition_table().find(slot).unwrap();
    let chip = dev.chip();
    let slots = dev.slots().map_err(|e| e.to_string())?;
    let flash = dev.flash_mut();
    let end = target.offset + (image.len() as u32).div_ceil(0x1000) * 0x1000;
    ota_core::esp::flash::erase(flash, target.offset, end).map_err(|e| e.to_string())?;
    for (i, chunk) in image.chunks(0x1000).enumerate() {
        ota_core::esp::flash::write(flash, target.offset + i as u32 * 0x1000, chunk)
            .map_err(|e| e.to_string())?;
    }
    verify_in_flash(flash, target.offset, target.size, Some(chip)).map_err(|e| e.to_string())?;
    slots
        .set_boot_partition(flash, &target, state)
        .map_err(|e| e.to_string())
}

#[test]
fn create_writes_a_merged_image_and_boots_factory() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("esp32c3.bin");
    let factory = factory_image(Chip::Esp32c3);
    let mut dev = VirtualEsp32::create(&path, CSV, &factory, Chip::Esp32c3, MB4).unwrap();
    assert_eq!(dev.chip(), Chip::Esp32c3);
    assert_eq!(dev.flash_size(), MB4);
    assert_eq!(dev.path(), Some(path.as_path()));
    assert_eq!(dev.running_partition(), None, "off until booted");

    // The file is the merged image: nothing in the bootloader region, the table at 0x8000
    // byte-identical to gen_esp32part's, otadata erased, the app at factory (0x10000).
    let file = std::fs::read(&path).unwrap();
    assert_eq!(file.len(), MB4 as usize);
    assert!(file[..0x8000].iter().all(|b| *b == 0xFF));
    assert_eq!(&file[0x8000..0x8C00], TABLE_BIN);
    assert!(file[0x8C00..0x9000].iter().all(|b| *b == 0xFF));
    assert!(file[0xD000..0xF000].iter().all(|b| *b == 0xFF));
    assert_eq!(&file[0x10000..0x10000 + factory.len()], &factory[..]);
    assert!(file[0x10000 + factory.len()..].iter().all(|b| *b == 0xFF));

    // esp-idf-part's table and ota-core's writer agree.
    let table =
        PartitionTable::parse(&file[0x8000..0x8C00], Md5Policy::Required, Some(MB4)).unwrap();
    assert_eq!(&table.to_bytes()[..], TABLE_BIN);
    assert_eq!(dev.partition_table(), &table);

    for config in [NO_ROLLBACK, ROLLBACK] {
        let r = dev.boot(config).unwrap();
        assert_eq!(r.slot, "factory");
        assert_eq!(r.partition.offset, 0x10000);
        assert_eq!(r.project_name, "factory-app");
        assert_eq!(r.version, "1.0.0");
        assert_eq!(r.guard, GuardOutcome::NotOta);
        assert_eq!(r.state, None);
        assert!(r.skipped.is_empty());
        assert!(r.rolled_back.is_empty());
        assert_eq!(r.bootloader_runs, 1);
        assert_eq!(r.image.len as usize, factory.len());
        assert_eq!(dev.running_partition(), Some(&r.partition));
        assert_eq!(dev.last_boot(), Some(&r));
    }
    // Booting factory with blank otadata writes nothing.
    assert_eq!(std::fs::read(&path).unwrap(), file);
}

#[test]
fn state_persists_across_open() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("dev.bin");
    let factory = factory_image(Chip::Esp32c3);
    let v2 = app_image::build(Chip::Esp32c3, "demo", "2.0.0", 40_000, 2);
    {
        let mut dev = VirtualEsp32::create(&path, CSV, &factory, Chip::Esp32c3, MB4).unwrap();
        dev.boot(NO_ROLLBACK).unwrap();
        install(&mut dev, "ota_0", &v2, OtaImgState::Undefined).unwrap();
    }
    for _ in 0..2 {
        let mut dev = VirtualEsp32::open(&path).unwrap();
        assert_eq!(
            dev.chip(),
            Chip::Esp32c3,
            "chip detected from the app header"
        );
        assert_eq!(dev.flash_size(), MB4);
        let r = dev.boot(NO_ROLLBACK).unwrap();
        assert_eq!((r.slot.as_str(), r.version.as_str()), ("ota_0", "2.0.0"));
        assert_eq!(r.project_name, "demo");
        assert_eq!(r.guard, GuardOutcome::Confirmed);
        assert_eq!(r.state, Some(OtaImgState::Undefined));
    }
}

#[test]
fn unconfirmed_trial_rolls_back_with_the_guard() {
    let factory = factory_image(Chip::Esp32c3);
    let v2 = app_image::build(Chip::Esp32c3, "demo", "2.0.0", 10_000, 2);
    let mut dev = VirtualEsp32::create_in_memory(&spec(Chip::Esp32c3, &factory)).unwrap();
    dev.boot(NO_ROLLBACK).unwrap();
    install(&mut dev, "ota_0", &v2, OtaImgState::New).unwrap();

    let r = dev.boot(NO_ROLLBACK).unwrap();
    assert_eq!((r.slot.as_str(), r.guard), ("ota_0", GuardOutcome::Trial));
    assert_eq!(r.state, Some(OtaImgState::PendingVerify));

    // Not confirmed: the guard aborts it and the device reboots into factory by itself.
    let r = dev.boot(NO_ROLLBACK).unwrap();
    assert_eq!(r.slot, "factory");
    assert_eq!(r.version, "1.0.0");
    assert_eq!(r.rolled_back.len(), 1);
    assert_eq!(r.rolled_back[0].name(), "ota_0");
    assert_eq!(r.bootloader_runs, 2);
    assert_eq!(dev.running_partition().unwrap().name(), "factory");
    // And it stays there.
    let r = dev.boot(NO_ROLLBACK).unwrap();
    assert_eq!((r.slot.as_str(), r.bootloader_runs), ("factory", 1));
}

#[test]
fn confirmed_trial_stays_and_rollback_bootloader_aborts_itself() {
    let factory = factory_image(Chip::Esp32c3);
    let v2 = app_image::build(Chip::Esp32c3, "demo", "2.0.0", 10_000, 2);

    // Confirmed after the first boot: stays.
    let mut dev = VirtualEsp32::create_in_memory(&spec(Chip::Esp32c3, &factory)).unwrap();
    dev.boot(NO_ROLLBACK).unwrap();
    install(&mut dev, "ota_0", &v2, OtaImgState::New).unwrap();
    assert_eq!(dev.boot(NO_ROLLBACK).unwrap().guard, GuardOutcome::Trial);
    let slots = dev.slots().unwrap();
    slots
        .set_active_state(dev.flash_mut(), OtaImgState::Valid)
        .unwrap();
    let r = dev.boot(NO_ROLLBACK).unwrap();
    assert_eq!(
        (r.slot.as_str(), r.guard),
        ("ota_0", GuardOutcome::Confirmed)
    );
    assert_eq!(r.state, Some(OtaImgState::Valid));

    // A rollback-enabled bootloader marks the trial itself and aborts it on the next boot.
    let mut dev = VirtualEsp32::create_in_memory(&spec(Chip::Esp32c3, &factory)).unwrap();
    dev.boot(ROLLBACK).unwrap();
    install(&mut dev, "ota_0", &v2, OtaImgState::New).unwrap();
    let r = dev.boot(ROLLBACK).unwrap();
    assert_eq!(
        (r.slot.as_str(), r.state),
        ("ota_0", Some(OtaImgState::PendingVerify))
    );
    assert_eq!(r.guard, GuardOutcome::Trial);
    let r = dev.boot(ROLLBACK).unwrap();
    assert_eq!(r.slot, "factory");
    assert!(
        r.rolled_back.is_empty(),
        "the bootloader, not the guard, rolled back"
    );
}

#[test]
fn power_lost_until_reboot() {
    let factory = factory_image(Chip::Esp32c3);
    let v2 = app_image::build(Chip::Esp32c3, "demo", "2.0.0", 10_000, 2);
    let mut dev = VirtualEsp32::create_in_memory(&spec(Chip::Esp32c3, &factory)).unwrap();
    dev.boot(NO_ROLLBACK).unwrap();
    dev.flash_mut().arm(FaultPlan::cut_at(3));
    assert!(install(&mut dev, "ota_0", &v2, OtaImgState::Undefined).is_err());
    assert_eq!(dev.running_partition(), None);
    assert_eq!(dev.last_boot(), None);
    let mut b = [0; 4];
    assert_eq!(dev.flash_mut().read(0, &mut b), Err(FlashError::PowerLost));
    assert_eq!(
        dev.flash_mut().erase(0x110000, 0x111000),
        Err(FlashError::PowerLost)
    );
    let r = dev.boot(NO_ROLLBACK).unwrap();
    assert_eq!(r.slot, "factory");
    dev.flash_mut().read(0, &mut b).unwrap();

    // A cut during the bootloader's own otadata write is reported as such.
    let mut dev = VirtualEsp32::create_in_memory(&spec(Chip::Esp32c3, &factory)).unwrap();
    dev.boot(ROLLBACK).unwrap();
    install(&mut dev, "ota_0", &v2, OtaImgState::New).unwrap();
    dev.flash_mut().arm(FaultPlan::cut_at(1));
    assert!(matches!(dev.boot(ROLLBACK), Err(DeviceError::PowerLost)));
    let r = dev.boot(ROLLBACK).unwrap();
    assert!(r.slot == "ota_0" || r.slot == "factory", "{}", r.slot);
}

/// Power cut at every mutating flash operation of an update, with every kind of tear: the
/// device always boots a complete valid image, the old one or the new one.
#[test]
fn power_cut_at_every_operation_of_an_update() {
    let factory = factory_image(Chip::Esp32c3);
    let v2 = app_image::build(Chip::Esp32c3, "demo", "2.0.0", 50_000, 2);
    let fresh = || {
        let mut dev = VirtualEsp32::create_in_memory(&spec(Chip::Esp32c3, &factory)).unwrap();
        dev.boot(NO_ROLLBACK).unwrap();
        dev
    };
    let mut dev = fresh();
    let before = dev.flash().mutating_ops();
    install(&mut dev, "ota_0", &v2, OtaImgState::Undefined).unwrap();
    let n = dev.flash().mutating_ops() - before;
    assert!(n >= 15, "{n}");

    let mut outcomes = [0u32; 2];
    for tear in [Tear::Half, Tear::Nothing, Tear::Complete] {
        for k in 1..=n {
            let mut dev = fresh();
            dev.flash_mut().arm(FaultPlan::cut_at(k).with_tear(tear));
            assert!(
                install(&mut dev, "ota_0", &v2, OtaImgState::Undefined).is_err(),
                "{tear:?} {k}"
            );
            assert!(!dev.flash().is_powered());
            let r = dev.boot(NO_ROLLBACK).unwrap();
            match (r.slot.as_str(), r.version.as_str()) {
                ("factory", "1.0.0") => outcomes[0] += 1,
                ("ota_0", "2.0.0") => outcomes[1] += 1,
                other => panic!("{tear:?} cut at {k}: booted {other:?}"),
            }
            assert!(r.skipped.is_empty(), "{tear:?} {k}: {:?}", r.skipped);
            // The new image boots only if otadata's final write completed.
            let new = r.slot == "ota_0";
            assert_eq!(new, tear == Tear::Complete && k == n, "{tear:?} {k}");
        }
    }
    assert_eq!(outcomes[1], 1);
}

#[test]
fn no_factory_boots_ota_0_and_bootloader_writes_initial_otadata() {
    let image = factory_image(Chip::Esp32c3);
    let spec = DeviceSpec {
        partitions_csv: CSV_NOFACTORY,
        ..spec(Chip::Esp32c3, &image)
    };
    let mut dev = VirtualEsp32::create_in_memory(&spec).unwrap();
    assert_eq!(
        &dev.flash().bytes()[0x10000..0x10000 + image.len()],
        &image[..]
    );
    let r = dev.boot(NO_ROLLBACK).unwrap();
    assert_eq!((r.slot.as_str(), r.version.as_str()), ("ota_0", "1.0.0"));
    assert_eq!(&dev.flash().bytes()[0xD000..0xF000], OTADATA_SEQ1_VALID);
}

#[test]
fn merged_image_round_trip() {
    let dir = tempfile::tempdir().unwrap();
    for (chip, bootloader_at) in [(Chip::Esp32c3, 0x0usize), (Chip::Esp32, 0x1000)] {
        let factory = factory_image(chip);
        // Any image with the chip's header stands in for a second-stage bootloader here.
        let bootloader = app_image::build(chip, "bootloader", "1", 1000, 9);
        let a = dir.path().join(format!("{chip}-a.bin"));
        let spec = DeviceSpec {
            bootloader: Some(&bootloader),
            ..spec(chip, &factory)
        };
        let mut dev = VirtualEsp32::create_from_spec(&a, &spec).unwrap();
        let created = std::fs::read(&a).unwrap();
        assert_eq!(
            &created[bootloader_at..bootloader_at + bootloader.len()],
            &bootloader[..]
        );
        assert_eq!(created, virtual_esp32::merged_image(&spec).unwrap());
        let r1 = dev.boot(NO_ROLLBACK).unwrap();

        // Whole image, and the image without its 0xFF tail (as `esptool merge-bin` writes
        // it): both load into the same flash file, same chip, same size (header says 4MB).
        let end = created.iter().rposition(|b| *b != 0xFF).unwrap() + 1;
        for (name, bytes) in [("full", &created[..]), ("trimmed", &created[..end])] {
            let b = dir.path().join(format!("{chip}-{name}.bin"));
            let mut dev = VirtualEsp32::from_merged_image(&b, bytes).unwrap();
            assert_eq!(dev.chip(), chip, "{name}");
            assert_eq!(dev.flash_size(), MB4, "{name}");
            assert_eq!(std::fs::read(&b).unwrap(), created, "{name}");
            let r2 = dev.boot(NO_ROLLBACK).unwrap();
            assert_eq!(
                (r2.slot, r2.version, r2.project_name),
                (r1.slot.clone(), r1.version.clone(), r1.project_name.clone())
            );
        }
    }
}

#[test]
fn from_flash_and_open_as() {
    let factory = factory_image(Chip::Esp32s3);
    let img = virtual_esp32::merged_image(&spec(Chip::Esp32s3, &factory)).unwrap();
    let dev = VirtualEsp32::from_flash(Flash::in_memory(img.clone()), None).unwrap();
    assert_eq!(dev.chip(), Chip::Esp32s3);
    assert_eq!(dev.path(), None);

    // A flash with no header anywhere needs the chip.
    let mut blank = img.clone();
    blank[0x10000..0x20000].fill(0xFF);
    assert!(matches!(
        VirtualEsp32::from_flash(Flash::in_memory(blank.clone()), None),
        Err(DeviceError::NotADevice)
    ));
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("blank.bin");
    std::fs::write(&path, &blank).unwrap();
    let mut dev = VirtualEsp32::open_as(&path, Chip::Esp32s3).unwrap();
    assert!(matches!(dev.boot(NO_ROLLBACK), Err(DeviceError::Boot(_))));
}

#[test]
fn create_refuses_bad_input() {
    let c3 = factory_image(Chip::Esp32c3);
    let s3 = factory_image(Chip::Esp32s3);
    let bad = |spec: DeviceSpec<'_>| VirtualEsp32::create_in_memory(&spec).unwrap_err();
    assert!(matches!(
        bad(spec(Chip::Esp32c3, &s3)),
        DeviceError::BadImage { .. }
    ));
    assert!(matches!(
        bad(spec(Chip::Esp32c3, b"not an image at all.....")),
        DeviceError::BadImage { .. }
    ));
    let big = app_image::build(Chip::Esp32c3, "big", "1", 0x10_0000, 1);
    assert!(matches!(
        bad(spec(Chip::Esp32c3, &big)),
        DeviceError::TooLarge { .. }
    ));
    assert!(matches!(
        bad(DeviceSpec {
            flash_size: 0x1234,
            ..spec(Chip::Esp32c3, &c3)
        }),
        DeviceError::BadFlashSize(_)
    ));
    assert!(matches!(
        bad(DeviceSpec {
            flash_size: 2 << 20,
            ..spec(Chip::Esp32c3, &c3)
        }),
        DeviceError::TooLarge { .. }
    ));
    let csv = "nvs, data, nvs, , 0x4000\nnvs, data, nvs, , 0x4000\nfactory, app, factory, , 1M\n";
    assert!(matches!(
        bad(DeviceSpec {
            partitions_csv: csv,
            ..spec(Chip::Esp32c3, &c3)
        }),
        DeviceError::PartitionCsv(_)
    ));
}

/// An app for `chip` whose header allows chip revisions `min ..= max`.
fn image_for_revs(chip: Chip, version: &str, min: u16, max: u16) -> Vec<u8> {
    let mut spec = app_image::AppImageSpec::new(chip, "rev-app", version, 20_000, 9);
    spec.min_chip_rev_full = min;
    spec.max_chip_rev_full = max;
    app_image::build_with(&spec)
}

#[test]
fn chip_revision_defaults_and_persists_with_the_device() {
    let dir = tempfile::tempdir().unwrap();
    for (chip, rev, text) in [(Chip::Esp32c3, 4u16, "v0.4"), (Chip::Esp32c6, 1, "v0.1")] {
        let path = dir.path().join(format!("{chip}.bin"));
        let mut dev = VirtualEsp32::create(&path, CSV, &factory_image(chip), chip, MB4).unwrap();
        assert_eq!(dev.chip_revision(), Some(rev), "{chip}");
        assert_eq!(virtual_esp32::default_chip_revision(chip), Some(rev));
        let side = dev.chip_revision_path().unwrap();
        assert_eq!(side, dir.path().join(format!("{chip}.bin.chip-revision")));
        assert_eq!(std::fs::read_to_string(&side).unwrap().trim(), text);
        // One process at a time holds the file: close, then open again.
        let reopen = |dev: VirtualEsp32| {
            drop(dev);
            VirtualEsp32::open(&path).unwrap()
        };
        dev = reopen(dev);
        assert_eq!(dev.chip_revision(), Some(rev));
        // Another die: recorded, and read back by the next open.
        dev.set_chip_revision(Some(101)).unwrap();
        assert_eq!(std::fs::read_to_string(&side).unwrap().trim(), "v1.1");
        dev = reopen(dev);
        assert_eq!(dev.chip_revision(), Some(101));
        dev.set_chip_revision(None).unwrap();
        dev = reopen(dev);
        assert_eq!(dev.chip_revision(), None);
        // Without the file: the chip's default. A file that holds no revision is an error.
        std::fs::remove_file(&side).unwrap();
        dev = reopen(dev);
        assert_eq!(dev.chip_revision(), Some(rev));
        drop(dev);
        std::fs::write(&side, "rev 4").unwrap();
        assert!(matches!(
            VirtualEsp32::open(&path),
            Err(DeviceError::BadChipRevisionFile { .. })
        ));
    }
    // Other chips: unknown, not checked. In RAM: the default, nothing recorded.
    let esp32 = factory_image(Chip::Esp32);
    let dev = VirtualEsp32::create_in_memory(&spec(Chip::Esp32, &esp32)).unwrap();
    assert_eq!(
        (dev.chip_revision(), dev.chip_revision_path()),
        (None, None)
    );
}

#[test]
fn the_bootloader_skips_an_app_for_another_chip_revision() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("dev.bin");
    let mut dev = VirtualEsp32::create(
        &path,
        CSV,
        &factory_image(Chip::Esp32c3),
        Chip::Esp32c3,
        MB4,
    )
    .unwrap();
    dev.boot(NO_ROLLBACK).unwrap();
    // ota_0 needs a v1.1 chip; this one is a v0.4: it is skipped like an invalid image.
    let img = image_for_revs(Chip::Esp32c3, "2.0.0", 101, 199);
    install(&mut dev, "ota_0", &img, OtaImgState::Valid).unwrap();
    let r = dev.boot(NO_ROLLBACK).unwrap();
    assert_eq!(r.slot, "factory");
    assert_eq!(r.skipped.len(), 1);
    assert_eq!(r.skipped[0].0.name(), "ota_0");
    assert_eq!(
        r.skipped[0].1,
        ImageError::ChipRevisionTooLow {
            min: 101,
            revision: 4
        }
    );
    // On a v1.1 die it boots, and keeps booting after the device is opened again.
    dev.set_chip_revision(Some(101)).unwrap();
    assert_eq!(dev.boot(NO_ROLLBACK).unwrap().slot, "ota_0");
    drop(dev);
    let mut dev = VirtualEsp32::open(&path).unwrap();
    assert_eq!(dev.boot(NO_ROLLBACK).unwrap().slot, "ota_0");
    // A v2.0 die is above the image's maximum v1.99.
    dev.set_chip_revision(Some(200)).unwrap();
    let r = dev.boot(NO_ROLLBACK).unwrap();
    assert_eq!(r.slot, "factory");
    assert!(matches!(
        r.skipped[0].1,
        ImageError::ChipRevisionTooHigh { max: 199, .. }
    ));
}

#[test]
fn built_images_pass_the_validator() {
    for chip in Chip::ALL {
        let img = app_image::build(chip, "demo", "3.1.4", 70_001, 5);
        for piece in [1usize, 7, 509, 4096, img.len()] {
            let mut v = ImageValidator::new(Some(chip), 0x10_0000);
            for c in img.chunks(piece) {
                v.feed(c).unwrap();
            }
            let info = v
                .finish()
                .unwrap_or_else(|e| panic!("{chip} piece {piece}: {e}"));
            assert_eq!(info.len as usize, img.len());
            assert_eq!(info.segments.len(), 2);
            let app = info.app.unwrap();
            assert_eq!(&app.project_name[..5], b"demo\0");
            assert_eq!(&app.version[..6], b"3.1.4\0");
            assert_eq!(app.mmu_page_size, 16);
        }
        // A flipped bit anywhere in the segment data is caught.
        let mut bad = img.clone();
        bad[0x200] ^= 1;
        let mut v = ImageValidator::new(Some(chip), 0x10_0000);
        v.feed(&bad).unwrap();
        assert!(v.finish().is_err());
        // And the virtual device of that chip boots it.
        let mut dev = VirtualEsp32::create_in_memory(&spec(chip, &img)).unwrap();
        let r = dev.boot(NO_ROLLBACK).unwrap();
        assert_eq!(
            (r.slot.as_str(), r.version.as_str()),
            ("factory", "3.1.4"),
            "{chip}"
        );
    }
}

/// `esptool image-info` on built images says checksum and hash valid. Needs esptool:
/// `ESPTOOL=/path/to/esptool cargo test -p virtual-esp32 -- --ignored`.
#[test]
#[ignore = "needs esptool (set ESPTOOL)"]
fn esptool_agrees() {
    let esptool = std::env::var("ESPTOOL").expect("set ESPTOOL to the esptool executable");
    let dir = tempfile::tempdir().unwrap();
    for chip in Chip::ALL {
        let path = dir.path().join(format!("{chip}.bin"));
        std::fs::write(&path, app_image::build(chip, "demo", "2.0.0", 70_000, 3)).unwrap();
        let out = std::process::Command::new(&esptool)
            .args(["--chip", chip.name(), "image-info"])
            .arg(&path)
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "{chip}: {text}");
        let valid = |field: &str| {
            text.lines()
                .any(|l| l.starts_with(field) && l.trim_end().ends_with("(valid)"))
        };
        assert!(valid("Checksum:"), "{chip}: {text}");
        assert!(valid("Validation hash:"), "{chip}: {text}");
        assert!(text.contains("Project name: demo"), "{chip}: {text}");
        assert!(text.contains("App version: 2.0.0"), "{chip}: {text}");
    }
    // Bytes after the image: esptool ignores them (only "Image size" counts them), and so does
    // the validator. A revision range: esptool prints it as the header holds it.
    for chip in [Chip::Esp32c3, Chip::Esp32c6] {
        let mut img = image_for_revs(chip, "2.0.0", 101, 199);
        let len = img.len();
        img.extend_from_slice(&[0x5A; 100]);
        let path = dir.path().join(format!("{chip}-trailing.bin"));
        std::fs::write(&path, &img).unwrap();
        let out = std::process::Command::new(&esptool)
            .args(["--chip", chip.name(), "image-info"])
            .arg(&path)
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "{chip}: {text}");
        assert!(
            text.contains(&format!("Image size: {} bytes", len + 100)),
            "{text}"
        );
        assert!(
            text.contains("Checksum: ") && text.contains("(valid)"),
            "{text}"
        );
        assert!(
            text.lines()
                .any(|l| l.starts_with("Validation hash:") && l.ends_with("(valid)")),
            "{text}"
        );
        assert!(
            text.contains("Minimal chip revision: v1.1"),
            "{chip}: {text}"
        );
        assert!(
            text.contains("Maximal chip revision: v1.99"),
            "{chip}: {text}"
        );
        let mut v = ImageValidator::new(Some(chip), 0x10_0000);
        v.feed(&img).unwrap();
        let info = v.finish().unwrap();
        assert_eq!((info.len as usize, info.ignored_trailing), (len, 100));
    }
}
