//! The device engine and the client sender together, over a link with scripted faults.

mod support;

use ota_core::client::{ClientError, ClientEvent, FastSender, LegacySender, Sender, SenderConfig};
use ota_core::device::ClientId;
use ota_core::esp::{Chip, OtaImgState};
use ota_core::protocol::fast::{Command, Response};
use ota_core::protocol::{Characteristic, Reason, legacy};
use ota_core::time::Instant;
use proptest::prelude::*;
use support::{Device, Fate, MemFlash, build_image, run};

const MTU: u16 = 247;

fn fast<'a>(img: &'a [u8]) -> Sender<'a> {
    Sender::Fast(
        FastSender::new(
            img,
            SenderConfig {
                att_mtu: Some(MTU),
                ..Default::default()
            },
        )
        .unwrap(),
    )
}

fn legacy_sender(img: &[u8]) -> Sender<'_> {
    Sender::Legacy(LegacySender::new(img, MTU).unwrap())
}

/// Asserts the update landed: the next boot picks `slot`, whose bytes are the image, and the
/// factory app is untouched.
fn assert_landed(dev: &mut Device, factory_before: &[u8], slot: &str, img: &[u8]) {
    let p = dev.partition(slot);
    assert_eq!(dev.boot_partition(), p, "next boot must pick {slot}");
    assert_eq!(
        &dev.slot_bytes(&p)[..img.len()],
        img,
        "{slot} must hold the image byte for byte"
    );
    assert_eq!(
        dev.slot_bytes(&dev.partition("factory")),
        factory_before,
        "factory untouched"
    );
}

#[test]
fn fast_update_lands_in_ota_0_and_is_selected_as_new() {
    let mut dev = Device::new(Chip::Esp32c3);
    let factory = dev.slot_bytes(&dev.partition("factory")).to_vec();
    let img = build_image(Chip::Esp32c3, "app", "2.0.0", 100_000, 7);
    let mut engine = dev.engine();
    let mut sender = fast(&img);
    let out = run(&mut dev, &mut engine, &mut sender, MTU, 100_000, |_| {
        Fate::Deliver
    });
    assert!(out.activated(), "{:?}", out.failure());
    assert_landed(&mut dev, &factory, "ota_0", &img);
    let slots = ota_core::esp::OtaSlots::new(dev.table.clone()).unwrap();
    let ota0 = dev.partition("ota_0");
    assert_eq!(
        slots
            .state_of(&mut MemFlash::new(&mut dev.flash), &ota0)
            .unwrap(),
        Some(OtaImgState::New)
    );
    assert!(
        out.device_events
            .contains(&ota_core::device::Event::RebootRequested)
    );
}

#[test]
fn legacy_update_as_the_seeds_client_does_it() {
    let mut dev = Device::new(Chip::Esp32c3);
    let factory = dev.slot_bytes(&dev.partition("factory")).to_vec();
    // An odd length, so the last packet is short: exactly its bytes must be written.
    let img = build_image(Chip::Esp32c3, "app", "2.0.1", 50_001, 3);
    let mut engine = dev.engine();
    let mut sender = legacy_sender(&img);
    let out = run(&mut dev, &mut engine, &mut sender, MTU, 100_000, |_| {
        Fate::Deliver
    });
    assert!(out.activated(), "{:?}", out.failure());
    assert_eq!(engine.control_value(), &[legacy::DONE_ACK]);
    assert_landed(&mut dev, &factory, "ota_0", &img);
    // Past the image, the slot's erased sector still reads 0xFF: no full-packet over-write.
    let p = dev.partition("ota_0");
    assert!(
        dev.slot_bytes(&p)[img.len()..img.len() + 64]
            .iter()
            .all(|b| *b == 0xFF)
    );
}

#[test]
fn resume_after_disconnect_continues_from_the_acknowledged_offset() {
    let mut dev = Device::new(Chip::Esp32c6);
    let factory = dev.slot_bytes(&dev.partition("factory")).to_vec();
    let img = build_image(Chip::Esp32c6, "app", "3.0.0", 200_000, 9);
    let mut engine = dev.engine();
    let mut sender = fast(&img);
    let out = run(&mut dev, &mut engine, &mut sender, MTU, 100_000, |n| {
        if n == 300 || n == 600 {
            Fate::Disconnect
        } else {
            Fate::Deliver
        }
    });
    assert!(out.activated(), "{:?}", out.failure());
    assert_eq!(out.disconnects, 2);
    let resumed: Vec<u32> = out
        .events
        .iter()
        .filter_map(|e| match e {
            ota_core::client::ClientEvent::Started { offset, .. } => Some(*offset),
            _ => None,
        })
        .collect();
    assert_eq!(resumed.len(), 3);
    assert_eq!(resumed[0], 0);
    assert!(
        resumed[1] > 0 && resumed[2] > resumed[1],
        "resumed at {resumed:?}"
    );
    assert_landed(&mut dev, &factory, "ota_0", &img);
}

/// Sends one command and returns the device's answer.
fn command(
    dev: &mut Device,
    engine: &mut ota_core::device::UpdateEngine,
    client: u16,
    bytes: &[u8],
) -> Response {
    let mut f = MemFlash::new(&mut dev.flash);
    engine.handle_mtu(ClientId(client), MTU);
    engine.handle_control_write(&mut f, ClientId(client), bytes, Instant(0));
    let mut buf = [0u8; 600];
    let (c, n) = engine.poll_notification(&mut buf).expect("an answer");
    assert_eq!(c, ClientId(client));
    Response::decode(&buf[..n]).unwrap()
}

