//! The browser's updater, driven as a page drives it, against the device engine in-process on
//! a virtual ESP32: what a page gets for writes, notifications and events.

use ota_core::device::{ClientId, DeviceConfig, UpdateEngine};
use ota_core::esp::Chip;
use ota_core::manifest::{Manifest, TrustedKeys, public_key};
use ota_core::protocol::Characteristic;
use ota_core::time::Instant;
use ota_web::{Updater, inspect};
use virtual_esp32::{DeviceSpec, VirtualEsp32, app_image};

const PARTITIONS: &str = "nvs,data,nvs,0x9000,0x4000\notadata,data,ota,0xd000,0x2000\nphy_init,data,phy,0xf000,0x1000\nfactory,app,factory,0x10000,1M\nota_0,app,ota_0,,1M\nota_1,app,ota_1,,1M\n";
const CLIENT: ClientId = ClientId(1);

fn device() -> VirtualEsp32 {
    let factory = app_image::build(Chip::Esp32c3, "factory", "1.0.0", 20_000, 1);
    let mut dev = VirtualEsp32::create_in_memory(&DeviceSpec {
        chip: Chip::Esp32c3,
        flash_size: 4 << 20,
        partitions_csv: PARTITIONS,
        factory_image: &factory,
        bootloader: None,
    })
    .unwrap();
    dev.boot(Default::default()).unwrap();
    dev
}

/// Runs `u` against `dev` as a page over a link with ATT MTU `mtu` would; returns the events.
fn drive(dev: &mut VirtualEsp32, config: DeviceConfig, u: &mut Updater, mtu: u16) -> Vec<String> {
    let running = *dev.running_partition().unwrap();
    let table = dev.partition_table().clone();
    let mut engine = UpdateEngine::new(dev.flash_mut(), config, table, running).unwrap();
    engine.handle_connected(CLIENT);
    engine.handle_mtu(CLIENT, mtu);
    let mut events = Vec::new();
    let mut note = [0u8; 600];
    for step in 0..200_000u64 {
        let now = step as f64;
        while let Some(w) = u.poll_transmit(now) {
            let ch = match w.characteristic().as_str() {
                "control" => Characteristic::Control,
                _ => Characteristic::Data,
            };
            let r = engine.handle_write(dev.flash_mut(), CLIENT, ch, &w.bytes(), Instant(step));
            if w.with_response() {
                u.handle_write_result(now, r.err().map(|r| r.att_error()));
            }
        }
        while let Some((_, len)) = engine.poll_notification(&mut note) {
            u.handle_notification(now, &note[..len]);
        }
        while let Some(e) = u.poll_event() {
            events.push(e);
        }
        if u.is_finished() {
            return events;
        }
        if u.poll_timeout().is_some_and(|t| t <= now) {
            u.handle_timeout(now);
        }
        engine.handle_tick(Instant(step));
    }
    panic!("the update did not finish: {events:?}");
}

fn has(events: &[String], needle: &str) -> bool {
    events.iter().any(|e| e.contains(needle))
}

