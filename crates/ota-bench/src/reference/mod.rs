//! Reference patterns of the best-known BLE OTA protocols, as small sans-I/O client and
//! device pairs that exchange the same ATT operations through the same [`Link`] and pay the
//! same flash prices ([`FlashTiming`], as [`FlashCost`](crate::flash::FlashCost) charges ours)
//! as ours.
//!
//! They are patterns, not ports: each keeps what decides its speed (the ATT operation used for
//! data, the value size, what the client waits for and when, when the device erases and
//! writes flash) and the byte layout of its data and acknowledgements, and leaves out what
//! does not (security, image management commands before and after the transfer). Each
//! pattern follows the best current implementation of its protocol, client and device, as
//! read in their sources; each module says what it keeps, what it leaves out, and cites the
//! repository, file and line of code each choice comes from.
//!
//! - [`espressif`]: Espressif's BLE OTA, the `ble_ota_raw` profile of esp-iot-solution with
//!   its example and Espressif's Android app: the image's range erased on START before the
//!   START ACK, 463-byte write commands, one sector acknowledged before the next is sent.
//! - [`smp`]: MCUmgr image upload over SMP (Zephyr): SMP packets of up to 2475 bytes split
//!   into write commands and reassembled by the device, up to 3 requests in flight on phones
//!   (nRF Connect Device Manager), 1 on desktops (smpmgr); the image's range erased by the
//!   first request.
//! - [`nordic`]: Nordic Secure DFU: write commands, 4 KiB objects created, checksummed and
//!   executed on the control point; packet receipt notifications off on Android and desktop,
//!   every 12 packets on iOS.
//!
//! The clients that behave differently per platform learn theirs from the link they run on
//! ([`Client::connected`], [`Platform::of`]): the benchmark profiles stand for the platforms.

pub mod espressif;
pub mod nordic;
pub mod smp;

use std::time::Duration;

use ble_link_model::{
    CentralOp, FlashTiming, Link, LinkEvent, LinkParams, LinkStats, Outcome, PeripheralOp, Profile,
    SubmitError,
};

/// A GATT write the client wants to make.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Write {
    /// Attribute handle.
    pub handle: u16,
    /// The value.
    pub value: Vec<u8>,
    /// Write request (true) or write command (false).
    pub with_response: bool,
}

/// The platform a client runs on, where a protocol's client behaves differently per platform
/// (Nordic's packet receipt notifications, SMP's requests in flight).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Platform {
    /// An Android phone: Nordic's Android libraries.
    Android,
    /// An iPhone: Nordic's iOS libraries.
    Ios,
    /// A desktop or any other central: Nordic's `nrfutil`, `smpmgr`.
    Desktop,
}

impl Platform {
    /// Returns the platform the link `params` stand for: [`Platform::Android`] for
    /// [`Profile::Android`]'s parameters, [`Platform::Ios`] for [`Profile::Ios`]'s, and
    /// [`Platform::Desktop`] for [`Profile::Desktop`]'s, [`Profile::Esp32Classic`]'s and any
    /// other parameters (no phone library runs there; the desktop tools are the closest
    /// clients).
    pub fn of(params: &LinkParams) -> Platform {
        match Profile::ALL.into_iter().find(|p| p.params() == *params) {
            Some(Profile::Android) => Platform::Android,
            Some(Profile::Ios) => Platform::Ios,
            _ => Platform::Desktop,
        }
    }
}

/// The client half of a reference pattern.
pub trait Client {
    /// The link is up with `params`; [`run`] calls this once, before the first
    /// [`Client::poll_transmit`]. A client whose behaviour depends on the platform it runs on
    /// and was not given one learns it here ([`Platform::of`]).
    fn connected(&mut self, _params: &LinkParams) {}
    /// Returns the next write the protocol allows now, if any.
    fn poll_transmit(&mut self) -> Option<Write>;
    /// A notification arrived.
    fn handle_notification(&mut self, handle: u16, value: &[u8]);
    /// A write request was answered.
    fn handle_write_response(&mut self) {}
    /// Returns true once the transfer is complete (the device acknowledged the end).
    fn is_finished(&self) -> bool;
}