fn begin(img: &[u8]) -> Vec<u8> {
    use sha2::Digest;
    let cmd = Command::Begin {
        size: img.len() as u32,
        sha256: sha2::Sha256::digest(img).into(),
        flags: 0,
        stream: None,
    };
    let mut b = [0u8; 64];
    let n = cmd.encode(&mut b).unwrap();
    b[..n].to_vec()
}

fn refused(r: Response) -> Reason {
    match r {
        Response::Error { reason, .. } => reason,
        other => panic!("expected a refusal, got {other:?}"),
    }
}

fn encoded(cmd: Command) -> Vec<u8> {
    let mut b = [0u8; 64];
    let n = cmd.encode(&mut b).unwrap();
    b[..n].to_vec()
}

/// A whole fast update of `img` with every write delivered; asserts it activated.
fn update(dev: &mut Device, engine: &mut ota_core::device::UpdateEngine, img: &[u8]) {
    let mut sender = fast(img);
    let out = run(dev, engine, &mut sender, MTU, 50_000, |_| Fate::Deliver);
    assert!(out.activated(), "{:?}", out.failure());
}

#[test]
fn wrong_chip_is_refused_before_any_flash_write() {
    let mut dev = Device::new(Chip::Esp32c3);
    let before = dev.flash.clone();
    let img = build_image(Chip::Esp32c6, "app", "2.0.0", 10_000, 1);
    let mut engine = dev.engine();
    let mut sender = fast(&img);
    let out = run(&mut dev, &mut engine, &mut sender, MTU, 10_000, |_| {
        Fate::Deliver
    });
    assert_eq!(
        out.failure(),
        Some(ClientError::Refused {
            opcode: 0,
            reason: Reason::WrongChip
        })
    );
    assert!(dev.flash == before, "no byte of flash may change");
}

#[test]
fn corrupt_image_is_refused_at_end_and_nothing_is_selected() {
    let mut dev = Device::new(Chip::Esp32c3);
    let factory = dev.slot_bytes(&dev.partition("factory")).to_vec();
    let otadata = dev.otadata().to_vec();
    let mut img = build_image(Chip::Esp32c3, "app", "2.0.0", 20_000, 1);
    img[5000] ^= 0x40;
    let mut engine = dev.engine();
    let mut sender = fast(&img);
    let out = run(&mut dev, &mut engine, &mut sender, MTU, 50_000, |_| {
        Fate::Deliver
    });
    assert_eq!(
        out.failure(),
        Some(ClientError::Refused {
            opcode: 0x12,
            reason: Reason::BadImageChecksum
        })
    );
    assert_eq!(dev.otadata(), &otadata[..]);
    assert_eq!(dev.slot_bytes(&dev.partition("factory")), &factory[..]);
    assert_eq!(dev.boot_partition(), dev.partition("factory"));
}

#[test]
fn truncated_image_is_refused() {
    let mut dev = Device::new(Chip::Esp32c3);
    let otadata = dev.otadata().to_vec();
    let img = build_image(Chip::Esp32c3, "app", "2.0.0", 20_000, 1);
    let cut = &img[..img.len() - 100];
    let mut engine = dev.engine();
    let mut sender = fast(cut);
    let out = run(&mut dev, &mut engine, &mut sender, MTU, 50_000, |_| {
        Fate::Deliver
    });
    assert_eq!(
        out.failure(),
        Some(ClientError::Refused {
            opcode: 0x12,
            reason: Reason::Truncated
        })
    );
    assert_eq!(dev.otadata(), &otadata[..]);
    // The legacy protocol refuses it at DONE.
    let mut engine = dev.engine();
    let mut sender = legacy_sender(cut);
    let out = run(&mut dev, &mut engine, &mut sender, MTU, 50_000, |_| {
        Fate::Deliver
    });
    assert_eq!(out.failure(), Some(ClientError::DoneNak));
    assert_eq!(dev.otadata(), &otadata[..]);
}

#[test]
fn bytes_after_the_image_are_written_and_ignored_over_both_protocols() {
    // ESP-IDF's esp_ota_write/esp_ota_end and esptool accept them; so does the engine.
    let img = build_image(Chip::Esp32c3, "app", "2.0.0", 30_000, 4);
    let mut file = img.clone();
    file.extend((0..1001u32).map(|i| (i * 13) as u8)); // odd length: a short last write
    for legacy in [false, true] {
        let mut dev = Device::new(Chip::Esp32c3);
        let factory = dev.slot_bytes(&dev.partition("factory")).to_vec();
        let mut engine = dev.engine();
        let mut sender = if legacy {
            legacy_sender(&file)
        } else {
            fast(&file)
        };
        let out = run(&mut dev, &mut engine, &mut sender, MTU, 100_000, |_| {
            Fate::Deliver
        });
        assert!(out.activated(), "legacy {legacy}: {:?}", out.failure());
        // The whole file is in the slot; the image in it verifies as the bootloader reads it.
        assert_landed(&mut dev, &factory, "ota_0", &file);
        let p = dev.partition("ota_0");
        let info = ota_core::esp::image::verify_in_flash(
            &mut MemFlash::new(&mut dev.flash),
            p.offset,
            p.size,
            Some(Chip::Esp32c3),
        )
        .unwrap();
        assert_eq!(info.len as usize, img.len());
    }
}

