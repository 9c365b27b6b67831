//! Valid inputs for each target, and the mutations the bounded run makes of them.

use ota_core::esp::Chip;
use ota_core::manifest::Manifest;
use ota_core::protocol::fast::{
    self, Command, Info, Response, Resumable, SlotInfo, SlotStateCode, Stream, begin_flags,
};
use ota_core::protocol::{Reason, legacy};
use sha2::{Digest, Sha256};

use crate::FUZZ_SECRET;

fn encode_command(c: &Command) -> Vec<u8> {
    let mut buf = [0u8; 64];
    let n = c.encode(&mut buf).expect("a command fits 64 bytes");
    buf[..n].to_vec()
}

fn encode_response(r: &Response) -> Vec<u8> {
    let mut buf = [0u8; Response::MAX_LEN];
    let n = r.encode(&mut buf).expect("a response fits its maximum");
    buf[..n].to_vec()
}

/// A small valid update image (a different app than the factory one).
pub fn update_image() -> Vec<u8> {
    virtual_esp32::app_image::build(Chip::Esp32c3, "fuzz-app", "2.0.0", 3000, 9)
}

fn signed(img: &[u8]) -> Vec<u8> {
    Manifest::for_image(img)
        .expect("a valid image")
        .sign(&FUZZ_SECRET)
        .encode()
        .to_vec()
}

/// Every command and response, encoded.
pub fn wire() -> Vec<Vec<u8>> {
    let begin = Command::Begin {
        size: 4000,
        sha256: [7; 32],
        flags: begin_flags::REBOOT_AFTER_END | begin_flags::SIGNED_MANIFEST,
        stream: None,
    };
    let compressed = Command::Begin {
        size: 4000,
        sha256: [7; 32],
        flags: begin_flags::COMPRESSED,
        stream: Some(Stream {
            len: 1200,
            crc32: 0xDEAD_BEEF,
        }),
    };
    let mut out: Vec<Vec<u8>> = [
        Command::Info,
        begin,
        compressed,
        Command::End,
        Command::Reboot,
        Command::Confirm,
        Command::Abort,
        Command::Status,
    ]
    .iter()
    .map(encode_command)
    .collect();
    let mut slots = heapless::Vec::new();
    for (slot, state) in [(0xFF, SlotStateCode::Unused), (0, SlotStateCode::Valid)] {
        let _ = slots.push(SlotInfo {
            slot,
            state,
            running: slot == 0,
            boot: slot == 0,
        });
    }
    let info = Info {
        protocol_version: fast::PROTOCOL_VERSION,
        chip_id: 5,
        running_slot: 0,
        app_name: "app".try_into().unwrap_or_default(),
        app_version: "1.0.0".try_into().unwrap_or_default(),
        max_image_size: 1 << 20,
        chunk_size: 240,
        window: 7680,
        slots,
        resumable: Some(Resumable {
            size: 4000,
            sha256: [1; 32],
            offset: 480,
        }),
        features: fast::features::COMPRESSED | fast::features::SIGNATURES_REQUIRED,
        trusted_keys: heapless::Vec::from_slice(&[[3; 8]]).unwrap_or_default(),
    };
    for r in [
        Response::Info(info),
        Response::BeginOk {
            resume_offset: 0,
            chunk_size: 240,
            window: 7680,
            slot: 0,
        },
        Response::EndOk { slot: 1 },
        Response::ManifestOk { received: 152 },
        Response::Ack { next: 480 },
        Response::Rewind { next: 240 },
        Response::Error {
            opcode: fast::op::BEGIN,
            reason: Reason::Downgrade,
            detail: 3,
        },
    ] {
        out.push(encode_response(&r));
    }
    let mut part = vec![0u8; 40];
    let n = fast::encode_manifest_part(36, &[9; 30], &mut part).unwrap_or(0);
    part.truncate(n);
    out.push(part);
    out.push(vec![0, 0, 0, 0, 1, 2, 3]);
    out
}

/// Partition tables made by ESP-IDF's gen_esp32part.py and esp-idf-part.
pub fn partition_table() -> Vec<Vec<u8>> {
    vec![
        include_bytes!("../../ota-core/tests/fixtures/partitions_two_ota.bin").to_vec(),
        include_bytes!("../../ota-core/tests/fixtures/partitions_ota_nofactory.bin").to_vec(),
        include_bytes!("../../ota-core/tests/fixtures/partitions_two_ota_nomd5.bin").to_vec(),
    ]
}

