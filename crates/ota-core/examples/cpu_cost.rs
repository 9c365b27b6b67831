//! Counts what the device's CPU work costs, for the device model's rates
//! (`virtual_esp32::air::DeviceCpu`): inflating a compressed image, and hashing it.
//!
//! `inflate` inflates an image's compressed stream exactly as the engine does (miniz_oxide's
//! core inflater, raw deflate, a 32 KiB wrapping window, the stream fed in 240-byte chunks);
//! `sha256` hashes the image with the engine's `sha2` in 240-byte updates. Each runs `N`
//! times. Run it under a deterministic instruction counter, with `N` = 0 and `N` = 10, and
//! divide the difference by 10 times the image length:
//!
//! ```sh
//! cargo build --release -p ota-core --features compress --example cpu_cost
//! valgrind --tool=callgrind --callgrind-out-file=/dev/null target/release/examples/cpu_cost IMAGE inflate 0
//! valgrind --tool=callgrind --callgrind-out-file=/dev/null target/release/examples/cpu_cost IMAGE inflate 10
//! ```
//!
//! (callgrind prints "Collected : <instructions>"; under valgrind `sha2` takes its portable
//! code, as on the chip, since valgrind's CPU lacks the SHA extensions.) IMAGE defaults to
//! the firmware's `firmware/target/images/esp32c3.bin`.
use miniz_oxide::inflate::core::{DecompressorOxide, decompress, inflate_flags};

fn main() {
    let mut args = std::env::args().skip(1);
    let path = args
        .next()
        .unwrap_or_else(|| "firmware/target/images/esp32c3.bin".into());
    let what = args.next().unwrap_or_else(|| "inflate".into());
    let rounds: usize = args.next().map_or(10, |n| n.parse().expect("a count"));
    let image = std::fs::read(&path).expect("the image file");
    if what == "sha256" {
        use sha2::Digest;
        let mut digest = [0u8; 32];
        for _ in 0..rounds {
            let mut h = sha2::Sha256::new();
            for chunk in image.chunks(240) {
                h.update(chunk);
            }
            digest = h.finalize().into();
        }
        println!(
            "{rounds} x {} image bytes hashed ({:02x?})",
            image.len(),
            &digest[..4]
        );
        return;
    }
    let stream = ota_core::client::compress(&image);
    let mut window = vec![0u8; 32 * 1024];
    let mut out = 0usize;
    for _ in 0..rounds {
        let mut state = DecompressorOxide::new();
        let mut pos = 0;
        let mut chunks = stream.chunks(240).peekable();
        while let Some(mut input) = chunks.next() {
            let flags = if chunks.peek().is_some() {
                inflate_flags::TINFL_FLAG_HAS_MORE_INPUT
            } else {
                0
            };
            loop {
                let (_, read, written) = decompress(&mut state, input, &mut window, pos, flags);
                input = &input[read..];
                pos = (pos + written) % window.len();
                out += written;
                if input.is_empty() && written == 0 {
                    break;
                }
            }
        }
    }
    assert_eq!(out, image.len() * rounds, "inflates to the image");
    println!(
        "{rounds} x {} image bytes from a {}-byte stream",
        image.len(),
        stream.len()
    );
}
