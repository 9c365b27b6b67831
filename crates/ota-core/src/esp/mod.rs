//! ESP-IDF's on-flash formats and boot rules, byte for byte.
//!
//! Everything here follows ESP-IDF's C sources (see `docs/esp-idf-compat.md`): the binary
//! partition table with its MD5 row, the two-sector otadata with its CRC and image states,
//! the bootloader's slot choice and rollback, and the app image format with its checksum,
//! appended SHA-256 and `esp_app_desc_t`.

pub mod boot;
pub mod chip;
pub mod flash;
pub mod image;
pub mod otadata;
pub mod partition;
pub mod slots;

pub use chip::Chip;
pub use flash::FlashError;
pub use image::{
    AppDescriptor, ImageError, ImageHeader, ImageInfo, ImageValidator, Rev, parse_chip_revision,
};
pub use otadata::{OtaData, OtaEntry, OtaImgState};
pub use partition::{Partition, PartitionError, PartitionTable};
pub use slots::{OtaSlots, SlotError, SlotState};
