//! The virtual ESP32: a [`Flash`] holding a merged flash image, the chip it is, and the app
//! it runs after [`VirtualEsp32::boot`].

use std::path::Path;

use ota_core::esp::boot::{
    BootError, BootloaderConfig, GuardOutcome, rollback_guard, run_bootloader_with_revision,
};
use ota_core::esp::image::{ImageHeader, Rev, parse_chip_revision};
use ota_core::esp::partition::{Md5Policy, PARTITION_TABLE_MAX_LEN, PARTITION_TABLE_OFFSET};
use ota_core::esp::{
    Chip, ImageError, ImageInfo, OtaImgState, OtaSlots, Partition, PartitionError, PartitionTable,
    SlotError,
};

use embedded_storage::nor_flash::ReadNorFlash;
use ota_core::manifest::TrustedKeys;

use crate::flash::{Flash, FlashError, SECTOR_SIZE};

/// Offset of the partition table in every virtual device (ESP-IDF's default).
pub const TABLE_OFFSET: u32 = PARTITION_TABLE_OFFSET;

/// How many times in a row [`VirtualEsp32::boot`] reboots after the rollback guard aborted a
/// trial image, before giving up (each abort invalidates one slot, so this is never reached
/// with a sane table).
const MAX_GUARD_REBOOTS: u32 = 18;

/// Why a device could not be created, opened or booted.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DeviceError {
    /// The flash file could not be created, read or written.
    #[error("flash file")]
    Io(#[from] std::io::Error),
    /// The partitions CSV was refused by `esp-idf-part`.
    #[error("partitions CSV")]
    PartitionCsv(#[from] esp_idf_part::Error),
    /// The binary partition table in flash is invalid.
    #[error("partition table at {TABLE_OFFSET:#x}")]
    PartitionTable(#[from] PartitionError),
    /// The bootloader found nothing to boot.
    #[error("boot failed")]
    Boot(#[from] BootError),
    /// Reading or writing otadata failed.
    #[error(transparent)]
    Slots(#[from] SlotError),
    /// A flash operation failed.
    #[error(transparent)]
    Flash(#[from] FlashError),
    /// Power was cut while booting (a [`FaultPlan`](crate::FaultPlan) fired); boot again.
    #[error("power lost while booting; boot again")]
    PowerLost,
    /// The flash size is not a non-zero multiple of 4 KiB, or too small for the table.
    #[error(
        "flash size {0:#x} is not usable: it must be a multiple of 4 KiB above {TABLE_OFFSET:#x}"
    )]
    BadFlashSize(u32),
    /// Something does not fit where it must go.
    #[error("{what} is {len:#x} bytes but {region} holds only {max:#x}")]
    TooLarge {
        /// What was to be written.
        what: &'static str,
        /// Its length.
        len: usize,
        /// Where it was to go.
        region: String,
        /// The room there.
        max: usize,
    },
    /// An image given to write is not an image for this chip.
    #[error("{what} is not an image for {chip}: {reason}")]
    BadImage {
        /// Which image.
        what: &'static str,
        /// The device's chip.
        chip: Chip,
        /// What is wrong.
        reason: String,
    },
    /// The table has no factory and no ota_0 partition for the first app.
    #[error("partition table has neither a factory nor an ota_0 app partition")]
    NoAppPartition,
    /// No bootloader or app header in a merged image names a known chip.
    #[error(
        "cannot tell which chip this flash image is for (no bootloader or app header names one): give the chip (`ble-ota sim create --merged FILE --chip esp32c3`)"
    )]
    UnknownChip,
    /// A flash file opened as a device has no bootloader or app header naming a chip.
    #[error(
        "no bootloader or app header in this file names a chip: is it a flash file made by `ble-ota sim create`?"
    )]
    NotADevice,
    /// The rollback guard kept aborting images.
    #[error("the rollback guard aborted {0} images in a row; otadata is inconsistent")]
    RebootLoop(u32),
    /// The file recording the chip revision beside the flash file holds no revision.
    #[error(
        "{path} holds {content:?}, not a chip revision like `v0.4` (or `unknown`); fix or delete it (deleted: the chip's default)"
    )]
    BadChipRevisionFile {
        /// The file.
        path: String,
        /// What it holds.
        content: String,
    },
    /// The file beside the flash that records the firmware's trusted keys is unreadable.
    #[error(
        "{path} does not hold up to {max} Ed25519 public keys, one 64-digit hex key per line ({why}); fix or delete it (deleted: the device takes unsigned images)",
        max = ota_core::manifest::MAX_TRUSTED_KEYS
    )]
    BadTrustedKeysFile {
        /// The file.
        path: String,
        /// What is wrong.
        why: String,
    },
}

