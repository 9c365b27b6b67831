//! The benchmark's device and images: a virtual ESP32-C3 with two 2 MB OTA slots, and app
//! images of an exact size.

use ota_core::device::{ClientId, DeviceConfig, Event, Input, Shell, UpdateEngine};
use ota_core::esp::Chip;
use ota_core::esp::boot::BootloaderConfig;
use ota_core::protocol::Characteristic;
use ota_core::protocol::fast::{self, Command};
use ota_core::time::Instant;
use virtual_esp32::{DeviceSpec, VirtualEsp32, app_image};

/// The chip every benchmark device is.
pub const CHIP: Chip = Chip::Esp32c3;

/// Partition table of the benchmark device: factory 1 MB, `ota_0` and `ota_1` 2 MB each.
pub const PARTITIONS_CSV: &str = include_str!("partitions.csv");

/// Flash size of the benchmark device.
pub const FLASH_SIZE: u32 = 8 << 20;

/// A freshly booted benchmark device ([`CHIP`]) running its factory app.
pub fn device() -> VirtualEsp32 {
    device_for(CHIP)
}

/// A freshly booted benchmark device of `chip` running its factory app.
pub fn device_for(chip: Chip) -> VirtualEsp32 {
    let factory = app_image::build(chip, "factory-app", "1.0.0", 30_000, 1);
    let spec = DeviceSpec {
        chip,
        flash_size: FLASH_SIZE,
        partitions_csv: PARTITIONS_CSV,
        factory_image: &factory,
        bootloader: None,
    };
    let mut dev = VirtualEsp32::create_in_memory(&spec).expect("benchmark device spec is valid");
    dev.boot(BootloaderConfig { rollback: false })
        .expect("factory app boots");
    dev
}

/// Returns the chip an app image is built for (`esp_image_header_t.chip_id`, bytes 12..14),
/// if it starts with the image magic and names a known chip.
pub fn image_chip(image: &[u8]) -> Option<Chip> {
    ota_core::esp::image::ImageHeader::sniff(image)?.chip()
}

/// The device engine on `dev` with `config`.
pub fn engine(dev: &mut VirtualEsp32, config: DeviceConfig) -> UpdateEngine {
    let table = dev.partition_table().clone();
    let running = *dev
        .running_partition()
        .expect("a booted device runs an app");
    UpdateEngine::new(dev.flash_mut(), config, table, running).expect("device has OTA slots")
}

/// The 1 MiB app image of part 1 (deterministic).
pub fn part1_image() -> Vec<u8> {
    image_of_len(1 << 20, 3)
}

/// A valid app image of exactly `len` bytes (`len` ≥ 1024), varied by `seed`: the builder's
/// filler is sized so the header, descriptor, padding, checksum and appended SHA-256 make up
/// the rest.
pub fn image_of_len(len: usize, seed: u64) -> Vec<u8> {
    // The builder's overhead is fixed but for padding to 16 bytes; search the few candidates.
    let probe = app_image::build(CHIP, "bench-app", "2.0.0", 4, seed).len();
    let overhead = probe - 4;
    let base = len.saturating_sub(overhead + 32);
    for payload in (base..base + 64).step_by(4) {
        let img = app_image::build(CHIP, "bench-app", "2.0.0", payload, seed);
        if img.len() == len {
            return img;
        }
    }
    // Not every length is reachable (the image is a multiple of 16 bytes): the closest below.
    let mut best = app_image::build(CHIP, "bench-app", "2.0.0", base, seed);
    for payload in (base..base + 64).step_by(4) {
        let img = app_image::build(CHIP, "bench-app", "2.0.0", payload, seed);
        if img.len() <= len && img.len() > best.len() {
            best = img;
        }
    }
    best
}

/// The device-side work of one fast-protocol update, without any link: BEGIN, every chunk in
/// order, END (SHA-256 and ESP-IDF checks, read-back of the slot, otadata). This is what
/// the host CPU benchmark times; `sha256` is the image's, computed by the caller (it is the
/// client's work).
///
/// # Panics
/// If the engine does not activate the image.
pub fn engine_update(
    dev: &mut VirtualEsp32,
    engine: &mut UpdateEngine,
    image: &[u8],
    sha256: [u8; 32],
    chunk: usize,
) {
    const CLIENT: ClientId = ClientId(1);
    let now = Instant(0);
    let mut shell = Answers { activated: false };
    let mut serve = |engine: &mut UpdateEngine, dev: &mut VirtualEsp32, input: Input<'_>| {
        engine.serve(dev.flash_mut(), input, now, &mut shell)
    };
    // What a central asking for 517 is granted (trouble-host caps it at the pool's MTU).
    let _ = serve(engine, dev, Input::Connected(CLIENT));
    let link = Input::Link {
        client: CLIENT,
        mtu: ota_core::protocol::DEVICE_ATT_MTU,
        data_length: ota_core::protocol::LL_MAX_DATA_LEN,
        timing: None,
    };
    let _ = serve(engine, dev, link);
    let mut buf = [0u8; 64];
    let n = Command::Begin {
        size: image.len() as u32,
        sha256,
        flags: 0,
        stream: None,
    }
    .encode(&mut buf)
    .expect("BEGIN fits 64 bytes");
    fn control(data: &[u8]) -> Input<'_> {
        Input::Write {
            client: CLIENT,
            characteristic: Characteristic::Control,
            data,
        }
    }
    let _ = serve(engine, dev, control(&buf[..n]));
    let mut write = Vec::with_capacity(chunk + fast::CHUNK_HEADER_LEN);
    for (i, part) in image.chunks(chunk).enumerate() {
        write.clear();
        write.extend_from_slice(&fast::encode_chunk_header((i * chunk) as u32));
        write.extend_from_slice(part);
        let data = Input::Write {
            client: CLIENT,
            characteristic: Characteristic::Data,
            data: &write,
        };
        serve(engine, dev, data).expect("in-order chunks are accepted");
    }
    let n = Command::End.encode(&mut buf).expect("END fits");
    let _ = serve(engine, dev, control(&buf[..n]));
    assert!(shell.activated, "the engine did not activate the image");
}

/// The benchmark's side of the device driver: it only listens for END_OK.
struct Answers {
    activated: bool,
}

impl Shell for Answers {
    fn notify(&mut self, _client: ClientId, value: &[u8]) {
        self.activated |= value.first() == Some(&(fast::op::END | fast::op::RESPONSE_FLAG));
    }
    fn event(&mut self, _event: Event) {}
}
