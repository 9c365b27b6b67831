//! The OTA service: `ota_gatt::run` (shared with the virtual ESP32) serves the GATT service,
//! drives the update engine and carries out the confirm policy; this module gives it the
//! chip's BLE controller, flash, name and self-test, and resets the chip when it returns.

use embassy_time::Timer;
use esp_radio::ble::controller::BleConnector;
use esp_storage::FlashStorage;
use log::{debug, error, info, warn};
use ota_core::device::Event;
use ota_gatt::{Exit, GattConfig, Note};
use trouble_host::prelude::ExternalController;

use crate::boot::Booted;
use crate::{app, config};

/// Runs the OTA service; resets the chip when it asks for a reboot (after its last
/// notification went out), when a trial image fails its trial, or when BLE fails.
pub async fn run(
    connector: BleConnector<'static>,
    mut flash: FlashStorage<'static>,
    booted: Option<Booted>,
) -> ! {
    let Some(Booted { engine, mut trial }) = booted else {
        warn!("ota: no update engine (see the boot log): updates are off");
        loop {
            Timer::after_secs(3600).await;
        }
    };
    // The guard cuts ATT PDUs longer than the MTU, which trouble-host would drop unanswered.
    let controller: ExternalController<_, 20> =
        ExternalController::new(ota_gatt::OversizeGuard::new(connector));
    let mac = esp_hal::efuse::base_mac_address();
    let m = mac.as_bytes();
    let mut gatt = GattConfig::new(
        config::DEVICE_NAME,
        config::CHIP,
        [m[5], m[4], m[3], m[2], m[1], m[0]],
    );
    gatt.manufacturer = config::MANUFACTURER;
    gatt.model = config::MODEL;
    gatt.hardware_revision = config::HARDWARE_REVISION;
    gatt.passkey = config::PASSKEY;

    let mut observer = |n: Note| match n {
        Note::Advertising => info!("ota: advertising as {}", config::DEVICE_NAME),
        Note::Engine(event) => log_event(event),
        Note::Connected { peer, .. } => info!("ota: connected to {peer:02x?}"),
        Note::Disconnected(reason) => info!("ota: disconnected ({reason:#04x})"),
        Note::TuningFailed(what) => warn!("ota: link tuning: {what} refused"),
        Note::Passkey(key) => info!("ota: pairing, passkey {key:06}"),
        Note::PairingFailed => warn!("ota: pairing failed (a wrong passkey?)"),
        Note::PreErased { erased_sectors } => {
            info!("ota: next update slot erased ahead ({erased_sectors} sectors)")
        }
        // The chip already spent its flash time; only a simulator paces itself by it.
        Note::FlashWork(_) => {}
        other => debug!("ota: {other:?}"),
    };
    let exit = ota_gatt::run(
        controller,
        &mut flash,
        engine,
        &mut trial,
        app::self_test(),
        &gatt,
        &mut observer,
    )
    .await;
    match exit {
        Ok(Exit::Reboot) => info!("ota: rebooting into the new image"),
        Ok(Exit::RollBack(why)) => error!("trial: {}: rolling back", why.describe()),
        Err(e) => error!("ota: BLE failed: {e:?}; resetting"),
    }
    // Let the log line out. A trial image is still PENDING_VERIFY: the rollback guard (or a
    // rollback-enabled bootloader) marks it ABORTED at the next boot and the previous image runs.
    Timer::after_millis(100).await;
    esp_hal::system::software_reset()
}

/// Erases the slot the next update goes to, before BLE starts (nothing on a trial image, whose
/// way back that slot is; `ota_gatt::run` finishes the job while no central is connected).
pub async fn erase_ahead(flash: &mut FlashStorage<'static>, booted: Option<&mut Booted>) {
    if let Some(booted) = booted {
        let erased = ota_gatt::pre_erase(flash, booted.engine).await;
        info!(
            "ota: next update slot erased ahead ({erased} sectors erased, {} KiB ready)",
            booted.engine.pre_erased() / 1024
        );
    }
}

fn log_event(event: Event) {
    match event {
        Event::UpdateStarted { slot } => info!("ota: update started into ota_{slot}"),
        Event::UpdateActivated { slot } => info!("ota: ota_{slot} verified and selected"),
        Event::UpdateFailed { reason } => warn!("ota: update failed: {reason:?}"),
        Event::RebootRequested => info!("ota: reboot requested"),
        Event::Confirmed => info!("ota: running image confirmed: it stays"),
        Event::DropClient { client } => info!("ota: dropping idle central {}", client.0),
    }
}
