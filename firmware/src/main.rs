//! BLE OTA firmware boilerplate for ESP32 chips: flash it once over USB, then update it over
//! Bluetooth LE with `ble-ota flash`.
//!
//! ```text
//! cargo run --release                        # ESP32-C3: build, flash with partitions.csv, monitor
//! cargo c6                                   # the same for an ESP32-C6
//! ble-ota flash --device esp-ble-ota app.bin # later updates, over BLE
//! ```
//!
//! Where things are: names, versions and the confirm policy in `config.rs`; your own tasks and
//! the self-test in `app.rs`; the boot flow (partition table, rollback guard) in `boot.rs`; the
//! watchdog in `watchdog.rs`; the OTA service glue in `ota.rs`. The rules themselves (update,
//! rollback guard, confirm policy) live in `ota-core` and `ota-gatt`, shared with the virtual
//! ESP32 (`ble-ota device`), whose tests thus cover them.
#![no_std]
#![no_main]

extern crate alloc;

mod app;
mod boot;
mod config;
mod ota;
#[cfg(not(feature = "esp32"))]
mod sha;
mod watchdog;

use embassy_executor::Spawner;
use esp_backtrace as _;
use esp_hal::clock::CpuClock;
use esp_hal::timer::timg::TimerGroup;
use esp_radio::ble::controller::BleConnector;
use esp_storage::FlashStorage;

#[esp_rtos::main]
async fn main(spawner: Spawner) -> ! {
    esp_println::logger::init_logger_from_env();
    let peripherals = esp_hal::init(esp_hal::Config::default().with_cpu_clock(CpuClock::max()));
    // esp-hal turned the bootloader's watchdogs off: arm ours before anything can hang.
    let rwdt = watchdog::arm(peripherals.RTC_TIMER);
    // Heap for the BLE controller; the reclaimed region is the bootloader's RAM.
    esp_alloc::heap_allocator!(#[esp_hal::ram(reclaimed)] size: 64 * 1024);
    esp_alloc::heap_allocator!(size: 32 * 1024);
    esp_rtos::start(
        TimerGroup::new(peripherals.TIMG0).timer0,
        peripherals.FROM_CPU_INTR0,
    );
    spawner.spawn(watchdog::feed(rwdt).expect("watchdog task already running"));

    // The SHA accelerator for the update engine: its work queue runs as long as `main` does.
    static SHA: static_cell::StaticCell<esp_hal::sha::ShaBackend<'static>> =
        static_cell::StaticCell::new();
    let _sha_queue = SHA
        .init(esp_hal::sha::ShaBackend::new(peripherals.SHA))
        .start();
    sha::self_test();

    let mut flash = FlashStorage::new(peripherals.FLASH);
    let mut booted = boot::run(&mut flash);
    app::spawn(spawner, app::Resources {});
    // Erase the next update slot now, before BLE starts: no erase then stops a live link.
    ota::erase_ahead(&mut flash, booted.as_mut()).await;
    let connector = BleConnector::new(peripherals.BT, Default::default())
        .unwrap_or_else(|e| panic!("BLE controller init failed: {e:?}"));
    ota::run(connector, flash, booted).await
}
