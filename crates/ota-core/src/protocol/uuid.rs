//! UUIDs of the seed's GATT API (its README; the C header had a typo in the service UUID).

/// A 128-bit UUID as a number, most significant byte first as it is written down.
pub type Uuid128 = u128;

/// OTA service `d6f1d96d-594c-4c53-b1c6-244a1dfde6d8`.
pub const OTA_SERVICE_UUID: Uuid128 = 0xd6f1d96d_594c_4c53_b1c6_244a1dfde6d8;
/// OTA Control characteristic `7ad671aa-21c0-46a4-b722-270e3ae3d830` (read, write, notify).
pub const CONTROL_CHAR_UUID: Uuid128 = 0x7ad671aa_21c0_46a4_b722_270e3ae3d830;
/// OTA Data characteristic `23408888-1f40-4cd8-9b89-ca8d45f8a5b0` (write, write without response).
pub const DATA_CHAR_UUID: Uuid128 = 0x23408888_1f40_4cd8_9b89_ca8d45f8a5b0;

/// Returns the UUID in the little-endian byte order BLE puts on the air.
pub const fn uuid_to_le_bytes(uuid: Uuid128) -> [u8; 16] {
    uuid.to_le_bytes()
}
