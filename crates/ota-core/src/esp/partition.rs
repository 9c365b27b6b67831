//! ESP-IDF's binary partition table (`esp_partition_info_t` rows, MD5 row, 0xFF end marker).

/// Default flash offset of the partition table (`CONFIG_PARTITION_TABLE_OFFSET`).
pub const PARTITION_TABLE_OFFSET: u32 = 0x8000;
/// Bytes of the table that hold rows (`ESP_PARTITION_TABLE_MAX_LEN`).
pub const PARTITION_TABLE_MAX_LEN: usize = 0xC00;
/// Most partitions a table holds (95 rows without MD5, one row always left as terminator).
pub const MAX_PARTITIONS: usize = 95;

/// Whether the MD5 row is required when parsing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum Md5Policy {
    /// As an IDF app with `CONFIG_PARTITION_TABLE_MD5=y` (the default): the row must be there and match.
    Required,
    /// As the bootloader: checked when present.
    Optional,
}

/// One partition row.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct Partition {
    /// `type` byte: 0 app, 1 data, 2 bootloader, 3 partition table, 0x40-0xFE custom.
    pub ty: u8,
    /// `subtype` byte (app: 0 factory, 0x10..=0x1F ota_N, 0x20 test; data: 0 ota, 1 phy, 2 nvs ...).
    pub subtype: u8,
    /// Absolute flash address.
    pub offset: u32,
    /// Size in bytes.
    pub size: u32,
    /// Label bytes, NUL padded (not always NUL terminated).
    pub label: [u8; 16],
    /// Flags: bit 0 encrypted, bit 1 read-only.
    pub flags: u32,
}

/// A partition table, as parsed from its binary form.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartitionTable {
    entries: heapless::Vec<Partition, MAX_PARTITIONS>,
}

/// Why a partition table was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
#[non_exhaustive]
pub enum PartitionError {
    /// Row `row` starts with neither `AA 50`, `EB EB` nor an all-0xFF end marker.
    #[error("partition table row {row} has bad magic; the flash holds no valid table at this offset")]
    BadMagic { row: usize },
    /// The MD5 row does not match the rows before it.
    #[error("partition table MD5 mismatch; the table is corrupt, flash it again")]
    Md5Mismatch,
    /// No MD5 row, while [`Md5Policy::Required`].
    #[error("partition table has no MD5 row; regenerate it without --disable-md5sum")]
    Md5Missing,
    /// No end marker within 0xC00 bytes, or the input is shorter than a row.
    #[error("partition table is not terminated or truncated")]
    Unterminated,
    /// A row points outside the flash.
    #[error("partition {row} lies outside the {flash_size:#x}-byte flash")]
    OutOfFlash { row: usize, flash_size: u32 },
}

impl Partition {
    /// `type` of app partitions.
    pub const TYPE_APP: u8 = 0x00;
    /// `type` of data partitions.
    pub const TYPE_DATA: u8 = 0x01;
    /// App subtype `factory`.
    pub const SUBTYPE_FACTORY: u8 = 0x00;
    /// App subtype `test`.
    pub const SUBTYPE_TEST: u8 = 0x20;
    /// First OTA app subtype (`ota_0`); `ota_N` is `0x10 + N`.
    pub const SUBTYPE_OTA_0: u8 = 0x10;
    /// Data subtype `ota` (otadata).
    pub const SUBTYPE_OTADATA: u8 = 0x00;

    /// Returns the label up to its first NUL, or `"?"` when it is not UTF-8.
    pub fn name(&self) -> &str {
        todo!()
    }
    /// Returns true for an app partition.
    pub fn is_app(&self) -> bool {
        todo!()
    }
    /// Returns true for the factory app partition.
    pub fn is_factory(&self) -> bool {
        todo!()
    }
    /// Returns `Some(n)` for the app partition `ota_n`.
    pub fn ota_slot(&self) -> Option<u8> {
        todo!()
    }
    /// Returns true for the otadata partition (data/ota).
    pub fn is_otadata(&self) -> bool {
        todo!()
    }
    /// Returns true if `addr` lies inside this partition.
    pub fn contains(&self, addr: u32) -> bool {
        todo!()
    }
    /// Returns the 32-byte row.
    pub fn to_bytes(&self) -> [u8; 32] {
        todo!()
    }
}

impl PartitionTable {
    /// Parses a binary table (at least its first row; up to [`PARTITION_TABLE_MAX_LEN`] bytes
    /// are read). `flash_size`, when given, bounds every row as the bootloader does.
    pub fn parse(
        bytes: &[u8],
        md5: Md5Policy,
        flash_size: Option<u32>,
    ) -> Result<Self, PartitionError> {
        todo!()
    }
    /// Builds a table from rows (for writers; no layout checks).
    pub fn from_partitions(parts: &[Partition]) -> Self {
        todo!()
    }
    /// Returns the binary form: rows, the MD5 row, 0xFF padding (as gen_esp32part writes).
    pub fn to_bytes(&self) -> [u8; PARTITION_TABLE_MAX_LEN] {
        todo!()
    }
    /// Returns every partition in table order.
    pub fn partitions(&self) -> &[Partition] {
        todo!()
    }
    /// Returns the factory app partition (the last one, as the bootloader's last-wins rule).
    pub fn factory(&self) -> Option<&Partition> {
        todo!()
    }
    /// Returns the test app partition.
    pub fn test(&self) -> Option<&Partition> {
        todo!()
    }
    /// Returns the otadata partition.
    pub fn otadata(&self) -> Option<&Partition> {
        todo!()
    }
    /// Returns the app partition `ota_n`.
    pub fn ota(&self, n: u8) -> Option<&Partition> {
        todo!()
    }
    /// Returns the number of OTA app slots, counted contiguously from ota_0 (as IDF does).
    pub fn ota_count(&self) -> u8 {
        todo!()
    }
    /// Returns the partition labelled `name`.
    pub fn find(&self, name: &str) -> Option<&Partition> {
        todo!()
    }
    /// Returns the app partition containing flash address `addr`.
    pub fn app_at(&self, addr: u32) -> Option<&Partition> {
        todo!()
    }
}
