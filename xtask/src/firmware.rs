//! `cargo xtask firmware`: builds the firmware for the RISC-V chips CI covers, turns each ELF
//! into an app image with espflash's library (the same code as `espflash save-image`), checks
//! the image with our validator and reports its size and RAM use.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail, ensure};
use espflash::flasher::{FlashData, FlashSettings, FlashSize};
use espflash::image_format::idf::IdfBootloaderFormat;
use object::{Object, ObjectSection, SectionFlags, SectionKind};
use ota_core::esp::ImageValidator;

use crate::{cargo, root, run};

/// A chip the firmware is built for in CI.
pub struct FirmwareChip {
    /// Cargo feature and image file stem.
    pub name: &'static str,
    /// Rust target.
    pub target: &'static str,
    espflash: espflash::target::Chip,
    core: ota_core::esp::Chip,
}

/// The chips `cargo xtask firmware` builds (the Xtensa ones need Espressif's toolchain).
pub const CHIPS: &[FirmwareChip] = &[
    FirmwareChip {
        name: "esp32c3",
        target: "riscv32imc-unknown-none-elf",
        espflash: espflash::target::Chip::Esp32c3,
        core: ota_core::esp::Chip::Esp32c3,
    },
    FirmwareChip {
        name: "esp32c6",
        target: "riscv32imac-unknown-none-elf",
        espflash: espflash::target::Chip::Esp32c6,
        core: ota_core::esp::Chip::Esp32c6,
    },
];

const BIN: &str = "ble-ota-firmware";

/// Returns the directory the app images go to: `firmware/target/images`.
pub fn images_dir() -> PathBuf {
    root().join("firmware/target/images")
}

/// Builds, converts, checks and reports every chip in [`CHIPS`]; images go to
/// `firmware/target/images/<chip>.bin`.
pub fn firmware() -> Result<()> {
    let fw = root().join("firmware");
    let slot = smallest_app_slot(&fw.join("partitions.csv"))?;
    std::fs::create_dir_all(images_dir())?;
    let keys = TrustedKeys::from_env()?;
    let mut lines = Vec::new();
    for chip in CHIPS {
        // Run inside firmware/ so its .cargo/config.toml (linker script, env) applies.
        let mut build = cargo();
        build
            .args(["build", "--release", "--locked", "--target", chip.target])
            .args(["--no-default-features", "--features", chip.name])
            .current_dir(&fw);
        if let Some(spec) = &keys.spec {
            build.env(KEYS_VAR, spec);
        }
        run(&mut build)?;
        let elf_path = fw
            .join("target")
            .join(chip.target)
            .join("release")
            .join(BIN);
        let elf =
            std::fs::read(&elf_path).with_context(|| format!("reading {}", elf_path.display()))?;
        let image = app_image(&elf, chip, &fw.join("partitions.csv"))?;
        let mut validator = ImageValidator::new(Some(chip.core), slot);
        let info = validator
            .feed(&image)
            .and_then(|()| validator.finish())
            .map_err(|e| anyhow::anyhow!("{}: the app image is invalid: {e}", chip.name))?;
        ensure!(info.app.is_some(), "{}: no app descriptor", chip.name);
        let out = images_dir().join(format!("{}.bin", chip.name));
        std::fs::write(&out, &image).with_context(|| format!("writing {}", out.display()))?;
        let ram = RamUse::of(&elf)?;
        let verify = signature_check_bytes(&elf)?;
        lines.push(format!(
            "{:<8} signature checks: {} KiB of the image (Ed25519 verify_strict, SHA-512, manifest)",
            chip.name,
            verify.div_ceil(1024)
        ));
        lines.push(format!(
            "{:<8} image {:>7} bytes ({:>4} KiB), {:>3}% of the {} KiB slot, {} KiB left for your code\n\
             \x20        static RAM {} KiB (IRAM code {} KiB, data {} KiB, bss {} KiB incl. 32 KiB heap), \
             stack {} KiB, bootloader-reclaimed {} KiB (64 KiB heap)\n\
             \x20        -> {}",
            chip.name,
            image.len(),
            image.len().div_ceil(1024),
            image.len() * 100 / slot as usize,
            slot / 1024,
            (slot as usize - image.len()) / 1024,
            (ram.code + ram.data + ram.bss).div_ceil(1024),
            ram.code.div_ceil(1024),
            ram.data.div_ceil(1024),
            ram.bss.div_ceil(1024),
            ram.stack / 1024,
            ram.reclaimed / 1024,
            out.strip_prefix(root()).unwrap_or(&out).display(),
        ));
    }
    eprintln!("\nfirmware app images (checked with ota_core::esp::ImageValidator):");
    eprintln!(
        "compressed images: the update engine's inflater takes {} bytes of state (size on this \
         host; the RISC-V layout is within a few bytes); its {} KiB window is the transfer's \
         program buffer",
        ota_core::device::INFLATER_RAM,
        ota_core::device::INFLATE_WINDOW / 1024,
    );
    for line in lines {
        eprintln!("{line}");
    }
    eprintln!("{}", keys.describe());
    Ok(())
}

