//! `ble-ota flash IMAGE`: push an app image with the fast protocol (or `--legacy`, the seed's).

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Result;
use ble_link_model::{LinkParams, Phy, Profile, QueuePolicy};
use ota_core::client::{ClientError, ClientEvent, FastSender, LegacySender, Sender, SenderConfig};
use serde::Serialize;
use virtual_esp32::FaultPlan;
use virtual_esp32::air::{AirConfig, AirOutcome};

use crate::cmd::image::inspect;
use crate::cmd::sim::BootView;
use crate::exit::{CliError, ExitCode};
use crate::input::{MAX_IMAGE_LEN, read_input};
use crate::progress::{Bar, rate};
use crate::sim::SimDevice;
use crate::target::TargetArgs;
use crate::transport::{Progress, ble, drive};

/// Options of `flash`.
#[derive(Debug, clap::Args)]
pub struct FlashArgs {
    /// The app image (.bin), e.g. from `espflash save-image` or `cargo xtask firmware`.
    pub image: PathBuf,
    /// Use the seed's protocol (write requests, no resume) instead of the fast one.
    #[arg(long)]
    pub legacy: bool,
    /// Do not reboot the device after the image is verified and selected.
    #[arg(long)]
    pub no_reboot: bool,
    /// Send the image even if it fails the local checks (to see the device refuse it).
    #[arg(long)]
    pub force: bool,
    /// ATT MTU for the legacy packet size when the transport cannot tell it.
    #[arg(long, default_value_t = 247)]
    pub mtu: u16,
    /// Virtual ESP32: the modelled BLE link (a profile, then any overrides).
    #[command(flatten)]
    pub link: LinkArgs,
    /// Virtual ESP32: pace the progress to the modelled time (1 = real time, 0 = no pacing).
    #[arg(long, default_value_t = 1.0)]
    pub speed: f64,
    /// Virtual ESP32: cut power during the N-th flash write or erase of the update.
    #[arg(long, value_name = "N")]
    pub power_cut_at: Option<u64>,
    /// Drop the link before the N-th data write (repeatable; the fast protocol resumes).
    #[arg(long, value_name = "N")]
    pub disconnect_at: Vec<u32>,
}

/// The modelled link of the virtual ESP32: a profile, with any parameter overridden.
#[derive(Debug, Clone, clap::Args)]
#[command(next_help_heading = "Modelled link (virtual ESP32)")]
pub struct LinkArgs {
    /// Link profile: desktop, android, ios, esp32-classic.
    #[arg(long, default_value = "desktop")]
    pub profile: String,
    /// ATT MTU (23-517).
    #[arg(long)]
    pub att_mtu: Option<u16>,
    /// Connection interval in ms (multiple of 1.25, 7.5-4000).
    #[arg(long)]
    pub interval_ms: Option<f64>,
    /// PHY: 1m or 2m.
    #[arg(long)]
    pub phy: Option<String>,
    /// Largest link-layer payload: 27 (no data length extension) to 251.
    #[arg(long)]
    pub data_length: Option<u16>,
    /// Packets the central sends per connection event (phones limit it).
    #[arg(long)]
    pub packets_per_event: Option<u16>,
    /// The device's receive queue, in ATT writes (its announced window follows it).
    #[arg(long)]
    pub rx_queue: Option<u16>,
    /// When the device's queue is full: stall (link-layer flow control) or drop (as trouble-host).
    #[arg(long)]
    pub queue_full: Option<String>,
    /// Flash timing: 4 KiB sector erase, in ms.
    #[arg(long)]
    pub sector_erase_ms: Option<f64>,
    /// Flash timing: 64 KiB block erase, in ms.
    #[arg(long)]
    pub block_erase_ms: Option<f64>,
    /// Flash timing: 256-byte page program, in ms.
    #[arg(long)]
    pub page_program_ms: Option<f64>,
}