/// The chip revision (`major * 100 + minor`) a virtual device has unless told otherwise: a
/// common production revision of the chip, ESP32-C3 v0.4 and ESP32-C6 v0.1. `None` for other
/// chips: their images' revision ranges are not checked.
pub fn default_chip_revision(chip: Chip) -> Option<u16> {
    match chip {
        Chip::Esp32c3 => Some(4),
        Chip::Esp32c6 => Some(1),
        _ => None,
    }
}

/// What a boot did: the app the bootloader started and what its early-boot guard found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BootReport {
    /// Name of the running partition (`factory`, `ota_0` ...).
    pub slot: String,
    /// The running partition.
    pub partition: Partition,
    /// `project_name` from the app's `esp_app_desc_t` (empty without a descriptor).
    pub project_name: String,
    /// `version` from the app's `esp_app_desc_t` (empty without a descriptor).
    pub version: String,
    /// The verified image.
    pub image: ImageInfo,
    /// The running slot's otadata state after the guard (`None` for factory, or when no
    /// CRC-valid entry names the slot).
    pub state: Option<OtaImgState>,
    /// What the rollback guard found and did on the final boot.
    pub guard: GuardOutcome,
    /// Slots the final bootloader run tried first whose images failed verification.
    pub skipped: Vec<(Partition, ImageError)>,
    /// Trial images the guard aborted during this boot; after each the device rebooted at once,
    /// as the firmware does.
    pub rolled_back: Vec<Partition>,
    /// How many times the bootloader ran (1 + `rolled_back.len()`).
    pub bootloader_runs: u32,
}

/// Everything [`VirtualEsp32::create_from_spec`] needs.
#[derive(Debug, Clone, Copy)]
pub struct DeviceSpec<'a> {
    /// The chip.
    pub chip: Chip,
    /// Flash size in bytes (for example `4 << 20`).
    pub flash_size: u32,
    /// Partitions CSV text, as ESP-IDF and espflash take it (table at 0x8000).
    pub partitions_csv: &'a str,
    /// The app written to the factory partition (or to ota_0 without factory).
    pub factory_image: &'a [u8],
    /// A second-stage bootloader image written at the chip's bootloader offset. Without one the
    /// region stays erased: the virtual device applies ESP-IDF's bootloader rules itself.
    pub bootloader: Option<&'a [u8]>,
}