/// What a device did with one write, split so that flash work can be told apart from the rest.
///
/// The device's receive path is busy with the write for `cpu + flash`, and whatever the write
/// makes the device send (a response, an acknowledgement) follows that work. `flash` is the
/// time the SPI flash was erasing or programming because of this write, priced with the same
/// [`FlashTiming`] as ours: the chip runs no code from flash meanwhile, and the link model
/// stops the radio for it. `cpu` is any other processing; the patterns model none (CPU time is
/// not modelled for any column), so it is zero.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Work {
    /// Processing other than flash operations.
    pub cpu: Duration,
    /// Flash erase and program time.
    pub flash: Duration,
}

impl Work {
    /// No work: the write was only buffered.
    pub const ZERO: Work = Work {
        cpu: Duration::ZERO,
        flash: Duration::ZERO,
    };

    /// Only flash work, of `flash`.
    pub const fn flash(flash: Duration) -> Work {
        Work {
            cpu: Duration::ZERO,
            flash,
        }
    }
}

/// The device half of a reference pattern.
pub trait Device {
    /// Processes one write that arrived at modelled time `now` (since the link started);
    /// returns the work its receive path did for it.
    fn handle_write(&mut self, now: Duration, handle: u16, value: &[u8]) -> Work;
    /// Returns the next notification to send, produced by the writes handled so far.
    fn poll_notification(&mut self) -> Option<(u16, Vec<u8>)>;
}

/// Returns the time to erase the first `len` bytes of an update slot that starts on a 64 KiB
/// boundary, the way ESP-IDF's `esp_flash_erase_region` does it: the range rounded up to
/// whole sectors, a block-erase command for every whole 64 KiB block it covers from an
/// aligned address, a sector erase for each sector after the last whole block.
///
/// Source: espressif/esp-idf `components/spi_flash/esp_flash_api.c`, `esp_flash_erase_region`
/// ("If possible erase an entire multi-sector block": a block erase when
/// `len >= block_erase_size && (start % block_erase_size) == 0`, otherwise one sector), which
/// `esp_partition_erase_range` (ESP-IDF `esp_ota_begin`) and Zephyr's ESP32 flash driver
/// (zephyrproject-rtos/zephyr `drivers/flash/flash_esp32.c`, `flash_esp32_erase`) both call.
/// ESP-IDF and Zephyr place app and image slots on 64 KiB boundaries.
pub fn erase_region_time(timing: &FlashTiming, len: u64) -> Duration {
    let sector = u64::from(timing.sector_size);
    let block = u64::from(timing.block_size);
    let aligned = len.div_ceil(sector) * sector;
    let blocks = aligned / block;
    let sectors = (aligned % block) / sector;
    timing.block_erase_time(blocks) + timing.erase_time(sectors)
}

/// What one reference run measured.
#[derive(Debug, Clone)]
pub struct RefReport {
    /// Modelled time from the first write to the client's last awaited answer.
    pub modelled: Duration,
    /// Link statistics.
    pub link: LinkStats,
    /// The link dropped (a flash outage reached the supervision timeout) and the update failed.
    pub link_lost: bool,
}

