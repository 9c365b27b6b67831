//! Test rig: a RAM flash with the ESP-IDF two-OTA layout, valid app images, and a link that
//! carries the client sender's writes to the device engine with scripted faults.
#![allow(dead_code)]

#[path = "../common/mod.rs"]
mod common;

pub use common::{MemFlash, RamFlash};

use ota_core::client::{ClientEvent, Sender, Transmit};
use ota_core::device::{ClientId, DeviceConfig, Event, UpdateEngine};
use ota_core::esp::partition::Md5Policy;
use ota_core::esp::{Chip, Partition, PartitionTable};
use ota_core::time::Instant;

pub const FLASH_SIZE: usize = 4 << 20;
pub const TABLE: &[u8] = include_bytes!("../fixtures/partitions_two_ota.bin");

/// Builds a valid ESP-IDF app image: header, an app-descriptor segment, a filler segment of
/// `filler_len` bytes (rounded down to 4) varied by `seed`, checksum and appended SHA-256.
pub fn build_image(chip: Chip, name: &str, version: &str, filler_len: usize, seed: u8) -> Vec<u8> {
    let filler: Vec<u8> = (0..filler_len / 4 * 4)
        .map(|i| (i as u32).wrapping_mul(2654435761).to_le_bytes()[i % 4] ^ seed)
        .collect();
    build_image_with_filler(chip, name, version, filler)
}

/// Like [`build_image`], with the app descriptor's `secure_version` (7 in the others).
pub fn build_image_with_secure_version(chip: Chip, version: &str, secure_version: u32) -> Vec<u8> {
    let mut img = build_image(chip, "app", version, 20_000, 5);
    // Rebuild the descriptor segment: same layout, another secure_version.
    let desc = common::app_desc_with_secure_version("app", version, secure_version);
    img[0x20..0x20 + 256].copy_from_slice(&desc);
    let sum_at = img.len() - 33;
    let data_end = sum_at;
    let mut checksum = 0xEFu8;
    let mut at = 24;
    for _ in 0..img[1] {
        let len = u32::from_le_bytes(img[at + 4..at + 8].try_into().unwrap()) as usize;
        checksum = img[at + 8..at + 8 + len]
            .iter()
            .fold(checksum, |c, b| c ^ b);
        at += 8 + len;
    }
    assert!(at <= data_end);
    img[sum_at] = checksum;
    use sha2::{Digest, Sha256};
    let body = img.len() - 32;
    let h = Sha256::digest(&img[..body]);
    img[body..].copy_from_slice(&h);
    img
}

/// Like [`build_image`], with `filler` (a multiple of 4 bytes) as the second segment: a
/// compressible one makes an image that compresses as real firmware does.
pub fn build_image_with_filler(chip: Chip, name: &str, version: &str, filler: Vec<u8>) -> Vec<u8> {
    // Rodata in DROM (C6: in the one IROM/DROM window), congruent to its image offset.
    let drom = if chip == Chip::Esp32c6 {
        0x4280_0020
    } else {
        0x3C00_0020
    };
    common::build_image(&common::ImageSpec {
        chip_id: chip.id(),
        segments: vec![
            (drom, common::app_desc(name, version)),
            (0x4200_0128, filler),
        ],
        hash: true,
    })
}

/// Returns `img` (from [`build_image`]) with `min_chip_rev_full` set to `min` and its appended
/// SHA-256 recomputed.
pub fn with_min_chip_rev(img: &[u8], min: u16) -> Vec<u8> {
    use sha2::{Digest, Sha256};
    let mut img = img.to_vec();
    img[15..17].copy_from_slice(&min.to_le_bytes());
    let body = img.len() - 32;
    let h = Sha256::digest(&img[..body]);
    img[body..].copy_from_slice(&h);
    img
}

/// A device: RAM flash with the two-OTA table, a factory app, blank otadata.
pub struct Device {
    pub flash: RamFlash,
    pub table: PartitionTable,
    pub running: Partition,
    pub config: DeviceConfig,
}

impl Device {
    pub fn new(chip: Chip) -> Self {
        let mut flash = RamFlash::new(FLASH_SIZE);
        flash[0x8000..0x8000 + TABLE.len()].copy_from_slice(TABLE);
        let table =
            PartitionTable::parse(TABLE, Md5Policy::Required, Some(FLASH_SIZE as u32)).unwrap();
        let factory = *table.factory().unwrap();
        let img = build_image(chip, "factory-app", "1.0.0", 3000, 1);
        flash[factory.offset as usize..][..img.len()].copy_from_slice(&img);
        Device {
            flash,
            table,
            running: factory,
            config: DeviceConfig::new(chip),
        }
    }

    pub fn partition(&self, name: &str) -> Partition {
        *self.table.find(name).unwrap()
    }

    pub fn slot_bytes(&self, p: &Partition) -> &[u8] {
        &self.flash[p.offset as usize..(p.offset + p.size) as usize]
    }

