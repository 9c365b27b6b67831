//! SHA-256 for the update engine on the chip's accelerator (esp-hal's `Sha256Context`), with
//! `sha2` in software as the fallback: a known-answer test at boot, with a snapshot taken
//! mid-stream as the engine takes one, decides which. An accelerator that ever disagreed would
//! only make every update fail its hash check (the running firmware stays), but the test
//! keeps that from happening at all. On the original ESP32 esp-hal's context cannot be
//! cloned, which the engine needs: it hashes in software there.
#![cfg(not(feature = "esp32"))]

use core::sync::atomic::{AtomicBool, Ordering};

use esp_hal::sha::Sha256Context;
use log::{info, warn};
use ota_core::device::Sha256Hasher;

/// The accelerator passed the known-answer test: new hashers use it.
static ACCELERATED: AtomicBool = AtomicBool::new(false);

/// The engine's SHA-256: the accelerator, or `sha2` in software.
#[derive(Clone)]
pub enum FirmwareSha {
    /// esp-hal's work-queue driven SHA peripheral (its `ShaBackend` must be running).
    Accelerated(Sha256Context),
    /// `sha2`'s portable SHA-256.
    Software(sha2::Sha256),
}

impl Default for FirmwareSha {
    fn default() -> Self {
        if ACCELERATED.load(Ordering::Relaxed) {
            FirmwareSha::Accelerated(Sha256Context::new())
        } else {
            FirmwareSha::Software(sha2::Sha256::default())
        }
    }
}

impl Sha256Hasher for FirmwareSha {
    fn update(&mut self, data: &[u8]) {
        match self {
            FirmwareSha::Accelerated(h) => digest::Update::update(h, data),
            FirmwareSha::Software(h) => digest::Update::update(h, data),
        }
    }

    fn finalize(self) -> [u8; 32] {
        match self {
            FirmwareSha::Accelerated(h) => digest::FixedOutput::finalize_fixed(h).into(),
            FirmwareSha::Software(h) => digest::FixedOutput::finalize_fixed(h).into(),
        }
    }
}

/// Hashes 1000 bytes in uneven pieces, snapshotting after the first 333, with the
/// accelerator and in software; the accelerator is used only if both digests agree. Call it
/// once the `ShaBackend` runs.
pub fn self_test() {
    let data: [u8; 1000] = core::array::from_fn(|i| (i * 7 + i / 3) as u8);
    let run = |mut h: FirmwareSha| {
        h.update(&data[..333]);
        let head = h.clone().finalize();
        h.update(&data[333..334]);
        h.update(&data[334..]);
        (head, h.finalize())
    };
    let hardware = run(FirmwareSha::Accelerated(Sha256Context::new()));
    let software = run(FirmwareSha::Software(sha2::Sha256::default()));
    if hardware == software {
        ACCELERATED.store(true, Ordering::Relaxed);
        info!("sha: images are hashed on the SHA accelerator");
    } else {
        warn!("sha: the SHA accelerator disagrees with software SHA-256: hashing in software");
    }
}
