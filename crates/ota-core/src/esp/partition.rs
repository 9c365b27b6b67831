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
    /// Row `row` starts with neither `AA 50`, `EB EB` nor an all-0xFF end marker (row 0 of an
    /// erased sector included).
    #[error(
        "partition table row {row} has bad magic; the flash holds no valid table at this offset"
    )]
    BadMagic {
        /// Index of the row (0-based).
        row: usize,
    },
    /// The MD5 row does not match the rows before it.
    #[error("partition table MD5 mismatch; the table is corrupt, flash it again")]
    Md5Mismatch,
    /// No MD5 row, while [`Md5Policy::Required`].
    #[error("partition table has no MD5 row; regenerate it without --disable-md5sum")]
    Md5Missing,
    /// No end marker within 0xC00 bytes, or the input is shorter than a row.
    #[error("partition table is not terminated or truncated")]
    Unterminated,
    /// A second MD5 row (the bootloader allows only one).
    #[error("partition table row {row} is a second MD5 row; the table is corrupt")]
    DuplicateMd5 {
        /// Index of the second MD5 row.
        row: usize,
    },
    /// A row points outside the flash.
    #[error("partition {row} lies outside the {flash_size:#x}-byte flash")]
    OutOfFlash {
        /// Index of the row.
        row: usize,
        /// The flash size it was checked against.
        flash_size: u32,
    },
}

/// First two bytes of a partition row (`ESP_PARTITION_MAGIC` 0x50AA, little-endian).
pub const ROW_MAGIC: [u8; 2] = [0xAA, 0x50];
/// First two bytes of the MD5 row (`ESP_PARTITION_MAGIC_MD5` 0xEBEB).
pub const MD5_MAGIC: [u8; 2] = [0xEB, 0xEB];
/// Size of one row.
pub const ROW_LEN: usize = 32;
/// Rows in the 0xC00 bytes the bootloader reads (`ESP_PARTITION_TABLE_MAX_ENTRIES`).
pub const MAX_ROWS: usize = PARTITION_TABLE_MAX_LEN / ROW_LEN;

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
    /// Flag bit 0: encrypted.
    pub const FLAG_ENCRYPTED: u32 = 1 << 0;
    /// Flag bit 1: read-only.
    pub const FLAG_READONLY: u32 = 1 << 1;

    /// Returns the label up to its first NUL, or `"?"` when it is not UTF-8.
    pub fn name(&self) -> &str {
        let end = self
            .label
            .iter()
            .position(|b| *b == 0)
            .unwrap_or(self.label.len());
        core::str::from_utf8(&self.label[..end]).unwrap_or("?")
    }
    /// Returns true for an app partition.
    pub fn is_app(&self) -> bool {
        self.ty == Self::TYPE_APP
    }
    /// Returns true for the factory app partition.
    pub fn is_factory(&self) -> bool {
        self.is_app() && self.subtype == Self::SUBTYPE_FACTORY
    }
    /// Returns true for the test app partition.
    pub fn is_test(&self) -> bool {
        self.is_app() && self.subtype == Self::SUBTYPE_TEST
    }
    /// Returns `Some(n)` for the app partition `ota_n`.
    pub fn ota_slot(&self) -> Option<u8> {
        (self.is_app() && self.subtype & 0xF0 == Self::SUBTYPE_OTA_0).then_some(self.subtype & 0x0F)
    }
    /// Returns true for the otadata partition (data/ota).
    pub fn is_otadata(&self) -> bool {
        self.ty == Self::TYPE_DATA && self.subtype == Self::SUBTYPE_OTADATA
    }
    /// Returns true if `addr` lies inside this partition.
    pub fn contains(&self, addr: u32) -> bool {
        addr >= self.offset && addr - self.offset < self.size
    }
    /// Returns the 32-byte row.
    pub fn to_bytes(&self) -> [u8; 32] {
        let mut row = [0u8; 32];
        row[0..2].copy_from_slice(&ROW_MAGIC);
        row[2] = self.ty;
        row[3] = self.subtype;
        row[4..8].copy_from_slice(&self.offset.to_le_bytes());
        row[8..12].copy_from_slice(&self.size.to_le_bytes());
        row[12..28].copy_from_slice(&self.label);
        row[28..32].copy_from_slice(&self.flags.to_le_bytes());
        row
    }
    /// Parses a row that starts with `AA 50` (the magic is not checked here).
    pub fn from_row(row: &[u8; 32]) -> Self {
        let word = |at: usize| u32::from_le_bytes([row[at], row[at + 1], row[at + 2], row[at + 3]]);
        let mut label = [0u8; 16];
        label.copy_from_slice(&row[12..28]);
        Partition {
            ty: row[2],
            subtype: row[3],
            offset: word(4),
            size: word(8),
            label,
            flags: word(28),
        }
    }
    /// Returns the label field for `name`: NUL padded, cut at 16 bytes as gen_esp32part does.
    pub fn label_from_str(name: &str) -> [u8; 16] {
        let mut label = [0u8; 16];
        for (d, s) in label.iter_mut().zip(name.bytes()) {
            *d = s;
        }
        label
    }
}

