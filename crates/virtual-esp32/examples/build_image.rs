//! Writes a demo app image: `cargo run -p virtual-esp32 --example build_image -- CHIP NAME VERSION LEN SEED OUT`.
use ota_core::esp::Chip;

fn main() {
    let a: Vec<String> = std::env::args().skip(1).collect();
    let chip = Chip::from_name(&a[0]).expect("chip");
    let img = virtual_esp32::app_image::build(
        chip,
        &a[1],
        &a[2],
        a[3].parse().unwrap(),
        a[4].parse().unwrap(),
    );
    std::fs::write(&a[5], img).unwrap();
}
