//! Signed updates: a device that trusts a key takes only images whose manifest that key signed,
//! refuses the rest at BEGIN before a byte of flash changes, and refuses downgrades.

mod support;

use ota_core::client::{ClientError, FastSender, LegacySender, Sender, SenderConfig};
use ota_core::device::ClientId;
use ota_core::esp::Chip;
use ota_core::manifest::{
    MANIFEST_LEN, Manifest, ManifestError, SignedManifest, TrustedKeys, fingerprint, public_key,
};
use ota_core::protocol::fast::{self, Response, features};
use ota_core::protocol::{Reason, legacy};
use ota_core::time::Instant;
use proptest::prelude::*;
use support::{Device, Fate, MemFlash, build_image, build_image_with_secure_version, run};

const MTU: u16 = 247;
const DEVICE_SECRET: [u8; 32] = [0x42; 32];
const OTHER_SECRET: [u8; 32] = [0x17; 32];

fn signed_device() -> Device {
    let mut dev = Device::new(Chip::Esp32c3);
    dev.config.trusted_keys = TrustedKeys::new(&[public_key(&DEVICE_SECRET)]);
    dev
}

fn sender<'a>(img: &'a [u8], manifest: Option<&'a [u8; MANIFEST_LEN]>, mtu: u16) -> Sender<'a> {
    let s = FastSender::new(
        img,
        SenderConfig {
            att_mtu: Some(mtu),
            ..Default::default()
        },
    )
    .unwrap();
    Sender::Fast(match manifest {
        Some(m) => s.with_manifest(m),
        None => s,
    })
}

fn sign(img: &[u8], secret: &[u8; 32]) -> [u8; MANIFEST_LEN] {
    Manifest::for_image(img).unwrap().sign(secret).encode()
}

/// Runs the update and returns the reason it was refused with, asserting that flash did not
/// change at all (the running app, the slots and otadata).
fn refused_without_a_write(dev: &mut Device, mut sender: Sender<'_>) -> Reason {
    let before = dev.flash.to_vec();
    let mut engine = dev.engine();
    let out = run(dev, &mut engine, &mut sender, MTU, 10_000, |_| {
        Fate::Deliver
    });
    assert!(!out.activated());
    assert!(
        dev.flash.to_vec() == before,
        "a refused update must not change one byte of flash"
    );
    match out.failure() {
        Some(ClientError::Refused { reason, opcode }) => {
            assert_eq!(opcode, fast::op::BEGIN);
            reason
        }
        other => panic!("expected a refusal at BEGIN, got {other:?}"),
    }
}

#[test]
fn a_signed_image_lands_on_a_device_that_trusts_its_key() {
    let mut dev = signed_device();
    let img = build_image(Chip::Esp32c3, "app", "2.0.0", 60_000, 3);
    let manifest = sign(&img, &DEVICE_SECRET);
    let mut engine = dev.engine();
    let mut s = sender(&img, Some(&manifest), MTU);
    let out = run(&mut dev, &mut engine, &mut s, MTU, 100_000, |_| {
        Fate::Deliver
    });
    assert!(out.activated(), "{:?}", out.failure());
    let p = dev.partition("ota_0");
    assert_eq!(dev.boot_partition(), p);
    assert_eq!(&dev.slot_bytes(&p)[..img.len()], &img[..]);
}

#[test]
fn the_manifest_goes_in_parts_at_the_smallest_mtu_and_survives_a_resume() {
    let mut dev = signed_device();
    let img = build_image(Chip::Esp32c3, "app", "2.0.0", 80_000, 4);
    let manifest = sign(&img, &DEVICE_SECRET);
    let mut engine = dev.engine();
    let mtu = fast::MIN_ATT_MTU;
    let mut s = sender(&img, Some(&manifest), mtu);
    let out = run(&mut dev, &mut engine, &mut s, mtu, 200_000, |n| {
        if n == 500 {
            Fate::Disconnect
        } else {
            Fate::Deliver
        }
    });
    assert!(out.activated(), "{:?}", out.failure());
    assert_eq!(out.disconnects, 1);
}

