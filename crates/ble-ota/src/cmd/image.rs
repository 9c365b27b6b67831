//! `ble-ota image inspect`: parse and verify an app image offline, as `esptool image-info` does.

use std::path::{Path, PathBuf};

use anyhow::Result;
use ota_core::esp::Chip;
use ota_core::esp::image::{ImageInfo, ImageValidator, Rev, Segment};
use serde::Serialize;

use crate::cmd::sign::ManifestView;
use crate::cmd::sim::{parse_chip, parse_revision};
use crate::exit::{CliError, ExitCode};
use crate::input::{MAX_IMAGE_LEN, read_input};

/// Offline image commands.
#[derive(Debug, clap::Subcommand)]
pub enum ImageCmd {
    /// Parse and verify an app image: chip, chip revisions, segments, checksum, hash, app
    /// descriptor. Bytes after the image's end are ignored, as ESP-IDF and esptool do.
    ///
    /// Exits with code 5 when the image is invalid.
    Inspect {
        /// The app image (.bin from `espflash save-image`, or the firmware build).
        image: PathBuf,
        /// Also require the image to be for this chip (esp32c3, esp32c6, ...).
        #[arg(long)]
        chip: Option<String>,
        /// Also require the image to run on this chip revision (`0.4`, `v1.1`: major.minor),
        /// as the bootloader checks it.
        #[arg(long, value_name = "X.Y")]
        chip_revision: Option<String>,
        /// The image's signed manifest [default: IMAGE.sig, when it exists]: shown, and checked
        /// against the image.
        #[arg(long, value_name = "FILE")]
        sig: Option<PathBuf>,
        /// Verify the manifest's signature with this public key (NAME.pub); exits 5 unless it
        /// verifies.
        #[arg(long = "pub", value_name = "NAME.pub")]
        public: Option<PathBuf>,
    },
}

/// What `image inspect --json` prints.
#[derive(Debug, Serialize)]
pub struct Report {
    pub file_size: usize,
    pub chip: String,
    pub chip_id: u16,
    pub entry_point: String,
    pub segments: Vec<SegmentReport>,
    pub flash_mode: &'static str,
    pub flash_size: &'static str,
    pub flash_freq: String,
    pub min_chip_rev_full: u16,
    pub max_chip_rev_full: u16,
    /// The legacy `min_chip_rev` byte (ignored by ESP-IDF >= v4.4.5 / v5.0.1).
    pub legacy_min_chip_rev: u8,
    /// `min_chip_rev_full` as `vX.Y`.
    pub min_chip_revision: String,
    /// `max_chip_rev_full` as `vX.Y`; `None` when not set (0 or 0xFFFF: no limit).
    pub max_chip_revision: Option<String>,
    /// The chip revision asked about (`--chip-revision`), as `vX.Y`.
    pub chip_revision: Option<String>,
    /// Whether the image runs on that revision.
    pub runs_on_chip_revision: Option<bool>,
    pub checksum: String,
    pub checksum_valid: bool,
    pub hash: Option<String>,
    pub hash_valid: Option<bool>,
    pub project_name: Option<String>,
    pub version: Option<String>,
    pub compile_time: Option<String>,
    pub idf_version: Option<String>,
    pub secure_version: Option<u32>,
    pub elf_sha256: Option<String>,
    pub image_len: u32,
    /// Bytes after the image's end, ignored (as ESP-IDF and esptool do).
    pub ignored_trailing_bytes: u32,
    pub valid: bool,
    pub problems: Vec<String>,
    /// The signed manifest beside the image (`IMAGE.sig` or `--sig`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub manifest: Option<ManifestView>,
    /// Set when the image is invalid: `ble-ota`'s exit code, as in every failing `--json` output.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub exit_code: Option<u8>,
}

#[derive(Debug, Serialize)]
pub struct SegmentReport {
    pub index: usize,
    pub load_addr: String,
    pub len: u32,
    pub file_offset: String,
    pub kind: &'static str,
}

