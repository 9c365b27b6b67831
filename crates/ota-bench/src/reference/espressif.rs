//! Espressif's BLE OTA: the image's range erased on START, then 4 KiB sectors, each
//! acknowledged before the next is sent.
//!
//! The pattern is the newest Espressif implementation, esp-iot-solution's `ble_ota_raw`
//! profile 0.2.0 (2026-05-25) with its example, against Espressif's Android app (the sample
//! app the `ble_ota` example's README links).
//!
//! Sources, device (espressif/esp-iot-solution at commit 9971a469 of 2026-07-06):
//! - `components/bluetooth/ble_profiles/esp/ble_ota_raw/src/esp_ble_ota_raw.c`:
//!   `handle_start_cmd` takes the firmware length from the START command (bytes 2..6), calls
//!   the application's OTA begin hook with it and only then sends the START ACK
//!   (`send_start_cmd_ack`, which puts the "recommended sector send window" in byte 6);
//!   `esp_ble_ota_recv_fw_data` takes frames `[sector: u16][packet: u8][payload]`, the sector's
//!   last packet (packet 0xFF) ending with the sector's CRC16, checks the CRC, hands the sector
//!   to the application's callback and then notifies the firmware ACK on RECV_FW
//!   (`send_fw_ack`: sector, status, next expected sector, CRC16 in bytes 18..20);
//!   `handle_stop_cmd` answers STOP at once.
//! - `components/bluetooth/ble_profiles/esp/ble_ota_raw/CHANGELOG.md`: 0.2.0 adds the send
//!   window ("default window is 1 for compatibility with older apps") and the OTA begin hook
//!   ("OTA receive starts only after the begin hook succeeds (e.g. flash erase /
//!   `esp_ota_begin`)"); 0.1.0: the characteristics "support Write Without Response and
//!   Notify".
//! - `components/bluetooth/ble_services/ota/src/esp_ble_ota_svc.c`: RECV_FW (0x8020) and
//!   COMMAND (0x8022) are declared `WRITE | WRITE_NO_RSP | NOTIFY | INDICATE`.
//! - `examples/bluetooth/ble_profiles/ble_ota/main/ble_ota_raw.c` and
//!   `main/include/ble_ota_raw.h`: the begin hook is `esp_ota_begin(&partition, image_size,
//!   ..)`; the sector callback pushes the sector into a 12 KiB FreeRTOS ring buffer
//!   (`BLE_OTA_RAW_RINGBUF_DEFAULT_SIZE`, so the advertised window is 3 sectors) with
//!   `portMAX_DELAY`, and an OTA task takes it out and calls `esp_ota_write`.
//! - espressif/esp-idf `components/app_update/esp_ota_ops.c` (stored version 03fa63b0),
//!   `esp_ota_begin`: with an image
//!   size it calls `esp_partition_erase_range(partition, 0, aligned_erase_size)` (the size
//!   rounded up to whole sectors) before it returns, and `esp_ota_write` then writes without
//!   erasing; the erase commands are those of [`erase_region_time`].
//!
//! Sources, client (EspressifApps/esp-ble-ota-android, commit 2c98615c of 2026-04-17,
//! `app/src/main/java/com/espressif/bleota/android/BleOTAClient.kt`): it requests MTU 500
//! and then uses `EXPECT_PACKET_SIZE` 463, so each firmware packet carries 460 bytes after its
//! 3-byte header; a sector's last packet carries what is left of the sector and the CRC16,
//! unpadded; the next packet goes out from `onCharacteristicWrite`; after a sector's last
//! packet it waits for that sector's ACK (`sectorAckMark`), after the last sector's ACK it
//! sends STOP; START and STOP go to COMMAND. It calls `writeCharacteristic(characteristic)`
//! without choosing a write type, so Android uses the characteristic's default: the framework's
//! `BluetoothGattCharacteristic.initCharacteristic` makes it `WRITE_TYPE_NO_RESPONSE` when the
//! characteristic has `PROPERTY_WRITE_NO_RESPONSE`, as `ble_ota_raw`'s RECV_FW and COMMAND
//! have. The app does not read the START ACK's window (it predates it), so one sector is in
//! flight at a time.
//!
//! What the pattern keeps:
//! - START as a 20-byte write command (command id, firmware length, CRC16); the device erases
//!   the image's range, which is the flash work of that write, then sends the 20-byte START
//!   ACK notification (window 3 in byte 6), which the client waits for.
//! - Firmware packets as write commands of at most 463 bytes (the app's size; with a smaller
//!   ATT MTU, the largest value it allows): `Sector_Index: u16`, `Packet_Seq: u8`, data; the
//!   last packet of a sector has `Packet_Seq` 0xFF and data + CRC16 (should the CRC not fit,
//!   it goes alone in a last packet of its own).
//! - Stop-and-wait per sector: the client sends the next sector after the 20-byte firmware ACK
//!   notification of the previous one.
//! - The OTA task's `esp_ota_write` of a sector (one program command per page) is charged to
//!   the write that completed the sector: the task takes the sector from the ring buffer as
//!   soon as it is there, and while the flash programs no code runs from flash and the link
//!   model stops the radio ([`Work`]), so the sector's ACK follows the programming. The ring buffer then never
//!   holds more than the sector being written, and the receive path never blocks on it.
//! - STOP as a write command answered by the command ACK notification, the client's last
//!   awaited answer.
//!
//! What it leaves out: the CRC16 values (not computed; they change no timing), the
//! PROGRESS_BAR and CUSTOMER characteristics, and the CCCD writes and MTU exchange before
//! START.
//!
//! Where the sources differ from the older pattern and from the issue that asked for this
//! one: the older `ble_ota` component (`components/bluetooth/ble_profiles/esp/ble_ota`,
//! `nimble_ota.c` and `ble_ota.c`) declares RECV_FW and COMMAND `WRITE | INDICATE` without
//! write-without-response, so against it the same app sends write requests, one per two
//! connection events; and its example (`examples/bluetooth/ble_ota/main/app_main.c`) calls
//! `esp_ota_begin(&partition, OTA_SIZE_UNKNOWN, ..)` in an OTA task started at boot, which
//! erases the whole 1500 KiB partition before any central connects. The erase on START before
//! the START ACK is `ble_ota_raw`'s, whose characteristics take write commands. Espressif's
//! iOS app (EspressifApps/esp-ble-ota-ios, `esp-ble-ota/ViewController.m`) writes 510 data
//! bytes per packet with `CBCharacteristicWriteWithResponse`, longer than the iOS profile's
//! ATT MTU allows in one write (a prepared write, which the link model does not have), so the
//! pattern uses the Android app's packets on every profile.

