//! Nordic Secure DFU: write commands, 4 KiB objects created, checksummed and executed on the
//! control point; packet receipt notifications per platform: off on Android and desktops, every
//! 12 packets on iOS.
//!
//! Protocol source: Nordic Semiconductor, nRF5 SDK documentation, "BLE Secure DFU Service" and
//! "DFU protocol" → "Transport: BLE" and "Control point opcodes"
//! (<https://docs.nordicsemi.com/bundle/sdk_nrf5_v17.1.0/page/lib_dfu_transport_ble.html>):
//! the DFU Control Point (write, notify) takes Create (0x01), Set PRN (0x02), Calculate
//! Checksum (0x03), Execute (0x04) and Select (0x06), each answered by a Response (0x60)
//! notification; firmware goes to the DFU Packet characteristic with write without response;
//! with a packet receipt notification (PRN) value `n` the device notifies the offset and CRC
//! after every `n` packets and the client waits for it, with 0 it never does. A data object is
//! at most 4 KiB (one flash page); the device erases the object's page on Create and stores
//! each packet as it arrives.
//!
//! Client sources, the platforms' default PRN and packet size:
//! - Android (NordicSemiconductor/Android-DFU-Library, commit 3ad004b1 of 2026-02-11):
//!   `lib/dfu/src/main/java/no/nordicsemi/android/dfu/BaseCustomDfuImpl.java` enables PRNs by
//!   default only when `Build.VERSION.SDK_INT < Build.VERSION_CODES.M` (Android 6, API 23), so
//!   on Android 6 and later PRN is 0 unless the app turns it on
//!   (`DfuServiceInitiator.setPacketsReceiptNotificationsEnabled`: "By default the PRNs are
//!   disabled on devices with Android Marshmallow or newer"); `SecureDfuImpl.java`
//!   `sendFirmware` sends Set PRN only for a value above 0 (before the init packet it sends Set
//!   PRN 0), then Select, then per object Create, the packets, Calculate Checksum, Execute;
//!   `BaseDfuImpl.java` `onMtuChanged` sizes packets `mtu - 3`.
//! - iOS (NordicSemiconductor/IOS-DFU-Library, commit 43de982a of 2025-06-10):
//!   `Library/Classes/Implementation/DFUServiceInitiator.swift`,
//!   `packetReceiptNotificationParameter: UInt16 = 12` ("Default value is 12"), which
//!   `SecureDFU/DFU/SecureDFUExecutor.swift` sends with Set PRN after the init packet;
//!   `SecureDFU/Characteristics/SecureDFUPacket.swift` sizes packets
//!   `maximumWriteValueLength(for: .withoutResponse) & 0xFFFFFFFC`, the largest multiple of 4.
//! - Desktop (NordicSemiconductor/pc-nrfutil, commit 16cb5a3d of 2023-01-16):
//!   `nordicsemi/dfu/dfu_transport_ble.py`, `DfuTransportBle(.., prn=0)`, which `nrfutil dfu
//!   ble` (`nordicsemi/__main__.py`) creates without a PRN option, so PRN is 0; it sends Set
//!   PRN on open; packets are `att_mtu - 3` bytes. The ESP32-classic profile has no Nordic
//!   client of its own; it gets the desktop's behaviour ([`Platform::of`]).
//!
//! What the pattern keeps: one Set PRN (the platform's value) and Select at the start, then
//! for each 4 KiB object Create → data packets as write commands (with a PRN wait every `n`
//! packets when `n` is not 0) → Calculate Checksum → Execute, every control point command a
//! write request answered by a notification that the client waits for. The device's flash
//! work is the object's sector erase on Create and each packet's page programs.
//!
//! What it leaves out: the init packet (command object, about 140 bytes and one more
//! create/execute round), signature checks, and the CRC32 values (the client checks the
//! offset; CRC values change no timing).

use std::collections::VecDeque;
use std::time::Duration;

use ble_link_model::{FlashTiming, LinkParams};

use super::{Client, Device, Platform, Work, Write};
use crate::flash::FlashCost;

/// DFU Control Point handle in the model.
pub const CONTROL_POINT: u16 = 0x0030;
/// DFU Packet handle in the model.
pub const PACKET: u16 = 0x0032;
/// Packets between two receipt notifications on iOS, the iOS library's default.
pub const IOS_PRN: u16 = 12;
/// Largest data object (one nRF52 flash page; an ESP32 sector is the same 4 KiB).
pub const OBJECT_SIZE: usize = 4096;

const OP_CREATE: u8 = 0x01;
const OP_SET_PRN: u8 = 0x02;
const OP_CRC: u8 = 0x03;
const OP_EXECUTE: u8 = 0x04;
const OP_SELECT: u8 = 0x06;
const OP_RESPONSE: u8 = 0x60;
const SUCCESS: u8 = 0x01;
const OBJECT_DATA: u8 = 0x02;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Step {
    SetPrn,
    Select,
    Create,
    Data,
    Crc,
    Execute,
    Done,
}

