//! What a client written for the C seed does, byte for byte: packet size = ATT MTU - 3 (never
//! clamped) written with response to OTA Data, REQUEST, every packet with response, DONE. And
//! how the link's MTU and data length shape every value the device asks for.

mod support;

use ota_core::device::{ClientId, UpdateEngine};
use ota_core::esp::Chip;
use ota_core::protocol::air::packed_value_len;
use ota_core::protocol::fast::{Command, Response};
use ota_core::protocol::{DEVICE_ATT_MTU, Reason, legacy, max_value_len};
use ota_core::time::Instant;
use support::{Device, MemFlash, build_image};

/// A BEGIN command for `img`.
fn begin(img: &[u8]) -> Vec<u8> {
    use sha2::Digest;
    let mut cmd = [0u8; 64];
    let n = Command::Begin {
        size: img.len() as u32,
        sha256: sha2::Sha256::digest(img).into(),
        flags: 0,
        stream: None,
    }
    .encode(&mut cmd)
    .unwrap();
    cmd[..n].to_vec()
}

/// The MTU a central ends up with after asking for `requested`: the smaller of the two.
fn negotiated(requested: u16) -> u16 {
    requested.min(DEVICE_ATT_MTU)
}

/// Runs the seed client's whole flow at `requested_mtu`; returns the last notification.
fn seed_flow(
    dev: &mut Device,
    engine: &mut UpdateEngine,
    client: u16,
    requested_mtu: u16,
    img: &[u8],
) -> u8 {
    let c = ClientId(client);
    let mtu = negotiated(requested_mtu);
    let mut f = MemFlash::new(&mut dev.flash);
    engine.handle_connected(c);
    engine.handle_mtu(c, mtu);
    let packet_size = mtu - 3; // the seed's client: no clamping
    engine
        .handle_data_write(&mut f, c, &packet_size.to_le_bytes(), Instant(0))
        .unwrap_or_else(|r| panic!("packet size {packet_size} at MTU {mtu} refused: {r}"));
    engine.handle_control_write(&mut f, c, &[legacy::REQUEST], Instant(0));
    let mut buf = [0u8; 600];
    let (_, n) = engine
        .poll_notification(&mut buf)
        .expect("REQUEST answered");
    assert_eq!(&buf[..n], &[legacy::REQUEST_ACK], "REQUEST at MTU {mtu}");
    for chunk in img.chunks(packet_size as usize) {
        assert!(chunk.len() <= max_value_len(mtu), "ATT carries it");
        engine
            .handle_data_write(&mut f, c, chunk, Instant(1))
            .unwrap_or_else(|r| panic!("packet refused at MTU {mtu}: {r}"));
    }
    engine.handle_control_write(&mut f, c, &[legacy::DONE], Instant(2));
    let (_, n) = engine.poll_notification(&mut buf).expect("DONE answered");
    assert_eq!(n, 1);
    buf[0]
}

#[test]
fn the_device_caps_the_mtu_so_mtu_minus_3_fits_an_attribute() {
    assert_eq!(DEVICE_ATT_MTU, 498);
    for requested in 23..=517u16 {
        let size = negotiated(requested) - 3;
        assert!(size as usize <= 512, "MTU {requested}: packet size {size}");
    }
}

#[test]
fn a_seed_client_updates_at_every_mtu_a_central_asks_for() {
    for requested in [23u16, 100, 185, 247, 251, 256, 498, 512, 517] {
        let mut dev = Device::new(Chip::Esp32c3);
        let mut engine = dev.engine();
        let img = build_image(Chip::Esp32c3, "app", "2.0.0", 9_000, requested as u8);
        assert_eq!(
            seed_flow(&mut dev, &mut engine, 1, requested, &img),
            legacy::DONE_ACK,
            "MTU {requested}"
        );
    }
}

#[test]
fn a_packet_size_from_any_mtu_up_to_517_is_accepted_even_unnegotiated() {
    // A central whose stack did not cap the MTU still gets its packet size taken: writes are
    // bounded by ATT anyway.
    let mut dev = Device::new(Chip::Esp32c3);
    let mut engine = dev.engine();
    let mut f = MemFlash::new(&mut dev.flash);
    for mtu in 23..=517u16 {
        let size = mtu - 3;
        assert_eq!(
            engine.handle_data_write(&mut f, ClientId(1), &size.to_le_bytes(), Instant(0)),
            Ok(()),
            "{size}"
        );
    }
    assert_eq!(
        engine.handle_data_write(&mut f, ClientId(1), &0u16.to_le_bytes(), Instant(0)),
        Err(Reason::BadLength)
    );
    assert_eq!(
        engine.handle_data_write(&mut f, ClientId(1), &515u16.to_le_bytes(), Instant(0)),
        Err(Reason::ChunkTooLarge)
    );
}

