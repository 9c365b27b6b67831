//! The seed's protocol (esp32-ble-ota, ESP-IDF + NimBLE), kept byte for byte.
//!
//! 1. The client writes the packet size (`u16` LE, normally ATT MTU - 3) to OTA Data.
//! 2. It writes [`REQUEST`] to OTA Control and gets [`REQUEST_ACK`] or [`REQUEST_NAK`] notified.
//! 3. It writes the image to OTA Data in packets (write requests).
//! 4. It writes [`DONE`] and gets [`DONE_ACK`] (the device then reboots into the new slot) or
//!    [`DONE_NAK`].
//!
//! A read of OTA Control returns the last control value.

/// Client: start an update.
pub const REQUEST: u8 = 0x01;
/// Device: update started.
pub const REQUEST_ACK: u8 = 0x02;
/// Device: update refused.
pub const REQUEST_NAK: u8 = 0x03;
/// Client: all bytes sent.
pub const DONE: u8 = 0x04;
/// Device: image verified and selected for the next boot; rebooting.
pub const DONE_ACK: u8 = 0x05;
/// Device: image refused.
pub const DONE_NAK: u8 = 0x06;
/// The seed's initial control value (`SVR_CHR_OTA_CONTROL_NOP`).
pub const NOP: u8 = 0x00;

/// Length of the packet-size write to OTA Data.
pub const PACKET_SIZE_WRITE_LEN: usize = 2;

/// Returns true for a byte the seed defines on OTA Control (0 to 6).
pub fn is_legacy_opcode(op: u8) -> bool {
    op <= DONE_NAK
}