#[test]
fn an_image_for_a_newer_chip_revision_is_refused_before_any_flash_write() {
    // Needs v1.1; the device is a v0.4: the bootloader would never boot it.
    let img =
        support::with_min_chip_rev(&build_image(Chip::Esp32c3, "app", "2.0.0", 20_000, 2), 101);
    for legacy in [false, true] {
        let mut dev = Device::new(Chip::Esp32c3);
        dev.config.chip_revision = Some(4);
        let before = dev.flash.clone();
        let mut engine = dev.engine();
        let mut sender = if legacy {
            legacy_sender(&img)
        } else {
            fast(&img)
        };
        let out = run(&mut dev, &mut engine, &mut sender, MTU, 50_000, |_| {
            Fate::Deliver
        });
        assert!(!out.activated(), "legacy {legacy}");
        if !legacy {
            assert_eq!(
                out.failure(),
                Some(ClientError::Refused {
                    opcode: 0,
                    reason: Reason::ChipRevision
                })
            );
        }
        assert!(
            dev.flash == before,
            "legacy {legacy}: no byte of flash may change"
        );
    }
    // A v1.1 chip, or one whose revision the shell does not know, takes it.
    for revision in [Some(101), Some(300), None] {
        let mut dev = Device::new(Chip::Esp32c3);
        dev.config.chip_revision = revision;
        let mut engine = dev.engine();
        let mut sender = fast(&img);
        let out = run(&mut dev, &mut engine, &mut sender, MTU, 50_000, |_| {
            Fate::Deliver
        });
        assert!(out.activated(), "{revision:?}: {:?}", out.failure());
    }
}

#[test]
fn oversized_image_and_garbage_commands_are_refused_with_flash_untouched() {
    let mut dev = Device::new(Chip::Esp32c3);
    let before = dev.flash.clone();
    let mut engine = dev.engine();
    let mut big = begin(&[0u8; 16]);
    big[1..5].copy_from_slice(&(2u32 << 20).to_le_bytes());
    assert_eq!(
        refused(command(&mut dev, &mut engine, 1, &big)),
        Reason::ImageTooLarge
    );
    assert_eq!(
        refused(command(&mut dev, &mut engine, 1, &[0x77, 1, 2])),
        Reason::UnknownCommand
    );
    assert_eq!(
        refused(command(&mut dev, &mut engine, 1, &[0x12, 0])),
        Reason::BadLength
    );
    assert_eq!(
        refused(command(&mut dev, &mut engine, 1, &big[..20])),
        Reason::BadLength
    );
    assert_eq!(
        refused(command(&mut dev, &mut engine, 1, &[0x12])),
        Reason::NoSession
    );
    let mut unsupported = begin(&[0u8; 64]);
    unsupported[37] = 0x08; // a flag no version knows
    assert_eq!(
        refused(command(&mut dev, &mut engine, 1, &unsupported)),
        Reason::Unsupported
    );
    // Data with no session: refused, as a write request would be.
    let mut f = MemFlash::new(&mut dev.flash);
    assert_eq!(
        engine.handle_data_write(&mut f, ClientId(1), &[0, 0, 0, 0, 0xE9, 1, 2], Instant(0)),
        Err(Reason::NoSession)
    );
    assert!(dev.flash == before);
}

#[test]
fn legacy_refuses_oversized_packet_size_and_data_before_request() {
    let mut dev = Device::new(Chip::Esp32c3);
    let before = dev.flash.clone();
    let mut engine = dev.engine();
    let mut f = MemFlash::new(&mut dev.flash);
    let c = ClientId(1);
    assert_eq!(
        engine.handle_data_write(&mut f, c, &600u16.to_le_bytes(), Instant(0)),
        Err(Reason::ChunkTooLarge)
    );
    assert_eq!(
        engine.handle_data_write(&mut f, c, &[0xE9; 100], Instant(0)),
        Err(Reason::NoSession)
    );
    assert_eq!(
        engine.handle_data_write(&mut f, c, &100u16.to_le_bytes(), Instant(0)),
        Ok(())
    );
    engine.handle_control_write(&mut f, c, &[legacy::REQUEST], Instant(0));
    let mut buf = [0u8; 8];
    assert_eq!(engine.poll_notification(&mut buf), Some((c, 1)));
    assert_eq!(buf[0], legacy::REQUEST_ACK);
    // Larger than the announced packet size.
    assert_eq!(
        engine.handle_data_write(&mut f, c, &[0xE9; 101], Instant(0)),
        Err(Reason::ChunkTooLarge)
    );
    assert!(dev.flash == before);
}

#[test]
fn a_second_client_is_refused_while_one_updates() {
    let mut dev = Device::new(Chip::Esp32c3);
    let img = build_image(Chip::Esp32c3, "app", "2.0.0", 20_000, 1);
    let mut engine = dev.engine();
    engine.handle_connected(ClientId(1));
    engine.handle_connected(ClientId(2));
    assert!(matches!(
        command(&mut dev, &mut engine, 1, &begin(&img)),
        Response::BeginOk { .. }
    ));
    assert_eq!(
        refused(command(&mut dev, &mut engine, 2, &begin(&img))),
        Reason::Busy
    );
    let other = build_image(Chip::Esp32c3, "app", "9.9.9", 20_000, 2);
    assert_eq!(
        refused(command(&mut dev, &mut engine, 2, &begin(&other))),
        Reason::Busy
    );
    let mut f = MemFlash::new(&mut dev.flash);
    assert_eq!(
        engine.handle_control_write(&mut f, ClientId(2), &[legacy::REQUEST], Instant(0)),
        ()
    );
    let mut buf = [0u8; 8];
    assert_eq!(engine.poll_notification(&mut buf), Some((ClientId(2), 1)));
    assert_eq!(buf[0], legacy::REQUEST_NAK);
    // Once the first client leaves, the other may resume the same image.
    engine.handle_disconnected(ClientId(1));
    assert!(matches!(
        command(&mut dev, &mut engine, 2, &begin(&img)),
        Response::BeginOk { .. }
    ));
}