/// Returns the PRN value the Nordic DFU client of `platform` uses by default: 0 (off) on
/// Android 6+ and desktops, [`IOS_PRN`] on iOS.
pub const fn prn_of(platform: Platform) -> u16 {
    match platform {
        Platform::Ios => IOS_PRN,
        Platform::Android | Platform::Desktop => 0,
    }
}

/// The client: Nordic's DFU library of the platform it runs on.
#[derive(Debug)]
pub struct DfuClient<'a> {
    image: &'a [u8],
    max_value_len: usize,
    /// The platform, once known ([`Client::connected`] or [`DfuClient::with_platform`]).
    platform: Option<Platform>,
    step: Step,
    /// Waiting for a control point response.
    await_rsp: bool,
    /// Waiting for a packet receipt notification.
    await_prn: bool,
    /// Next byte to send.
    off: usize,
    /// End of the current object.
    object_end: usize,
    /// Packets sent in the current object since the last PRN.
    since_prn: u16,
}

impl<'a> DfuClient<'a> {
    /// A client for `image` whose writes may carry `max_value_len` bytes (ATT MTU - 3); it
    /// takes its platform from the link it runs on ([`Platform::of`]).
    pub fn new(image: &'a [u8], max_value_len: usize) -> Self {
        DfuClient {
            image,
            max_value_len,
            platform: None,
            step: Step::SetPrn,
            await_rsp: false,
            await_prn: false,
            off: 0,
            object_end: 0,
            since_prn: 0,
        }
    }

    /// A client of `platform` whatever link it runs on.
    pub fn with_platform(image: &'a [u8], max_value_len: usize, platform: Platform) -> Self {
        DfuClient {
            platform: Some(platform),
            ..DfuClient::new(image, max_value_len)
        }
    }

    /// Returns the platform (desktop until one is known).
    pub fn platform(&self) -> Platform {
        self.platform.unwrap_or(Platform::Desktop)
    }

    /// Returns the PRN value the client sets.
    pub fn prn(&self) -> u16 {
        prn_of(self.platform())
    }

    /// Returns the data packet length: the largest value, rounded down to a multiple of 4 on
    /// iOS.
    pub fn packet_len(&self) -> usize {
        match self.platform() {
            Platform::Ios => self.max_value_len & !3,
            Platform::Android | Platform::Desktop => self.max_value_len,
        }
    }

    fn control(&mut self, value: Vec<u8>) -> Option<Write> {
        self.await_rsp = true;
        Some(Write {
            handle: CONTROL_POINT,
            value,
            with_response: true,
        })
    }
}

impl Client for DfuClient<'_> {
    fn connected(&mut self, params: &LinkParams) {
        self.platform.get_or_insert(Platform::of(params));
    }

    fn poll_transmit(&mut self) -> Option<Write> {
        if self.await_rsp || self.await_prn {
            return None;
        }
        match self.step {
            Step::SetPrn => {
                let [a, b] = self.prn().to_le_bytes();
                self.control(vec![OP_SET_PRN, a, b])
            }
            Step::Select => self.control(vec![OP_SELECT, OBJECT_DATA]),
            Step::Create => {
                self.object_end = (self.off + OBJECT_SIZE).min(self.image.len());
                let size = ((self.object_end - self.off) as u32).to_le_bytes();
                let mut v = vec![OP_CREATE, OBJECT_DATA];
                v.extend_from_slice(&size);
                self.control(v)
            }
            Step::Data => {
                let n = self.packet_len().min(self.object_end - self.off);
                let value = self.image[self.off..self.off + n].to_vec();
                self.off += n;
                self.since_prn += 1;
                if self.since_prn == self.prn() {
                    self.since_prn = 0;
                    self.await_prn = true;
                }
                if self.off == self.object_end {
                    self.step = Step::Crc;
                }
                Some(Write {
                    handle: PACKET,
                    value,
                    with_response: false,
                })
            }
            Step::Crc => self.control(vec![OP_CRC]),
            Step::Execute => self.control(vec![OP_EXECUTE]),
            Step::Done => None,
        }
    }

    fn handle_notification(&mut self, _handle: u16, value: &[u8]) {
        if value.len() < 3 || value[0] != OP_RESPONSE || value[2] != SUCCESS {
            return;
        }
        let op = value[1];
        // A PRN is a Calculate Checksum response the client did not ask for; the device
        // answers in order, so an awaited PRN always comes before the next response.
        if op == OP_CRC && self.await_prn {
            self.await_prn = false;
            return;
        }
        if !self.await_rsp {
            return;
        }
        self.await_rsp = false;
        self.step = match (self.step, op) {
            (Step::SetPrn, OP_SET_PRN) => Step::Select,
            (Step::Select, OP_SELECT) => Step::Create,
            (Step::Create, OP_CREATE) => {
                self.since_prn = 0;
                Step::Data
            }
            (Step::Crc, OP_CRC) => Step::Execute,
            (Step::Execute, OP_EXECUTE) if self.off == self.image.len() => Step::Done,
            (Step::Execute, OP_EXECUTE) => Step::Create,
            (step, _) => step,
        };
    }

    fn is_finished(&self) -> bool {
        self.step == Step::Done
    }
}

