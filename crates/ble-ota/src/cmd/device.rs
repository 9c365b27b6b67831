//! `ble-ota device --hci SPEC --sim FLASH.bin`: the virtual ESP32 behind a real BLE host stack.
//!
//! The device runs `ota-gatt` (the firmware's GATT code) on trouble-host over an HCI
//! controller reached through TCP or a serial port, with the virtual ESP32's flash. When the
//! engine asks for a reboot the virtual ESP32 reboots (ESP-IDF bootloader rules, rollback
//! guard) and advertises again, until the process is killed.

use std::io::Write as _;

use anyhow::{Context, Result};
use ble_link_model::FlashTiming;
use embedded_storage::nor_flash::NorFlash;
use ota_core::device::UpdateEngine;
use ota_core::device::trial::{ConfirmPolicy, TrialConfig, TrialPolicy};
use ota_core::esp::flash::FlashWork;
use ota_gatt::{Exit, GattConfig, LinkTuning, Note, OtaController, Phy, RunError};
use serde_json::json;

use crate::cmd::sim::BootView;
use crate::exit::{CliError, ExitCode};
use crate::sim::SimDevice;
use crate::target::TargetArgs;
use crate::transport::hci::{HciSpec, open_controller};

/// Options of `device`.
#[derive(Debug, clap::Args)]
pub struct DeviceArgs {
    /// Advertised device name (at most 22 bytes).
    #[arg(long, default_value = "ble-ota-sim")]
    pub name: String,
    /// Take as long as a real SPI NOR flash for each erase and program (blocking, as on the
    /// chip: 45 ms per 4 KiB sector erase, 0.7 ms per page, `FlashTiming::TYPICAL_4MB_SPI_NOR`).
    #[arg(long)]
    pub flash_timing: bool,
    /// Stop after this many reboots (default: run until killed).
    #[arg(long, value_name = "N")]
    pub max_boots: Option<u32>,
    /// Do not ask for a data length, PHY or connection interval change.
    #[arg(long)]
    pub no_tuning: bool,
    /// How a freshly updated (trial) image gets confirmed, as the firmware's `strict-confirm`
    /// feature chooses: `auto` (the firmware's default) once advertising started and the
    /// self-test passed, `strict` only by a client's CONFIRM (`ble-ota confirm`).
    #[arg(long, value_enum, default_value_t = ConfirmArg::Auto)]
    pub confirm: ConfirmArg,
    /// Seconds a trial image has to get confirmed once advertising started (the self-test
    /// under `auto`, a client's CONFIRM under `strict`); then it rolls back. Default: the
    /// firmware's (60 s auto, 120 s strict).
    #[arg(long, value_name = "SECS", value_parser = clap::value_parser!(u32).range(1..=86_400))]
    pub trial_deadline: Option<u32>,
    /// Make the app's self-test fail, as a broken image's would: a trial image rolls back.
    #[arg(long)]
    pub self_test_fails: bool,
    /// Drop a central that sends nothing for this many seconds (0: never), as the firmware
    /// does after 30 s, so idle centrals cannot hold the device's connections.
    #[arg(long, value_name = "SECS", default_value_t = 30, value_parser = clap::value_parser!(u32).range(0..=86_400))]
    pub idle_timeout: u32,
    /// Require LE Secure Connections pairing with this 6-digit passkey (the device displays
    /// it, the central's user types it) before writes to OTA Control and Data, as firmware
    /// built with the `secure-link` feature does.
    #[arg(long, value_name = "NNNNNN", value_parser = clap::value_parser!(u32).range(0..=999_999))]
    pub passkey: Option<u32>,
}

/// `--confirm`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ConfirmArg {
    /// Confirm once BLE is up and the self-test passed.
    Auto,
    /// Wait for a client's CONFIRM, then roll back.
    Strict,
}

impl DeviceArgs {
    fn trial_config(&self) -> TrialConfig {
        let mut config = TrialConfig::new(match self.confirm {
            ConfirmArg::Auto => ConfirmPolicy::Auto,
            ConfirmArg::Strict => ConfirmPolicy::Strict,
        });
        if let Some(secs) = self.trial_deadline {
            config.confirm_deadline_ms = secs * 1000;
        }
        config
    }
}

fn emit(json_out: bool, value: serde_json::Value, text: String) {
    let mut out = std::io::stdout().lock();
    if json_out {
        let _ = writeln!(out, "{value}");
    } else {
        let _ = writeln!(out, "{text}");
    }
    let _ = out.flush();
}

