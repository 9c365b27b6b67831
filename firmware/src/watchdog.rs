//! The RTC watchdog: it resets the chip when the executor stops running. A trial image that
//! hangs is reset this way, while still PENDING_VERIFY, and the rollback guard then boots the
//! previous image.

use embassy_time::Timer;
use esp_hal::peripherals::RTC_TIMER;
use esp_hal::rtc_cntl::{Rtc, Rwdt, RwdtStage};

use crate::config;

/// Arms the RTC watchdog (stage 0 resets the system).
pub fn arm(rtc: RTC_TIMER<'static>) -> Rwdt {
    let mut rwdt = Rtc::new(rtc).rwdt;
    rwdt.set_timeout(
        RwdtStage::Stage0,
        esp_hal::time::Duration::from_millis(config::WATCHDOG_TIMEOUT.as_millis()),
    );
    rwdt.enable();
    rwdt
}

/// Feeds the watchdog while the executor runs.
#[embassy_executor::task]
pub async fn feed(mut rwdt: Rwdt) {
    loop {
        rwdt.feed();
        Timer::after(config::WATCHDOG_TIMEOUT / 4).await;
    }
}
