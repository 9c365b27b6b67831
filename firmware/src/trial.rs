//! The watchdog and the confirm policy of a trial image.
//!
//! A trial image (first boot after an update, [`GuardOutcome::Trial`]) is confirmed only after
//! BLE is up, so an image that cannot be updated again never becomes permanent:
//!
//! - `Auto` (default): BLE up, then [`app::self_test`] passes, then the OTA task confirms
//!   (`UpdateEngine::confirm`, otadata VALID).
//! - `Strict` (feature `strict-confirm`): BLE up, then a client's CONFIRM within the timeout.
//!
//! Rolling back needs no flash write here: a reset while the image is still PENDING_VERIFY is
//! enough. The rollback guard (or a rollback-enabled bootloader) marks it ABORTED at the next boot
//! and the previous image starts. The RTC watchdog resets a hung image the same way.
//!
//! [`GuardOutcome::Trial`]: ota_core::esp::boot::GuardOutcome::Trial

use embassy_futures::select::{Either, select};
use embassy_sync::blocking_mutex::raw::CriticalSectionRawMutex;
use embassy_sync::signal::Signal;
use embassy_time::{Duration, Timer, with_timeout};
use esp_hal::rtc_cntl::{Rwdt, RwdtStage};
use log::{error, info};

use crate::app;
use crate::config::{self, ConfirmPolicy};

/// Set by the OTA task once the BLE stack runs and advertises.
pub static BLE_UP: Signal<CriticalSectionRawMutex, ()> = Signal::new();
/// Set by the trial task: the OTA task must confirm the running image now.
pub static CONFIRM_NOW: Signal<CriticalSectionRawMutex, ()> = Signal::new();
/// Set by the OTA task when the engine reports the image confirmed (by us or by a client).
pub static CONFIRMED: Signal<CriticalSectionRawMutex, ()> = Signal::new();

/// Arms the RTC watchdog (stage 0 resets the system).
pub fn arm_watchdog(rwdt: &mut Rwdt) {
    rwdt.set_timeout(
        RwdtStage::Stage0,
        esp_hal::time::Duration::from_millis(config::WATCHDOG_TIMEOUT.as_millis()),
    );
    rwdt.enable();
}

/// Feeds the watchdog while the executor runs and, for a trial image, applies the confirm
/// policy. Runs forever.
#[embassy_executor::task]
pub async fn supervise(mut rwdt: Rwdt, trial: bool) {
    let feed = async {
        loop {
            rwdt.feed();
            Timer::after(config::WATCHDOG_TIMEOUT / 4).await;
        }
    };
    let policy = async {
        if trial && let Err(why) = confirm().await {
            error!("trial: {why}: rolling back");
            // Let the log line out, then reset while still PENDING_VERIFY.
            Timer::after_millis(100).await;
            esp_hal::system::software_reset();
        }
        core::future::pending::<()>().await
    };
    let _ = select(feed, policy).await;
}

/// Runs the policy; an error means the trial failed.
async fn confirm() -> Result<(), &'static str> {
    with_timeout(config::TRIAL_DEADLINE, BLE_UP.wait())
        .await
        .map_err(|_| "BLE did not come up in time")?;
    info!("trial: BLE is up");
    match config::CONFIRM_POLICY {
        ConfirmPolicy::Auto => {
            let passed = with_timeout(config::TRIAL_DEADLINE, app::self_test())
                .await
                .map_err(|_| "the self-test did not finish in time")?;
            if !passed {
                return Err("the self-test failed");
            }
            info!("trial: self-test passed, confirming");
            CONFIRM_NOW.signal(());
            with_timeout(Duration::from_secs(10), CONFIRMED.wait())
                .await
                .map_err(|_| "the OTA task did not confirm")?;
        }
        ConfirmPolicy::Strict { timeout } => {
            info!(
                "trial: waiting {} s for a client's CONFIRM",
                timeout.as_secs()
            );
            match select(CONFIRMED.wait(), Timer::after(timeout)).await {
                Either::First(()) => {}
                Either::Second(()) => return Err("no CONFIRM from a client in time"),
            }
        }
    }
    info!("trial: image confirmed: it stays");
    Ok(())
}