impl LinkArgs {
    /// Returns the modelled session configuration these options describe.
    pub fn air_config(&self) -> Result<AirConfig> {
        let usage = |m: String| -> anyhow::Error { CliError::new(ExitCode::Usage, m).into() };
        let mut link = profile(&self.profile)?;
        if let Some(m) = self.att_mtu {
            link.att_mtu = m;
        }
        if let Some(ms) = self.interval_ms {
            let units = ms / 1.25;
            if units.fract() != 0.0 {
                return Err(usage(format!(
                    "--interval-ms {ms}: must be a multiple of 1.25 ms"
                )));
            }
            link.conn_interval_units = units as u16;
        }
        if let Some(phy) = &self.phy {
            link.phy = match phy.to_ascii_lowercase().as_str() {
                "1m" => Phy::Le1M,
                "2m" => Phy::Le2M,
                other => return Err(usage(format!("--phy {other}: use 1m or 2m"))),
            };
        }
        if let Some(n) = self.data_length {
            link.max_ll_payload = n;
        }
        if let Some(n) = self.packets_per_event {
            link.max_packets_per_event = Some(n);
        }
        if let Some(n) = self.rx_queue {
            link.rx_queue_depth = n;
        }
        if let Some(q) = &self.queue_full {
            link.full_queue = match q.as_str() {
                "stall" => QueuePolicy::Stall,
                "drop" => QueuePolicy::Drop,
                other => return Err(usage(format!("--queue-full {other}: use stall or drop"))),
            };
        }
        link.validate()
            .map_err(|e| usage(format!("invalid link parameters: {e}")))?;
        let mut air = AirConfig::new(link);
        let us = |ms: f64| (ms * 1000.0).round() as u32;
        if let Some(ms) = self.sector_erase_ms {
            air.flash.sector_erase_us = us(ms);
        }
        if let Some(ms) = self.block_erase_ms {
            air.flash.block_erase_us = us(ms);
        }
        if let Some(ms) = self.page_program_ms {
            air.flash.page_program_us = us(ms);
        }
        Ok(air)
    }
}

/// What `flash --json` prints.
#[derive(Debug, Serialize)]
pub struct FlashReport {
    pub outcome: &'static str,
    pub protocol: &'static str,
    pub bytes: u32,
    pub slot: Option<u8>,
    pub reason: Option<String>,
    pub seconds: f64,
    pub modelled: bool,
    pub throughput_bytes_per_s: f64,
    pub disconnects: u32,
    pub booted: Option<BootView>,
}

pub fn profile(name: &str) -> Result<LinkParams> {
    Profile::from_name(name).map(|p| p.params()).ok_or_else(|| {
        CliError::new(
            ExitCode::Usage,
            format!("unknown link profile `{name}` (desktop, android, ios, esp32-classic)"),
        )
        .into()
    })
}

fn refused(e: ClientError) -> anyhow::Error {
    let code = match e {
        ClientError::Refused { .. }
        | ClientError::RequestNak
        | ClientError::DoneNak
        | ClientError::AttError(_) => ExitCode::Refused,
        _ => ExitCode::Failure,
    };
    CliError::new(code, format!("update failed: {e}")).into()
}

pub async fn run(args: FlashArgs, target: &TargetArgs, json: bool) -> Result<()> {
    let image = read_input(&args.image, MAX_IMAGE_LEN)?;
    let report = inspect(&image, None, None);
    if !report.valid && !args.force {
        return Err(CliError::new(
            ExitCode::InvalidImage,
            format!(
                "{} is not a valid app image ({}); not sending it (--force sends it anyway)",
                args.image.display(),
                report.problems.join("; ")
            ),
        )
        .into());
    }
    let protocol = if args.legacy { "legacy" } else { "fast" };
    let mut bar = if target.sim.is_some() {
        Bar::modelled(protocol, json)
    } else {
        Bar::new(protocol, json)
    };
    let result = match &target.sim {
        Some(path) => flash_sim(&args, target, path, &image, &mut bar),
        None => flash_ble(&args, target, &image, &mut bar).await,
    };
    let out = match result {
        Ok(out) => out,
        Err(e) => {
            bar.abandon();
            return Err(e);
        }
    };
    let out = FlashReport { protocol, ..out };
    if json {
        println!("{}", serde_json::to_string_pretty(&out)?);
    } else {
        bar.finish(format!(
            "{} in {:.1} s{}",
            rate(out.bytes as u64, Duration::from_secs_f64(out.seconds)),
            out.seconds,
            if out.modelled { " (modelled)" } else { "" }
        ));
        match out.slot {
            Some(s) => println!("image verified; ota_{s} selected for the next boot"),
            None => println!("image verified and selected for the next boot"),
        }
        if let Some(b) = &out.booted {
            println!(
                "rebooted into {} ({} {}), on trial until confirmed (`ble-ota confirm`)",
                b.slot, b.project_name, b.version
            );
        }
    }
    Ok(())
}