/// Builds the merged flash image `espflash save-image --merge` would write for `spec`: the
/// bootloader (if any) at the chip's bootloader offset, the binary partition table at 0x8000
/// (esp-idf-part's output, byte-identical to gen_esp32part's), the app in factory (or ota_0),
/// and 0xFF everywhere else (otadata erased: the factory state), padded to the flash size.
pub fn merged_image(spec: &DeviceSpec<'_>) -> Result<Vec<u8>, DeviceError> {
    let size = spec.flash_size;
    if size == 0 || !size.is_multiple_of(SECTOR_SIZE) || size < TABLE_OFFSET + SECTOR_SIZE {
        return Err(DeviceError::BadFlashSize(size));
    }
    let table = esp_idf_part::PartitionTable::try_from_str(spec.partitions_csv)?;
    let bin = table.to_bin()?;
    let mut img = vec![0xFF; size as usize];

    if let Some(bl) = spec.bootloader {
        let off = spec.chip.bootloader_offset();
        check_image_header(bl, spec.chip, "bootloader image")?;
        let max = (TABLE_OFFSET - off) as usize;
        if bl.len() > max {
            return Err(DeviceError::TooLarge {
                what: "bootloader image",
                len: bl.len(),
                region: format!("the bootloader region {off:#x}..{TABLE_OFFSET:#x}"),
                max,
            });
        }
        img[off as usize..off as usize + bl.len()].copy_from_slice(bl);
    }

    img[TABLE_OFFSET as usize..TABLE_OFFSET as usize + bin.len()].copy_from_slice(&bin);

    for p in table.partitions() {
        if u64::from(p.offset()) + u64::from(p.size()) > u64::from(size) {
            return Err(DeviceError::TooLarge {
                what: "partition table",
                len: (p.offset() + p.size()) as usize,
                region: format!("the flash (partition `{}` ends past it)", p.name()),
                max: size as usize,
            });
        }
    }
    let is_app = |p: &&esp_idf_part::Partition, sub: u8| {
        u8::from(p.ty()) == Partition::TYPE_APP && u8::from(p.subtype()) == sub
    };
    let target = table
        .partitions()
        .iter()
        .rfind(|p| is_app(p, Partition::SUBTYPE_FACTORY))
        .or_else(|| {
            table
                .partitions()
                .iter()
                .rfind(|p| is_app(p, Partition::SUBTYPE_OTA_0))
        })
        .ok_or(DeviceError::NoAppPartition)?;
    check_image_header(spec.factory_image, spec.chip, "factory image")?;
    if spec.factory_image.len() > target.size() as usize {
        return Err(DeviceError::TooLarge {
            what: "factory image",
            len: spec.factory_image.len(),
            region: format!("partition `{}`", target.name()),
            max: target.size() as usize,
        });
    }
    let at = target.offset() as usize;
    img[at..at + spec.factory_image.len()].copy_from_slice(spec.factory_image);
    Ok(img)
}

fn check_image_header(bytes: &[u8], chip: Chip, what: &'static str) -> Result<(), DeviceError> {
    let bad = |reason: String| DeviceError::BadImage { what, chip, reason };
    if bytes.len() < 24 {
        return Err(bad(format!("only {} bytes", bytes.len())));
    }
    let Some(header) = ImageHeader::sniff(bytes) else {
        return Err(bad(format!("first byte {:#04x}, expected 0xe9", bytes[0])));
    };
    if header.chip_id != chip.id() {
        return Err(bad(format!(
            "header chip id {}, expected {}",
            header.chip_id,
            chip.id()
        )));
    }
    Ok(())
}

/// Returns the chip named by a bootloader header at its chip's bootloader offset, else by the
/// first app partition whose header has a known chip id.
fn detect_chip(bytes: &[u8], table: &PartitionTable) -> Option<Chip> {
    let header_chip = |off: usize| ImageHeader::sniff(bytes.get(off..)?)?.chip();
    for off in [0x0, 0x1000, 0x2000] {
        if let Some(c) = header_chip(off).filter(|c| c.bootloader_offset() == off as u32) {
            return Some(c);
        }
    }
    let apps = table
        .factory()
        .into_iter()
        .chain((0..16).filter_map(|n| table.ota(n)));
    apps.chain(table.partitions().iter().filter(|p| p.is_app()))
        .find_map(|p| header_chip(p.offset as usize))
}

/// Returns the flash size named by the header's size nibble at the chip's bootloader offset
/// (the ROM's source of truth), else by the first app image.
fn header_flash_size(bytes: &[u8], chip: Chip, table: &PartitionTable) -> Option<u32> {
    let size_at = |off: usize| {
        ImageHeader::sniff(bytes.get(off..)?)
            .filter(|h| h.chip_id == chip.id())?
            .flash_size()
    };
    size_at(chip.bootloader_offset() as usize).or_else(|| {
        table
            .factory()
            .into_iter()
            .chain((0..16).filter_map(|n| table.ota(n)))
            .find_map(|p| size_at(p.offset as usize))
    })
}