#[test]
fn info_reports_slots_app_and_resumable_session() {
    let mut dev = Device::new(Chip::Esp32c3);
    let img = build_image(Chip::Esp32c3, "app", "2.0.0", 20_000, 1);
    let mut engine = dev.engine();
    let Response::Info(info) = command(&mut dev, &mut engine, 1, &[0x10]) else {
        panic!()
    };
    assert_eq!(info.chip_id, 5);
    assert_eq!(info.app_name.as_str(), "factory-app");
    assert_eq!(info.app_version.as_str(), "1.0.0");
    assert_eq!(info.running_slot, ota_core::protocol::fast::SLOT_FACTORY);
    assert_eq!(info.max_image_size, 0x100000);
    // MTU 247 at the default data length of 27: a 236-byte value is nine whole PDUs.
    assert_eq!(info.chunk_size, 232);
    assert_eq!(info.window, 232 * 32);
    assert_eq!(info.slots.len(), 3);
    assert!(info.resumable.is_none());
    command(&mut dev, &mut engine, 1, &begin(&img));
    let Response::Info(info) = command(&mut dev, &mut engine, 1, &[0x10]) else {
        panic!()
    };
    assert_eq!(info.resumable.map(|r| r.size), Some(img.len() as u32));
}

fn fate_strategy() -> impl Strategy<Value = Vec<(u32, u8)>> {
    prop::collection::vec((1u32..3000, 0u8..5), 0..40)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    /// Drops, duplicates, reorders and disconnects never yield a selected slot whose bytes
    /// differ from the image, and never touch factory.
    #[test]
    fn faults_never_corrupt_the_selected_slot(faults in fate_strategy(), len in 1000usize..120_000, seed: u8) {
        let mut dev = Device::new(Chip::Esp32c3);
        let factory = dev.slot_bytes(&dev.partition("factory")).to_vec();
        let img = build_image(Chip::Esp32c3, "app", "2.0.0", len, seed);
        let mut engine = dev.engine();
        let mut sender = fast(&img);
        let out = run(&mut dev, &mut engine, &mut sender, MTU, 200_000, |n| {
            match faults.iter().find(|(at, _)| *at == n).map(|(_, k)| *k) {
                Some(0) => Fate::Drop,
                Some(1) => Fate::Duplicate,
                Some(2) => Fate::Delay,
                Some(3) => Fate::Disconnect,
                _ => Fate::Deliver,
            }
        });
        prop_assert!(out.activated(), "failed: {:?}", out.failure());
        let ota0 = dev.partition("ota_0");
        prop_assert_eq!(dev.boot_partition(), ota0);
        prop_assert!(dev.slot_bytes(&ota0)[..img.len()] == img[..]);
        prop_assert!(dev.slot_bytes(&dev.partition("factory")) == &factory[..]);
    }
}

#[test]
fn a_trial_confirmed_by_another_engine_no_longer_blocks_updates() {
    let mut dev = Device::new(Chip::Esp32c3);
    let img = build_image(Chip::Esp32c3, "app", "2.0.0", 20_000, 1);
    let mut engine = dev.engine();
    let mut sender = fast(&img);
    assert!(
        run(&mut dev, &mut engine, &mut sender, MTU, 50_000, |_| {
            Fate::Deliver
        })
        .activated()
    );
    // Boot into ota_0: the guard puts it on trial.
    let ota0 = dev.partition("ota_0");
    let slots = ota_core::esp::OtaSlots::new(dev.table.clone()).unwrap();
    let guard = ota_core::esp::boot::rollback_guard(
        &mut MemFlash::new(&mut dev.flash),
        &slots,
        &ota0,
        Default::default(),
    )
    .unwrap();
    assert_eq!(guard, ota_core::esp::boot::GuardOutcome::Trial);
    dev.running = ota0;
    let mut serving = dev.engine();
    let next = build_image(Chip::Esp32c3, "app", "3.0.0", 20_000, 2);
    assert_eq!(
        refused(command(&mut dev, &mut serving, 1, &begin(&next))),
        Reason::TrialPending
    );
    // The firmware's self-test confirms through its own engine.
    let mut other = dev.engine();
    other.confirm(&mut MemFlash::new(&mut dev.flash)).unwrap();
    assert!(matches!(
        command(&mut dev, &mut serving, 1, &begin(&next)),
        Response::BeginOk { slot: 1, .. }
    ));
}

#[test]
fn a_device_that_never_answers_begin_fails_the_update_in_time() {
    // A seed device ignores the fast protocol's BEGIN.
    let img = build_image(Chip::Esp32c3, "app", "2.0.0", 1000, 1);
    let mut sender = fast(&img);
    let mut buf = [0u8; 600];
    let tx = sender.poll_transmit(Instant(0), &mut buf).expect("BEGIN");
    assert_eq!(buf[0], 0x11);
    sender.handle_write_result(Instant(1), Ok(()));
    let deadline = sender.poll_timeout().expect("a deadline for the answer");
    assert!(tx.with_response && deadline > Instant(1));
    sender.handle_timeout(deadline);
    assert!(sender.is_finished());
    assert_eq!(
        sender.poll_event(),
        Some(ota_core::client::ClientEvent::Failed(
            ClientError::NoAnswer { opcode: 0x11 }
        ))
    );
}

