//! Whole updates over the modelled BLE link: both protocols, ping-pong, resume, power cuts at
//! every flash operation, rollback of an unconfirmed trial image.

use ble_link_model::LinkParams;
use ota_core::client::{ClientError, FastSender, LegacySender, Sender, SenderConfig};
use ota_core::device::UpdateEngine;
use ota_core::esp::boot::{BootloaderConfig, GuardOutcome};
use ota_core::esp::{Chip, OtaImgState};
use ota_core::protocol::Reason;
use virtual_esp32::air::{AirConfig, AirOutcome, AirReport, update_over_air};
use virtual_esp32::{DeviceSpec, FaultPlan, VirtualEsp32, app_image};

const CSV: &str = include_str!("../../ota-core/tests/fixtures/partitions_two_ota.csv");
const STOCK: BootloaderConfig = BootloaderConfig { rollback: false };
const CHIP: Chip = Chip::Esp32c3;

fn device() -> VirtualEsp32 {
    let factory = app_image::build(CHIP, "factory-app", "1.0.0", 30_000, 1);
    let spec = DeviceSpec {
        chip: CHIP,
        flash_size: 4 << 20,
        partitions_csv: CSV,
        factory_image: &factory,
        bootloader: None,
    };
    let mut dev = VirtualEsp32::create_in_memory(&spec).unwrap();
    dev.boot(STOCK).unwrap();
    dev
}

fn engine(dev: &mut VirtualEsp32, cfg: &AirConfig) -> UpdateEngine {
    let table = dev.partition_table().clone();
    let running = *dev.running_partition().unwrap();
    UpdateEngine::new(dev.flash_mut(), cfg.device_config(CHIP), table, running).unwrap()
}

fn update(dev: &mut VirtualEsp32, img: &[u8], legacy: bool, cfg: &AirConfig) -> AirReport {
    let mut engine = engine(dev, cfg);
    let mut sender = if legacy {
        Sender::Legacy(LegacySender::new(img, cfg.link.att_mtu).unwrap())
    } else {
        Sender::Fast(FastSender::new(img, SenderConfig::default()).unwrap())
    };
    update_over_air(dev, &mut engine, &mut sender, cfg, &mut |_, _| {})
}

fn confirm(dev: &mut VirtualEsp32, cfg: &AirConfig) {
    let mut engine = engine(dev, cfg);
    engine.confirm(dev.flash_mut()).unwrap();
}

#[test]
fn both_protocols_update_and_the_fast_one_is_several_times_faster() {
    let cfg = AirConfig::new(LinkParams::desktop());
    let img = app_image::build(CHIP, "app", "2.0.0", 200_000, 2);
    let mut a = device();
    let legacy = update(&mut a, &img, true, &cfg);
    assert_eq!(legacy.outcome, AirOutcome::Activated { slot: None });
    let mut b = device();
    let fast = update(&mut b, &img, false, &cfg);
    assert_eq!(fast.outcome, AirOutcome::Activated { slot: Some(0) });
    for dev in [&mut a, &mut b] {
        let boot = dev.reboot(STOCK).unwrap();
        assert_eq!(
            (boot.slot.as_str(), boot.version.as_str()),
            ("ota_0", "2.0.0")
        );
        assert_eq!(boot.guard, GuardOutcome::Trial);
    }
    let ratio = legacy.modelled.as_secs_f64() / fast.modelled.as_secs_f64();
    assert!(
        ratio > 3.0,
        "fast {:?} vs legacy {:?}",
        fast.modelled,
        legacy.modelled
    );
}

#[test]
fn three_updates_ping_pong_between_ota_0_and_ota_1() {
    let cfg = AirConfig::new(LinkParams::android());
    let mut dev = device();
    for (i, (slot, version)) in [("ota_0", "2.0.0"), ("ota_1", "3.0.0"), ("ota_0", "4.0.0")]
        .into_iter()
        .enumerate()
    {
        let img = app_image::build(CHIP, "app", version, 50_000 + i * 1000, i as u64);
        let r = update(&mut dev, &img, i % 2 == 1, &cfg);
        assert!(
            matches!(r.outcome, AirOutcome::Activated { .. }),
            "{:?}",
            r.outcome
        );
        let boot = dev.reboot(STOCK).unwrap();
        assert_eq!((boot.slot.as_str(), boot.version.as_str()), (slot, version));
        confirm(&mut dev, &cfg);
        assert_eq!(dev.reboot(STOCK).unwrap().state, Some(OtaImgState::Valid));
    }
}

#[test]
fn resume_after_disconnects_at_many_points() {
    let img = app_image::build(CHIP, "app", "2.0.0", 120_000, 5);
    for at in [1, 2, 17, 100, 250, 440] {
        let mut cfg = AirConfig::new(LinkParams::desktop());
        cfg.disconnect_at = vec![at, at + 40];
        let mut dev = device();
        let r = update(&mut dev, &img, false, &cfg);
        assert_eq!(
            r.outcome,
            AirOutcome::Activated { slot: Some(0) },
            "disconnect at {at}"
        );
        assert_eq!(r.disconnects, 2, "disconnect at {at}");
        let boot = dev.reboot(STOCK).unwrap();
        assert_eq!(boot.version, "2.0.0");
    }
}

#[test]
fn power_cut_at_every_flash_operation_boots_a_complete_image() {
    let cfg = AirConfig::new(LinkParams::desktop());
    let img = app_image::build(CHIP, "app", "2.0.0", 20_000, 9);
    // Count the mutating flash operations of one whole update.
    let mut dev = device();
    let before = dev.flash().mutating_ops();
    assert!(matches!(
        update(&mut dev, &img, false, &cfg).outcome,
        AirOutcome::Activated { .. }
    ));
    let ops = dev.flash().mutating_ops() - before;
    assert!(ops > 5);
    cut_at_every_operation(ops, &mut |dev| update(dev, &img, false, &cfg));
}

