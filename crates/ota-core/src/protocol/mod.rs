//! What travels over the air: the GATT API, the seed's legacy protocol and the fast protocol.
//!
//! Both protocols share one service and two characteristics, so a client written for the C
//! seed works unchanged while new clients get the fast, resumable, verified protocol. Byte
//! layouts and sequence diagrams: `docs/protocol.md`.

pub mod air;
pub mod fast;
pub mod legacy;
mod reason;
mod uuid;

pub use reason::Reason;
pub use uuid::{CONTROL_CHAR_UUID, DATA_CHAR_UUID, OTA_SERVICE_UUID, Uuid128, uuid_to_le_bytes};

/// Largest attribute value ATT allows (Core Spec Vol 3 Part F 3.2.9); chunks never exceed it.
pub const MAX_ATTRIBUTE_LEN: usize = 512;
/// ATT header of a write or notification (opcode + handle).
pub const ATT_WRITE_HEADER: usize = 3;

/// The two characteristics of the OTA service.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum Characteristic {
    /// OTA Control: commands in (write), responses out (notify, read).
    Control,
    /// OTA Data: image bytes in (write / write without response).
    Data,
}

/// Basic L2CAP header (length and channel id) in front of every ATT PDU.
pub const L2CAP_HEADER: usize = 4;
/// Link-layer data length every connection starts with (Core Spec Vol 6 Part B 4.5.10).
pub const LL_DEFAULT_DATA_LEN: u16 = 27;
/// Largest link-layer data length (LE Data Length Extension).
pub const LL_MAX_DATA_LEN: u16 = 251;
/// The transmit time that goes with [`LL_MAX_DATA_LEN`] on the LE 1M PHY, in µs, asked for
/// with it (Core Spec Vol 6 Part B 4.5.10: (251 + 14) octets at 8 µs).
pub const LL_MAX_TX_TIME_US: u16 = 2120;

/// Largest ATT MTU the device accepts in an MTU exchange.
///
/// 498 because a seed client computes its packet size as MTU - 3 and never clamps it: with
/// this cap every central, including BlueZ and Android asking for 517, gets a packet size of at
/// most 495, within ATT's 512-byte value limit. And a 495-byte value plus the 3-byte ATT and
/// 4-byte L2CAP headers is 502 bytes: exactly two 251-byte link-layer PDUs, with no third
/// nearly empty one (Espressif's own BLE OTA moved to 498 for that reason).
pub const DEVICE_ATT_MTU: u16 = 498;

/// Returns the largest packet size a seed client may announce: MTU - 3 for the largest MTU a
/// central may ask for (517), though this device never grants more than [`DEVICE_ATT_MTU`].
pub const MAX_LEGACY_PACKET_SIZE: u16 = 517 - ATT_WRITE_HEADER as u16;

/// Returns the largest attribute value a write or notification carries at `att_mtu`.
pub fn max_value_len(att_mtu: u16) -> usize {
    (att_mtu as usize)
        .saturating_sub(ATT_WRITE_HEADER)
        .min(MAX_ATTRIBUTE_LEN)
}
