//! The bodies of the fuzz targets, one function each, shared by two runners:
//!
//! - libFuzzer, coverage-guided (`fuzz/`, `cargo fuzz run <target>`; `cargo xtask fuzz
//!   --libfuzzer` on a nightly toolchain);
//! - [`run`], a seeded random run of the same bodies on the stable toolchain: mutations of
//!   valid inputs and random bytes, bounded in time. Every `cargo xtask test` runs it and prints
//!   the executions; `cargo xtask fuzz` runs it long.
//!
//! A body panics when a property fails. An input that made one panic is kept under
//! `crates/ota-fuzz/regressions/<target>/` and replayed by this crate's tests.

pub mod seeds;

use ota_core::device::{ClientId, DeviceConfig, UpdateEngine};
use ota_core::esp::partition::Md5Policy;
use ota_core::esp::{Chip, ImageValidator, PartitionTable};
use ota_core::manifest::{SignedManifest, TrustedKeys, public_key};
use ota_core::protocol::fast::{Command, Response, decode_chunk, decode_manifest_part};
use ota_core::time::Instant;

/// A fuzz target: its name and its body.
pub struct Target {
    /// The name (`cargo fuzz run <name>`).
    pub name: &'static str,
    /// The body: panics when a property fails.
    pub body: fn(&[u8]),
    /// Valid inputs that mutations start from.
    pub seeds: fn() -> Vec<Vec<u8>>,
}

/// Every target.
pub const TARGETS: &[Target] = &[
    Target {
        name: "wire",
        body: wire,
        seeds: seeds::wire,
    },
    Target {
        name: "partition_table",
        body: partition_table,
        seeds: seeds::partition_table,
    },
    Target {
        name: "image",
        body: image,
        seeds: seeds::image,
    },
    Target {
        name: "manifest",
        body: manifest,
        seeds: seeds::manifest,
    },
    Target {
        name: "engine",
        body: engine,
        seeds: seeds::engine,
    },
];

/// Decoders of both directions of the fast protocol: never panic; a command re-encodes to the
/// same bytes, a response to bytes that decode to the same response (INFO from an older device
/// lacks later fields, a newer device may append some: both decode).
pub fn wire(data: &[u8]) {
    let mut buf = [0u8; Response::MAX_LEN];
    if let Ok(c) = Command::decode(data) {
        let n = c.encode(&mut buf).expect("a decoded command fits");
        assert_eq!(&buf[..n], data);
    }
    if let Ok(r) = Response::decode(data) {
        let n = r.encode(&mut buf).expect("a decoded response fits");
        assert_eq!(Response::decode(&buf[..n]), Ok(r));
    }
    let _ = decode_chunk(data);
    if let Ok((offset, part)) = decode_manifest_part(data) {
        // As long as the input: a part may be any length (libFuzzer's inputs too).
        let mut out = vec![0u8; data.len()];
        let n = ota_core::protocol::fast::encode_manifest_part(offset, part, &mut out)
            .expect("a decoded part fits");
        assert_eq!(&out[..n], data);
    }
}

/// The partition-table parser: never panics; what parses re-encodes to a table that parses
/// alike.
pub fn partition_table(data: &[u8]) {
    for policy in [Md5Policy::Required, Md5Policy::Optional] {
        if let Ok(t) = PartitionTable::parse(data, policy, Some(16 << 20)) {
            let again = PartitionTable::parse(&t.to_bytes(), Md5Policy::Required, Some(16 << 20))
                .expect("our own output parses");
            assert_eq!(again.partitions(), t.partitions());
        }
    }
}

/// The streaming app-image validator (the first two bytes pick a split point): never panics,
/// and where the stream is split never changes the verdict.
pub fn image(data: &[u8]) {
    let (split, data) = match data {
        [a, b, rest @ ..] => (u16::from_le_bytes([*a, *b]) as usize, rest),
        _ => (0, data),
    };
    let whole = {
        let mut v = ImageValidator::new(None, 1 << 20);
        v.feed(data).and_then(|()| v.finish().map(|_| ()))
    };
    let split = split.min(data.len());
    let parts = {
        let mut v = ImageValidator::new(None, 1 << 20);
        v.feed(&data[..split])
            .and_then(|()| v.feed(&data[split..]))
            .and_then(|()| v.finish().map(|_| ()))
    };
    assert_eq!(whole.is_ok(), parts.is_ok());
}

/// The secret key of the fuzzing key pair (no secret: a fixed test key).
pub const FUZZ_SECRET: [u8; 32] = [0x5A; 32];

