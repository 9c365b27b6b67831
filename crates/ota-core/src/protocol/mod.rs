//! What travels over the air: the GATT API, the seed's legacy protocol and the fast protocol.
//!
//! Both protocols share one service and two characteristics, so a client written for the C
//! seed works unchanged while new clients get the fast, resumable, verified protocol. Byte
//! layouts and sequence diagrams: `docs/protocol.md`.

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

/// Returns the largest attribute value a write or notification carries at `att_mtu`.
pub fn max_value_len(att_mtu: u16) -> usize {
    (att_mtu as usize)
        .saturating_sub(ATT_WRITE_HEADER)
        .min(MAX_ATTRIBUTE_LEN)
}
