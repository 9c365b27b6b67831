//! Modelled throughput of the fast protocol against the device's receive-queue depth.
use ble_link_model::Profile;
use ota_core::client::{FastSender, Sender, SenderConfig};
use ota_core::device::{PreErase, UpdateEngine};
use ota_core::esp::Chip;
use virtual_esp32::air::{AirConfig, update_over_air};
use virtual_esp32::{DeviceSpec, VirtualEsp32, app_image};

fn main() {
    let csv = include_str!("../../ota-core/tests/fixtures/partitions_two_ota.csv");
    let img = app_image::build(Chip::Esp32c3, "x", "1", (1 << 20) - 1024, 1);
    for p in Profile::ALL {
        for depth in [16u16, 32, 48, 64] {
            let mut link = p.params();
            link.rx_queue_depth = depth;
            let cfg = AirConfig::new(link);
            let factory = app_image::build(Chip::Esp32c3, "f", "1", 30_000, 1);
            let spec = DeviceSpec {
                chip: Chip::Esp32c3,
                flash_size: 4 << 20,
                partitions_csv: csv,
                factory_image: &factory,
                bootloader: None,
            };
            let mut dev = VirtualEsp32::create_in_memory(&spec).unwrap();
            dev.boot(Default::default()).unwrap();
            let table = dev.partition_table().clone();
            let running = *dev.running_partition().unwrap();
            let mut engine = UpdateEngine::new(
                dev.flash_mut(),
                cfg.device_config(Chip::Esp32c3),
                table,
                running,
            )
            .unwrap();
            // As the firmware does while idle, before a central connects.
            while let Ok(PreErase::Erased { .. } | PreErase::Blank { .. }) =
                engine.pre_erase_step(dev.flash_mut())
            {}
            let mut sender = Sender::Fast(FastSender::new(&img, SenderConfig::default()).unwrap());
            let r = update_over_air(&mut dev, &mut engine, &mut sender, &cfg, &mut |_, _| {});
            println!(
                "{:<14} depth {depth:>3}: {:>6.1} kB/s  ({:?})",
                p.name(),
                r.throughput() / 1000.0,
                r.outcome
            );
        }
    }
}