fn flash_sim(
    args: &FlashArgs,
    target: &TargetArgs,
    path: &std::path::Path,
    image: &[u8],
    bar: &mut Bar,
) -> Result<FlashReport> {
    let mut dev = SimDevice::open(path, target.bootloader())?;
    let mut air = args.link.air_config()?;
    air.disconnect_at = args.disconnect_at.clone();
    if let Some(n) = args.power_cut_at {
        dev.dev.flash_mut().arm(FaultPlan::cut_at(n));
    }
    let r = dev.update_over_air(image, args.legacy, &air, args.speed, bar)?;
    dev.dev.flash_mut().disarm();
    let slot = match r.outcome {
        AirOutcome::Activated { slot } => slot,
        AirOutcome::Failed(e) => return Err(refused(e)),
        AirOutcome::PowerLost => {
            dev.dev.record_power_state()?;
            return Err(CliError::new(
                ExitCode::Failure,
                format!("the virtual ESP32 lost power during the update; power it on with `ble-ota sim boot {}` (the old app still boots)", path.display()),
            )
            .into());
        }
        AirOutcome::Stalled => {
            anyhow::bail!("the modelled update stalled; this is a bug, please report it")
        }
    };
    let booted = if args.no_reboot {
        None
    } else {
        Some(BootView::from(&dev.reboot()?))
    };
    Ok(FlashReport {
        outcome: "activated",
        protocol: "",
        bytes: image.len() as u32,
        slot,
        reason: None,
        seconds: r.modelled.as_secs_f64(),
        modelled: true,
        throughput_bytes_per_s: r.throughput(),
        disconnects: r.disconnects,
        booted,
    })
}

async fn flash_ble(
    args: &FlashArgs,
    target: &TargetArgs,
    image: &[u8],
    bar: &mut Bar,
) -> Result<FlashReport> {
    if let Some(spec) = &target.hci {
        let mut link = crate::transport::hci::connect_hci_with(
            spec,
            target.device.as_deref(),
            Duration::from_secs_f64(target.scan_timeout),
        )
        .await?;
        link.disconnect_at = args.disconnect_at.clone();
        return send(&mut link, args, image, bar).await;
    }
    let mut link = ble::BleLink::connect(
        target.device.as_deref(),
        Duration::from_secs_f64(target.scan_timeout),
    )
    .await?;
    link.disconnect_at = args.disconnect_at.clone();
    send(&mut link, args, image, bar).await
}

/// Pushes `image` over any link with the chosen protocol.
pub async fn send<L: crate::transport::Link>(
    link: &mut L,
    args: &FlashArgs,
    image: &[u8],
    bar: &mut Bar,
) -> Result<FlashReport> {
    let mut sender = if args.legacy {
        Sender::Legacy(LegacySender::new(
            image,
            link.att_mtu().unwrap_or(args.mtu),
        )?)
    } else {
        Sender::Fast(FastSender::new(
            image,
            SenderConfig {
                att_mtu: link.att_mtu(),
                reboot: !args.no_reboot,
                ..Default::default()
            },
        )?)
    };
    let start = std::time::Instant::now();
    let mut outcome = Outcome::default();
    let disconnects = {
        let mut watch = Watch {
            bar,
            outcome: &mut outcome,
        };
        drive(link, &mut sender, &mut watch).await?
    };
    if let Some(e) = outcome.failed {
        return Err(refused(e));
    }
    let seconds = start.elapsed().as_secs_f64();
    Ok(FlashReport {
        outcome: "activated",
        protocol: "",
        bytes: image.len() as u32,
        slot: outcome.slot,
        reason: None,
        seconds,
        modelled: false,
        throughput_bytes_per_s: image.len() as f64 / seconds.max(1e-9),
        disconnects,
        booted: None,
    })
}

#[derive(Default)]
struct Outcome {
    slot: Option<u8>,
    failed: Option<ClientError>,
}

struct Watch<'a> {
    bar: &'a mut Bar,
    outcome: &'a mut Outcome,
}

impl Progress for Watch<'_> {
    fn event(&mut self, e: &ClientEvent) {
        match e {
            ClientEvent::Activated { slot } => self.outcome.slot = *slot,
            ClientEvent::Failed(err) => self.outcome.failed = Some(*err),
            _ => {}
        }
        self.bar.event(e);
    }
}