#[test]
fn unsigned_forged_tampered_and_mismatched_images_are_refused_before_any_write() {
    let img = build_image(Chip::Esp32c3, "app", "2.0.0", 60_000, 3);
    let good = sign(&img, &DEVICE_SECRET);

    // No manifest at all.
    let r = refused_without_a_write(&mut signed_device(), sender(&img, None, MTU));
    assert_eq!(r, Reason::SignatureRequired);

    // Signed by a key the device does not trust.
    let forged = sign(&img, &OTHER_SECRET);
    let r = refused_without_a_write(&mut signed_device(), sender(&img, Some(&forged), MTU));
    assert_eq!(r, Reason::UnknownKey);

    // The trusted key's fingerprint over another key's signature.
    let mut spoofed = forged;
    spoofed[80..88].copy_from_slice(&good[80..88]);
    let r = refused_without_a_write(&mut signed_device(), sender(&img, Some(&spoofed), MTU));
    assert_eq!(r, Reason::BadSignature);

    // One bit of the signed part changed.
    let mut tampered = good;
    tampered[44] ^= 1;
    let r = refused_without_a_write(&mut signed_device(), sender(&img, Some(&tampered), MTU));
    assert_eq!(r, Reason::BadSignature);

    // A valid manifest of another image.
    let other = build_image(Chip::Esp32c3, "app", "2.0.1", 60_000, 4);
    let r = refused_without_a_write(&mut signed_device(), sender(&other, Some(&good), MTU));
    assert_eq!(r, Reason::ManifestMismatch);

    // A validly signed image for another chip.
    let c6 = build_image(Chip::Esp32c6, "app", "2.0.0", 60_000, 3);
    let c6_signed = sign(&c6, &DEVICE_SECRET);
    let r = refused_without_a_write(&mut signed_device(), sender(&c6, Some(&c6_signed), MTU));
    assert_eq!(r, Reason::ManifestMismatch);
}

#[test]
fn a_downgrade_is_refused_and_an_equal_secure_version_is_taken() {
    // The factory app runs with secure_version 7.
    let old = build_image_with_secure_version(Chip::Esp32c3, "0.9.0", 6);
    let signed_old = sign(&old, &DEVICE_SECRET);
    let r = refused_without_a_write(&mut signed_device(), sender(&old, Some(&signed_old), MTU));
    assert_eq!(r, Reason::Downgrade);

    let same = build_image_with_secure_version(Chip::Esp32c3, "1.1.0", 7);
    let signed_same = sign(&same, &DEVICE_SECRET);
    let mut dev = signed_device();
    let mut engine = dev.engine();
    let mut s = sender(&same, Some(&signed_same), MTU);
    let out = run(&mut dev, &mut engine, &mut s, MTU, 100_000, |_| {
        Fate::Deliver
    });
    assert!(out.activated(), "{:?}", out.failure());
}

#[test]
fn a_manifest_whose_versions_disagree_with_the_image_is_refused_at_end() {
    let img = build_image_with_secure_version(Chip::Esp32c3, "2.0.0", 9);
    // Signed with a higher secure_version than the image carries: after the update, the
    // device would compare the next image against 9 (from the image), not 50.
    let mut m = Manifest::for_image(&img).unwrap();
    m.secure_version = 50;
    let manifest = m.sign(&DEVICE_SECRET).encode();
    let mut dev = signed_device();
    let mut engine = dev.engine();
    let mut s = sender(&img, Some(&manifest), MTU);
    let out = run(&mut dev, &mut engine, &mut s, MTU, 100_000, |_| {
        Fate::Deliver
    });
    assert!(matches!(
        out.failure(),
        Some(ClientError::Refused {
            opcode: fast::op::END,
            reason: Reason::ManifestMismatch
        })
    ));
    assert_eq!(dev.boot_partition(), dev.partition("factory"));
}