/// The variable the firmware's build script reads its trusted keys from.
const KEYS_VAR: &str = "BLE_OTA_TRUSTED_KEYS";

/// The keys `BLE_OTA_TRUSTED_KEYS` names, read here to print their fingerprints.
struct TrustedKeys {
    /// The variable with every path made absolute (the firmware builds in `firmware/`).
    spec: Option<String>,
    /// Each key's path and fingerprint.
    keys: Vec<(PathBuf, String)>,
}

impl TrustedKeys {
    fn from_env() -> Result<Self> {
        use ed25519_dalek::VerifyingKey;
        use ed25519_dalek::pkcs8::DecodePublicKey;
        let Some(spec) = std::env::var_os(KEYS_VAR) else {
            return Ok(TrustedKeys {
                spec: None,
                keys: Vec::new(),
            });
        };
        let spec = spec
            .into_string()
            .map_err(|_| anyhow::anyhow!("{KEYS_VAR} is not UTF-8"))?;
        let cwd = std::env::current_dir()?;
        let mut keys = Vec::new();
        for p in spec.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let path = cwd.join(p);
            let pem = std::fs::read_to_string(&path)
                .with_context(|| format!("{KEYS_VAR}: reading {}", path.display()))?;
            let key = VerifyingKey::from_public_key_pem(&pem).map_err(|e| {
                anyhow::anyhow!(
                    "{KEYS_VAR}: {} is not an Ed25519 public key ({e}); give NAME.pub from `ble-ota keygen NAME`",
                    path.display()
                )
            })?;
            let fp = ota_core::manifest::fingerprint(&key.to_bytes());
            keys.push((path, ota_core::manifest::Hex(&fp).to_string()));
        }
        ensure!(
            keys.len() <= ota_core::manifest::MAX_TRUSTED_KEYS,
            "{KEYS_VAR}: at most {} keys",
            ota_core::manifest::MAX_TRUSTED_KEYS
        );
        let joined: Vec<String> = keys.iter().map(|(p, _)| p.display().to_string()).collect();
        Ok(TrustedKeys {
            spec: Some(joined.join(",")),
            keys,
        })
    }

    fn describe(&self) -> String {
        if self.keys.is_empty() {
            return format!(
                "trusted keys: none, the firmware takes unsigned images (set {KEYS_VAR}=NAME.pub to require signatures)"
            );
        }
        let list: Vec<String> = self
            .keys
            .iter()
            .map(|(p, fp)| format!("{fp} ({})", p.display()))
            .collect();
        format!(
            "trusted keys: {}; the firmware takes only images signed by one of them",
            list.join(", ")
        )
    }
}

