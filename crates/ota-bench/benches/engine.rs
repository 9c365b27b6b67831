//! Host CPU cost of the device engine on a 1.5 MiB image, against SHA-256 alone over the
//! same bytes. `cargo xtask bench` runs this and reads criterion's estimates.

use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};
use ota_bench::device::{CHIP, device, engine, engine_update, image_of_len};
use ota_core::device::DeviceConfig;
use sha2::{Digest, Sha256};

/// The image size of the CPU benchmark.
const LEN: usize = 3 << 19; // 1.5 MiB
/// Chunk payload of ours on a 247-byte ATT MTU (244 - 4-byte offset).
const CHUNK: usize = 240;

fn bench(c: &mut Criterion) {
    let image = image_of_len(LEN, 7);
    let sha: [u8; 32] = Sha256::digest(&image).into();
    let mut group = c.benchmark_group("cpu");
    group.throughput(Throughput::Bytes(image.len() as u64));
    group.sample_size(10);
    group.bench_function("sha256", |b| {
        b.iter(|| Sha256::digest(std::hint::black_box(&image)))
    });
    group.bench_function("engine", |b| {
        b.iter_batched(
            || {
                let mut dev = device();
                let eng = engine(&mut dev, DeviceConfig::new(CHIP));
                (dev, eng)
            },
            |(mut dev, mut eng)| {
                engine_update(&mut dev, &mut eng, &image, sha, CHUNK);
                (dev, eng)
            },
            BatchSize::PerIteration,
        )
    });
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