#[test]
fn the_seeds_request_is_refused_on_a_signed_device_unless_built_to_allow_it() {
    let img = build_image(Chip::Esp32c3, "app", "2.0.0", 20_000, 3);
    let mut dev = signed_device();
    let before = dev.flash.to_vec();
    let mut engine = dev.engine();
    let mut s = Sender::Legacy(LegacySender::new(&img, MTU).unwrap());
    let out = run(&mut dev, &mut engine, &mut s, MTU, 10_000, |_| {
        Fate::Deliver
    });
    assert!(matches!(out.failure(), Some(ClientError::RequestNak)));
    assert_eq!(engine.control_value(), &[legacy::REQUEST_NAK]);
    assert!(dev.flash.to_vec() == before);

    dev.config.unsigned_legacy = true;
    let mut engine = dev.engine();
    let mut s = Sender::Legacy(LegacySender::new(&img, MTU).unwrap());
    let out = run(&mut dev, &mut engine, &mut s, MTU, 100_000, |_| {
        Fate::Deliver
    });
    assert!(out.activated(), "{:?}", out.failure());
}

#[test]
fn a_device_without_keys_takes_signed_and_unsigned_images() {
    let img = build_image(Chip::Esp32c3, "app", "2.0.0", 20_000, 3);
    let manifest = sign(&img, &OTHER_SECRET);
    for m in [None, Some(&manifest)] {
        let mut dev = Device::new(Chip::Esp32c3);
        let mut engine = dev.engine();
        let mut s = sender(&img, m, MTU);
        let out = run(&mut dev, &mut engine, &mut s, MTU, 100_000, |_| {
            Fate::Deliver
        });
        assert!(out.activated(), "{:?}", out.failure());
    }
}

#[test]
fn a_v3_device_refuses_manifest_and_the_client_sends_the_image_unsigned() {
    // A device that predates MANIFEST answers it as an unknown command.
    let img = build_image(Chip::Esp32c3, "app", "2.0.0", 20_000, 3);
    let manifest = sign(&img, &DEVICE_SECRET);
    let mut s = Sender::Fast(
        FastSender::new(&img, SenderConfig::default())
            .unwrap()
            .with_manifest(&manifest),
    );
    let mut buf = [0u8; 512];
    let now = Instant(0);
    let t = s.poll_transmit(now, &mut buf).unwrap();
    assert_eq!(buf[0], fast::op::MANIFEST);
    s.handle_write_result(now, Ok(()));
    let mut err = [0u8; 16];
    let n = Response::Error {
        opcode: fast::op::MANIFEST,
        reason: Reason::UnknownCommand,
        detail: t.len as u32,
    }
    .encode(&mut err)
    .unwrap();
    s.handle_notification(now, &err[..n]);
    let Sender::Fast(f) = &s else { unreachable!() };
    assert!(!f.is_signed());
    let t = s.poll_transmit(now, &mut buf).unwrap();
    let cmd = fast::Command::decode(&buf[..t.len]).unwrap();
    let fast::Command::Begin { flags, .. } = cmd else {
        panic!("BEGIN follows, got {cmd:?}")
    };
    assert_eq!(flags & fast::begin_flags::SIGNED_MANIFEST, 0);
}

#[test]
fn info_names_the_trusted_keys_and_says_signatures_are_required() {
    let mut dev = signed_device();
    let engine = dev.engine();
    let info = engine
        .info(&mut MemFlash::new(&mut dev.flash), ClientId(1))
        .unwrap();
    assert_eq!(
        info.features & features::SIGNATURES_REQUIRED,
        features::SIGNATURES_REQUIRED
    );
    assert_eq!(info.features & features::UNSIGNED_LEGACY, 0);
    assert_eq!(
        info.trusted_keys.as_slice(),
        &[fingerprint(&public_key(&DEVICE_SECRET))]
    );
}

