//! Espressif's BLE OTA: firmware in 4 KiB sectors, each acknowledged before the next starts.
//!
//! Source: the esp-iot-solution `ble_ota` component and its example's README ("ESP BLE OTA
//! Demo", <https://components.espressif.com/components/espressif/ble_ota>, sections "Services
//! definition" and "Data transmission"; the same protocol is documented for ESP-AT in "How to
//! Implement Bluetooth LE OTA Upgrade", <https://docs.espressif.com/projects/esp-at/>).
//!
//! What the pattern keeps:
//! - A Start command on COMMAND_CHAR (20 bytes: command id, 16-byte payload with the firmware
//!   length, CRC16), answered by a 20-byte command ACK notification; a Stop command at the end,
//!   answered the same way once the device finished writing.
//! - Firmware packets on RECV_FW_CHAR: `Sector_Index: u16`, `Packet_Seq: u8`, payload. A
//!   packet is at most 460 bytes (Espressif's app writes 460-byte values; with a smaller MTU,
//!   the largest value the MTU allows). The last packet of a sector has `Packet_Seq` 0xFF and
//!   ends with the CRC16 of the sector, the rest of its payload padded with zeros, so it is
//!   sent full length.
//! - Stop-and-wait per sector: after a sector's last packet the client waits for the 20-byte
//!   firmware ACK notification before it sends the next sector.
//! - The device hands each complete sector to its OTA task through an 8 KiB FreeRTOS ring
//!   buffer (the example's `OTA_RINGBUF_SIZE` 8192, two sectors, `xRingbufferSend` with
//!   `portMAX_DELAY`) and acknowledges once the sector is in the ring buffer; the OTA task
//!   erases and programs it (`esp_ota_write`) while the next sector arrives. When the ring
//!   buffer is full the receive path blocks until the OTA task frees a sector.
//!
//! What it leaves out: the CRC16 values are not computed (they change no timing), and the
//! PROGRESS_BAR and CUSTOMER characteristics are not used.
//!
//! Modelling choice: data packets are write commands. The ble_ota_raw profile documents Write
//! Without Response on RECV_FW; an app using write requests instead would be slower (two
//! connection intervals per packet), so this is the pattern at its best.

use std::collections::VecDeque;
use std::time::Duration;

use ble_link_model::FlashTiming;

use super::{Client, Device, Write};
use crate::flash::FlashCost;

/// RECV_FW_CHAR's handle in the model.
pub const RECV_FW: u16 = 0x8020;
/// COMMAND_CHAR's handle in the model.
pub const COMMAND: u16 = 0x8022;
/// Sector size of the protocol.
pub const SECTOR: usize = 4096;
/// Largest firmware packet Espressif's app writes.
pub const MAX_WRITE: usize = 460;
/// `Sector_Index` (2) + `Packet_Seq` (1).
pub const PACKET_HEADER: usize = 3;
/// The sector CRC16 at the end of a sector's last packet.
pub const SECTOR_CRC: usize = 2;
/// Command packets and ACKs are 20 bytes.
pub const COMMAND_LEN: usize = 20;
/// `Packet_Seq` of a sector's last packet.
pub const LAST_SEQ: u8 = 0xFF;
/// Sectors the device's ring buffer holds (8192 / 4096).
pub const RING_SECTORS: usize = 2;

const START: u16 = 0x0001;
const STOP: u16 = 0x0002;

fn command(id: u16, len: u32) -> Vec<u8> {
    let mut v = vec![0u8; COMMAND_LEN];
    v[..2].copy_from_slice(&id.to_le_bytes());
    v[2..6].copy_from_slice(&len.to_le_bytes());
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
}