fn parse_table(bytes: &[u8], flash_size: u32) -> Result<PartitionTable, PartitionError> {
    let start = TABLE_OFFSET as usize;
    let end = (start + PARTITION_TABLE_MAX_LEN).min(bytes.len());
    PartitionTable::parse(
        bytes.get(start..end).unwrap_or(&[]),
        Md5Policy::Optional,
        Some(flash_size),
    )
}

fn c_str(bytes: &[u8]) -> String {
    ota_core::esp::image::c_str(bytes).to_string()
}

/// A virtual ESP32. See the [crate docs](crate).
#[derive(Debug)]
pub struct VirtualEsp32 {
    flash: Flash,
    chip: Chip,
    /// The chip revision its eFuses would report (`major * 100 + minor`); `None`: unknown.
    chip_revision: Option<u16>,
    /// The public keys its firmware was built with (`DeviceConfig::trusted_keys`).
    trusted_keys: TrustedKeys,
    table: PartitionTable,
    running: Option<Partition>,
    last_boot: Option<BootReport>,
}

impl VirtualEsp32 {
    /// Creates a device whose flash is the file at `path` (created or truncated): the merged
    /// image of [`merged_image`] for this CSV, factory image, chip and flash size, with no
    /// second-stage bootloader image. The device is off until [`boot`](Self::boot).
    pub fn create(
        path: impl AsRef<Path>,
        partitions_csv: &str,
        factory_image: &[u8],
        chip: Chip,
        flash_size: u32,
    ) -> Result<Self, DeviceError> {
        let spec = DeviceSpec {
            chip,
            flash_size,
            partitions_csv,
            factory_image,
            bootloader: None,
        };
        Self::create_from_spec(path, &spec)
    }

    /// Creates a device from a full [`DeviceSpec`] (with an optional bootloader image).
    pub fn create_from_spec(
        path: impl AsRef<Path>,
        spec: &DeviceSpec<'_>,
    ) -> Result<Self, DeviceError> {
        let mut dev = Self::create_in_memory(spec)?;
        dev.save_as(path)?;
        Ok(dev)
    }

    /// Like [`create_from_spec`](Self::create_from_spec), with the flash in RAM only (fast,
    /// for loops over thousands of power cuts).
    pub fn create_in_memory(spec: &DeviceSpec<'_>) -> Result<Self, DeviceError> {
        let img = merged_image(spec)?;
        let table = parse_table(&img, spec.flash_size)?;
        Ok(Self::assemble(Flash::in_memory(img), spec.chip, table))
    }

    /// Opens an existing flash file; the state persists between runs. The flash size is the
    /// file's length; the chip comes from the bootloader header or the first app header.
    pub fn open(path: impl AsRef<Path>) -> Result<Self, DeviceError> {
        Self::from_flash(Flash::open(path)?, None)
    }

    /// Opens an existing flash file for `chip` (when the image holds no header naming it).
    pub fn open_as(path: impl AsRef<Path>, chip: Chip) -> Result<Self, DeviceError> {
        Self::from_flash(Flash::open(path)?, Some(chip))
    }

    /// Loads a merged flash image (`espflash save-image --merge`, `esptool merge-bin`, or a
    /// flash dump) into a new flash file at `path`. The chip comes from the bootloader or app
    /// headers; the flash size from the header's size field (at least the image's length), and
    /// the image is padded with 0xFF to it.
    pub fn from_merged_image(path: impl AsRef<Path>, bytes: &[u8]) -> Result<Self, DeviceError> {
        Self::from_merged_image_with(path, bytes, None, None)
    }

    /// [`from_merged_image`](Self::from_merged_image) with the chip and/or flash size given.
    pub fn from_merged_image_with(
        path: impl AsRef<Path>,
        bytes: &[u8],
        chip: Option<Chip>,
        flash_size: Option<u32>,
    ) -> Result<Self, DeviceError> {
        let mut dev = Self::merged_in_memory(bytes, chip, flash_size)?;
        dev.save_as(path)?;
        Ok(dev)
    }

