//! Nordic Secure DFU: write commands with a packet receipt notification every 12 packets.
//!
//! Source: Nordic Semiconductor, nRF5 SDK documentation, "BLE Secure DFU Service" and "DFU
//! protocol" → "Transport: BLE" and "Control point opcodes"
//! (<https://docs.nordicsemi.com/bundle/sdk_nrf5_v17.1.0/page/lib_dfu_transport_ble.html>):
//! the DFU Control Point (write, notify) takes Create (0x01), Set PRN (0x02), Calculate
//! Checksum (0x03), Execute (0x04) and Select (0x06), each answered by a Response (0x60)
//! notification; firmware goes to the DFU Packet characteristic with write without response;
//! with a packet receipt notification (PRN) value `n` the device notifies the offset and CRC
//! after every `n` packets and the client waits for it. A data object is at most 4 KiB (one
//! flash page); the device erases the object's page on Create and stores each packet as it
//! arrives. 12 packets is the Android DFU Library's default PRN value.
//!
//! What the pattern keeps: Set PRN and Select at the start, then for each 4 KiB object
//! Create → data packets of `ATT MTU - 3` bytes with a PRN wait every 12 packets → Calculate
//! Checksum → Execute, every control point command a write request answered by a
//! notification that the client waits for.
//!
//! What it leaves out: the init packet (command object, about 140 bytes and one more
//! create/execute round), signature checks, and the CRC32 values (the client checks the
//! offset; CRC values change no timing).

use std::collections::VecDeque;
use std::time::Duration;

use ble_link_model::FlashTiming;

use super::{Client, Device, Write};
use crate::flash::FlashCost;

/// DFU Control Point handle in the model.
pub const CONTROL_POINT: u16 = 0x0030;
/// DFU Packet handle in the model.
pub const PACKET: u16 = 0x0032;
/// Packets between two receipt notifications.
pub const PRN: u16 = 12;
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

/// The client (Android DFU Library style).
#[derive(Debug)]
pub struct DfuClient<'a> {
    image: &'a [u8],
    packet_len: usize,
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
    /// A client for `image` writing packets of `max_value_len` bytes.
    pub fn new(image: &'a [u8], max_value_len: usize) -> Self {
        DfuClient {
            image,
            packet_len: max_value_len,
            step: Step::SetPrn,
            await_rsp: false,
            await_prn: false,
            off: 0,
            object_end: 0,
            since_prn: 0,
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
    fn poll_transmit(&mut self) -> Option<Write> {
        if self.await_rsp || self.await_prn {
            return None;
        }
        match self.step {
            Step::SetPrn => {
                let [a, b] = PRN.to_le_bytes();
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
                let n = self.packet_len.min(self.object_end - self.off);
                let value = self.image[self.off..self.off + n].to_vec();
                self.off += n;
                self.since_prn += 1;
                if self.since_prn == PRN {
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
    fn handle_write(&mut self, _now: Duration, handle: u16, value: &[u8]) -> Duration {
        if handle == PACKET {
            let took = self.flash.program(self.off as u64, value.len() as u64);
            self.off += value.len();
            self.packets += 1;
            if self.prn != 0 && self.packets.is_multiple_of(self.prn) {
                let p = self.crc_payload();
                self.respond(OP_CRC, &p);
            }
            return took;
        }
        match value[0] {
            OP_SET_PRN => {
                self.prn = u16::from_le_bytes([value[1], value[2]]);
                self.respond(OP_SET_PRN, &[]);
                Duration::ZERO
            }
            OP_SELECT => {
                let mut p = (OBJECT_SIZE as u32).to_le_bytes().to_vec();
                p.extend_from_slice(&[0; 8]); // offset and CRC of the current object: none
                self.respond(OP_SELECT, &p);
                Duration::ZERO
            }
            OP_CREATE => {
                let size = u32::from_le_bytes([value[2], value[3], value[4], value[5]]);
                self.packets = 0;
                let took = self.flash.erase_to((self.off + size as usize) as u64);
                self.respond(OP_CREATE, &[]);
                took
            }
            OP_CRC => {
                let p = self.crc_payload();
                self.respond(OP_CRC, &p);
                Duration::ZERO
            }
            OP_EXECUTE => {
                self.respond(OP_EXECUTE, &[]);
                Duration::ZERO
            }
            _ => Duration::ZERO,
        }
    }

    fn poll_notification(&mut self) -> Option<(u16, Vec<u8>)> {
        self.notes.pop_front()
    }
}