fn row_at(bytes: &[u8], index: usize) -> Option<&[u8; 32]> {
    let start = index.checked_mul(ROW_LEN)?;
    bytes
        .get(start..start.checked_add(ROW_LEN)?)?
        .try_into()
        .ok()
}

fn md5_of(bytes: &[u8]) -> [u8; 16] {
    use md5::Digest;
    md5::Md5::digest(bytes).into()
}

fn check_bounds(p: &Partition, row: usize, flash_size: Option<u32>) -> Result<(), PartitionError> {
    match flash_size {
        Some(chip) if p.offset > chip || p.size > chip - p.offset => {
            Err(PartitionError::OutOfFlash {
                row,
                flash_size: chip,
            })
        }
        _ => Ok(()),
    }
}

impl PartitionTable {
    /// Parses a binary table (at least its first row; up to [`PARTITION_TABLE_MAX_LEN`] bytes
    /// are read). `flash_size`, when given, bounds every row as the bootloader does.
    ///
    /// [`Md5Policy::Required`] follows the app (`esp_partition`'s `load_partitions` with
    /// `CONFIG_PARTITION_TABLE_MD5=y`): rows are read up to the first one that is not a
    /// partition row, which must be a matching MD5 row; what follows it is not looked at.
    /// [`Md5Policy::Optional`] follows the bootloader (`esp_partition_table_verify`): up to 96
    /// rows, an MD5 row is checked when present (only one allowed), and a row whose first four
    /// bytes are 0xFF (not row 0) ends the table; no end marker means an invalid table.
    pub fn parse(
        bytes: &[u8],
        md5: Md5Policy,
        flash_size: Option<u32>,
    ) -> Result<Self, PartitionError> {
        let bytes = &bytes[..bytes.len().min(PARTITION_TABLE_MAX_LEN)];
        match md5 {
            Md5Policy::Required => Self::parse_app(bytes, flash_size),
            Md5Policy::Optional => Self::parse_bootloader(bytes, flash_size),
        }
    }

    fn parse_app(bytes: &[u8], flash_size: Option<u32>) -> Result<Self, PartitionError> {
        let mut entries = heapless::Vec::new();
        for index in 0..MAX_ROWS {
            let Some(row) = row_at(bytes, index) else {
                return Err(PartitionError::Unterminated);
            };
            if row[0..2] == ROW_MAGIC {
                let p = Partition::from_row(row);
                check_bounds(&p, index, flash_size)?;
                entries.push(p).map_err(|_| PartitionError::Unterminated)?;
            } else if row[0..2] == MD5_MAGIC {
                if row[16..32] != md5_of(&bytes[..index * ROW_LEN]) {
                    return Err(PartitionError::Md5Mismatch);
                }
                return Ok(PartitionTable { entries });
            } else if index != 0 && row[0..4] == [0xFF; 4] {
                return Err(PartitionError::Md5Missing);
            } else {
                return Err(PartitionError::BadMagic { row: index });
            }
        }
        Err(PartitionError::Unterminated)
    }