    /// Like [`from_merged_image_with`](Self::from_merged_image_with), with the flash in RAM
    /// only ([`save_as`](Self::save_as) writes it to a file later).
    pub fn merged_in_memory(
        bytes: &[u8],
        chip: Option<Chip>,
        flash_size: Option<u32>,
    ) -> Result<Self, DeviceError> {
        let min = (bytes.len() as u32).div_ceil(SECTOR_SIZE) * SECTOR_SIZE;
        let probe = parse_table(bytes, flash_size.unwrap_or(u32::MAX))?;
        let chip = match chip {
            Some(c) => c,
            None => detect_chip(bytes, &probe).ok_or(DeviceError::UnknownChip)?,
        };
        let size = match flash_size {
            Some(s) => s,
            None => header_flash_size(bytes, chip, &probe)
                .unwrap_or(4 << 20)
                .max(min),
        };
        if size < min || size % SECTOR_SIZE != 0 || size < TABLE_OFFSET + SECTOR_SIZE {
            return Err(DeviceError::BadFlashSize(size));
        }
        let mut img = bytes.to_vec();
        img.resize(size as usize, 0xFF);
        let table = parse_table(&img, size)?;
        Ok(Self::assemble(Flash::in_memory(img), chip, table))
    }

    /// Wraps a flash (file-backed or in RAM) holding a merged image. `chip` as for
    /// [`open`](Self::open) when `None`. The chip revision is the one recorded beside a
    /// file-backed flash ([`chip_revision_path`](Self::chip_revision_path)), else the chip's
    /// default.
    pub fn from_flash(flash: Flash, chip: Option<Chip>) -> Result<Self, DeviceError> {
        let size = flash.size();
        if !size.is_multiple_of(SECTOR_SIZE) || size < TABLE_OFFSET + SECTOR_SIZE {
            return Err(DeviceError::BadFlashSize(size));
        }
        let table = parse_table(flash.bytes(), size)?;
        let chip = match chip {
            Some(c) => c,
            None => detect_chip(flash.bytes(), &table).ok_or(DeviceError::NotADevice)?,
        };
        let mut dev = Self::assemble(flash, chip, table);
        if let Some(path) = dev.chip_revision_path()
            && let Ok(text) = std::fs::read_to_string(&path)
        {
            let bad = || DeviceError::BadChipRevisionFile {
                path: path.display().to_string(),
                content: text.trim().to_string(),
            };
            dev.chip_revision = match text.trim() {
                "unknown" => None,
                t => Some(parse_chip_revision(t).ok_or_else(bad)?),
            };
        }
        if let Some(path) = dev.trusted_keys_path() {
            let bad = |why: String| DeviceError::BadTrustedKeysFile {
                path: path.display().to_string(),
                why,
            };
            // No file: the device trusts no key. One that cannot be read is an error, never a
            // device that quietly takes unsigned images.
            match std::fs::read_to_string(&path) {
                Ok(text) => dev.trusted_keys = parse_trusted_keys(&text).map_err(bad)?,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(bad(format!("cannot read it: {e}"))),
            }
        }
        Ok(dev)
    }

    fn assemble(flash: Flash, chip: Chip, table: PartitionTable) -> Self {
        VirtualEsp32 {
            flash,
            chip,
            chip_revision: default_chip_revision(chip),
            trusted_keys: TrustedKeys::NONE,
            table,
            running: None,
            last_boot: None,
        }
    }

