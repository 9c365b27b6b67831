//! The device engine under arbitrary input: random commands, chunks, packet sizes and
//! disconnects from several clients never panic, never touch factory or otadata unless an
//! image was verified, and never select a slot whose bytes are not a valid image.

mod support;

use ota_core::device::ClientId;
use ota_core::esp::Chip;
use ota_core::esp::image::verify_in_flash;
use ota_core::protocol::fast::{Command, op};
use ota_core::protocol::legacy;
use ota_core::time::Instant;
use proptest::prelude::*;
use support::{Device, MemFlash, build_image};

#[derive(Debug, Clone)]
enum Input {
    Control(u16, Vec<u8>),
    Data(u16, Vec<u8>),
    /// A well-formed chunk of the real image at a random offset.
    Chunk(u16, u32, u16),
    Begin(u16),
    Mtu(u16, u16),
    Disconnect(u16),
    Tick(u32),
}

fn input() -> impl Strategy<Value = Input> {
    let client = 1u16..4;
    let opcodes = prop::sample::select(vec![
        legacy::REQUEST,
        legacy::DONE,
        op::INFO,
        op::BEGIN,
        op::END,
        op::REBOOT,
        op::CONFIRM,
        op::ABORT,
        op::STATUS,
        0x00,
        0x7F,
        0xFF,
    ]);
    prop_oneof![
        (
            client.clone(),
            opcodes,
            prop::collection::vec(any::<u8>(), 0..40)
        )
            .prop_map(|(c, o, mut rest)| {
                rest.insert(0, o);
                if rest.len() > 1 && rest.len() < 6 {
                    rest.truncate(1)
                }
                Input::Control(c, rest)
            }),
        (client.clone(), prop::collection::vec(any::<u8>(), 0..300))
            .prop_map(|(c, d)| Input::Data(c, d)),
        (client.clone(), 0u32..40_000, 1u16..300).prop_map(|(c, o, n)| Input::Chunk(c, o, n)),
        client.clone().prop_map(Input::Begin),
        (client.clone(), 23u16..600).prop_map(|(c, m)| Input::Mtu(c, m)),
        client.prop_map(Input::Disconnect),
        (0u32..2000).prop_map(Input::Tick),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 200, ..ProptestConfig::default() })]

    #[test]
    fn arbitrary_input_never_harms_the_device(inputs in prop::collection::vec(input(), 1..120)) {
        let mut dev = Device::new(Chip::Esp32c3);
        let factory = dev.partition("factory");
        let factory_bytes = dev.slot_bytes(&factory).to_vec();
        let otadata_before = dev.otadata().to_vec();
        let img = build_image(Chip::Esp32c3, "app", "2.0.0", 30_000, 3);
        let begin = {
            use sha2::Digest;
            let mut b = [0u8; 64];
            let n = Command::Begin { size: img.len() as u32, sha256: sha2::Sha256::digest(&img).into(), flags: 0 , stream: None}.encode(&mut b).unwrap();
            b[..n].to_vec()
        };
        let mut engine = dev.engine();
        let mut now = 0u64;
        let mut buf = [0u8; 600];
        for i in inputs {
            now += 1;
            let t = Instant(now);
            let mut f = MemFlash::new(&mut dev.flash);
            match i {
                Input::Control(c, bytes) => engine.handle_control_write(&mut f, ClientId(c), &bytes, t),
                Input::Data(c, bytes) => { let _ = engine.handle_data_write(&mut f, ClientId(c), &bytes, t); }
                Input::Chunk(c, off, n) => {
                    let off = (off as usize).min(img.len() - 1);
                    let end = (off + n as usize).min(img.len());
                    let mut w = (off as u32).to_le_bytes().to_vec();
                    w.extend_from_slice(&img[off..end]);
                    let _ = engine.handle_data_write(&mut f, ClientId(c), &w, t);
                }
                Input::Begin(c) => engine.handle_control_write(&mut f, ClientId(c), &begin, t),
                Input::Mtu(c, m) => engine.handle_mtu(ClientId(c), m),
                Input::Disconnect(c) => engine.handle_disconnected(ClientId(c)),
                Input::Tick(ms) => { now += ms as u64; engine.handle_tick(Instant(now)); }
            }
            while engine.poll_notification(&mut buf).is_some() {}
            while engine.poll_event().is_some() {}
            // Factory (the running app) is never written.
            prop_assert!(dev.slot_bytes(&factory) == &factory_bytes[..]);
        }
        // Whatever the next boot picks holds a valid image for this chip.
        let boot = dev.boot_partition();
        if dev.otadata() != &otadata_before[..] && boot != factory {
            let mut f = MemFlash::new(&mut dev.flash);
            prop_assert!(verify_in_flash(&mut f, boot.offset, boot.size, Some(Chip::Esp32c3)).is_ok());
        }
    }
}
