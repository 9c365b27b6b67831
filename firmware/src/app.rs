//! Your application: add tasks here, beside the OTA service.
//!
//! Everything in this module runs on the same embassy executor as the BLE stack and the update
//! engine. Keep tasks `async` and never block for long (the watchdog resets the chip after
//! `config::WATCHDOG_TIMEOUT` without the executor running, and BLE needs the executor too).
//! Peripherals arrive through [`Resources`]: move what your tasks need in `main.rs`.
//!
//! [`self_test`] decides whether a freshly updated image is kept (the default `auto` confirm
//! policy): make it check what your product needs (sensors answer, settings load, ...).

use embassy_executor::Spawner;
use embassy_time::Timer;
use log::info;

/// The peripherals `main` hands to the application (add fields as needed).
pub struct Resources {}

/// Starts the application's tasks. Called once at boot, before BLE starts.
pub fn spawn(spawner: Spawner, _resources: Resources) {
    spawner.spawn(counter().expect("counter task already running"));
}

/// Returns true if this image works well enough to keep. Called once on the first boot of an
/// update, after BLE is up; `false` rolls the update back.
pub async fn self_test() -> bool {
    true
}

/// Example task: logs a counter every 5 seconds.
#[embassy_executor::task]
async fn counter() {
    let mut n: u32 = 0;
    loop {
        info!("app: counter {n}");
        n = n.wrapping_add(1);
        Timer::after_secs(5).await;
    }
}