    /// Powers the device on (or resets it): restores power after a cut, runs ESP-IDF's
    /// bootloader rules ([`run_bootloader_with_revision`], with or without rollback support per
    /// `config`; an app whose chip revision range excludes the chip is skipped),
    /// then the app's early-boot [`rollback_guard`], the same code the firmware runs. When the
    /// guard aborts a trial image it reboots at once, as the firmware does, and reports it. The
    /// app's code is not executed. Afterwards [`running_partition`](Self::running_partition)
    /// is the booted app.
    ///
    /// A [`FaultPlan`](crate::FaultPlan) that has not fired stays armed, so power can be cut
    /// during the bootloader's or the guard's otadata writes too ([`DeviceError::PowerLost`]).
    pub fn boot(&mut self, config: BootloaderConfig) -> Result<BootReport, DeviceError> {
        self.running = None;
        self.last_boot = None;
        let mut rolled_back = Vec::new();
        let mut runs = 0;
        loop {
            self.flash.power_on();
            runs += 1;
            let report = match self.boot_once(config) {
                Ok(r) => r,
                Err(_) if !self.flash.is_powered() => return Err(DeviceError::PowerLost),
                Err(e) => return Err(e),
            };
            if report.guard == GuardOutcome::RolledBack {
                if rolled_back.len() as u32 >= MAX_GUARD_REBOOTS {
                    return Err(DeviceError::RebootLoop(runs));
                }
                rolled_back.push(report.partition);
                continue;
            }
            let report = BootReport {
                rolled_back,
                bootloader_runs: runs,
                ..report
            };
            self.running = Some(report.partition);
            self.last_boot = Some(report.clone());
            return Ok(report);
        }
    }

    /// Same as [`boot`](Self::boot): a reset runs the bootloader again.
    pub fn reboot(&mut self, config: BootloaderConfig) -> Result<BootReport, DeviceError> {
        self.boot(config)
    }

    fn boot_once(&mut self, config: BootloaderConfig) -> Result<BootReport, DeviceError> {
        let size = self.flash.size();
        let booted = run_bootloader_with_revision(
            &mut self.flash,
            TABLE_OFFSET,
            size,
            self.chip,
            self.chip_revision,
            config,
        )?;
        // The app reads the table itself (it may have changed since the device was opened).
        let mut buf = vec![0u8; PARTITION_TABLE_MAX_LEN];
        self.flash.read(TABLE_OFFSET, &mut buf)?;
        self.table = PartitionTable::parse(&buf, Md5Policy::Optional, Some(size))?;
        let p = booted.partition;
        let (guard, state) = match OtaSlots::new(self.table.clone()) {
            Ok(slots) => {
                let guard = rollback_guard(&mut self.flash, &slots, &p, config)?;
                let state = match p.ota_slot() {
                    Some(_) => slots.state_of(&mut self.flash, &p)?,
                    None => None,
                };
                (guard, state)
            }
            Err(SlotError::NoOtadata | SlotError::NoOtaSlots) => (GuardOutcome::NotOta, None),
            Err(e) => return Err(e.into()),
        };
        let (project_name, version) = match &booted.image.app {
            Some(d) => (c_str(&d.project_name), c_str(&d.version)),
            None => (String::new(), String::new()),
        };
        Ok(BootReport {
            slot: p.name().to_string(),
            partition: p,
            project_name,
            version,
            image: booted.image,
            state,
            guard,
            skipped: booted.skipped.into_iter().collect(),
            rolled_back: Vec::new(),
            bootloader_runs: 1,
        })
    }

    /// Returns a copy of the device with its flash in RAM (no file, no lock): the same chip,
    /// revision, table and running app, to try something on without touching the original.
    pub fn snapshot(&self) -> VirtualEsp32 {
        VirtualEsp32 {
            flash: Flash::in_memory(self.flash.bytes().to_vec()),
            chip: self.chip,
            chip_revision: self.chip_revision,
            trusted_keys: self.trusted_keys,
            table: self.table.clone(),
            running: self.running,
            last_boot: self.last_boot.clone(),
        }
    }

    /// Cuts power now; the device is off until [`boot`](Self::boot).
    pub fn cut_power(&mut self) {
        self.flash.cut_power();
        self.running = None;
    }

    /// Returns the flash, to read it or to use it as an `embedded_storage` NOR flash.
    pub fn flash(&self) -> &Flash {
        &self.flash
    }