use std::collections::VecDeque;
use std::time::Duration;

use ble_link_model::FlashTiming;

use super::{Client, Device, Work, Write, erase_region_time};

/// RECV_FW_CHAR's handle in the model.
pub const RECV_FW: u16 = 0x8020;
/// COMMAND_CHAR's handle in the model.
pub const COMMAND: u16 = 0x8022;
/// Sector size of the protocol.
pub const SECTOR: usize = 4096;
/// Largest firmware packet Espressif's Android app writes (`EXPECT_PACKET_SIZE`).
pub const MAX_WRITE: usize = 463;
/// `Sector_Index` (2) + `Packet_Seq` (1).
pub const PACKET_HEADER: usize = 3;
/// The sector CRC16 at the end of a sector's last packet.
pub const SECTOR_CRC: usize = 2;
/// Command packets and ACKs are 20 bytes.
pub const COMMAND_LEN: usize = 20;
/// `Packet_Seq` of a sector's last packet.
pub const LAST_SEQ: u8 = 0xFF;
/// The send window the example's device advertises in its START ACK: its 12 KiB ring buffer
/// in 4 KiB sectors. Espressif's app ignores it and keeps one sector in flight.
pub const DEVICE_WINDOW: u8 = 3;

const START: u16 = 0x0001;
const STOP: u16 = 0x0002;
const ACK: u16 = 0x0003;

fn command(id: u16, len: u32) -> Vec<u8> {
    let mut v = vec![0u8; COMMAND_LEN];
    v[..2].copy_from_slice(&id.to_le_bytes());
    v[2..6].copy_from_slice(&len.to_le_bytes());
    v // CRC16 in bytes 18..20 not computed
}