#[test]
fn values_fill_whole_link_layer_pdus() {
    // 495 bytes + 3 (ATT) + 4 (L2CAP) = 502 = two 251-octet PDUs.
    assert_eq!(packed_value_len(498, 251), 495);
    assert_eq!((495 + 3 + 4) % 251, 0);
    // 512 would take three PDUs (251 + 251 + 17): the packed length stays at two.
    assert_eq!(packed_value_len(517, 251), 495);
    // 244 + 7 = 251: one PDU.
    assert_eq!(packed_value_len(247, 251), 244);
    // Less than one PDU: as much as the MTU allows.
    assert_eq!(packed_value_len(185, 251), 182);
    assert_eq!(packed_value_len(23, 27), 20);
    // No data length extension: 236 + 7 = 243 = nine 27-octet PDUs (244 would need ten).
    assert_eq!(packed_value_len(247, 27), 236);
    for mtu in 23..=517u16 {
        for dl in [27u16, 100, 251] {
            let v = packed_value_len(mtu, dl);
            assert!(v >= 1 && v <= max_value_len(mtu), "MTU {mtu} DL {dl}: {v}");
            let pdus = (v + 7).div_ceil(dl as usize);
            assert!((v + 7) > (pdus - 1) * dl as usize, "no wasted PDU");
            if (max_value_len(mtu) + 7) >= dl as usize {
                assert_eq!(
                    (v + 7) % dl as usize,
                    0,
                    "MTU {mtu} DL {dl}: {v} fills whole PDUs"
                );
            }
        }
    }
}

#[test]
fn the_fast_chunk_follows_the_link() {
    let mut dev = Device::new(Chip::Esp32c3);
    let engine = &mut dev.engine();
    let c = ClientId(1);
    engine.handle_mtu(c, 498);
    assert_eq!(engine.chunk_size(c) as usize, packed_value_len(498, 27) - 4);
    engine.handle_data_length(c, 251);
    assert_eq!(engine.chunk_size(c), 491);
    engine.handle_mtu(c, 247);
    assert_eq!(engine.chunk_size(c), 240);
}

#[test]
fn a_detached_fast_session_does_not_lock_out_a_seed_client() {
    let mut dev = Device::new(Chip::Esp32c3);
    let mut engine = dev.engine();
    let img = build_image(Chip::Esp32c3, "app", "3.0.0", 20_000, 5);
    // A fast client begins, sends part of the image, and its link drops.
    {
        let mut f = MemFlash::new(&mut dev.flash);
        let c = ClientId(7);
        engine.handle_mtu(c, 247);
        engine.handle_control_write(&mut f, c, &begin(&img), Instant(0));
        let mut buf = [0u8; 600];
        let (_, n) = engine.poll_notification(&mut buf).unwrap();
        assert!(matches!(
            Response::decode(&buf[..n]),
            Ok(Response::BeginOk { .. })
        ));
        let mut chunk = vec![0u8; 4];
        chunk.extend_from_slice(&img[..200]);
        engine
            .handle_data_write(&mut f, c, &chunk, Instant(1))
            .unwrap();
        engine.handle_disconnected(c);
    }
    // The seed's client, which has no ABORT, comes next and updates the device.
    let other = build_image(Chip::Esp32c3, "seed-app", "4.0.0", 15_000, 9);
    assert_eq!(
        seed_flow(&mut dev, &mut engine, 8, 517, &other),
        legacy::DONE_ACK
    );
}

#[test]
fn a_connected_fast_session_keeps_its_ownership() {
    let mut dev = Device::new(Chip::Esp32c3);
    let mut engine = dev.engine();
    let img = build_image(Chip::Esp32c3, "app", "3.0.0", 20_000, 5);
    let mut f = MemFlash::new(&mut dev.flash);
    let fast = ClientId(7);
    engine.handle_mtu(fast, 247);
    engine.handle_control_write(&mut f, fast, &begin(&img), Instant(0));
    let seed = ClientId(8);
    engine.handle_mtu(seed, 247);
    assert_eq!(
        engine.handle_data_write(&mut f, seed, &244u16.to_le_bytes(), Instant(0)),
        Err(Reason::Busy)
    );
}