    pub fn otadata(&self) -> &[u8] {
        let p = self.table.otadata().unwrap();
        &self.flash[p.offset as usize..(p.offset + p.size) as usize]
    }

    pub fn engine(&mut self) -> UpdateEngine {
        let mut f = MemFlash::new(&mut self.flash);
        UpdateEngine::new(&mut f, self.config, self.table.clone(), self.running).unwrap()
    }

    /// The partition the bootloader would pick next (no side effects).
    pub fn boot_partition(&mut self) -> Partition {
        let slots = ota_core::esp::OtaSlots::new(self.table.clone()).unwrap();
        slots
            .boot_partition(&mut MemFlash::new(&mut self.flash))
            .unwrap()
    }
}

/// Faults the link applies to write commands on OTA Data, decided per write by the caller.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fate {
    Deliver,
    Drop,
    Duplicate,
    /// Held back and delivered after the next write.
    Delay,
    /// The link drops before this write is delivered.
    Disconnect,
}

/// Outcome of [`run`].
#[derive(Debug, Default)]
pub struct Outcome {
    pub events: Vec<ClientEvent>,
    pub device_events: Vec<Event>,
    pub refused_writes: Vec<u8>,
    pub steps: u32,
    pub disconnects: u32,
}

impl Outcome {
    pub fn activated(&self) -> bool {
        self.events
            .iter()
            .any(|e| matches!(e, ClientEvent::Activated { .. }))
    }
    pub fn failure(&self) -> Option<ota_core::client::ClientError> {
        self.events.iter().find_map(|e| match e {
            ClientEvent::Failed(err) => Some(*err),
            _ => None,
        })
    }
}

/// Runs `sender` against `engine` until it finishes or `max_steps`, with `fate` deciding each
/// data write command's fate. Requests and notifications are reliable, as ATT makes them.
pub fn run(
    dev: &mut Device,
    engine: &mut UpdateEngine,
    sender: &mut Sender<'_>,
    mtu: u16,
    max_steps: u32,
    mut fate: impl FnMut(u32) -> Fate,
) -> Outcome {
    let client = ClientId(1);
    let mut out = Outcome::default();
    let mut now = Instant(0);
    let mut buf = vec![0u8; 600];
    let mut note = vec![0u8; 600];
    let mut delayed: Option<Vec<u8>> = None;
    let mut data_writes = 0u32;
    engine.handle_connected(client);
    engine.handle_mtu(client, mtu);
    while !sender.is_finished() && out.steps < max_steps {
        out.steps += 1;
        now = Instant(now.0 + 1);
        let mut flash = MemFlash::new(&mut dev.flash);
        let mut sent_any = false;
        for _ in 0..8 {
            let Some(Transmit {
                characteristic,
                with_response,
                len,
            }) = sender.poll_transmit(now, &mut buf)
            else {
                break;
            };
            sent_any = true;
            let bytes = buf[..len].to_vec();
            let mut deliver = |engine: &mut UpdateEngine, bytes: &[u8]| {
                engine.handle_write(&mut flash, client, characteristic, bytes, now)
            };
            if with_response {
                let r = deliver(engine, &bytes).map_err(|r| r.att_error());
                if let Err(code) = r {
                    out.refused_writes.push(code);
                }
                sender.handle_write_result(now, r);
            } else {
                data_writes += 1;
                match fate(data_writes) {
                    Fate::Deliver => {
                        let _ = deliver(engine, &bytes);
                        if let Some(d) = delayed.take() {
                            let _ = deliver(engine, &d);
                        }
                    }
                    Fate::Drop => {}
                    Fate::Duplicate => {
                        let _ = deliver(engine, &bytes);
                        let _ = deliver(engine, &bytes);
                    }
                    Fate::Delay => {
                        if let Some(d) = delayed.replace(bytes) {
                            let _ = deliver(engine, &d);
                        }
                    }
                    Fate::Disconnect => {
                        delayed = None;
                        engine.handle_disconnected(client);
                        sender.handle_disconnected();
                        out.disconnects += 1;
                        engine.handle_connected(client);
                        engine.handle_mtu(client, mtu);
                        break;
                    }
                }
            }
        }
        while let Some((c, n)) = engine.poll_notification(&mut note) {
            assert_eq!(c, client);
            sender.handle_notification(now, &note[..n]);
        }
        if !sent_any {
            // Idle: jump to the next deadline, as a real clock would get there.
            let next = [engine.poll_timeout(), sender.poll_timeout()]
                .into_iter()
                .flatten()
                .min();
            if let Some(t) = next {
                now = now.max(t);
            } else {
                now = Instant(now.0 + 10);
            }
            engine.handle_tick(now);
            sender.handle_timeout(now);
            while let Some((_, n)) = engine.poll_notification(&mut note) {
                sender.handle_notification(now, &note[..n]);
            }
        }
        while let Some(e) = engine.poll_event() {
            out.device_events.push(e);
        }
        while let Some(e) = sender.poll_event() {
            out.events.push(e);
        }
    }
    out
}
