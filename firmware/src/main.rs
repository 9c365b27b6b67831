//! BLE OTA firmware boilerplate for ESP32 chips: flash it once over USB, then update it over
//! Bluetooth LE with `ble-ota flash`.
//!
//! ```text
//! cargo run --release                        # ESP32-C3: build, flash with partitions.csv, monitor
//! cargo c6                                   # the same for an ESP32-C6
//! ble-ota flash --device esp-ble-ota app.bin # later updates, over BLE
//! ```
//!
//! Boot log of a first boot after an update:
//!
//! ```text
//! INFO - boot: running ota_0 at 0x110000 (1024 KiB)
//! INFO - boot: first boot of an update: on trial until confirmed
//! INFO - trial: BLE is up
//! INFO - trial: self-test passed, confirming
//! INFO - ota: running image confirmed
//! ```
//!
//! Where things are: names, versions and the confirm policy in `config.rs`; your own tasks in
//! `app.rs`; the boot flow (partition table, rollback guard) in `boot.rs`; the watchdog and the
//! confirm policy in `trial.rs`; the OTA service glue in `ota.rs`.
#![no_std]
#![no_main]

extern crate alloc;

mod app;
mod boot;
mod config;
mod ota;
mod trial;

use embassy_executor::Spawner;
use esp_backtrace as _;
use esp_hal::clock::CpuClock;
use esp_hal::rtc_cntl::Rtc;
use esp_hal::timer::timg::TimerGroup;
use esp_radio::ble::controller::BleConnector;
use esp_storage::FlashStorage;
use log::{info, warn};
use ota_core::device::UpdateEngine;
use ota_core::esp::boot::GuardOutcome;
use trouble_host::prelude::ExternalController;

#[esp_rtos::main]
async fn main(spawner: Spawner) -> ! {
    esp_println::logger::init_logger_from_env();
    let peripherals = esp_hal::init(esp_hal::Config::default().with_cpu_clock(CpuClock::max()));
    // esp-hal turned the bootloader's watchdogs off: arm ours before anything can hang.
    let mut rwdt = Rtc::new(peripherals.RTC_TIMER).rwdt;
    trial::arm_watchdog(&mut rwdt);

    // Heap for the BLE controller; the reclaimed region is the bootloader's RAM.
    esp_alloc::heap_allocator!(#[esp_hal::ram(reclaimed)] size: 64 * 1024);
    esp_alloc::heap_allocator!(size: 32 * 1024);
    let timg0 = TimerGroup::new(peripherals.TIMG0);
    esp_rtos::start(timg0.timer0, peripherals.FROM_CPU_INTR0);

    let desc = &config::ESP_APP_DESC;
    info!(
        "{} {} on {}",
        desc.project_name(),
        desc.version(),
        config::HARDWARE_REVISION
    );

    let mut flash = FlashStorage::new(peripherals.FLASH);
    let (ota, trial) = match boot::run(&mut flash) {
        Ok(booted) => {
            let trial = booted.guard == GuardOutcome::Trial;
            let engine = UpdateEngine::new(
                &mut flash,
                ota_gatt::device_config(config::CHIP),
                booted.table.clone(),
                booted.running,
            );
            let ota = match engine {
                Ok(engine) => Some(ota::Ota {
                    engine,
                    table: booted.table,
                    running: booted.running,
                }),
                Err(e) => {
                    warn!("ota: cannot start the update engine: {e}");
                    None
                }
            };
            (ota, trial)
        }
        Err(e) => {
            warn!("boot: {e:?}: running without updates");
            (None, false)
        }
    };
    spawner.spawn(trial::supervise(rwdt, trial).expect("supervisor task already running"));
    app::spawn(spawner, app::Resources {});

    let connector = match BleConnector::new(peripherals.BT, Default::default()) {
        Ok(c) => c,
        Err(e) => panic!("BLE controller init failed: {e:?}"),
    };
    ota::run(ExternalController::new(connector), flash, ota).await
}