#[test]
fn one_hash_pass_still_catches_a_wrong_appended_sha256() {
    // The checksum is right, the appended SHA-256 is not: only the validation hash, which the
    // engine now takes from its session hasher, can tell.
    for legacy in [false, true] {
        let mut dev = Device::new(Chip::Esp32c3);
        let mut img = build_image(Chip::Esp32c3, "app", "2.0.0", 40_000, 9);
        let last = img.len() - 1;
        img[last] ^= 0x01;
        let mut engine = dev.engine();
        let mut sender = if legacy {
            legacy_sender(&img)
        } else {
            fast(&img)
        };
        let out = run(&mut dev, &mut engine, &mut sender, MTU, 100_000, |_| {
            Fate::Deliver
        });
        assert!(!out.activated(), "legacy {legacy}: refused");
        assert!(
            out.device_events
                .contains(&ota_core::device::Event::UpdateFailed {
                    reason: Reason::BadImageHash
                }),
            "legacy {legacy}: {:?}",
            out.device_events
        );
    }
}

#[test]
fn end_right_behind_a_lost_last_chunk_is_refused_then_the_stream_resumes() {
    // END goes out right behind the last chunk; that chunk is lost on the way. The device
    // refuses END as Incomplete, the client resends from its last ACK and ends again.
    let mut dev = Device::new(Chip::Esp32c3);
    let factory = dev.slot_bytes(&dev.partition("factory")).to_vec();
    let img = build_image(Chip::Esp32c3, "app", "2.0.0", 30_000, 5);
    let mut engine = dev.engine();
    let mut sender = fast(&img);
    engine.handle_mtu(ota_core::device::ClientId(1), MTU);
    let chunk = engine.chunk_size(ota_core::device::ClientId(1)) as usize;
    let chunks = img.len().div_ceil(chunk) as u32;
    let mut dropped = false;
    let out = run(&mut dev, &mut engine, &mut sender, MTU, 100_000, |n| {
        // `n` counts data writes: the last chunk is number `chunks`.
        if !dropped && n == chunks {
            dropped = true;
            Fate::Drop
        } else {
            Fate::Deliver
        }
    });
    assert!(dropped, "the last chunk was dropped");
    assert!(out.activated(), "{:?}", out.failure());
    // END, sent right behind the dropped chunk, was refused (an Incomplete ERROR
    // notification); the update went through all the same.
    assert!(out.refused_writes.is_empty(), "{:?}", out.refused_writes);
    assert_landed(&mut dev, &factory, "ota_0", &img);
    assert!(
        out.device_events
            .contains(&ota_core::device::Event::UpdateActivated { slot: 0 })
    );
}

#[test]
fn the_device_reboots_by_itself_after_end_when_begin_asked_for_it() {
    let mut dev = Device::new(Chip::Esp32c3);
    let img = build_image(Chip::Esp32c3, "app", "2.0.0", 20_000, 2);
    let mut engine = dev.engine();
    let mut sender = fast(&img);
    let out = run(&mut dev, &mut engine, &mut sender, MTU, 100_000, |_| {
        Fate::Deliver
    });
    assert!(out.activated(), "{:?}", out.failure());
    // No REBOOT command went out, yet the device asked its shell to reboot, after END_OK.
    let events = &out.device_events;
    let activated = events
        .iter()
        .position(|e| matches!(e, ota_core::device::Event::UpdateActivated { .. }))
        .unwrap();
    assert_eq!(
        events[activated + 1..],
        [ota_core::device::Event::RebootRequested]
    );
}

#[test]
fn a_v1_device_refusing_the_reboot_flag_gets_begin_again_without_it() {
    use ota_core::protocol::fast::{begin_flags, op};
    let img = build_image(Chip::Esp32c3, "app", "2.0.0", 20_000, 2);
    let mut sender = fast(&img);
    let mut buf = [0u8; 600];
    let tx = sender.poll_transmit(Instant(0), &mut buf).unwrap();
    let Ok(Command::Begin { flags, .. }) = Command::decode(&buf[..tx.len]) else {
        panic!("BEGIN first")
    };
    assert_eq!(flags, begin_flags::REBOOT_AFTER_END);
    sender.handle_write_result(Instant(1), Ok(()));
    // What a protocol v1 device answers.
    let mut note = [0u8; 64];
    let n = Response::Error {
        opcode: op::BEGIN,
        reason: Reason::Unsupported,
        detail: 0,
    }
    .encode(&mut note)
    .unwrap();
    sender.handle_notification(Instant(2), &note[..n]);
    let tx = sender.poll_transmit(Instant(3), &mut buf).unwrap();
    let Ok(Command::Begin { flags, .. }) = Command::decode(&buf[..tx.len]) else {
        panic!("BEGIN again")
    };
    assert_eq!(flags, 0);
    assert!(
        sender
            .poll_event()
            .is_none_or(|e| !matches!(e, ota_core::client::ClientEvent::Failed(_)))
    );
}

#[test]
fn abort_after_end_takes_the_selection_back_and_the_running_app_boots_again() {
    let mut dev = Device::new(Chip::Esp32c3);
    let img = build_image(Chip::Esp32c3, "app", "2.0.0", 20_000, 3);
    let mut engine = dev.engine();
    update(&mut dev, &mut engine, &img);
    assert_eq!(dev.boot_partition(), dev.partition("ota_0"));
    let abort = encoded(Command::Abort);
    assert_eq!(command(&mut dev, &mut engine, 1, &abort), Response::AbortOk);
    // The entry END wrote is ABORTED, which the bootloader never selects: factory boots.
    assert_eq!(dev.boot_partition(), dev.partition("factory"));
    let slots = ota_core::esp::OtaSlots::new(dev.table.clone()).unwrap();
    let ota0 = dev.partition("ota_0");
    assert_eq!(
        slots
            .state_of(&mut MemFlash::new(&mut dev.flash), &ota0)
            .unwrap(),
        Some(OtaImgState::Aborted)
    );
    // Nothing is selected any more; the same image can be sent again.
    update(&mut dev, &mut engine, &img);
    assert_eq!(dev.boot_partition(), dev.partition("ota_0"));
}

