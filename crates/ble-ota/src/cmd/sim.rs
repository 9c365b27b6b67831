//! `ble-ota sim`: create and power the virtual ESP32.

use std::path::PathBuf;

use anyhow::{Context, Result};
use ota_core::esp::Chip;
use ota_core::esp::image::{Rev, parse_chip_revision};
use serde::Serialize;
use virtual_esp32::{BootReport, VirtualEsp32, app_image};

use crate::exit::{CliError, ExitCode};
use crate::input::{MAX_CSV_LEN, MAX_IMAGE_LEN, MAX_MERGED_LEN, read_input};
use crate::sim::SimDevice;
use crate::target::TargetArgs;

/// The seed's layout for 4 MB flash: nvs, otadata, phy_init, factory, ota_0, ota_1 (1 MB each).
pub const DEFAULT_PARTITIONS: &str = include_str!("../../assets/partitions.csv");

#[derive(Debug, clap::Subcommand)]
pub enum SimCmd {
    /// Create a virtual ESP32: a flash file laid out by a partition table, with a factory app.
    Create {
        /// The flash file to create (overwritten).
        path: PathBuf,
        /// Chip: esp32c3, esp32c6, esp32, esp32s3, esp32h2, ... [default: esp32c3; with
        /// --merged: the one its headers name]
        #[arg(long)]
        chip: Option<String>,
        /// Partitions CSV (default: factory, ota_0, ota_1 of 1 MB on 4 MB flash).
        #[arg(long)]
        partitions: Option<PathBuf>,
        /// Factory app image (default: a generated demo app, version 1.0.0).
        #[arg(long)]
        factory: Option<PathBuf>,
        /// Load a whole merged flash image instead (`espflash save-image --merge`).
        #[arg(long, conflicts_with_all = ["partitions", "factory"])]
        merged: Option<PathBuf>,
        /// Flash size in MiB.
        #[arg(long, default_value_t = 4, value_parser = crate::parse::flash_mb)]
        flash_mb: u32,
        /// Chip revision (`0.4`, `v1.1`: major.minor; default: v0.4 for the ESP32-C3, v0.1 for
        /// the C6). Recorded beside the flash file; the bootloader skips and the OTA engine
        /// refuses apps whose chip revision range excludes it.
        #[arg(long, value_name = "X.Y")]
        chip_revision: Option<String>,
        /// Trust this public key (NAME.pub; up to 4): the device then takes only images
        /// signed with one of them, as firmware built with BLE_OTA_TRUSTED_KEYS does.
        #[arg(long = "key", value_name = "NAME.pub")]
        keys: Vec<PathBuf>,
    },
    /// Reset the virtual ESP32: the bootloader picks an app and the rollback guard runs.
    Boot {
        /// The flash file.
        path: PathBuf,
    },
}

/// A boot, as printed.
#[derive(Debug, Serialize)]
pub struct BootView {
    pub slot: String,
    pub project_name: String,
    pub version: String,
    pub state: String,
    pub guard: String,
    pub rolled_back: Vec<String>,
}

impl From<&BootReport> for BootView {
    fn from(r: &BootReport) -> Self {
        BootView {
            slot: r.slot.clone(),
            project_name: r.project_name.clone(),
            version: r.version.clone(),
            state: r
                .state
                .map(|s| format!("{s:?}"))
                .unwrap_or_else(|| "-".into()),
            guard: format!("{:?}", r.guard),
            rolled_back: r.rolled_back.iter().map(|p| p.name().to_string()).collect(),
        }
    }
}

pub fn print_boot(r: &BootReport, json: bool) {
    let v = BootView::from(r);
    if json {
        println!("{}", serde_json::to_string(&v).unwrap_or_default());
        return;
    }
    for p in &v.rolled_back {
        println!(
            "rollback: the trial image in {p} booted again unconfirmed; aborted it and rebooted"
        );
    }
    println!(
        "booted {} ({} {}), otadata state {}, rollback guard: {}",
        v.slot, v.project_name, v.version, v.state, v.guard
    );
}

pub fn parse_chip(name: &str) -> Result<Chip> {
    Chip::from_name(name).ok_or_else(|| {
        CliError::new(
            ExitCode::Usage,
            format!("unknown chip `{name}` (esp32c3, esp32c6, esp32, esp32s3, esp32h2, ...)"),
        )
        .into()
    })
}

/// Parses a `--chip-revision` argument (`0.4`, `v1.1`) into `major * 100 + minor`.
pub fn parse_revision(text: &str) -> Result<u16> {
    parse_chip_revision(text).ok_or_else(|| {
        CliError::new(
            ExitCode::Usage,
            format!("`{text}` is not a chip revision: write it major.minor, like 0.4 or v1.1"),
        )
        .into()
    })
}

pub fn run(cmd: SimCmd, target: &TargetArgs, json: bool) -> Result<()> {
    match cmd {
        SimCmd::Create {
            path,
            chip,
            partitions,
            factory,
            merged,
            flash_mb,
            chip_revision,
            keys,
        } => {
            let trusted = crate::keys::read_trusted(&keys)?;
            let named = chip.as_deref().map(parse_chip).transpose()?;
            let chip = named.unwrap_or(Chip::Esp32c3);
            let revision = chip_revision.as_deref().map(parse_revision).transpose()?;
            // Built, checked and booted in memory first: the file at `path` is replaced only
            // by a device that boots, so a bad factory image leaves an existing one as it was.
            let mut dev = match merged {
                Some(m) => {
                    let bytes = read_input(&m, MAX_MERGED_LEN)?;
                    VirtualEsp32::merged_in_memory(&bytes, named, None)?
                }
                None => {
                    let csv = match partitions {
                        Some(p) => String::from_utf8(read_input(&p, MAX_CSV_LEN)?)
                            .map_err(|_| anyhow::anyhow!("{} is not a text file", p.display()))?,
                        None => DEFAULT_PARTITIONS.to_string(),
                    };
                    let image = match factory {
                        Some(f) => read_input(&f, MAX_IMAGE_LEN)?,
                        None => app_image::build(chip, "factory-app", "1.0.0", 60_000, 1),
                    };
                    VirtualEsp32::create_in_memory(&virtual_esp32::DeviceSpec {
                        chip,
                        flash_size: flash_mb << 20,
                        partitions_csv: &csv,
                        factory_image: &image,
                        bootloader: None,
                    })?
                }
            };
            if revision.is_some() {
                dev.set_chip_revision(revision)?;
            }
            dev.set_trusted_keys(trusted)?;
            let report = dev
                .boot(target.bootloader())
                .context("the new device does not boot; nothing was written")?;
            dev.save_as(&path)
                .with_context(|| format!("writing {}", path.display()))?;
            if !json {
                let rev = dev
                    .chip_revision()
                    .map(|r| format!(" {}", Rev(r)))
                    .unwrap_or_default();
                println!(
                    "created a virtual {}{rev} with {} MiB of flash at {}",
                    dev.chip(),
                    dev.flash_size() >> 20,
                    path.display()
                );
                for k in trusted.keys() {
                    println!(
                        "takes only images signed by key {}",
                        crate::keys::fingerprint_hex(&ota_core::manifest::fingerprint(k))
                    );
                }
            }
            print_boot(&report, json);
            Ok(())
        }
        SimCmd::Boot { path } => {
            let mut dev = SimDevice::open(&path, target.bootloader())?;
            let report = dev.reboot()?;
            print_boot(&report, json);
            Ok(())
        }
    }
}
