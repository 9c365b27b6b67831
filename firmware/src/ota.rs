//! The OTA service: the shared GATT crate (`crates/ota-gatt`) drives the update engine over BLE;
//! this module connects it to the firmware (confirm requests, engine events, reboot).

use embassy_time::Timer;
use esp_radio::ble::controller::BleConnector;
use esp_storage::FlashStorage;
use log::{info, warn};
use ota_core::device::{Event, UpdateEngine};
use trouble_host::prelude::ExternalController;

use crate::trial::{CONFIRM_NOW, CONFIRMED};

/// The HCI controller: esp-radio's BLE controller behind bt-hci's `ExternalController` (the
/// concrete type, which the link-tuning commands need).
pub type BleController = ExternalController<BleConnector<'static>, 20>;

/// Time for the last notification to leave before a reboot the engine asked for.
const REBOOT_DELAY_MS: u64 = 300;

/// Runs the OTA service forever.
pub async fn run(
    controller: BleController,
    mut flash: FlashStorage<'static>,
    engine: Option<UpdateEngine>,
) -> ! {
    let Some(mut engine) = engine else {
        warn!("ota: no update engine (see the boot log): updates are off");
        let _ = controller;
        loop {
            Timer::after_secs(3600).await;
        }
    };
    // The GATT service lives in `crates/ota-gatt` (shared with the emulator); it is not in the
    // tree yet. Until it is, BLE stays down and a trial image is rolled back by its deadline.
    warn!("ota: the GATT service crate (crates/ota-gatt) is not linked: BLE stays down");
    let _ = controller;
    loop {
        CONFIRM_NOW.wait().await;
        confirm(&mut engine, &mut flash);
        while let Some(event) = engine.poll_event() {
            on_event(event).await;
        }
    }
}

/// Confirms the running trial image (the `auto` policy's request).
fn confirm(engine: &mut UpdateEngine, flash: &mut FlashStorage<'static>) {
    if let Err(reason) = engine.confirm(flash) {
        warn!("ota: confirm failed: {reason:?}");
    }
}

/// Acts on an engine event. Called after the notifications queued before it went out.
pub async fn on_event(event: Event) {
    match event {
        Event::UpdateStarted { slot } => info!("ota: update started into ota_{slot}"),
        Event::UpdateActivated { slot } => info!("ota: ota_{slot} verified and selected"),
        Event::UpdateFailed { reason } => warn!("ota: update failed: {reason:?}"),
        Event::Confirmed => {
            info!("ota: running image confirmed");
            CONFIRMED.signal(());
        }
        Event::RebootRequested => {
            info!("ota: rebooting into the new image");
            Timer::after_millis(REBOOT_DELAY_MS).await;
            esp_hal::system::software_reset();
        }
    }
}