impl Client for EspClient<'_> {
    fn poll_transmit(&mut self) -> Option<Write> {
        match self.state {
            ClientState::Start => {
                self.state = ClientState::AwaitStartAck;
                Some(Write {
                    handle: COMMAND,
                    value: command(START, self.image.len() as u32),
                    with_response: true,
                })
            }
            ClientState::Stop => {
                self.state = ClientState::AwaitStopAck;
                Some(Write {
                    handle: COMMAND,
                    value: command(STOP, 0),
                    with_response: true,
                })
            }
            ClientState::Sending => {
                let data = self.sector_data();
                let room = self.write_len - PACKET_HEADER;
                let left = data.len() - self.sent;
                // The last packet must also hold the CRC; it is sent full length (zero padded).
                let last = left + SECTOR_CRC <= room;
                let n = if last { left } else { room.min(left) };
                let mut value = Vec::with_capacity(self.write_len);
                value.extend_from_slice(&(self.sector as u16).to_le_bytes());
                value.push(if last { LAST_SEQ } else { self.seq });
                value.extend_from_slice(&data[self.sent..self.sent + n]);
                if last {
                    value.resize(self.write_len - SECTOR_CRC, 0);
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

/// The device: the `ble_ota` component's receive path and the example's OTA task.
#[derive(Debug)]
pub struct EspDevice {
    flash: FlashCost,
    /// Firmware length from the Start command.
    fw_len: u64,
    /// Bytes of the current sector received.
    sector_len: usize,
    /// Image bytes handed to the OTA task.
    queued: u64,
    /// When each sector in the ring buffer (the one being written included) is written, µs.
    ring: VecDeque<Duration>,
    notes: VecDeque<(u16, Vec<u8>)>,
}

impl EspDevice {
    /// A device writing to flash with `timing`.
    pub fn new(timing: FlashTiming) -> Self {
        EspDevice {
            flash: FlashCost::new(timing),
            fw_len: 0,
            sector_len: 0,
            queued: 0,
            ring: VecDeque::new(),
            notes: VecDeque::new(),
        }
    }

    /// Hands a complete sector to the OTA task at `now`; returns how long the receive path
    /// blocked on a full ring buffer.
    fn push_sector(&mut self, now: Duration, len: usize) -> Duration {
        while self.ring.front().is_some_and(|&done| done <= now) {
            self.ring.pop_front();
        }
        let mut at = now;
        if self.ring.len() == RING_SECTORS {
            at = self.ring.pop_front().expect("the ring is full");
        }
        let start = self.ring.back().copied().unwrap_or(at).max(at);
        let took = self.flash.program(self.queued, len as u64);
        self.queued += len as u64;
        self.ring.push_back(start + took);
        at - now
    }

    /// Returns when the OTA task has written everything handed to it.
    fn drained_at(&self, now: Duration) -> Duration {
        self.ring.back().copied().unwrap_or(now).max(now)
    }

    /// Returns the flash time charged.
    pub fn flash_time(&self) -> Duration {
        self.flash.total()
    }
}

impl Device for EspDevice {
    fn handle_write(&mut self, now: Duration, handle: u16, value: &[u8]) -> Duration {
        match handle {
            COMMAND => {
                let id = u16::from_le_bytes([value[0], value[1]]);
                if id == START {
                    self.fw_len =
                        u64::from(u32::from_le_bytes([value[2], value[3], value[4], value[5]]));
                    // `esp_ota_begin(size)` erases the image's range with block erases where
                    // aligned; modelled as done just ahead of the writes, like ours.
                    self.flash.use_block_erase(self.fw_len);
                }
                // Stop: the OTA task finishes (`esp_ota_end`) before the ACK.
                let took = if id == STOP {
                    self.drained_at(now) - now
                } else {
                    Duration::ZERO
                };
                self.notes.push_back((COMMAND, vec![0u8; COMMAND_LEN]));
                took
            }
            RECV_FW => {
                let payload = &value[PACKET_HEADER..];
                if value[2] == LAST_SEQ {
                    // A sector ends at 4 KiB or at the firmware's end (Start gave its length);
                    // the rest of the last packet is padding and CRC.
                    let left = (self.fw_len - self.queued) as usize;
                    let len = SECTOR.min(left);
                    self.sector_len = 0;
                    let blocked = self.push_sector(now, len);
                    self.notes.push_back((RECV_FW, vec![0u8; COMMAND_LEN]));
                    blocked
                } else {
                    self.sector_len += payload.len();
                    Duration::ZERO
                }
            }
            _ => Duration::ZERO,
        }
    }

    fn poll_notification(&mut self) -> Option<(u16, Vec<u8>)> {
        self.notes.pop_front()
    }
}
