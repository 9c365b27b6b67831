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

/// The CRC model of an otadata entry: IDF's ROM `crc32_le(UINT32_MAX, &seq, 4)` inverts the
/// register on entry and exit, so it starts from 0 (not the ISO-HDLC 0xFFFFFFFF). Equal to
/// Python's `zlib.crc32(seq_le_bytes, 0xFFFFFFFF)`.
pub const OTADATA_CRC: crc::Algorithm<u32> = crc::Algorithm {
    width: 32,
    poly: 0x04C1_1DB7,
    init: 0x0000_0000,
    refin: true,
    refout: true,
    xorout: 0xFFFF_FFFF,
    check: 0xD202_D277,
    residue: 0xDEBB_20E3,
};

/// No lookup table: the CRC only ever covers 4 bytes.
const CRC: crc::Crc<u32, crc::NoTable> = crc::Crc::<u32, crc::NoTable>::new(&OTADATA_CRC);

/// Offset of entry 1 inside the otadata partition (one 4 KiB sector per entry).
pub const ENTRY_1_OFFSET: u32 = 0x1000;
/// Size of one `esp_ota_select_entry_t`.
pub const ENTRY_LEN: usize = 32;

impl OtaImgState {
    /// Returns the state for a raw `ota_state` value.
    pub fn from_raw(raw: u32) -> Self {
        match raw {
            0 => OtaImgState::New,
            1 => OtaImgState::PendingVerify,
            2 => OtaImgState::Valid,
            3 => OtaImgState::Invalid,
            4 => OtaImgState::Aborted,
            u32::MAX => OtaImgState::Undefined,
            other => OtaImgState::Other(other),
        }
    }
    /// Returns the raw `ota_state` value.
    pub fn to_raw(self) -> u32 {
        match self {
            OtaImgState::New => 0,
            OtaImgState::PendingVerify => 1,
            OtaImgState::Valid => 2,
            OtaImgState::Invalid => 3,
            OtaImgState::Aborted => 4,
            OtaImgState::Undefined => u32::MAX,
            OtaImgState::Other(raw) => raw,
        }
    }
    /// Returns true when both name the same raw value (`Other(2)` equals `Valid`).
    pub fn same_as(self, other: OtaImgState) -> bool {
        self.to_raw() == other.to_raw()
    }
}

/// Returns the CRC IDF stores for `seq`.
pub fn seq_crc(seq: u32) -> u32 {
    CRC.checksum(&seq.to_le_bytes())
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
        OtaEntry {
            seq,
            label: [0xFF; 20],
            state,
            crc: seq_crc(seq),
        }
    }
    /// Parses 32 bytes.
    pub fn from_bytes(bytes: &[u8; 32]) -> Self {
        let word = |at: usize| {
            u32::from_le_bytes([bytes[at], bytes[at + 1], bytes[at + 2], bytes[at + 3]])
        };
        let mut label = [0u8; 20];
        label.copy_from_slice(&bytes[4..24]);
        OtaEntry {
            seq: word(0),
            label,
            state: OtaImgState::from_raw(word(24)),
            crc: word(28),
        }
    }
    /// Returns the 32 bytes.
    pub fn to_bytes(&self) -> [u8; 32] {
        let mut out = [0u8; 32];
        out[0..4].copy_from_slice(&self.seq.to_le_bytes());
        out[4..24].copy_from_slice(&self.label);
        out[24..28].copy_from_slice(&self.state.to_raw().to_le_bytes());
        out[28..32].copy_from_slice(&self.crc.to_le_bytes());
        out
    }
    /// IDF's `bootloader_common_ota_select_invalid`: seq 0xFFFFFFFF, INVALID or ABORTED (CRC not considered).
    pub fn is_invalid(&self) -> bool {
        self.seq == u32::MAX || matches!(self.state.to_raw(), 3 | 4)
    }
    /// IDF's `bootloader_common_ota_select_valid`: not invalid and the CRC matches.
    pub fn is_valid(&self) -> bool {
        !self.is_invalid() && self.crc_ok()
    }
    /// Returns true when the stored CRC matches `seq` (state and label are not covered).
    pub fn crc_ok(&self) -> bool {
        self.crc == seq_crc(self.seq)
    }
    /// Returns true when `seq` is 0xFFFFFFFF or the CRC does not match: the bootloader's
    /// "initial contents" test.
    pub fn is_blank_or_bad_crc(&self) -> bool {
        self.seq == u32::MAX || !self.crc_ok()
    }
    /// Returns the OTA slot this entry selects for `ota_count` slots (u32 arithmetic as IDF).
    /// With `ota_count == 0` (IDF would divide by zero) this returns 0.
    pub fn slot(&self, ota_count: u8) -> u8 {
        match ota_count {
            0 => 0,
            n => (self.seq.wrapping_sub(1) % n as u32) as u8,
        }
    }
    /// Returns this entry with `state` (seq, label and CRC unchanged).
    pub fn with_state(mut self, state: OtaImgState) -> Self {
        self.state = state;
        self
    }
}

impl OtaData {
    /// Both entries erased (the factory state).
    pub const ERASED: OtaData = OtaData {
        entries: [OtaEntry::ERASED; 2],
    };

    /// Parses both entries from the whole 8 KiB partition contents (entry 0 at 0, entry 1 at 0x1000).
    /// An entry the slice does not fully hold reads as erased.
    pub fn from_partition_bytes(bytes: &[u8]) -> Self {
        let entry = |at: usize| {
            bytes
                .get(at..at + ENTRY_LEN)
                .and_then(|b| <&[u8; 32]>::try_from(b).ok())
                .map(OtaEntry::from_bytes)
                .unwrap_or(OtaEntry::ERASED)
        };
        OtaData {
            entries: [entry(0), entry(ENTRY_1_OFFSET as usize)],
        }
    }
    /// IDF's `bootloader_common_get_active_otadata`: index of the valid entry with the larger seq
    /// (entry 0 on a tie), or `None`.
    pub fn active(&self) -> Option<usize> {
        let [e0, e1] = &self.entries;
        match (e0.is_valid(), e1.is_valid()) {
            (true, true) => Some(if e1.seq > e0.seq { 1 } else { 0 }),
            (true, false) => Some(0),
            (false, true) => Some(1),
            (false, false) => None,
        }
    }
    /// Returns the active entry (see [`active`](Self::active)).
    pub fn active_entry(&self) -> Option<&OtaEntry> {
        self.active().map(|i| &self.entries[i])
    }
    /// Returns true when neither entry is selectable (`is_invalid` for both).
    pub fn both_invalid(&self) -> bool {
        self.entries.iter().all(OtaEntry::is_invalid)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crc_of_seq_1() {
        assert_eq!(seq_crc(1), 0x4743_989A);
        assert_eq!(CRC.checksum(b"123456789"), OTADATA_CRC.check);
    }

    #[test]
    fn erased_entry_is_blank_and_invalid() {
        assert!(OtaEntry::ERASED.is_invalid());
        assert!(OtaEntry::ERASED.is_blank_or_bad_crc());
        assert_eq!(OtaEntry::from_bytes(&[0xFF; 32]), OtaEntry::ERASED);
    }
}