pub fn run(cmd: ImageCmd, json: bool) -> Result<()> {
    let ImageCmd::Inspect {
        image,
        chip,
        chip_revision,
        sig,
        public,
    } = cmd;
    let bytes = read_input(&image, MAX_IMAGE_LEN)?;
    let expected = chip.as_deref().map(parse_chip).transpose()?;
    let revision = chip_revision.as_deref().map(parse_revision).transpose()?;
    let mut report = inspect(&bytes, expected, revision);
    check_manifest(&mut report, &bytes, &image, sig, public)?;
    if !report.valid {
        report.exit_code = Some(ExitCode::InvalidImage as u8);
    }
    if json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print_human(&image, &report);
    }
    if report.valid {
        return Ok(());
    }
    let err = CliError::new(
        ExitCode::InvalidImage,
        format!(
            "{} is not a valid app image: {}",
            image.display(),
            report.problems.join("; ")
        ),
    );
    Err(if json { err.reported() } else { err }.into())
}

/// Adds the image's manifest to `report`: whether it names this image and, given a public key,
/// whether its signature verifies. Either failing is a problem of the image as signed.
fn check_manifest(
    report: &mut Report,
    image: &[u8],
    image_path: &Path,
    sig: Option<PathBuf>,
    public: Option<PathBuf>,
) -> Result<()> {
    let path = sig.unwrap_or_else(|| crate::keys::sig_path(image_path));
    if !path.exists() {
        if public.is_some() {
            report.problems.push(format!(
                "no signed manifest at {} to verify: sign the image (ble-ota sign {} --key NAME.key)",
                path.display(),
                image_path.display()
            ));
            report.valid = false;
        }
        return Ok(());
    }
    let signed = crate::keys::read_manifest(&path)?;
    let mut view = ManifestView::new(&signed);
    let matches = signed.is_for(image);
    view.matches_image = Some(matches);
    if !matches {
        report.problems.push(format!(
            "{} belongs to another image (size, SHA-256, chip or versions differ)",
            path.display()
        ));
    }
    if let Some(p) = public {
        let ok = crate::cmd::sign::verifies(&signed, &p)?;
        view.signature_valid = Some(ok);
        if !ok {
            report.problems.push(format!(
                "the signature in {} does not verify with {} (another key, or altered)",
                path.display(),
                p.display()
            ));
        }
    }
    report.manifest = Some(view);
    report.valid = report.problems.is_empty();
    Ok(())
}