    fn parse_bootloader(bytes: &[u8], flash_size: Option<u32>) -> Result<Self, PartitionError> {
        let mut md5_row = None;
        for index in 0..MAX_ROWS {
            let Some(row) = row_at(bytes, index) else {
                return Err(PartitionError::Unterminated);
            };
            if row[0..2] == ROW_MAGIC {
                check_bounds(&Partition::from_row(row), index, flash_size)?;
            } else if row[0..2] == MD5_MAGIC {
                if md5_row.is_some() {
                    return Err(PartitionError::DuplicateMd5 { row: index });
                }
                md5_row = Some(index);
                if row[16..32] != md5_of(&bytes[..index * ROW_LEN]) {
                    return Err(PartitionError::Md5Mismatch);
                }
            } else if index != 0 && row[0..4] == [0xFF; 4] {
                // The bootloader then consumes rows 0 .. index - (MD5 row present), read as
                // partitions: normally exactly the partition rows. (An MD5 row followed by
                // more partition rows would make it skip the last one; so do we.)
                let count = index - usize::from(md5_row.is_some());
                let mut entries = heapless::Vec::new();
                for i in 0..count {
                    if let Some(row) = row_at(bytes, i).filter(|r| r[0..2] == ROW_MAGIC) {
                        entries
                            .push(Partition::from_row(row))
                            .map_err(|_| PartitionError::Unterminated)?;
                    }
                }
                return Ok(PartitionTable { entries });
            } else {
                return Err(PartitionError::BadMagic { row: index });
            }
        }
        Err(PartitionError::Unterminated)
    }

    /// Builds a table from rows (for writers; no layout checks). Only the first
    /// [`MAX_PARTITIONS`] rows are kept; note that the bootloader needs an end-marker row, so a
    /// table it accepts holds at most 94 partitions once the MD5 row is added.
    pub fn from_partitions(parts: &[Partition]) -> Self {
        let mut entries = heapless::Vec::new();
        for p in parts.iter().take(MAX_PARTITIONS) {
            let _ = entries.push(*p);
        }
        PartitionTable { entries }
    }
    /// Returns the binary form: rows, the MD5 row, 0xFF padding (as gen_esp32part writes).
    pub fn to_bytes(&self) -> [u8; PARTITION_TABLE_MAX_LEN] {
        let mut out = [0xFF; PARTITION_TABLE_MAX_LEN];
        let rows = self.entries.len() * ROW_LEN;
        for (chunk, p) in out.chunks_exact_mut(ROW_LEN).zip(self.entries.iter()) {
            chunk.copy_from_slice(&p.to_bytes());
        }
        let digest = md5_of(&out[..rows]);
        // entries.len() <= 95, so the MD5 row always fits (row 95 is the last of 96).
        if let Some(md5_row) = out.get_mut(rows..rows + ROW_LEN) {
            md5_row[0..2].copy_from_slice(&MD5_MAGIC);
            md5_row[16..32].copy_from_slice(&digest);
        }
        out
    }
    /// Returns every partition in table order.
    pub fn partitions(&self) -> &[Partition] {
        &self.entries
    }
    /// Returns the factory app partition (the last one, as the bootloader's last-wins rule).
    pub fn factory(&self) -> Option<&Partition> {
        self.entries.iter().rev().find(|p| p.is_factory())
    }
    /// Returns the test app partition.
    pub fn test(&self) -> Option<&Partition> {
        self.entries.iter().rev().find(|p| p.is_test())
    }
    /// Returns the otadata partition.
    pub fn otadata(&self) -> Option<&Partition> {
        self.entries.iter().rev().find(|p| p.is_otadata())
    }
    /// Returns the app partition `ota_n`.
    pub fn ota(&self, n: u8) -> Option<&Partition> {
        if n >= 16 {
            return None;
        }
        self.entries.iter().rev().find(|p| p.ota_slot() == Some(n))
    }
    /// Returns the number of OTA app slots, counted contiguously from ota_0 (as IDF does).
    pub fn ota_count(&self) -> u8 {
        (0..16u8).take_while(|n| self.ota(*n).is_some()).count() as u8
    }
    /// Returns the partition labelled `name`.
    pub fn find(&self, name: &str) -> Option<&Partition> {
        self.entries.iter().find(|p| p.name() == name)
    }
    /// Returns the app partition containing flash address `addr`.
    pub fn app_at(&self, addr: u32) -> Option<&Partition> {
        self.entries.iter().find(|p| p.is_app() && p.contains(addr))
    }
}
