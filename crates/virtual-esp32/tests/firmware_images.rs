//! The real firmware's app images (`cargo xtask firmware` writes them to
//! `firmware/target/images/`) in the virtual ESP32: flashed as the factory app of a merged flash
//! image, then updated over the modelled link, rebooted, confirmed, updated again and rolled
//! back, with espflash's stock bootloader rules and with a rollback-enabled bootloader.
//!
//! Run by `cargo xtask test` after it built the firmware (`--include-ignored`).

use std::path::PathBuf;

use ble_link_model::LinkParams;
use ota_core::client::{FastSender, LegacySender, Sender, SenderConfig};
use ota_core::device::UpdateEngine;
use ota_core::esp::boot::{BootloaderConfig, GuardOutcome};
use ota_core::esp::{Chip, OtaImgState};
use virtual_esp32::VirtualEsp32;
use virtual_esp32::air::{AirConfig, AirOutcome, update_over_air};

const CSV: &str = include_str!("../../../firmware/partitions.csv");

fn image(chip: Chip) -> Vec<u8> {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../firmware/target/images")
        .join(format!("{}.bin", chip.name()));
    std::fs::read(&path).unwrap_or_else(|e| {
        panic!(
            "{}: {e}; build the images with `cargo xtask firmware`",
            path.display()
        )
    })
}

fn engine(dev: &mut VirtualEsp32, cfg: &AirConfig) -> UpdateEngine {
    let table = dev.partition_table().clone();
    let running = *dev.running_partition().unwrap();
    let config = cfg.device_config(dev.chip());
    UpdateEngine::new(dev.flash_mut(), config, table, running).unwrap()
}

fn update(dev: &mut VirtualEsp32, img: &[u8], legacy: bool, cfg: &AirConfig) -> AirOutcome {
    let mut engine = engine(dev, cfg);
    let mut sender = if legacy {
        Sender::Legacy(LegacySender::new(img, cfg.link.att_mtu).unwrap())
    } else {
        Sender::Fast(FastSender::new(img, SenderConfig::default()).unwrap())
    };
    update_over_air(dev, &mut engine, &mut sender, cfg, &mut |_, _| {}).outcome
}

fn assert_slot_holds(dev: &VirtualEsp32, slot: &str, img: &[u8]) {
    let p = *dev.partition_table().find(slot).unwrap();
    let start = p.offset as usize;
    assert!(
        dev.flash().bytes()[start..start + img.len()] == *img,
        "{slot} is not byte-identical to the image"
    );
}

fn cycle(chip: Chip, boot: BootloaderConfig) {
    let img = image(chip);
    let cfg = AirConfig::new(LinkParams::android());
    let dir = tempfile::tempdir().unwrap();
    let mut dev =
        VirtualEsp32::create(dir.path().join("flash.bin"), CSV, &img, chip, 4 << 20).unwrap();

    // Flashed once over USB: the factory app boots.
    let first = dev.boot(boot).unwrap();
    assert_eq!(first.slot, "factory");
    assert_eq!(first.project_name, "ble-ota-firmware");
    assert_eq!(first.guard, GuardOutcome::NotOta);
    let version = first.version.clone();

    // Update 1 (new protocol) into ota_0, reboot: on trial; confirm: stays.
    assert_eq!(
        update(&mut dev, &img, false, &cfg),
        AirOutcome::Activated { slot: Some(0) }
    );
    assert_slot_holds(&dev, "ota_0", &img);
    let trial = dev.reboot(boot).unwrap();
    assert_eq!(
        (trial.slot.as_str(), trial.version.as_str(), trial.guard),
        ("ota_0", version.as_str(), GuardOutcome::Trial)
    );
    let mut e = engine(&mut dev, &cfg);
    e.confirm(dev.flash_mut()).unwrap();
    let confirmed = dev.reboot(boot).unwrap();
    assert_eq!(
        (confirmed.slot.as_str(), confirmed.state),
        ("ota_0", Some(OtaImgState::Valid))
    );

    // Update 2 (the seed's legacy protocol) into ota_1, never confirmed: rolled back to ota_0.
    assert_eq!(
        update(&mut dev, &img, true, &cfg),
        AirOutcome::Activated { slot: None }
    );
    assert_slot_holds(&dev, "ota_1", &img);
    let trial = dev.reboot(boot).unwrap();
    assert_eq!(
        (trial.slot.as_str(), trial.guard),
        ("ota_1", GuardOutcome::Trial)
    );
    let back = dev.reboot(boot).unwrap();
    assert_eq!(
        (back.slot.as_str(), back.state),
        ("ota_0", Some(OtaImgState::Valid))
    );
    // The stock bootloader needs the guard's extra reset; a rollback bootloader aborts by itself.
    assert_eq!(back.rolled_back.len(), usize::from(!boot.rollback));

    // The other chip's image is refused and leaves the device as it was.
    let other = if chip == Chip::Esp32c3 {
        Chip::Esp32c6
    } else {
        Chip::Esp32c3
    };
    let foreign = image(other);
    assert!(matches!(
        update(&mut dev, &foreign, false, &cfg),
        AirOutcome::Failed(_)
    ));
    assert_eq!(dev.reboot(boot).unwrap().slot, "ota_0");
}

const STOCK: BootloaderConfig = BootloaderConfig { rollback: false };
const ROLLBACK: BootloaderConfig = BootloaderConfig { rollback: true };

#[test]
#[ignore = "needs cargo xtask firmware"]
fn esp32c3_firmware_updates_confirms_and_rolls_back() {
    cycle(Chip::Esp32c3, STOCK);
    cycle(Chip::Esp32c3, ROLLBACK);
}

#[test]
#[ignore = "needs cargo xtask firmware"]
fn esp32c6_firmware_updates_confirms_and_rolls_back() {
    cycle(Chip::Esp32c6, STOCK);
    cycle(Chip::Esp32c6, ROLLBACK);
}