/// Parses and verifies `bytes` (for `chip` and chip `revision` when given); never fails, it
/// reports.
pub fn inspect(bytes: &[u8], chip: Option<Chip>, revision: Option<u16>) -> Report {
    // The revision is checked here from the header, so that the rest is still reported.
    let mut v = ImageValidator::new(chip, u32::MAX);
    let mut problems = Vec::new();
    let fed = v.feed(bytes);
    let header = v.header().copied();
    let info: Option<ImageInfo> = match fed {
        Err(e) => {
            problems.push(e.to_string());
            None
        }
        Ok(()) => match v.report() {
            Ok(info) => Some(info),
            Err(e) => {
                problems.push(e.to_string());
                None
            }
        },
    };
    let mut r = Report {
        file_size: bytes.len(),
        chip: "unknown".into(),
        chip_id: 0xFFFF,
        entry_point: String::new(),
        segments: Vec::new(),
        flash_mode: "unknown",
        flash_size: "unknown",
        flash_freq: "unknown".into(),
        min_chip_rev_full: 0,
        max_chip_rev_full: 0,
        legacy_min_chip_rev: 0,
        min_chip_revision: String::new(),
        max_chip_revision: None,
        chip_revision: revision.map(|r| Rev(r).to_string()),
        runs_on_chip_revision: None,
        checksum: String::new(),
        checksum_valid: false,
        hash: None,
        hash_valid: None,
        project_name: None,
        version: None,
        compile_time: None,
        idf_version: None,
        secure_version: None,
        elf_sha256: None,
        image_len: 0,
        ignored_trailing_bytes: 0,
        exit_code: None,
        valid: false,
        problems,
        manifest: None,
    };
    if let Some(h) = header {
        let chip = Chip::from_id(h.chip_id);
        r.chip = chip
            .map(|c| c.name().to_string())
            .unwrap_or_else(|| format!("unknown (id {})", h.chip_id));
        r.chip_id = h.chip_id;
        r.entry_point = format!("{:#010x}", h.entry_addr);
        r.flash_mode = flash_mode(h.spi_mode);
        r.flash_size = flash_size(h.spi_speed_size >> 4);
        r.flash_freq = flash_freq(chip, h.spi_speed_size & 0x0F);
        r.min_chip_rev_full = h.min_chip_rev_full;
        r.max_chip_rev_full = h.max_chip_rev_full;
        r.legacy_min_chip_rev = h.min_chip_rev;
        r.min_chip_revision = Rev(h.min_chip_rev_full).to_string();
        r.max_chip_revision = h.max_chip_rev_limit().map(|m| Rev(m).to_string());
        if let Some(rev) = revision {
            let verdict = h.check_chip_revision(rev);
            r.runs_on_chip_revision = Some(verdict.is_ok());
            if let Err(e) = verdict {
                r.problems.push(e.to_string());
            }
        }
    }
    if let Some(info) = info {
        let chip = Chip::from_id(info.header.chip_id);
        r.segments = info
            .segments
            .iter()
            .enumerate()
            .map(|(i, s)| SegmentReport {
                index: i,
                load_addr: format!("{:#010x}", s.load_addr),
                len: s.data_len,
                file_offset: format!("{:#010x}", s.file_offset),
                kind: segment_kind(chip, s),
            })
            .collect();
        // The verdict is the core's: the same rules the device applies.
        let [checksum, hash, _] = info.problems();
        r.problems
            .extend(info.problems().into_iter().flatten().map(|e| e.to_string()));
        r.checksum = format!("{:#04x}", info.checksum_stored);
        r.checksum_valid = checksum.is_none();
        if let Some(stored) = info.hash_stored {
            r.hash = Some(hex::encode(stored));
            r.hash_valid = Some(hash.is_none());
        }
        if let Some(app) = &info.app {
            r.project_name = Some(cstr(&app.project_name));
            r.version = Some(cstr(&app.version));
            r.compile_time = Some(
                format!("{} {}", cstr(&app.date), cstr(&app.time))
                    .trim()
                    .to_string(),
            );
            r.idf_version = Some(cstr(&app.idf_ver));
            r.secure_version = Some(app.secure_version);
            r.elf_sha256 = Some(hex::encode(app.app_elf_sha256));
        }
        r.image_len = info.len;
        r.ignored_trailing_bytes = info.ignored_trailing;
    }
    r.valid = r.problems.is_empty();
    r
}