#[test]
fn manifest_parts_out_of_order_or_too_long_are_refused() {
    let mut dev = signed_device();
    let mut engine = dev.engine();
    let mut flash = MemFlash::new(&mut dev.flash);
    let c = ClientId(1);
    engine.handle_connected(c);
    engine.handle_mtu(c, MTU);
    let now = Instant(0);
    let mut write = |engine: &mut ota_core::device::UpdateEngine, offset: u16, part: &[u8]| {
        let mut buf = [0u8; 300];
        let n = fast::encode_manifest_part(offset, part, &mut buf).unwrap();
        engine.handle_control_write(&mut flash, c, &buf[..n], now);
        let mut note = [0u8; 600];
        let (_, len) = engine.poll_notification(&mut note).unwrap();
        Response::decode(&note[..len]).unwrap()
    };
    assert_eq!(
        write(&mut engine, 0, &[1; 100]),
        Response::ManifestOk { received: 100 }
    );
    let refused = |r: Response, why: Reason| matches!(r, Response::Error { opcode: fast::op::MANIFEST, reason, .. } if reason == why);
    assert!(refused(write(&mut engine, 50, &[1; 10]), Reason::BadOffset));
    assert!(refused(
        write(&mut engine, 100, &[1; 53]),
        Reason::BadLength
    ));
    // Refused past the end: it starts over from 0.
    assert!(refused(
        write(&mut engine, 100, &[1; 10]),
        Reason::BadOffset
    ));
}

#[test]
fn rfc_8032_test_vector_1_keys_and_signature() {
    // RFC 8032 section 7.1, TEST 1: the empty message.
    let secret = hex32("9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60");
    assert_eq!(
        public_key(&secret),
        hex32("d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a")
    );
    use ed25519_dalek::Signer;
    let sig = ed25519_dalek::SigningKey::from_bytes(&secret).sign(b"");
    assert_eq!(
        hex::encode(sig.to_bytes()),
        "e5564300c360ac729086e2cc806e828a84877f1eb8e5d974d873e065224901555fb8821590a33bacc61e39701cf9b46bd25bf5f0595bbe24655141438e7a100b"
    );
}

fn hex32(s: &str) -> [u8; 32] {
    hex::decode(s).unwrap().try_into().unwrap()
}

#[test]
fn decode_refuses_what_is_not_a_version_1_manifest() {
    let img = build_image(Chip::Esp32c3, "app", "2.0.0", 2_000, 3);
    let good = sign(&img, &DEVICE_SECRET);
    assert_eq!(
        SignedManifest::decode(&good[..151]),
        Err(ManifestError::BadLength(151))
    );
    let mut bad = good;
    bad[0] = b'X';
    assert_eq!(SignedManifest::decode(&bad), Err(ManifestError::BadMagic));
    let mut bad = good;
    bad[4] = 2;
    assert_eq!(
        SignedManifest::decode(&bad),
        Err(ManifestError::UnsupportedVersion(2))
    );
    let mut bad = good;
    bad[5] = 1;
    assert_eq!(
        SignedManifest::decode(&bad),
        Err(ManifestError::Reserved(1))
    );
    let decoded = SignedManifest::decode(&good).unwrap();
    assert_eq!(decoded.encode(), good);
    let keys = TrustedKeys::new(&[public_key(&DEVICE_SECRET)]);
    assert_eq!(
        decoded.verify(&keys).unwrap(),
        &Manifest::for_image(&img).unwrap()
    );
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn any_bytes_decode_without_panic_and_reencode_identically(
        bytes in proptest::collection::vec(any::<u8>(), 0..200)
    ) {
        let keys = TrustedKeys::new(&[public_key(&DEVICE_SECRET)]);
        if let Ok(m) = SignedManifest::decode(&bytes) {
            prop_assert_eq!(&m.encode()[..], &bytes[..]);
            prop_assert!(m.verify(&keys).is_err());
        }
    }

    #[test]
    fn any_single_bit_flip_of_a_signed_manifest_fails_to_verify(bit in 0usize..MANIFEST_LEN * 8) {
        let img = build_image(Chip::Esp32c3, "app", "2.0.0", 2_000, 3);
        let mut m = sign(&img, &DEVICE_SECRET);
        m[bit / 8] ^= 1 << (bit % 8);
        let keys = TrustedKeys::new(&[public_key(&DEVICE_SECRET)]);
        let ok = SignedManifest::decode(&m).and_then(|s| s.verify(&keys).map(|_| ()));
        prop_assert!(ok.is_err());
    }
}

