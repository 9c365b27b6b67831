//! ESP32 chip identities as ESP-IDF's `esp_chip_id_t` numbers them in the image header.

/// An ESP32 family member, by its image-header chip id.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
#[repr(u16)]
#[non_exhaustive]
pub enum Chip {
    /// ESP32 (Xtensa, id 0).
    Esp32 = 0,
    /// ESP32-S2 (id 2).
    Esp32s2 = 2,
    /// ESP32-C3 (id 5).
    Esp32c3 = 5,
    /// ESP32-S3 (id 9).
    Esp32s3 = 9,
    /// ESP32-C2 (id 12).
    Esp32c2 = 12,
    /// ESP32-C6 (id 13).
    Esp32c6 = 13,
    /// ESP32-H2 (id 16).
    Esp32h2 = 16,
    /// ESP32-P4 (id 18).
    Esp32p4 = 18,
    /// ESP32-C61 (id 20).
    Esp32c61 = 20,
    /// ESP32-C5 (id 23).
    Esp32c5 = 23,
}

impl Chip {
    /// Every chip this crate knows.
    pub const ALL: [Chip; 10] = [
        Chip::Esp32,
        Chip::Esp32s2,
        Chip::Esp32c3,
        Chip::Esp32s3,
        Chip::Esp32c2,
        Chip::Esp32c6,
        Chip::Esp32h2,
        Chip::Esp32p4,
        Chip::Esp32c61,
        Chip::Esp32c5,
    ];

    /// Returns the chip with this image-header id, if known.
    pub fn from_id(id: u16) -> Option<Chip> {
        Chip::ALL.into_iter().find(|c| c.id() == id)
    }

    /// Returns the image-header chip id.
    pub fn id(self) -> u16 {
        self as u16
    }

    /// Returns the name as esptool and espflash spell it (`esp32c3`).
    pub fn name(self) -> &'static str {
        match self {
            Chip::Esp32 => "esp32",
            Chip::Esp32s2 => "esp32s2",
            Chip::Esp32c3 => "esp32c3",
            Chip::Esp32s3 => "esp32s3",
            Chip::Esp32c2 => "esp32c2",
            Chip::Esp32c6 => "esp32c6",
            Chip::Esp32h2 => "esp32h2",
            Chip::Esp32p4 => "esp32p4",
            Chip::Esp32c61 => "esp32c61",
            Chip::Esp32c5 => "esp32c5",
        }
    }

    /// Returns the chip whose name is `name` (`esp32c3`, case-insensitive, `-` allowed).
    pub fn from_name(name: &str) -> Option<Chip> {
        Chip::ALL.into_iter().find(|c| {
            let n = c.name();
            let mut a = name.bytes().filter(|b| *b != b'-' && *b != b'_');
            let mut b = n.bytes();
            loop {
                match (a.next(), b.next()) {
                    (None, None) => return true,
                    (Some(x), Some(y)) if x.eq_ignore_ascii_case(&y) => {}
                    _ => return false,
                }
            }
        })
    }

    /// Returns where the ROM looks for the second-stage bootloader in flash.
    pub fn bootloader_offset(self) -> u32 {
        match self {
            Chip::Esp32 | Chip::Esp32s2 => 0x1000,
            Chip::Esp32c5 | Chip::Esp32p4 => 0x2000,
            _ => 0x0,
        }
    }
}

impl core::fmt::Display for Chip {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str(self.name())
    }
}