/// A command ACK: `ACK`, the command answered, status 0 (accept), then `extra` from byte 6.
fn command_ack(id: u16, extra: &[u8]) -> Vec<u8> {
    let mut v = vec![0u8; COMMAND_LEN];
    v[..2].copy_from_slice(&ACK.to_le_bytes());
    v[2..4].copy_from_slice(&id.to_le_bytes());
    v[6..6 + extra.len()].copy_from_slice(extra);
    v
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ClientState {
    Start,
    AwaitStartAck,
    Sending,
    AwaitSectorAck,
    Stop,
    AwaitStopAck,
    Done,
}

/// The app: sends the image sector by sector.
#[derive(Debug)]
pub struct EspClient<'a> {
    image: &'a [u8],
    write_len: usize,
    state: ClientState,
    sector: usize,
    /// Bytes of the current sector already sent.
    sent: usize,
    seq: u8,
}

impl<'a> EspClient<'a> {
    /// A client for `image` whose writes may carry `max_value_len` bytes (ATT MTU - 3).
    pub fn new(image: &'a [u8], max_value_len: usize) -> Self {
        EspClient {
            image,
            write_len: MAX_WRITE.min(max_value_len),
            state: ClientState::Start,
            sector: 0,
            sent: 0,
            seq: 0,
        }
    }

    fn sector_data(&self) -> &'a [u8] {
        let start = self.sector * SECTOR;
        &self.image[start..(start + SECTOR).min(self.image.len())]
    }

    fn command(&mut self, id: u16, len: u32, next: ClientState) -> Option<Write> {
        self.state = next;
        Some(Write {
            handle: COMMAND,
            value: command(id, len),
            with_response: false,
        })
    }
}

impl Client for EspClient<'_> {
    fn poll_transmit(&mut self) -> Option<Write> {
        match self.state {
            ClientState::Start => {
                self.command(START, self.image.len() as u32, ClientState::AwaitStartAck)
            }
            ClientState::Stop => self.command(STOP, 0, ClientState::AwaitStopAck),
            ClientState::Sending => {
                let data = self.sector_data();
                let room = self.write_len - PACKET_HEADER;
                let left = data.len() - self.sent;
                // The last packet holds the rest of the sector and its CRC, unpadded.
                let last = left + SECTOR_CRC <= room;
                let n = room.min(left);
                let mut value = Vec::with_capacity(PACKET_HEADER + n + SECTOR_CRC);
                value.extend_from_slice(&(self.sector as u16).to_le_bytes());
                value.push(if last { LAST_SEQ } else { self.seq });
                value.extend_from_slice(&data[self.sent..self.sent + n]);
                if last {
                    value.extend_from_slice(&[0, 0]); // CRC16 (not computed)
                    self.state = ClientState::AwaitSectorAck;
                }
                self.sent += n;
                self.seq = self.seq.wrapping_add(1);
                Some(Write {
                    handle: RECV_FW,
                    value,
                    with_response: false,
                })
            }
            _ => None,
        }
    }

    fn handle_notification(&mut self, handle: u16, _value: &[u8]) {
        match (self.state, handle) {
            (ClientState::AwaitStartAck, COMMAND) => self.state = ClientState::Sending,
            (ClientState::AwaitSectorAck, RECV_FW) => {
                self.sector += 1;
                self.sent = 0;
                self.seq = 0;
                self.state = if self.sector * SECTOR >= self.image.len() {
                    ClientState::Stop
                } else {
                    ClientState::Sending
                };
            }
            (ClientState::AwaitStopAck, COMMAND) => self.state = ClientState::Done,
            _ => {}
        }
    }

    fn is_finished(&self) -> bool {
        self.state == ClientState::Done
    }
}

/// The device: `ble_ota_raw`'s receive path and the example's OTA task.
#[derive(Debug)]
pub struct EspDevice {
    timing: FlashTiming,
    /// Flash time charged so far.
    flash: Duration,
    /// Firmware length from the START command.
    fw_len: u64,
    /// Bytes of the current sector received.
    sector_len: usize,
    /// Sector index the device expects.
    sector: u16,
    /// Image bytes written to the slot.
    written: u64,
    notes: VecDeque<(u16, Vec<u8>)>,
}