fn phy_name(p: Phy) -> &'static str {
    match p {
        Phy::Le1M => "1M",
        Phy::Le2M => "2M",
        Phy::Coded => "coded",
    }
}

fn report(json_out: bool, n: Note) {
    let (v, t) = match n {
        Note::Advertising => (json!({"event": "advertising"}), "advertising".into()),
        Note::Connected {
            client,
            handle,
            peer,
        } => {
            let addr = format!(
                "{:02X}:{:02X}:{:02X}:{:02X}:{:02X}:{:02X}",
                peer[5], peer[4], peer[3], peer[2], peer[1], peer[0]
            );
            (
                json!({"event": "connected", "client": client.0, "handle": handle, "peer": addr}),
                format!("connected: {addr} (handle {handle}, client {})", client.0),
            )
        }
        Note::Mtu(m) => (json!({"event": "mtu", "mtu": m}), format!("ATT MTU {m}")),
        Note::DataLength { tx, rx } => (
            json!({"event": "data_length", "tx": tx, "rx": rx}),
            format!("data length: tx {tx}, rx {rx} octets"),
        ),
        Note::Phy { tx, rx } => (
            json!({"event": "phy", "tx": phy_name(tx), "rx": phy_name(rx)}),
            format!("PHY: tx {}, rx {}", phy_name(tx), phy_name(rx)),
        ),
        Note::ConnParams {
            interval_us,
            latency,
        } => (
            json!({"event": "conn_params", "interval_us": interval_us, "latency": latency}),
            format!(
                "connection interval {:.2} ms, latency {latency}",
                interval_us as f64 / 1000.0
            ),
        ),
        Note::TuningFailed(what) => (
            json!({"event": "tuning_failed", "what": what}),
            format!("link tuning refused: {what}"),
        ),
        Note::Engine(e) => (
            json!({"event": "engine", "what": format!("{e:?}")}),
            format!("update: {e:?}"),
        ),
        Note::Gap { next } => (
            json!({"event": "gap", "next": next}),
            format!("data lost before offset {next}: asked the client to resend from there"),
        ),
        Note::PreErased { erased_sectors } => (
            json!({"event": "pre_erased", "erased_sectors": erased_sectors}),
            format!("next update slot erased ahead of time ({erased_sectors} sectors)"),
        ),
        Note::Disconnected(reason) => (
            json!({"event": "disconnected", "reason": reason}),
            format!("disconnected (reason {reason:#04x})"),
        ),
        Note::DroppedIdle => (
            json!({"event": "dropped_idle"}),
            "dropped an idle central (no OTA traffic for the idle timeout)".into(),
        ),
        Note::Passkey(key) => (
            json!({"event": "passkey", "passkey": format!("{key:06}")}),
            format!("pairing: passkey {key:06}"),
        ),
        Note::Paired { authenticated } => (
            json!({"event": "paired", "authenticated": authenticated}),
            format!(
                "paired ({})",
                if authenticated {
                    "authenticated"
                } else {
                    "not authenticated: OTA writes stay refused"
                }
            ),
        ),
        Note::PairingFailed => (json!({"event": "pairing_failed"}), "pairing failed".into()),
        Note::NotPaired => (
            json!({"event": "not_paired"}),
            "refused an OTA write on a link that is not paired".into(),
        ),
        // Flash work paces the device (`--flash-timing`); it is not news.
        Note::FlashWork(_) => return,
    };
    emit(json_out, v, t);
}

/// One boot of the firmware's OTA side on `flash`: the pre-erase before BLE starts, then
/// `ota_gatt::run` until it asks for a reset. With `pace`, the device takes as long as a
/// real flash for the engine's erases and programs, blocking the thread as the chip's flash
/// blocks its CPU: the engine's own account of each input's flash work, charged by the one
/// rule ([`FlashTiming::ops_time`]).
#[allow(clippy::too_many_arguments)]
async fn boot_and_serve<C: OtaController, F: NorFlash>(
    controller: C,
    flash: &mut F,
    engine: &mut UpdateEngine,
    trial: &mut TrialPolicy,
    self_test: impl Future<Output = bool>,
    config: &GattConfig<'_>,
    json_out: bool,
    pace: Option<FlashTiming>,
) -> Result<Exit, RunError> {
    let take_time = |work: FlashWork| {
        if let Some(t) = pace {
            std::thread::sleep(t.ops_time(work.sector_erases, 0, work.page_programs));
        }
    };
    let erased = ota_gatt::pre_erase(flash, engine).await;
    take_time(engine.take_flash_work());
    report(
        json_out,
        Note::PreErased {
            erased_sectors: erased,
        },
    );
    let mut observer = |n: Note| match n {
        Note::FlashWork(work) => take_time(work),
        n => report(json_out, n),
    };
    ota_gatt::run(
        controller,
        flash,
        engine,
        trial,
        self_test,
        config,
        &mut observer,
    )
    .await
}