#[test]
fn confirm_is_refused_whenever_no_image_is_on_trial() {
    let mut dev = Device::new(Chip::Esp32c3);
    let confirm = encoded(Command::Confirm);
    // The factory app.
    let mut engine = dev.engine();
    assert_eq!(
        refused(command(&mut dev, &mut engine, 1, &confirm)),
        Reason::NothingToConfirm
    );
    // An OTA image that is already VALID: the same answer, as docs/protocol.md says.
    let slots = ota_core::esp::OtaSlots::new(dev.table.clone()).unwrap();
    let ota0 = dev.partition("ota_0");
    slots
        .set_boot_partition(
            &mut MemFlash::new(&mut dev.flash),
            &ota0,
            OtaImgState::Valid,
        )
        .unwrap();
    let mut engine = ota_core::device::UpdateEngine::new(
        &mut MemFlash::new(&mut dev.flash),
        ota_core::device::DeviceConfig::new(Chip::Esp32c3),
        dev.table.clone(),
        ota0,
    )
    .unwrap();
    assert_eq!(
        refused(command(&mut dev, &mut engine, 1, &confirm)),
        Reason::NothingToConfirm
    );
}

#[test]
fn a_chunk_before_begin_gets_an_error_notification() {
    let mut dev = Device::new(Chip::Esp32c3);
    let before = dev.flash.clone();
    let mut engine = dev.engine();
    let info = encoded(Command::Info);
    assert!(matches!(
        command(&mut dev, &mut engine, 1, &info),
        Response::Info(_)
    ));
    let mut chunk = ota_core::protocol::fast::encode_chunk_header(0).to_vec();
    chunk.extend_from_slice(&[0xE9; 200]);
    let mut f = MemFlash::new(&mut dev.flash);
    assert_eq!(
        engine.handle_data_write(&mut f, ClientId(1), &chunk, Instant(0)),
        Err(Reason::NoSession)
    );
    let mut buf = [0u8; 64];
    let (c, n) = engine
        .poll_notification(&mut buf)
        .expect("an ERROR notification");
    assert_eq!(c, ClientId(1));
    assert_eq!(
        refused(Response::decode(&buf[..n]).unwrap()),
        Reason::NoSession
    );
    assert!(dev.flash == before);
}

#[test]
fn a_used_up_otadata_sequence_is_its_own_reason_and_nothing_is_selected() {
    let mut dev = Device::new(Chip::Esp32c3);
    let slots = ota_core::esp::OtaSlots::new(dev.table.clone()).unwrap();
    // ota_1 runs, VALID, at the highest sequence number an entry can hold: the next one would
    // be 0xFFFFFFFF, which marks an empty entry.
    let entry = ota_core::esp::otadata::OtaEntry::new(0xFFFF_FFFE, OtaImgState::Valid);
    slots
        .write_otadata_entry(&mut MemFlash::new(&mut dev.flash), 0, &entry)
        .unwrap();
    let ota1 = dev.partition("ota_1");
    assert_eq!(dev.boot_partition(), ota1);
    let otadata = dev.otadata().to_vec();
    let mut engine = ota_core::device::UpdateEngine::new(
        &mut MemFlash::new(&mut dev.flash),
        ota_core::device::DeviceConfig::new(Chip::Esp32c3),
        dev.table.clone(),
        ota1,
    )
    .unwrap();
    let img = build_image(Chip::Esp32c3, "app", "2.0.0", 20_000, 5);
    let mut sender = fast(&img);
    let out = run(&mut dev, &mut engine, &mut sender, MTU, 50_000, |_| {
        Fate::Deliver
    });
    assert_eq!(
        out.failure(),
        Some(ClientError::Refused {
            opcode: 0x12,
            reason: Reason::OtadataExhausted
        })
    );
    assert_eq!(dev.boot_partition(), ota1, "the running app still boots");
    assert_eq!(
        &dev.otadata()[..32],
        &otadata[..32],
        "its entry is untouched"
    );
}

fn compressed<'a>(img: &'a [u8], stream: &'a [u8]) -> Sender<'a> {
    match fast(img) {
        Sender::Fast(s) => Sender::Fast(s.with_stream(stream).unwrap()),
        Sender::Legacy(_) => unreachable!(),
    }
}

fn started_offsets(out: &support::Outcome) -> Vec<(u32, u32)> {
    out.events
        .iter()
        .filter_map(|e| match e {
            ota_core::client::ClientEvent::Started { offset, total, .. } => Some((*offset, *total)),
            _ => None,
        })
        .collect()
}