#[test]
fn one_central_cannot_overwrite_another_centrals_manifest() {
    let mut dev = signed_device();
    let img = build_image(Chip::Esp32c3, "app", "2.0.0", 20_000, 3);
    let manifest = sign(&img, &DEVICE_SECRET);
    let mut engine = dev.engine();
    let mut flash = MemFlash::new(&mut dev.flash);
    let (a, b) = (ClientId(1), ClientId(2));
    let now = Instant(0);
    for c in [a, b] {
        engine.handle_connected(c);
        engine.handle_mtu(c, MTU);
    }
    let mut buf = [0u8; 300];
    let n = fast::encode_manifest_part(0, &manifest, &mut buf).unwrap();
    engine.handle_control_write(&mut flash, a, &buf[..n], now);
    // B starts a manifest of its own, all zeros, and does not touch A's.
    let n = fast::encode_manifest_part(0, &[0; MANIFEST_LEN], &mut buf).unwrap();
    engine.handle_control_write(&mut flash, b, &buf[..n], now);
    let begin = fast::Command::Begin {
        size: img.len() as u32,
        sha256: <sha2::Sha256 as sha2::Digest>::digest(&img).into(),
        flags: fast::begin_flags::SIGNED_MANIFEST,
        stream: None,
    };
    let n = begin.encode(&mut buf).unwrap();
    engine.handle_control_write(&mut flash, a, &buf[..n], now);
    let mut note = [0u8; 600];
    let mut answers = Vec::new();
    while let Some((c, len)) = engine.poll_notification(&mut note) {
        answers.push((c, Response::decode(&note[..len]).unwrap()));
    }
    assert!(
        answers
            .iter()
            .any(|(c, r)| *c == a && matches!(r, Response::BeginOk { .. })),
        "{answers:?}"
    );
}

#[test]
fn begin_after_part_of_a_manifest_is_refused_as_unsigned_before_any_write() {
    let mut dev = signed_device();
    let before = dev.flash.to_vec();
    let img = build_image(Chip::Esp32c3, "app", "2.0.0", 20_000, 9);
    let manifest = sign(&img, &DEVICE_SECRET);
    let mut engine = dev.engine();
    let mut flash = MemFlash::new(&mut dev.flash);
    let c = ClientId(1);
    engine.handle_connected(c);
    engine.handle_mtu(c, MTU);
    let now = Instant(0);
    let mut buf = [0u8; 300];
    let n = fast::encode_manifest_part(0, &manifest[..100], &mut buf).unwrap();
    engine.handle_control_write(&mut flash, c, &buf[..n], now);
    let mut note = [0u8; 600];
    engine.poll_notification(&mut note).unwrap();
    // BEGIN with the signed flag, the manifest's last 52 bytes never sent.
    let mut cmd = [0u8; 64];
    let n = fast::Command::Begin {
        size: img.len() as u32,
        sha256: <sha2::Sha256 as sha2::Digest>::digest(&img).into(),
        flags: fast::begin_flags::SIGNED_MANIFEST,
        stream: None,
    }
    .encode(&mut cmd)
    .unwrap();
    engine.handle_control_write(&mut flash, c, &cmd[..n], now);
    let (_, len) = engine.poll_notification(&mut note).unwrap();
    assert!(
        matches!(
            Response::decode(&note[..len]).unwrap(),
            Response::Error {
                reason: Reason::SignatureRequired,
                ..
            }
        ),
        "a part of a manifest is no manifest"
    );
    assert!(dev.flash.to_vec() == before, "no byte of flash changed");
}