/// Runs `ble-ota device`.
pub fn run(args: DeviceArgs, target: &TargetArgs, json_out: bool) -> Result<()> {
    let Some(spec) = target.hci.as_deref() else {
        return Err(CliError::new(
            ExitCode::Usage,
            "`ble-ota device` needs --hci tcp:HOST:PORT (or serial:PATH) and --sim FLASH.bin",
        )
        .into());
    };
    let Some(path) = target.sim.as_deref() else {
        return Err(CliError::new(
            ExitCode::Usage,
            "`ble-ota device` needs --sim FLASH.bin (create one with `ble-ota sim create`)",
        )
        .into());
    };
    if args.name.len() > 22 {
        return Err(CliError::new(ExitCode::Usage, "--name: at most 22 bytes").into());
    }
    let spec = HciSpec::parse(spec)?;
    let path = path.to_path_buf();
    let bootloader = target.bootloader();
    crate::transport::run_ble_host(async move {
        let mut dev = SimDevice::open(&path, bootloader)?;
        let chip = dev.dev.chip();
        // A stable static random address per device name.
        let mut address = [0u8; 6];
        for (i, b) in args.name.bytes().enumerate() {
            address[i % 6] = address[i % 6].wrapping_mul(31).wrapping_add(b);
        }
        let mut config = GattConfig::new(&args.name, chip, address);
        config.model = chip.name();
        config.hardware_revision = "virtual";
        config.manufacturer = "ble-ota (virtual ESP32)";
        if args.no_tuning {
            config.tuning = LinkTuning::NONE;
        }
        config.passkey = args.passkey;
        let mut boots = 0u32;
        loop {
            if let Some(boot) = dev.dev.last_boot() {
                let v = BootView::from(boot);
                emit(
                    json_out,
                    json!({"event": "boot", "slot": v.slot, "project": v.project_name, "version": v.version, "state": v.state}),
                    format!(
                        "running {} {} from {} ({})",
                        v.project_name, v.version, v.slot, v.state
                    ),
                );
            }
            let mut engine = dev.engine(ota_core::device::DeviceConfig {
                idle_timeout_ms: args.idle_timeout * 1000,
                ..ota_gatt::device_config(chip)
            })?;
            // The firmware's boot: a trial image runs the confirm policy.
            let mut trial =
                TrialPolicy::new(args.trial_config(), engine.is_trial(), ota_gatt::now());
            let self_test = async { !args.self_test_fails };
            let controller = open_controller(&spec).await?;
            let pace = args
                .flash_timing
                .then_some(FlashTiming::TYPICAL_4MB_SPI_NOR);
            let flash = dev.dev.flash_mut();
            let result = boot_and_serve(
                controller,
                flash,
                &mut engine,
                &mut trial,
                self_test,
                &config,
                json_out,
                pace,
            )
            .await;
            match result {
                Ok(Exit::Reboot) => {}
                Ok(Exit::RollBack(why)) => emit(
                    json_out,
                    json!({"event": "rollback", "why": why.describe()}),
                    format!("trial failed: {}: resetting to roll back", why.describe()),
                ),
                Err(e) => anyhow::bail!("the BLE host stopped: {e:?}"),
            }
            let boot = dev.reboot().context("rebooting the virtual ESP32")?;
            let _ = boot;
            boots += 1;
            if args.max_boots.is_some_and(|m| boots >= m) {
                if let Some(boot) = dev.dev.last_boot() {
                    let v = BootView::from(boot);
                    emit(
                        json_out,
                        json!({"event": "boot", "slot": v.slot, "project": v.project_name, "version": v.version, "state": v.state}),
                        format!(
                            "running {} {} from {} ({})",
                            v.project_name, v.version, v.slot, v.state
                        ),
                    );
                }
                return Ok(());
            }
        }
    })?
}