/// Runs `client` against `device` over a link with `params` until the client is finished.
///
/// # Panics
/// If nothing moves any more before the client is finished (a bug in a pattern), or the
/// pattern produces a write the link refuses.
pub fn run(params: LinkParams, client: &mut dyn Client, device: &mut dyn Device) -> RefReport {
    let mut link = Link::new(params).expect("link parameters must be valid");
    client.connected(&params);
    let mut waiting: Option<CentralOp> = None;
    let mut notes: std::collections::VecDeque<PeripheralOp> = Default::default();
    let mut finished_at = None;
    loop {
        while let Some(event) = link.poll_event() {
            match event {
                LinkEvent::DeliveredToPeripheral { at, id, op } => {
                    let now = at.elapsed();
                    let work = device.handle_write(now, op.handle(), op.value());
                    // The device is busy for `cpu + flash`. The flash part is where the radio
                    // stops: no connection event is served while the flash erases or programs
                    // (the same device as ours: esp-storage masks interrupts).
                    link.peripheral_complete_work(id, work.cpu, work.flash, Outcome::Accept)
                        .expect("one completion per delivery");
                    while let Some((handle, value)) = device.poll_notification() {
                        notes.push_back(PeripheralOp::Notification { handle, value });
                    }
                }
                LinkEvent::DeliveredToCentral {
                    op: PeripheralOp::Notification { handle, value },
                    ..
                } => client.handle_notification(handle, &value),
                LinkEvent::WriteResponse { result, .. } => {
                    assert_eq!(result, Ok(()), "reference devices accept every write");
                    client.handle_write_response();
                }
                LinkEvent::SupervisionTimeout { at } => {
                    // A flash outage outlasted the supervision timeout: the pattern has no
                    // resume, so its update fails here.
                    return RefReport {
                        modelled: at.elapsed(),
                        link: link.stats(),
                        link_lost: true,
                    };
                }
                _ => {}
            }
            if finished_at.is_none() && client.is_finished() {
                finished_at = Some(link.now().elapsed());
            }
        }
        while let Some(op) = notes.pop_front() {
            if let Err(SubmitError::Full { .. }) = link.peripheral_submit(op.clone()) {
                notes.push_front(op);
                break;
            }
        }
        if let Some(modelled) = finished_at {
            return RefReport {
                modelled,
                link: link.stats(),
                link_lost: false,
            };
        }
        loop {
            let op = match waiting.take() {
                Some(op) => op,
                None => match client.poll_transmit() {
                    None => break,
                    Some(w) if w.with_response => CentralOp::WriteRequest {
                        handle: w.handle,
                        value: w.value,
                    },
                    Some(w) => CentralOp::WriteCommand {
                        handle: w.handle,
                        value: w.value,
                    },
                },
            };
            match link.central_submit(op.clone()) {
                Ok(_) => {}
                Err(SubmitError::Full { .. }) => {
                    waiting = Some(op);
                    break;
                }
                Err(e) => panic!("the pattern produced a write the link refuses: {e}"),
            }
        }
        assert!(
            link.advance_to_next().is_some(),
            "the reference pattern stalled before it finished"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const T: FlashTiming = FlashTiming::TYPICAL_4MB_SPI_NOR;

    #[test]
    fn erase_region_uses_blocks_only_for_whole_blocks() {
        // One byte: one sector.
        assert_eq!(erase_region_time(&T, 1), Duration::from_millis(45));
        // 15 sectors: 15 sector erases, no block (ESP-IDF needs the whole 64 KiB).
        assert_eq!(
            erase_region_time(&T, 15 * 4096),
            Duration::from_millis(15 * 45)
        );
        // 1 000 000 bytes: 245 sectors = 15 whole blocks (240 sectors) and 5 sectors.
        assert_eq!(
            erase_region_time(&T, 1_000_000),
            Duration::from_millis(15 * 150 + 5 * 45)
        );
        assert_eq!(
            erase_region_time(&T, 1 << 20),
            Duration::from_millis(16 * 150)
        );
    }

    #[test]
    fn platforms_follow_the_profiles() {
        assert_eq!(Platform::of(&LinkParams::android()), Platform::Android);
        assert_eq!(Platform::of(&LinkParams::ios()), Platform::Ios);
        assert_eq!(Platform::of(&LinkParams::desktop()), Platform::Desktop);
        assert_eq!(
            Platform::of(&LinkParams::esp32_classic()),
            Platform::Desktop
        );
    }
}
