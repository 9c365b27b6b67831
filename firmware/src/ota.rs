//! The OTA service: `ota_gatt::run` (shared with the virtual ESP32) serves the GATT service and
//! drives the update engine; this module connects it to the firmware: the BLE-up and confirmed
//! signals of the trial supervisor, the `auto` policy's confirm, and the reboot.

use core::cell::RefCell;

use embassy_futures::select::{Either, select};
use embassy_time::Timer;
use embedded_storage::nor_flash::{ErrorType, NorFlash, ReadNorFlash};
use esp_radio::ble::controller::BleConnector;
use esp_storage::{FlashStorage, FlashStorageError};
use log::{debug, error, info, warn};
use ota_core::device::{Event, UpdateEngine};
use ota_core::esp::{Partition, PartitionTable};
use ota_gatt::{GattConfig, Note};
use trouble_host::prelude::ExternalController;

use crate::config;
use crate::trial::{BLE_UP, CONFIRM_NOW, CONFIRMED};

/// The HCI controller: esp-radio's BLE controller behind bt-hci's `ExternalController`.
pub type BleController = ExternalController<BleConnector<'static>, 20>;

/// What the OTA service needs from the boot flow.
pub struct Ota {
    /// The engine, for the running partition.
    pub engine: UpdateEngine,
    /// The partition table (for the `auto` policy's confirm).
    pub table: PartitionTable,
    /// The running partition.
    pub running: Partition,
}

/// Runs the OTA service; resets the chip when the engine asks for a reboot (after its last
/// notification went out) or when BLE fails.
pub async fn run(controller: BleController, flash: FlashStorage<'static>, ota: Option<Ota>) -> ! {
    let Some(Ota {
        engine,
        table,
        running,
    }) = ota
    else {
        warn!("ota: no update engine (see the boot log): updates are off");
        let _ = controller;
        loop {
            Timer::after_secs(3600).await;
        }
    };
    let flash = RefCell::new(flash);
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

    let mut observer = |n: Note| match n {
        Note::Advertising => {
            info!("ota: advertising as {}", config::DEVICE_NAME);
            BLE_UP.signal(());
        }
        Note::Engine(event) => on_event(event),
        Note::Connected { peer, .. } => info!("ota: connected to {peer:02x?}"),
        Note::Disconnected(reason) => info!("ota: disconnected ({reason:#04x})"),
        Note::TuningFailed(what) => warn!("ota: link tuning: {what} refused"),
        other => debug!("ota: {other:?}"),
    };
    let mut service_flash = SharedFlash(&flash);
    let service = ota_gatt::run(controller, &mut service_flash, engine, &gatt, &mut observer);
    // The `auto` policy's confirm. `ota_gatt::run` owns the engine, so a second engine on the
    // same flash confirms (`UpdateEngine::confirm` writes otadata VALID); flash calls never
    // overlap, as both run on this task and none awaits inside.
    let confirm = async {
        loop {
            CONFIRM_NOW.wait().await;
            let result = {
                let mut f = SharedFlash(&flash);
                UpdateEngine::new(
                    &mut f,
                    ota_gatt::device_config(config::CHIP),
                    table.clone(),
                    running,
                )
                .map_err(|_| "otadata unreadable")
                .and_then(|mut e| e.confirm(&mut f).map_err(|_| "otadata write failed"))
            };
            match result {
                Ok(()) => on_event(Event::Confirmed),
                Err(why) => error!("ota: confirm failed: {why}"),
            }
        }
    };
    match select(service, confirm).await {
        Either::First(Ok(_)) => {
            info!("ota: rebooting into the new image");
            // ota_gatt::run returned after the last notification went out and the link dropped.
            Timer::after_millis(50).await;
        }
        Either::First(Err(e)) => {
            error!("ota: BLE failed: {e:?}; resetting");
            Timer::after_millis(100).await;
        }
        Either::Second(never) => match never {},
    }
    esp_hal::system::software_reset()
}

/// Logs an engine event and passes a confirmation on to the trial supervisor.
fn on_event(event: Event) {
    match event {
        Event::UpdateStarted { slot } => info!("ota: update started into ota_{slot}"),
        Event::UpdateActivated { slot } => info!("ota: ota_{slot} verified and selected"),
        Event::UpdateFailed { reason } => warn!("ota: update failed: {reason:?}"),
        Event::RebootRequested => info!("ota: reboot requested"),
        Event::Confirmed => {
            info!("ota: running image confirmed");
            CONFIRMED.signal(());
        }
    }
}

/// One flash shared by the OTA service and the confirm step: each call borrows it briefly.
struct SharedFlash<'a>(&'a RefCell<FlashStorage<'static>>);

impl ErrorType for SharedFlash<'_> {
    type Error = FlashStorageError;
}

impl ReadNorFlash for SharedFlash<'_> {
    const READ_SIZE: usize = FlashStorage::READ_SIZE;

    fn read(&mut self, offset: u32, bytes: &mut [u8]) -> Result<(), Self::Error> {
        self.0.borrow_mut().read(offset, bytes)
    }

    fn capacity(&self) -> usize {
        self.0.borrow().capacity()
    }
}

impl NorFlash for SharedFlash<'_> {
    const WRITE_SIZE: usize = FlashStorage::WRITE_SIZE;
    const ERASE_SIZE: usize = FlashStorage::ERASE_SIZE;

    fn write(&mut self, offset: u32, bytes: &[u8]) -> Result<(), Self::Error> {
        NorFlash::write(&mut *self.0.borrow_mut(), offset, bytes)
    }

    fn erase(&mut self, from: u32, to: u32) -> Result<(), Self::Error> {
        NorFlash::erase(&mut *self.0.borrow_mut(), from, to)
    }
}