    /// Returns the flash as the OTA engine uses it (`impl NorFlash + MultiwriteNorFlash`).
    pub fn flash_mut(&mut self) -> &mut Flash {
        &mut self.flash
    }

    /// Returns the flash, consuming the device.
    pub fn into_flash(self) -> Flash {
        self.flash
    }

    /// Returns the partition table (as read at open and at every boot).
    pub fn partition_table(&self) -> &PartitionTable {
        &self.table
    }

    /// Returns the OTA view of the table (fails without otadata or ota_0).
    pub fn slots(&self) -> Result<OtaSlots, SlotError> {
        OtaSlots::new(self.table.clone())
    }

    /// Returns the partition of the running app: `None` before the first boot and after a
    /// power cut. The OTA engine must never write it.
    pub fn running_partition(&self) -> Option<&Partition> {
        if self.flash.is_powered() {
            self.running.as_ref()
        } else {
            None
        }
    }

    /// Returns the report of the last successful boot (`None` after a power cut).
    pub fn last_boot(&self) -> Option<&BootReport> {
        if self.flash.is_powered() {
            self.last_boot.as_ref()
        } else {
            None
        }
    }

    /// Returns the chip.
    pub fn chip(&self) -> Chip {
        self.chip
    }

    /// Returns the chip revision, `major * 100 + minor` (`None`: unknown, not checked). The
    /// bootloader skips apps whose `min_chip_rev_full ..= max_chip_rev_full` excludes it, and
    /// the OTA engine should be given it (`DeviceConfig::chip_revision`).
    pub fn chip_revision(&self) -> Option<u16> {
        self.chip_revision
    }

    /// Sets the chip revision (as if the chip were another die) and records it beside a
    /// file-backed flash, so it persists with the device.
    pub fn set_chip_revision(&mut self, revision: Option<u16>) -> Result<(), DeviceError> {
        self.chip_revision = revision;
        self.record_chip_revision()
    }

    /// Returns the file that records, beside a file-backed flash, the chip revision (the flash
    /// image cannot hold it: on a real chip it is in eFuse).
    pub fn chip_revision_path(&self) -> Option<std::path::PathBuf> {
        self.flash
            .path()
            .map(|p| crate::flash::sibling(p, ".chip-revision"))
    }

    fn record_chip_revision(&self) -> Result<(), DeviceError> {
        let Some(path) = self.chip_revision_path() else {
            return Ok(());
        };
        let text = match self.chip_revision {
            Some(r) => format!("{}\n", Rev(r)),
            None => "unknown\n".to_string(),
        };
        crate::flash::write_atomically(&path, text.as_bytes()).map_err(DeviceError::Io)
    }

    /// Returns the public keys the device's firmware trusts: not empty, it takes only images
    /// whose manifest one of them signed (give them to the engine as
    /// `DeviceConfig::trusted_keys`).
    pub fn trusted_keys(&self) -> TrustedKeys {
        self.trusted_keys
    }

    /// Sets the firmware's trusted keys, as if it were built with them, and records them
    /// beside a file-backed flash so they persist with the device.
    pub fn set_trusted_keys(&mut self, keys: TrustedKeys) -> Result<(), DeviceError> {
        self.trusted_keys = keys;
        self.record_trusted_keys()
    }

    /// Returns the file that records the trusted keys beside a file-backed flash (on a real
    /// device they are built into the firmware image).
    pub fn trusted_keys_path(&self) -> Option<std::path::PathBuf> {
        self.flash
            .path()
            .map(|p| crate::flash::sibling(p, ".trusted-keys"))
    }

