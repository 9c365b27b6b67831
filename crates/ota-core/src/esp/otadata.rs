//! ESP-IDF's otadata: two 4 KiB sectors, each starting with a 32-byte `esp_ota_select_entry_t`.

/// Size of the otadata partition IDF requires.
pub const OTADATA_SIZE: u32 = 0x2000;

/// `esp_ota_img_states_t`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum OtaImgState {
    /// 0: just selected, not yet booted.
    New,
    /// 1: booted once, on trial until confirmed.
    PendingVerify,
    /// 2: confirmed.
    Valid,
    /// 3: marked bad by the app; never selected.
    Invalid,
    /// 4: a trial that was not confirmed; never selected.
    Aborted,
    /// 0xFFFFFFFF: written without rollback support; selectable.
    Undefined,
    /// Any other value (IDF treats it as selectable).
    Other(u32),
}

/// One `esp_ota_select_entry_t`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct OtaEntry {
    /// `ota_seq`; slot index is `(seq - 1) % ota_count`.
    pub seq: u32,
    /// `seq_label[20]`, normally 0xFF.
    pub label: [u8; 20],
    /// `ota_state`.
    pub state: OtaImgState,
    /// `crc`: CRC32 of `seq` (ROM `crc32_le(UINT32_MAX, &seq, 4)`).
    pub crc: u32,
}

/// Both otadata entries as read from flash.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct OtaData {
    /// Entry of sector 0 and of sector 1.
    pub entries: [OtaEntry; 2],
}

impl OtaImgState {
    /// Returns the state for a raw `ota_state` value.
    pub fn from_raw(raw: u32) -> Self {
        todo!()
    }
    /// Returns the raw `ota_state` value.
    pub fn to_raw(self) -> u32 {
        todo!()
    }
}

/// Returns the CRC IDF stores for `seq`.
pub fn seq_crc(seq: u32) -> u32 {
    todo!()
}

impl OtaEntry {
    /// An all-0xFF (erased) entry.
    pub const ERASED: OtaEntry = OtaEntry {
        seq: u32::MAX,
        label: [0xFF; 20],
        state: OtaImgState::Undefined,
        crc: u32::MAX,
    };
    /// Returns an entry for `seq` and `state`, label 0xFF, with its CRC.
    pub fn new(seq: u32, state: OtaImgState) -> Self {
        todo!()
    }
    /// Parses 32 bytes.
    pub fn from_bytes(bytes: &[u8; 32]) -> Self {
        todo!()
    }
    /// Returns the 32 bytes.
    pub fn to_bytes(&self) -> [u8; 32] {
        todo!()
    }
    /// IDF's `bootloader_common_ota_select_invalid`: seq 0xFFFFFFFF, INVALID or ABORTED (CRC not considered).
    pub fn is_invalid(&self) -> bool {
        todo!()
    }
    /// IDF's `bootloader_common_ota_select_valid`: not invalid and the CRC matches.
    pub fn is_valid(&self) -> bool {
        todo!()
    }
    /// Returns the OTA slot this entry selects for `ota_count` slots (u32 arithmetic as IDF).
    pub fn slot(&self, ota_count: u8) -> u8 {
        todo!()
    }
}

impl OtaData {
    /// Parses both entries from the whole 8 KiB partition contents (entry 0 at 0, entry 1 at 0x1000).
    pub fn from_partition_bytes(bytes: &[u8]) -> Self {
        todo!()
    }
    /// IDF's `bootloader_common_get_active_otadata`: index of the valid entry with the larger seq
    /// (entry 0 on a tie), or `None`.
    pub fn active(&self) -> Option<usize> {
        todo!()
    }
}