#[test]
fn a_compressed_update_lands_and_the_page_sees_started_progress_and_activated() {
    let mut dev = device();
    let img = app_image::build(Chip::Esp32c3, "web-app", "2.0.0", 150_000, 7);
    let mut u = Updater::create(img.clone(), true, false, None, None).unwrap();
    let events = drive(&mut dev, DeviceConfig::new(Chip::Esp32c3), &mut u, 247);
    assert!(has(&events, r#""event":"started""#), "{events:?}");
    assert!(has(&events, r#""compressed":true"#), "{events:?}");
    assert!(has(&events, r#""event":"progress""#), "{events:?}");
    assert!(
        has(&events, r#""event":"activated","slot":0"#),
        "{events:?}"
    );
    let p = *dev.partition_table().find("ota_0").unwrap();
    assert_eq!(
        &dev.flash().bytes()[p.offset as usize..p.offset as usize + img.len()],
        &img[..]
    );
}

#[test]
fn the_seeds_protocol_and_a_signed_image_go_through_too() {
    let mut dev = device();
    let img = app_image::build(Chip::Esp32c3, "web-app", "2.1.0", 40_000, 8);
    let mut u = Updater::create(img.clone(), false, true, Some(247), None).unwrap();
    let events = drive(&mut dev, DeviceConfig::new(Chip::Esp32c3), &mut u, 247);
    assert!(has(&events, r#""event":"activated""#), "{events:?}");

    let secret = [9u8; 32];
    let mut config = DeviceConfig::new(Chip::Esp32c3);
    config.trusted_keys = TrustedKeys::new(&[public_key(&secret)]);
    let manifest = Manifest::for_image(&img)
        .unwrap()
        .sign(&secret)
        .encode()
        .to_vec();
    let mut dev = device();
    let mut u = Updater::create(img.clone(), true, false, None, Some(manifest)).unwrap();
    let events = drive(&mut dev, config, &mut u, 247);
    assert!(has(&events, r#""signed":true"#), "{events:?}");
    assert!(has(&events, r#""event":"activated""#), "{events:?}");
    // Unsigned on that device: a failure the page can show as it is.
    let mut dev = device();
    let mut u = Updater::create(img, true, false, None, None).unwrap();
    let events = drive(&mut dev, config, &mut u, 247);
    assert!(has(&events, "SignatureRequired"), "{events:?}");
}

#[test]
fn inspect_checks_an_image_as_the_device_does() {
    let img = app_image::build(Chip::Esp32c3, "web-app", "3.0.0", 10_000, 3);
    let ok: serde_json::Value = serde_json::from_str(&inspect(&img)).unwrap();
    assert_eq!(ok["valid"], true);
    assert_eq!(ok["chip"], "esp32c3");
    assert_eq!(ok["version"], "3.0.0");
    let mut bad = img.clone();
    bad[100] ^= 1;
    let bad: serde_json::Value = serde_json::from_str(&inspect(&bad)).unwrap();
    assert_eq!(bad["valid"], false);
    assert!(
        bad["problems"][0].as_str().unwrap().contains("checksum"),
        "{bad}"
    );
    let junk: serde_json::Value = serde_json::from_str(&inspect(b"not an image")).unwrap();
    assert_eq!(junk["valid"], false);
    assert!(Updater::create(Vec::new(), true, false, None, None).is_err());
    assert!(Updater::create(img, true, false, None, Some(vec![1, 2, 3])).is_err());
}

/// Writes `name` to OTA Control as a page does and returns the engine's answer, as JSON.
fn ask(dev: &mut VirtualEsp32, name: &str, mtu: u16) -> serde_json::Value {
    let running = *dev.running_partition().unwrap();
    let table = dev.partition_table().clone();
    let config = DeviceConfig::new(Chip::Esp32c3);
    let mut engine = UpdateEngine::new(dev.flash_mut(), config, table, running).unwrap();
    engine.handle_connected(CLIENT);
    engine.handle_mtu(CLIENT, mtu);
    let bytes = ota_web::encode_command_bytes(name).unwrap();
    engine
        .handle_write(
            dev.flash_mut(),
            CLIENT,
            Characteristic::Control,
            &bytes,
            Instant(0),
        )
        .unwrap();
    let mut note = [0u8; 600];
    let (_, len) = engine.poll_notification(&mut note).expect("an answer");
    let mut v: serde_json::Value =
        serde_json::from_str(&ota_web::answer_json(name, &note[..len]).unwrap()).unwrap();
    if v["cut"] == true {
        // The page reads OTA Control for the whole value, as `ble-ota info` does.
        let whole = engine.control_value().to_vec();
        v = serde_json::from_str(&ota_web::answer_json(name, &whole).unwrap()).unwrap();
    }
    v
}

#[test]
fn info_and_confirm_answers_read_as_the_cli_shows_them() {
    let mut dev = device();
    let info = ask(&mut dev, "info", 247);
    assert_eq!(info["ok"], true, "{info}");
    assert_eq!(info["app_version"], "1.0.0");
    assert_eq!(info["running"], "factory");
    assert_eq!(info["compressed_images"], true);
    // At the seed's MTU INFO does not fit a notification: the page is told to read it.
    let cut = ask(&mut dev, "info", 23);
    assert_eq!(cut["app_version"], "1.0.0", "{cut}");
    // A factory app has nothing to confirm: a refusal in words, not a code.
    let confirm = ask(&mut dev, "confirm", 247);
    assert_eq!(confirm["answers"], true, "{confirm}");
    assert!(
        confirm["ok"] == true || confirm["error"].is_string(),
        "{confirm}"
    );
    assert!(ota_web::encode_command_bytes("format").is_err());
    let not_ours = ota_web::answer_json("confirm", &[0x81, 0, 0, 0, 0]).unwrap();
    assert_eq!(not_ours, r#"{"answers":false}"#);
}

#[test]
fn a_signature_of_another_image_or_no_signature_at_all_is_named_before_connecting() {
    let secret = [9u8; 32];
    let img = app_image::build(Chip::Esp32c3, "web-app", "2.2.0", 30_000, 11);
    let other = app_image::build(Chip::Esp32c3, "web-app", "2.2.1", 30_000, 12);
    let sig = Manifest::for_image(&img)
        .unwrap()
        .sign(&secret)
        .encode()
        .to_vec();
    assert_eq!(ota_web::manifest_problem(&img, &sig), None);
    let wrong = ota_web::manifest_problem(&other, &sig).unwrap();
    assert!(wrong.contains("another image"), "{wrong}");
    let garbage = ota_web::manifest_problem(&img, b"not a manifest").unwrap();
    assert!(garbage.contains("not a signature file"), "{garbage}");
    let refused = Updater::create(other, true, false, None, Some(sig))
        .err()
        .unwrap();
    assert!(refused.contains("another image"), "{refused}");
}