/// Bytes of the ELF's code and data that check signatures: the symbols of curve25519-dalek,
/// ed25519-dalek, SHA-512 and the manifest (code inlined into them counted with them).
fn signature_check_bytes(elf: &[u8]) -> Result<u64> {
    use object::ObjectSymbol;
    let file = object::File::parse(elf).context("parsing the firmware ELF")?;
    let markers = ["curve25519_dalek", "ed25519", "sha512", "8manifest"];
    Ok(file
        .symbols()
        .filter(|s| {
            s.name()
                .is_ok_and(|n| markers.iter().any(|m| n.contains(m)))
        })
        .map(|s| s.size())
        .sum())
}

/// Converts an ELF into an app image (what `espflash save-image --chip <chip>
/// --partition-table partitions.csv --flash-size 4mb ELF out.bin` writes).
fn app_image(elf: &[u8], chip: &FirmwareChip, partitions: &Path) -> Result<Vec<u8>> {
    let settings = FlashSettings::new(None, Some(FlashSize::_4Mb), None);
    let flash = FlashData::new(
        settings,
        0,
        None,
        chip.espflash,
        chip.espflash.default_xtal_frequency(),
    );
    let format = IdfBootloaderFormat::new(elf, &flash, Some(partitions), None, None, None)
        .map_err(|e| anyhow::anyhow!("{}: espflash: {e}", chip.name))?;
    let mut segments = format.ota_segments();
    let (Some(app), None) = (segments.next(), segments.next()) else {
        bail!("{}: espflash returned more than one app segment", chip.name);
    };
    Ok(app.data.into_owned())
}

/// Returns the size of the smallest app partition of a partition table CSV.
fn smallest_app_slot(csv: &Path) -> Result<u32> {
    let text =
        std::fs::read_to_string(csv).with_context(|| format!("reading {}", csv.display()))?;
    let table = esp_idf_part::PartitionTable::try_from_str(&text)
        .map_err(|e| anyhow::anyhow!("{}: {e}", csv.display()))?;
    table
        .partitions()
        .iter()
        .filter(|p| p.ty() == esp_idf_part::Type::App)
        .map(|p| p.size())
        .min()
        .context("the partition table has no app partition")
}

/// RAM an ELF uses, from its section headers (bytes).
#[derive(Debug, Default)]
struct RamUse {
    /// Code in IRAM (`.trap`, `.rwtext*`).
    code: usize,
    /// Initialised data (`.data*`).
    data: usize,
    /// Zeroed and uninitialised data (`.bss`, `.noinit`), heap included.
    bss: usize,
    /// What is left for the stack (`.stack` takes the rest of the RAM).
    stack: usize,
    /// The region reclaimed from the second-stage bootloader (`.dram2_uninit`).
    reclaimed: usize,
}

impl RamUse {
    fn of(elf: &[u8]) -> Result<Self> {
        let file = object::File::parse(elf).context("parsing the firmware ELF")?;
        let mut ram = RamUse::default();
        for s in file.sections() {
            let name = s.name().unwrap_or("");
            let alloc = match s.flags() {
                // SHF_ALLOC
                SectionFlags::Elf { sh_flags, .. } => sh_flags.0 & 0x2 != 0,
                _ => false,
            };
            let addr = s.address() as u32;
            // Flash-mapped (DROM 0x3C.., IROM 0x42..) and RTC memory are not SRAM; the
            // `*_dummy`/`.text_gap` sections only reserve address space.
            let flash_mapped = (0x3C00_0000..0x3D00_0000).contains(&addr)
                || (0x4200_0000..0x4400_0000).contains(&addr);
            if !alloc
                || s.size() == 0
                || flash_mapped
                || addr >= 0x5000_0000
                || name.ends_with("_dummy")
                || name == ".text_gap"
            {
                continue;
            }
            let size = s.size() as usize;
            match (name, s.kind()) {
                (".stack", _) => ram.stack += size,
                (".dram2_uninit", _) => ram.reclaimed += size,
                (_, SectionKind::Text) => ram.code += size,
                (_, SectionKind::UninitializedData) => ram.bss += size,
                _ => ram.data += size,
            }
        }
        Ok(ram)
    }
}