fn print_human(path: &std::path::Path, r: &Report) {
    println!("File: {} ({} bytes)", path.display(), r.file_size);
    println!("Chip: {} (id {})", r.chip, r.chip_id);
    if !r.entry_point.is_empty() {
        println!("Entry point: {}", r.entry_point);
        println!(
            "Flash: {} mode, {}, {}",
            r.flash_mode, r.flash_size, r.flash_freq
        );
        println!(
            "Chip revision: min {} (legacy min_rev {}), max {}",
            r.min_chip_revision,
            r.legacy_min_chip_rev,
            r.max_chip_revision
                .as_deref()
                .unwrap_or("not set (no limit)")
        );
        if let (Some(rev), Some(ok)) = (&r.chip_revision, r.runs_on_chip_revision) {
            println!(
                "Runs on chip revision {rev}: {}",
                if ok { "yes" } else { "no" }
            );
        }
    }
    if !r.segments.is_empty() {
        println!("Segments: {}", r.segments.len());
        for s in &r.segments {
            println!(
                "  {:>2}  load {}  len {:#08x}  file offset {}  {}",
                s.index, s.load_addr, s.len, s.file_offset, s.kind
            );
        }
        println!(
            "Checksum: {} ({})",
            r.checksum,
            if r.checksum_valid { "valid" } else { "invalid" }
        );
        if let (Some(h), Some(ok)) = (&r.hash, r.hash_valid) {
            println!(
                "Validation hash: {h} ({})",
                if ok { "valid" } else { "invalid" }
            );
        }
    }
    if let Some(name) = &r.project_name {
        println!("App: {name} {}", r.version.as_deref().unwrap_or(""));
        println!("  compiled: {}", r.compile_time.as_deref().unwrap_or(""));
        println!("  ESP-IDF: {}", r.idf_version.as_deref().unwrap_or(""));
        println!("  secure version: {}", r.secure_version.unwrap_or(0));
        println!("  ELF SHA-256: {}", r.elf_sha256.as_deref().unwrap_or(""));
    }
    if let Some(m) = &r.manifest {
        println!("Signed manifest: {}", m.line());
        if let Some(ok) = m.signature_valid {
            println!("  signature: {}", if ok { "valid" } else { "INVALID" });
        }
    }
    if r.ignored_trailing_bytes > 0 {
        println!(
            "{} bytes after the image end ignored (as ESP-IDF and esptool do)",
            r.ignored_trailing_bytes
        );
    }
    if r.valid {
        println!("Image is valid ({} bytes).", r.image_len);
    } else {
        for p in &r.problems {
            println!("INVALID: {p}");
        }
    }
}

/// Returns a NUL-padded C string field as text.
pub(crate) fn cstr(b: &[u8]) -> String {
    ota_core::esp::image::c_str(b).to_string()
}

fn flash_mode(m: u8) -> &'static str {
    match m {
        0 => "QIO",
        1 => "QOUT",
        2 => "DIO",
        3 => "DOUT",
        4 => "FAST_READ",
        5 => "SLOW_READ",
        _ => "unknown",
    }
}

fn flash_size(code: u8) -> &'static str {
    match code {
        0 => "1MB",
        1 => "2MB",
        2 => "4MB",
        3 => "8MB",
        4 => "16MB",
        5 => "32MB",
        6 => "64MB",
        7 => "128MB",
        _ => "unknown",
    }
}

/// Speed codes are chip specific (esptool targets/*.py).
fn flash_freq(chip: Option<Chip>, code: u8) -> String {
    let table: [(u8, &str); 4] = match chip {
        Some(Chip::Esp32c2) => [(0xF, "60m"), (0, "30m"), (1, "20m"), (2, "15m")],
        Some(Chip::Esp32h2) => [(0xF, "48m"), (0, "24m"), (1, "16m"), (2, "12m")],
        _ => [(0xF, "80m"), (0, "40m"), (1, "26m"), (2, "20m")],
    };
    table
        .iter()
        .find(|(c, _)| *c == code)
        .map(|(_, n)| n.to_string())
        .unwrap_or_else(|| format!("code {code:#x}"))
}

/// Names a segment by its load address, as esptool does (C3/C6-class memory map; others by range).
fn segment_kind(chip: Option<Chip>, s: &Segment) -> &'static str {
    let a = s.load_addr;
    match chip {
        Some(Chip::Esp32) => match a {
            0x3F40_0000..=0x3F7F_FFFF => "DROM",
            0x400D_0000..=0x403F_FFFF => "IROM",
            0x3FF8_0000..=0x3FFF_FFFF => "DRAM",
            0x4007_0000..=0x400B_FFFF => "IRAM",
            0x5000_0000..=0x5000_1FFF => "RTC_DATA",
            _ => "",
        },
        _ => match a {
            0x3C00_0000..=0x3CFF_FFFF => "DROM",
            0x4200_0000..=0x42FF_FFFF => "IROM",
            0x3FC0_0000..=0x3FCF_FFFF => "DRAM",
            0x4037_0000..=0x403F_FFFF => "IRAM",
            0x4080_0000..=0x4087_FFFF => "HP_SRAM",
            0x5000_0000..=0x5FFF_FFFF => "RTC/LP",
            _ => "",
        },
    }
}
