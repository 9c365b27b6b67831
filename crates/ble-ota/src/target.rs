//! Which device a command talks to: the system's Bluetooth (default), an HCI controller, or a
//! virtual ESP32.

use std::path::PathBuf;

/// Options shared by every command that talks to a device.
#[derive(Debug, Clone, clap::Args)]
pub struct TargetArgs {
    /// Use the virtual ESP32 stored in this flash file (see `ble-ota sim create`).
    #[arg(long, value_name = "PATH", global = true)]
    pub sim: Option<PathBuf>,
    /// Use an HCI controller: `tcp:HOST:PORT` (H4 over TCP) or `serial:/dev/ttyUSB0[@BAUD]`.
    #[arg(long, value_name = "SPEC", global = true, value_parser = crate::parse::hci_spec)]
    pub hci: Option<String>,
    /// Device name or address (system Bluetooth or HCI); default: the strongest OTA device.
    #[arg(long, global = true)]
    pub device: Option<String>,
    /// Seconds to scan for the device.
    #[arg(long, default_value_t = 5.0, global = true, value_parser = crate::parse::scan_seconds)]
    pub scan_timeout: f64,
    /// Pair by LE Secure Connections, typing this 6-digit passkey, with a device that asks for
    /// it (firmware built with `secure-link`). HCI transport; over the system's Bluetooth its
    /// pairing agent asks for the passkey instead.
    #[arg(long, value_name = "NNNNNN", global = true, value_parser = clap::value_parser!(u32).range(0..=999_999))]
    pub passkey: Option<u32>,
    /// The virtual ESP32's bootloader has rollback support (espflash's stock one has not).
    #[arg(long, global = true)]
    pub rollback_bootloader: bool,
}

impl TargetArgs {
    /// Refuses `--sim` with `--hci`: a command that talks to a device talks to one (only
    /// `ble-ota device` takes both: it serves the virtual ESP32 on the HCI controller).
    pub fn one_device(&self) -> anyhow::Result<()> {
        if self.sim.is_some() && self.hci.is_some() {
            return Err(crate::exit::CliError::new(
                crate::exit::ExitCode::Usage,
                "--sim and --hci name two devices: give one (both together only for `ble-ota device`)",
            )
            .into());
        }
        Ok(())
    }

    pub fn bootloader(&self) -> virtual_esp32::BootloaderConfig {
        virtual_esp32::BootloaderConfig {
            rollback: self.rollback_bootloader,
        }
    }
}