/// Cuts power at each of the `ops` flash operations of `update` in turn, on a fresh device:
/// the update is lost, and the device boots either the old app or the complete new one
/// (2.0.0), never a torn image.
fn cut_at_every_operation(ops: u64, update: &mut dyn FnMut(&mut VirtualEsp32) -> AirReport) {
    for k in 1..=ops {
        let mut dev = device();
        dev.flash_mut().arm(FaultPlan::cut_at(k));
        let r = update(&mut dev);
        assert_eq!(r.outcome, AirOutcome::PowerLost, "cut at op {k}");
        let boot = dev.reboot(STOCK).unwrap();
        match boot.slot.as_str() {
            "factory" => assert_eq!(boot.version, "1.0.0"),
            "ota_0" => assert_eq!(boot.version, "2.0.0", "cut at op {k}"),
            other => panic!("booted {other} after a cut at op {k}"),
        }
    }
}

#[test]
fn corrupt_foreign_and_oversized_images_leave_the_slots_untouched() {
    let cfg = AirConfig::new(LinkParams::desktop());
    let mut dev = device();
    let before = dev.flash().bytes().to_vec();
    let foreign = app_image::build(Chip::Esp32c6, "app", "2.0.0", 20_000, 1);
    let r = update(&mut dev, &foreign, false, &cfg);
    assert_eq!(
        r.outcome,
        AirOutcome::Failed(ClientError::Refused {
            opcode: 0,
            reason: Reason::WrongChip
        })
    );
    assert!(
        dev.flash().bytes() == &before[..],
        "a foreign image must not change flash"
    );
    let oversized = app_image::build(CHIP, "app", "2.0.0", 1_100_000, 1);
    let r = update(&mut dev, &oversized, false, &cfg);
    assert_eq!(
        r.outcome,
        AirOutcome::Failed(ClientError::Refused {
            opcode: 0x11,
            reason: Reason::ImageTooLarge
        })
    );
    assert!(dev.flash().bytes() == &before[..]);
    let mut corrupt = app_image::build(CHIP, "app", "2.0.0", 20_000, 1);
    corrupt[9000] ^= 1;
    let r = update(&mut dev, &corrupt, false, &cfg);
    assert_eq!(
        r.outcome,
        AirOutcome::Failed(ClientError::Refused {
            opcode: 0x12,
            reason: Reason::BadImageChecksum
        })
    );
    let table = dev.partition_table().clone();
    let otadata = table.otadata().unwrap();
    let span = |b: &[u8], p: &ota_core::esp::Partition| {
        b[p.offset as usize..(p.offset + p.size) as usize].to_vec()
    };
    assert_eq!(span(dev.flash().bytes(), otadata), span(&before, otadata));
    assert_eq!(
        span(dev.flash().bytes(), table.factory().unwrap()),
        span(&before, table.factory().unwrap())
    );
    assert_eq!(dev.reboot(STOCK).unwrap().slot, "factory");
}

#[test]
fn an_unconfirmed_trial_image_rolls_back() {
    let cfg = AirConfig::new(LinkParams::desktop());
    let mut dev = device();
    let v2 = app_image::build(CHIP, "app", "2.0.0", 30_000, 2);
    update(&mut dev, &v2, false, &cfg);
    assert_eq!(dev.reboot(STOCK).unwrap().version, "2.0.0");
    confirm(&mut dev, &cfg);
    let v3 = app_image::build(CHIP, "app", "3.0.0", 30_000, 3);
    update(&mut dev, &v3, false, &cfg);
    let trial = dev.reboot(STOCK).unwrap();
    assert_eq!(
        (trial.version.as_str(), trial.guard),
        ("3.0.0", GuardOutcome::Trial)
    );
    // Reboot without confirming: the guard aborts v3 and v2 boots again.
    let back = dev.reboot(STOCK).unwrap();
    assert_eq!(
        (back.slot.as_str(), back.version.as_str()),
        ("ota_0", "2.0.0")
    );
    assert_eq!(back.rolled_back.len(), 1);
}

fn update_compressed(dev: &mut VirtualEsp32, img: &[u8], cfg: &AirConfig) -> AirReport {
    let mut engine = engine(dev, cfg);
    let stream = ota_core::client::compress(img);
    let sender = FastSender::new(img, SenderConfig::default()).unwrap();
    let mut sender = Sender::Fast(sender.with_stream(&stream).unwrap());
    update_over_air(dev, &mut engine, &mut sender, cfg, &mut |_, _| {})
}

/// An app image whose code segment compresses about as real code does.
fn compressible_image(version: &str) -> Vec<u8> {
    let mut spec = app_image::AppImageSpec::new(CHIP, "app", version, 40_000, 3);
    spec.code_like = true;
    app_image::build_with(&spec)
}

#[test]
fn a_power_cut_while_inflating_leaves_the_old_image_booting() {
    let cfg = AirConfig::new(LinkParams::desktop());
    let img = compressible_image("2.0.0");
    let stream = ota_core::client::compress(&img);
    assert!(
        stream.len() < img.len() / 2,
        "{} of {}",
        stream.len(),
        img.len()
    );
    let mut dev = device();
    let before = dev.flash().mutating_ops();
    let r = update_compressed(&mut dev, &img, &cfg);
    assert!(
        matches!(r.outcome, AirOutcome::Activated { .. }),
        "{:?}",
        r.outcome
    );
    let ops = dev.flash().mutating_ops() - before;
    assert_eq!(dev.reboot(STOCK).unwrap().version, "2.0.0");
    cut_at_every_operation(ops, &mut |dev| update_compressed(dev, &img, &cfg));
}