/// The device: the nRF5 SDK DFU request handler, on the same flash model as ours.
#[derive(Debug)]
pub struct DfuDevice {
    flash: FlashCost,
    /// Bytes received.
    off: usize,
    /// Packets since the object was created.
    packets: u16,
    prn: u16,
    notes: VecDeque<(u16, Vec<u8>)>,
}

impl DfuDevice {
    /// A device writing to flash with `timing`.
    pub fn new(timing: FlashTiming) -> Self {
        DfuDevice {
            flash: FlashCost::new(timing),
            off: 0,
            packets: 0,
            prn: 0,
            notes: VecDeque::new(),
        }
    }

    /// Returns the flash time charged.
    pub fn flash_time(&self) -> Duration {
        self.flash.total()
    }

    fn respond(&mut self, op: u8, payload: &[u8]) {
        let mut v = vec![OP_RESPONSE, op, SUCCESS];
        v.extend_from_slice(payload);
        self.notes.push_back((CONTROL_POINT, v));
    }

    fn crc_payload(&self) -> Vec<u8> {
        let mut p = (self.off as u32).to_le_bytes().to_vec();
        p.extend_from_slice(&[0; 4]); // CRC32 (not computed)
        p
    }
}

impl Device for DfuDevice {
    fn handle_write(&mut self, _now: Duration, handle: u16, value: &[u8]) -> Work {
        if handle == PACKET {
            let took = self.flash.program(self.off as u64, value.len() as u64);
            self.off += value.len();
            self.packets += 1;
            if self.prn != 0 && self.packets.is_multiple_of(self.prn) {
                let p = self.crc_payload();
                self.respond(OP_CRC, &p);
            }
            return Work::flash(took);
        }
        match value[0] {
            OP_SET_PRN => {
                self.prn = u16::from_le_bytes([value[1], value[2]]);
                self.respond(OP_SET_PRN, &[]);
                Work::ZERO
            }
            OP_SELECT => {
                let mut p = (OBJECT_SIZE as u32).to_le_bytes().to_vec();
                p.extend_from_slice(&[0; 8]); // offset and CRC of the current object: none
                self.respond(OP_SELECT, &p);
                Work::ZERO
            }
            OP_CREATE => {
                let size = u32::from_le_bytes([value[2], value[3], value[4], value[5]]);
                self.packets = 0;
                let took = self.flash.erase_to((self.off + size as usize) as u64);
                self.respond(OP_CREATE, &[]);
                Work::flash(took)
            }
            OP_CRC => {
                let p = self.crc_payload();
                self.respond(OP_CRC, &p);
                Work::ZERO
            }
            OP_EXECUTE => {
                self.respond(OP_EXECUTE, &[]);
                Work::ZERO
            }
            _ => Work::ZERO,
        }
    }

    fn poll_notification(&mut self) -> Option<(u16, Vec<u8>)> {
        self.notes.pop_front()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn respond(c: &mut DfuClient<'_>, op: u8) {
        c.handle_notification(CONTROL_POINT, &[OP_RESPONSE, op, SUCCESS]);
    }

    /// Sets PRN, selects and creates the first object; returns the Set PRN value.
    fn start(c: &mut DfuClient<'_>) -> Vec<u8> {
        let set_prn = c.poll_transmit().unwrap().value;
        respond(c, OP_SET_PRN);
        c.poll_transmit().unwrap();
        respond(c, OP_SELECT);
        c.poll_transmit().unwrap();
        respond(c, OP_CREATE);
        set_prn
    }

    #[test]
    fn ios_waits_every_12_packets_of_a_word_multiple() {
        let image = vec![0u8; OBJECT_SIZE];
        let mut c = DfuClient::new(&image, 182);
        c.connected(&LinkParams::ios());
        assert_eq!(start(&mut c), [OP_SET_PRN, 12, 0]);
        let burst: Vec<Write> = std::iter::from_fn(|| c.poll_transmit()).collect();
        assert_eq!(burst.len(), 12);
        assert!(
            burst
                .iter()
                .all(|w| w.value.len() == 180 && !w.with_response)
        );
        // The PRN (a Calculate Checksum response) releases the next 12.
        respond(&mut c, OP_CRC);
        assert_eq!(std::iter::from_fn(|| c.poll_transmit()).count(), 12);
    }

    #[test]
    fn android_and_desktop_send_a_whole_object_without_waiting() {
        let image = vec![0u8; OBJECT_SIZE];
        for (params, len, packets) in [
            (LinkParams::android(), 512, 8),
            (LinkParams::desktop(), 244, 17),
        ] {
            let mut c = DfuClient::new(&image, params.max_value_len());
            c.connected(&params);
            assert_eq!(start(&mut c), [OP_SET_PRN, 0, 0]);
            let burst: Vec<Write> = std::iter::from_fn(|| c.poll_transmit()).collect();
            // The whole object, then Calculate Checksum as a write request.
            assert_eq!(burst.len(), packets + 1);
            assert_eq!(burst[0].value.len(), len);
            assert_eq!(burst[packets].value, [OP_CRC]);
        }
    }
}