impl EspDevice {
    /// A device writing to flash with `timing`.
    pub fn new(timing: FlashTiming) -> Self {
        EspDevice {
            timing,
            flash: Duration::ZERO,
            fw_len: 0,
            sector_len: 0,
            sector: 0,
            written: 0,
            notes: VecDeque::new(),
        }
    }

    /// Returns the flash time charged.
    pub fn flash_time(&self) -> Duration {
        self.flash
    }

    fn charge(&mut self, flash: Duration) -> Work {
        self.flash += flash;
        Work::flash(flash)
    }
}

impl Device for EspDevice {
    fn handle_write(&mut self, _now: Duration, handle: u16, value: &[u8]) -> Work {
        match handle {
            COMMAND => match u16::from_le_bytes([value[0], value[1]]) {
                START => {
                    self.fw_len =
                        u64::from(u32::from_le_bytes([value[2], value[3], value[4], value[5]]));
                    // The begin hook, `esp_ota_begin(partition, image_size, ..)`, erases the
                    // image's range before the START ACK goes out.
                    let erase = erase_region_time(&self.timing, self.fw_len);
                    self.notes
                        .push_back((COMMAND, command_ack(START, &[DEVICE_WINDOW])));
                    self.charge(erase)
                }
                STOP => {
                    self.notes.push_back((COMMAND, command_ack(STOP, &[])));
                    Work::ZERO
                }
                _ => Work::ZERO,
            },
            RECV_FW => {
                let payload = value.len() - PACKET_HEADER;
                if value[2] != LAST_SEQ {
                    self.sector_len += payload;
                    return Work::ZERO;
                }
                let len = self.sector_len + payload - SECTOR_CRC;
                self.sector_len = 0;
                // The OTA task's `esp_ota_write` of the sector: page programs, no erase.
                let program = self.timing.program_time(self.written, len as u64);
                self.written += len as u64;
                let mut ack = vec![0u8; COMMAND_LEN];
                ack[..2].copy_from_slice(&self.sector.to_le_bytes());
                self.sector = self.sector.wrapping_add(1);
                ack[4..6].copy_from_slice(&self.sector.to_le_bytes());
                self.notes.push_back((RECV_FW, ack));
                self.charge(program)
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
    use ble_link_model::LinkParams;

    use super::*;
    use crate::reference::run;

    const T: FlashTiming = FlashTiming::TYPICAL_4MB_SPI_NOR;

    #[test]
    fn packets_are_the_apps_and_the_last_one_is_unpadded() {
        let image = vec![0xA5u8; SECTOR + 100];
        let mut c = EspClient::new(&image, 512);
        let start = c.poll_transmit().unwrap();
        assert_eq!((start.handle, start.with_response), (COMMAND, false));
        assert!(c.poll_transmit().is_none(), "waits for the START ACK");
        c.handle_notification(COMMAND, &command_ack(START, &[DEVICE_WINDOW]));
        let lens: Vec<usize> = std::iter::from_fn(|| c.poll_transmit())
            .map(|w| w.value.len())
            .collect();
        // 4096 = 8 × 460 + 416: eight 463-byte packets, then 3 + 416 + 2.
        assert_eq!(lens, [463, 463, 463, 463, 463, 463, 463, 463, 421]);
        c.handle_notification(RECV_FW, &[0; COMMAND_LEN]);
        let last = c.poll_transmit().unwrap();
        assert_eq!((last.value[2], last.value.len()), (LAST_SEQ, 3 + 100 + 2));
    }

    #[test]
    fn the_image_range_is_erased_before_the_start_ack() {
        let image = vec![0u8; 3 * SECTOR];
        let mut d = EspDevice::new(T);
        let work = d.handle_write(Duration::ZERO, COMMAND, &command(START, image.len() as u32));
        assert_eq!(work, Work::flash(Duration::from_millis(3 * 45)));
        let (handle, ack) = d.poll_notification().unwrap();
        assert_eq!((handle, ack[6]), (COMMAND, DEVICE_WINDOW));
        // A whole run charges the erase once and one program per page, nothing else.
        let mut c = EspClient::new(&image, 244);
        let mut d = EspDevice::new(T);
        run(LinkParams::desktop(), &mut c, &mut d);
        assert_eq!(
            d.flash_time(),
            Duration::from_micros(3 * 45_000 + 3 * 16 * 700)
        );
    }
}