/// App images (esptool's and ours), each behind a 2-byte split point.
pub fn image() -> Vec<Vec<u8>> {
    let with_split = |split: u16, img: &[u8]| {
        let mut v = split.to_le_bytes().to_vec();
        v.extend_from_slice(img);
        v
    };
    vec![
        with_split(100, crate::FACTORY),
        with_split(
            33,
            include_bytes!("../../ota-core/tests/fixtures/handmade_c3_app.bin"),
        ),
        with_split(2000, &update_image()),
    ]
}

/// Signed manifests of the update image and of the factory app.
pub fn manifest() -> Vec<Vec<u8>> {
    vec![signed(&update_image()), signed(crate::FACTORY)]
}

/// Engine records (`[kind, client, len, bytes...]`) of whole updates: signed on a device that
/// trusts the fuzzing key, unsigned, and the seed's protocol.
pub fn engine() -> Vec<Vec<u8>> {
    let img = update_image();
    let sha: [u8; 32] = Sha256::digest(&img).into();
    let record = |out: &mut Vec<u8>, kind: u8, bytes: &[u8]| {
        out.extend_from_slice(&[kind, 1, bytes.len() as u8]);
        out.extend_from_slice(bytes);
    };
    let fast_update = |signed_manifest: Option<&[u8]>| {
        let mut out = vec![u8::from(signed_manifest.is_some())];
        record(&mut out, 2, &[0; 112]); // MTU 247
        record(&mut out, 0, &encode_command(&Command::Info));
        let mut flags = 0;
        if let Some(m) = signed_manifest {
            for (i, part) in m.chunks(100).enumerate() {
                let mut buf = [0u8; 110];
                let n = fast::encode_manifest_part((i * 100) as u16, part, &mut buf).unwrap_or(0);
                record(&mut out, 0, &buf[..n]);
            }
            flags |= begin_flags::SIGNED_MANIFEST;
        }
        let begin = Command::Begin {
            size: img.len() as u32,
            sha256: sha,
            flags,
            stream: None,
        };
        record(&mut out, 0, &encode_command(&begin));
        for (i, chunk) in img.chunks(200).enumerate() {
            let mut w = ((i * 200) as u32).to_le_bytes().to_vec();
            w.extend_from_slice(chunk);
            record(&mut out, 1, &w);
        }
        record(&mut out, 0, &encode_command(&Command::End));
        record(&mut out, 0, &encode_command(&Command::Reboot));
        out
    };
    let manifest = signed(&img);
    let mut legacy_update = vec![0u8];
    record(&mut legacy_update, 2, &[0; 112]);
    record(&mut legacy_update, 1, &200u16.to_le_bytes());
    record(&mut legacy_update, 0, &[legacy::REQUEST]);
    for chunk in img.chunks(200) {
        record(&mut legacy_update, 1, chunk);
    }
    record(&mut legacy_update, 0, &[legacy::DONE]);
    vec![
        fast_update(Some(&manifest)),
        fast_update(None),
        legacy_update,
    ]
}

/// One input: a seed mutated (bit flips, byte sets, insertions, deletions, splices, cuts), or
/// now and then random bytes.
pub fn mutate(rng: &mut fastrand::Rng, seeds: &[Vec<u8>]) -> Vec<u8> {
    if seeds.is_empty() || rng.u8(..) < 16 {
        let n = rng.usize(0..600);
        return (0..n).map(|_| rng.u8(..)).collect();
    }
    let mut v = seeds[rng.usize(..seeds.len())].clone();
    for _ in 0..rng.usize(1..=4) {
        let len = v.len();
        match rng.u8(0..6) {
            0 if len > 0 => {
                let i = rng.usize(..len);
                v[i] ^= 1 << rng.u8(0..8);
            }
            1 if len > 0 => {
                let i = rng.usize(..len);
                v[i] = [0, 0xFF, 0x7F, 0x80, 1][rng.usize(0..5)];
            }
            2 => {
                let i = rng.usize(..=len);
                let n = rng.usize(1..16);
                for _ in 0..n {
                    v.insert(i.min(v.len()), rng.u8(..));
                }
            }
            3 if len > 0 => {
                let i = rng.usize(..len);
                let n = rng.usize(1..=(len - i).min(32));
                v.drain(i..i + n);
            }
            4 if len > 0 => {
                // Splice in bytes from another seed.
                let other = &seeds[rng.usize(..seeds.len())];
                if !other.is_empty() {
                    let from = rng.usize(..other.len());
                    let n = rng.usize(1..=(other.len() - from).min(64));
                    let at = rng.usize(..len);
                    let end = (at + n).min(len);
                    v.splice(at..end, other[from..from + n].iter().copied());
                }
            }
            _ if len > 0 => v.truncate(rng.usize(..len)),
            _ => {}
        }
    }
    v
}