    fn record_trusted_keys(&self) -> Result<(), DeviceError> {
        let Some(path) = self.trusted_keys_path() else {
            return Ok(());
        };
        if self.trusted_keys.is_empty() {
            return match std::fs::remove_file(&path) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(DeviceError::Io(e)),
                _ => Ok(()),
            };
        }
        let text: String = self
            .trusted_keys
            .keys()
            .iter()
            .map(|k| format!("{}\n", hex::encode(k)))
            .collect();
        crate::flash::write_atomically(&path, text.as_bytes()).map_err(DeviceError::Io)
    }

    /// Returns the flash size in bytes.
    pub fn flash_size(&self) -> u32 {
        self.flash.size()
    }

    /// Returns the flash file's path (`None` for a device in RAM).
    pub fn path(&self) -> Option<&Path> {
        self.flash.path()
    }

    /// Returns the file that records, beside a file-backed flash, which app is running, so a
    /// device stays "on" between runs of a program (a CLI that connects to it does not reset it).
    pub fn power_state_path(&self) -> Option<std::path::PathBuf> {
        self.flash
            .path()
            .map(|p| crate::flash::sibling(p, ".running"))
    }

    /// Opens the device at `path` as it was left: still running the app recorded by the last
    /// [`boot`](Self::boot) through [`record_power_state`](Self::record_power_state), or
    /// freshly booted with `config` when it was off. The record names the app and the SHA-256
    /// of its partition: if the partition no longer holds what booted (the file was replaced
    /// or written by another tool), the record is stale and the device boots afresh.
    pub fn open_powered(
        path: impl AsRef<Path>,
        config: BootloaderConfig,
    ) -> Result<Self, DeviceError> {
        let mut dev = Self::open(path)?;
        let record = dev
            .power_state_path()
            .and_then(|p| std::fs::read_to_string(p).ok());
        let running = record.and_then(|r| {
            let (label, digest) = r.trim().split_once(' ')?;
            let p = *dev.table.find(label)?;
            (p.is_app() && dev.partition_digest(&p) == digest).then_some(p)
        });
        match running {
            Some(p) => dev.running = Some(p),
            None => {
                dev.boot(config)?;
                dev.record_power_state()?;
            }
        }
        Ok(dev)
    }

    /// Records the running app beside the flash file (or that the device is off).
    pub fn record_power_state(&self) -> Result<(), DeviceError> {
        let Some(path) = self.power_state_path() else {
            return Ok(());
        };
        match self.running_partition() {
            Some(p) => {
                let record = format!("{} {}\n", p.name(), self.partition_digest(p));
                crate::flash::write_atomically(&path, record.as_bytes())?;
                Ok(())
            }
            None => match std::fs::remove_file(path) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e.into()),
                _ => Ok(()),
            },
        }
    }

    /// Writes the device to the flash file at `path` (replaced atomically, and locked like
    /// [`open`](Self::open)) with its chip revision and power state beside it; every later
    /// flash operation goes to that file.
    pub fn save_as(&mut self, path: impl AsRef<Path>) -> Result<(), DeviceError> {
        self.flash.save_as(path)?;
        self.record_chip_revision()?;
        self.record_trusted_keys()?;
        self.record_power_state()
    }

    /// SHA-256 of a partition's bytes, in hex: what [`record_power_state`](Self::record_power_state) pins.
    fn partition_digest(&self, p: &Partition) -> String {
        use sha2::Digest;
        let start = p.offset as usize;
        let end = (start + p.size as usize).min(self.flash.bytes().len());
        hex::encode(sha2::Sha256::digest(
            &self.flash.bytes()[start.min(end)..end],
        ))
    }
}

/// Parses the trusted-keys file: one hex public key per line, blank lines ignored.
fn parse_trusted_keys(text: &str) -> Result<TrustedKeys, String> {
    let mut keys = Vec::new();
    for line in text.lines().map(str::trim).filter(|l| !l.is_empty()) {
        let key: [u8; 32] = hex::decode(line)
            .ok()
            .and_then(|b| b.try_into().ok())
            .ok_or_else(|| format!("`{line}` is not 32 bytes of hex"))?;
        keys.push(key);
    }
    if keys.len() > ota_core::manifest::MAX_TRUSTED_KEYS {
        return Err(format!("{} keys", keys.len()));
    }
    Ok(TrustedKeys::new(&keys))
}