#[test]
fn a_compressed_image_lands_byte_for_byte_and_sends_fewer_bytes() {
    let mut dev = Device::new(Chip::Esp32c3);
    let factory = dev.slot_bytes(&dev.partition("factory")).to_vec();
    // Half of it compresses well (as code and strings do), half does not.
    let filler: Vec<u8> = (0..150_000)
        .map(|i: usize| {
            if i < 75_000 {
                b"the same words again and again "[i % 31]
            } else {
                (i as u32).wrapping_mul(2654435761).to_le_bytes()[i % 4]
            }
        })
        .collect();
    let img = support::build_image_with_filler(Chip::Esp32c3, "app", "2.0.0", filler);
    let stream = ota_core::client::compress(&img);
    assert!(
        stream.len() < img.len() * 3 / 4,
        "{} of {}",
        stream.len(),
        img.len()
    );
    let mut engine = dev.engine();
    let mut sender = compressed(&img, &stream);
    let out = run(&mut dev, &mut engine, &mut sender, MTU, 100_000, |_| {
        Fate::Deliver
    });
    assert!(out.activated(), "{:?}", out.failure());
    assert_eq!(
        started_offsets(&out),
        [(0, stream.len() as u32)],
        "offsets count stream bytes"
    );
    assert_landed(&mut dev, &factory, "ota_0", &img);
}

#[test]
fn a_compressed_update_resumes_mid_stream_with_the_inflater_kept() {
    let mut dev = Device::new(Chip::Esp32c3);
    let factory = dev.slot_bytes(&dev.partition("factory")).to_vec();
    // Words picked at random from a small vocabulary: it compresses about as code does.
    let words: [&[u8]; 8] = [
        b"load ", b"store ", b"jal ", b"addi ", b"bne ", b"lw ", b"sw ", b"ret ",
    ];
    let mut filler = Vec::new();
    let mut x = 7u32;
    while filler.len() < 200_000 {
        x = x.wrapping_mul(1_103_515_245).wrapping_add(12_345);
        filler.extend_from_slice(words[(x >> 16) as usize % 8]);
    }
    filler.truncate(200_000);
    let img = support::build_image_with_filler(Chip::Esp32c3, "app", "3.0.0", filler);
    let stream = ota_core::client::compress(&img);
    let mut engine = dev.engine();
    let mut sender = compressed(&img, &stream);
    let out = run(
        &mut dev,
        &mut engine,
        &mut sender,
        MTU,
        100_000,
        |n| match n {
            40 | 90 => Fate::Disconnect,
            60 => Fate::Drop,
            _ => Fate::Deliver,
        },
    );
    assert!(out.activated(), "{:?}", out.failure());
    let starts = started_offsets(&out);
    assert_eq!(starts.len(), 3, "{starts:?}");
    assert!(
        starts[1].0 > 0 && starts[2].0 > starts[1].0,
        "resumed at {starts:?}"
    );
    assert_landed(&mut dev, &factory, "ota_0", &img);
}

#[test]
fn a_stream_that_does_not_inflate_to_the_image_is_refused_and_nothing_is_selected() {
    let img = build_image(Chip::Esp32c3, "app", "2.0.0", 30_000, 8);
    let good = ota_core::client::compress(&img);
    let mut bad_streams = Vec::new();
    // Cut short, and with bytes after its end.
    bad_streams.push(good[..good.len() - 3].to_vec());
    let mut longer = good.clone();
    longer.extend_from_slice(&[0, 1, 2]);
    bad_streams.push(longer);
    // The stream of another image of the same size.
    bad_streams.push(ota_core::client::compress(&build_image(
        Chip::Esp32c3,
        "app",
        "2.0.1",
        30_000,
        9,
    )));
    // Garbage that is no deflate at all.
    bad_streams.push(vec![0xFF; 500]);
    for stream in &bad_streams {
        let mut dev = Device::new(Chip::Esp32c3);
        let otadata = dev.otadata().to_vec();
        let mut engine = dev.engine();
        let mut sender = compressed(&img, stream);
        let out = run(&mut dev, &mut engine, &mut sender, MTU, 100_000, |_| {
            Fate::Deliver
        });
        let Some(ClientError::Refused { reason, .. }) = out.failure() else {
            panic!("refused: {:?}", out.failure())
        };
        assert!(
            matches!(reason, Reason::BadStream | Reason::SessionHashMismatch),
            "{reason:?}"
        );
        assert_eq!(dev.otadata(), &otadata[..], "nothing selected");
        assert_eq!(dev.boot_partition(), dev.partition("factory"));
    }
}

#[test]
fn a_device_without_compression_gets_the_image_as_it_is() {
    let img = build_image(Chip::Esp32c3, "app", "2.0.0", 30_000, 8);
    let stream = ota_core::client::compress(&img);
    let mut sender = compressed(&img, &stream);
    let mut buf = [0u8; 600];
    let tx = sender.poll_transmit(Instant(0), &mut buf).unwrap();
    let Ok(Command::Begin {
        stream: Some(s), ..
    }) = Command::decode(&buf[..tx.len])
    else {
        panic!("a compressed BEGIN first")
    };
    assert_eq!(s.len, stream.len() as u32);
    sender.handle_write_result(Instant(1), Ok(()));
    // What a protocol v2 device answers to the longer BEGIN.
    let mut note = [0u8; 64];
    let n = Response::Error {
        opcode: ota_core::protocol::fast::op::BEGIN,
        reason: Reason::BadLength,
        detail: 46,
    }
    .encode(&mut note)
    .unwrap();
    sender.handle_notification(Instant(2), &note[..n]);
    let tx = sender.poll_transmit(Instant(3), &mut buf).unwrap();
    let Ok(Command::Begin {
        stream: None, size, ..
    }) = Command::decode(&buf[..tx.len])
    else {
        panic!("BEGIN again, uncompressed")
    };
    assert_eq!(size, img.len() as u32);
    let Sender::Fast(f) = &sender else {
        unreachable!()
    };
    assert!(!f.is_compressed());
}