/// The signed-manifest parser and verifier: never panic; what decodes re-encodes to the same
/// bytes; only a manifest our key signed verifies, and it verifies only unaltered.
pub fn manifest(data: &[u8]) {
    let keys = TrustedKeys::new(&[public_key(&FUZZ_SECRET)]);
    if let Ok(m) = SignedManifest::decode(data) {
        assert_eq!(&m.encode()[..], data);
        if m.verify(&keys).is_ok() {
            // Verified: it must be what signing its fields gives (Ed25519 is deterministic).
            assert_eq!(
                m.manifest.sign(&FUZZ_SECRET),
                m,
                "a forged manifest verified"
            );
        }
    }
}

const TABLE: &[u8] = include_bytes!("../../ota-core/tests/fixtures/partitions_two_ota.bin");
/// The factory app the fuzzed device runs (a real esptool image).
pub const FACTORY: &[u8] = include_bytes!("../../ota-core/tests/fixtures/tiny_c3_app.bin");

/// The device engine fed arbitrary records from three clients on a RAM flash: never panics
/// and never writes the running factory app. Record: `[kind, client, len, bytes...]`; the
/// first byte of the input, when odd, makes the device trust the fuzzing key.
pub fn engine(data: &[u8]) {
    let Some((&mode, mut rest)) = data.split_first() else {
        return;
    };
    let mut mem = vec![0xFFu8; 4 << 20];
    mem[0x8000..0x8000 + TABLE.len()].copy_from_slice(TABLE);
    mem[0x10000..0x10000 + FACTORY.len()].copy_from_slice(FACTORY);
    let table = PartitionTable::parse(TABLE, Md5Policy::Required, None).expect("fixture table");
    let factory = *table.factory().expect("fixture has factory");
    let mut flash = virtual_esp32::Flash::in_memory(mem);
    let mut config = DeviceConfig::new(Chip::Esp32c3);
    if mode & 1 == 1 {
        config.trusted_keys = TrustedKeys::new(&[public_key(&FUZZ_SECRET)]);
    }
    let mut engine =
        UpdateEngine::new(&mut flash, config, table, factory).expect("fixture device starts");
    let mut buf = [0u8; 600];
    let mut now = 0;
    while let [kind, client, len, tail @ ..] = rest {
        let n = (*len as usize).min(tail.len());
        let (bytes, next) = tail.split_at(n);
        rest = next;
        now += 7;
        let c = ClientId((*client % 3) as u16);
        match kind % 5 {
            0 => engine.handle_control_write(&mut flash, c, bytes, Instant(now)),
            1 => {
                let _ = engine.handle_data_write(&mut flash, c, bytes, Instant(now));
            }
            2 => engine.handle_mtu(c, 23 + *len as u16 * 2),
            3 => engine.handle_disconnected(c),
            _ => engine.handle_tick(Instant(now + *len as u64 * 10)),
        }
        while engine.poll_notification(&mut buf).is_some() {}
        while engine.poll_event().is_some() {}
    }
    assert_eq!(
        &flash.bytes()[0x10000..0x10000 + FACTORY.len()],
        FACTORY,
        "the running app was written"
    );
}

/// What a bounded run did.
#[derive(Debug, Default, Clone)]
pub struct RunStats {
    /// Executions per target, in [`TARGETS`] order.
    pub executions: Vec<(&'static str, u64)>,
    /// Inputs that made a body panic: target, input.
    pub crashes: Vec<(&'static str, Vec<u8>)>,
}

impl RunStats {
    /// Executions over every target.
    pub fn total(&self) -> u64 {
        self.executions.iter().map(|(_, n)| n).sum()
    }
}

/// Runs each target of `targets` for `per_target` (at least once over every seed), on inputs
/// drawn from `seed`: the seeds as they are, mutations of them, and random bytes. A panic is
/// caught and recorded with its input; the run goes on with the next target.
pub fn run(targets: &[&Target], seed: u64, per_target: std::time::Duration) -> RunStats {
    let mut stats = RunStats::default();
    let mut rng = fastrand::Rng::with_seed(seed);
    for target in targets {
        let seeds = (target.seeds)();
        let start = std::time::Instant::now();
        let mut n = 0u64;
        let mut crashed = false;
        while !crashed && (n < seeds.len() as u64 || start.elapsed() < per_target) {
            let input = match seeds.get(n as usize) {
                Some(s) => s.clone(),
                None => seeds::mutate(&mut rng, &seeds),
            };
            n += 1;
            let result = std::panic::catch_unwind(|| (target.body)(&input));
            if result.is_err() {
                stats.crashes.push((target.name, input));
                crashed = true;
            }
        }
        stats.executions.push((target.name, n));
    }
    stats
}