#[test]
fn only_the_client_that_ended_the_update_may_abort_or_reboot_while_it_is_connected() {
    let mut dev = Device::new(Chip::Esp32c3);
    let img = build_image(Chip::Esp32c3, "app", "2.0.0", 20_000, 3);
    let mut engine = dev.engine();
    // Client 1 updates and stays connected.
    update(&mut dev, &mut engine, &img);
    assert_eq!(dev.boot_partition(), dev.partition("ota_0"));
    // Another central in range cannot take the selection back or reboot the device.
    assert_eq!(
        refused(command(&mut dev, &mut engine, 2, &encoded(Command::Abort))),
        Reason::Busy
    );
    assert_eq!(
        refused(command(&mut dev, &mut engine, 2, &encoded(Command::Reboot))),
        Reason::Busy
    );
    assert_eq!(
        dev.boot_partition(),
        dev.partition("ota_0"),
        "still selected"
    );
    // The owner may.
    assert_eq!(
        command(&mut dev, &mut engine, 1, &encoded(Command::Reboot)),
        Response::RebootOk
    );
    // Once it left, the session has no owner: anyone may end it.
    engine.handle_disconnected(ota_core::device::ClientId(1));
    assert_eq!(
        command(&mut dev, &mut engine, 2, &encoded(Command::Abort)),
        Response::AbortOk
    );
    assert_eq!(dev.boot_partition(), dev.partition("factory"));
}

#[test]
fn a_client_that_sends_nothing_for_the_idle_timeout_is_dropped_once() {
    use ota_core::device::{ClientId, Event};
    let mut dev = Device::new(Chip::Esp32c3);
    let mut engine = dev.engine();
    let (idle, busy) = (ClientId(1), ClientId(2));
    engine.handle_connected(idle);
    engine.handle_connected(busy);
    // The first tick stamps both; then only `busy` writes.
    engine.handle_tick(Instant(1_000));
    let mut f = MemFlash::new(&mut dev.flash);
    for t in (2_000..=31_000).step_by(1_000) {
        let _ = engine.handle_write(
            &mut f,
            busy,
            ota_core::protocol::Characteristic::Control,
            &encoded(Command::Status),
            Instant(t),
        );
        while engine.poll_notification(&mut [0u8; 600]).is_some() {}
        engine.handle_tick(Instant(t));
    }
    assert_eq!(
        engine.poll_timeout(),
        Some(Instant(31_000 + 30_000)),
        "busy's deadline"
    );
    let events: Vec<_> = core::iter::from_fn(|| engine.poll_event()).collect();
    assert_eq!(
        events,
        [Event::DropClient { client: idle }],
        "30 s after it was first seen"
    );
    engine.handle_tick(Instant(40_000));
    assert_eq!(engine.poll_event(), None, "asked once");
}

#[test]
fn writes_longer_than_the_mtu_and_empty_writes_get_an_att_error() {
    use ota_core::protocol::Characteristic;
    let mut dev = Device::new(Chip::Esp32c3);
    let mut engine = dev.engine();
    let mut flash = MemFlash::new(&mut dev.flash);
    let c = ClientId(1);
    engine.handle_connected(c);
    engine.handle_mtu(c, 247);
    let now = Instant(0);
    for ch in [Characteristic::Control, Characteristic::Data] {
        assert_eq!(
            engine.handle_write(&mut flash, c, ch, &[0x10; 245], now),
            Err(Reason::ChunkTooLarge),
            "{ch:?}: 245 bytes at MTU 247"
        );
        assert_eq!(
            engine.handle_write(&mut flash, c, ch, &[], now),
            Err(Reason::BadLength),
            "{ch:?}: empty"
        );
    }
    // 244 bytes fit: INFO with a payload is malformed, but it is answered by notification.
    assert_eq!(
        engine.handle_write(&mut flash, c, Characteristic::Control, &[0x10; 244], now),
        Ok(())
    );
}

/// Drives a legacy sender with every write accepted and the device's answers given by hand,
/// until it has sent DONE (`to_done`) or a few packets; then the link drops.
fn legacy_dropped(to_done: bool) -> ClientError {
    let img = build_image(Chip::Esp32c3, "app", "2.0.0", 5_000, 3);
    let mut s = legacy_sender(&img);
    let mut buf = [0u8; 600];
    let mut packets = 0;
    while let Some(t) = s.poll_transmit(Instant(0), &mut buf) {
        if t.with_response {
            s.handle_write_result(Instant(0), Ok(()));
        }
        if t.characteristic == Characteristic::Control && buf[..t.len] == [legacy::REQUEST] {
            s.handle_notification(Instant(0), &[legacy::REQUEST_ACK]);
        }
        if t.characteristic == Characteristic::Data {
            packets += 1;
        }
        if !to_done && packets == 3 {
            break;
        }
    }
    s.handle_disconnected();
    let mut failure = None;
    while let Some(e) = s.poll_event() {
        if let ClientEvent::Failed(e) = e {
            failure = Some(e);
        }
    }
    failure.expect("the sender failed")
}

#[test]
fn a_legacy_link_dropped_after_done_says_the_device_probably_took_the_image() {
    // The seed's firmware restarts as soon as it takes an image: its DONE_ACK may go with
    // the link. The user is told to check the device, not to send the image again blindly.
    let e = legacy_dropped(true);
    assert!(matches!(e, ClientError::DroppedAfterDone), "{e:?}");
    assert!(e.to_string().contains("probably runs the new one"), "{e}");
    // Mid-image it is an ordinary drop: run it again.
    assert!(matches!(legacy_dropped(false), ClientError::Disconnected));
}
