//! `ble-ota flash IMAGE`: push an app image with the fast protocol (or `--legacy`, the seed's).

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Result;
use ble_link_model::{LinkParams, Phy, Profile, QueuePolicy};
use ota_core::client::{ClientError, ClientEvent, SenderConfig};
use ota_core::manifest::MANIFEST_LEN;
use serde::Serialize;
use virtual_esp32::FaultPlan;
use virtual_esp32::air::{AirConfig, AirOutcome};

use crate::cmd::image::inspect;
use crate::cmd::sim::BootView;
use crate::exit::{CliError, ExitCode};
use crate::input::{MAX_IMAGE_LEN, read_input};
use crate::progress::{Bar, rate};
use crate::sim::{SendPlan, SimDevice};
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
    /// Send the image as it is, not compressed (compression is used when the device takes it).
    #[arg(long)]
    pub no_compress: bool,
    /// Sign the image with this private key on the fly (NAME.key from `ble-ota keygen`).
    /// Without it, IMAGE.sig is sent when it sits beside the image (`ble-ota sign`).
    #[arg(long, value_name = "NAME.key")]
    pub key: Option<PathBuf>,
    /// ATT MTU for the legacy packet size when the transport cannot tell it [default: 247].
    #[arg(long, value_parser = clap::value_parser!(u16).range(23..=517))]
    pub mtu: Option<u16>,
    /// Virtual ESP32: the modelled BLE link (a profile, then any overrides).
    #[command(flatten)]
    pub link: LinkArgs,
    /// Virtual ESP32: pace the progress to the modelled time (1 = real time, 0 = no pacing)
    /// [default: 1].
    #[arg(long, value_parser = crate::parse::speed)]
    pub speed: Option<f64>,
    /// Virtual ESP32: cut power during the N-th flash write or erase of the update.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
    pub power_cut_at: Option<u64>,
    /// Drop the link before the N-th data write (repeatable; the fast protocol resumes).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
    pub disconnect_at: Vec<u32>,
}

impl FlashArgs {
    /// How to send the image: the protocol, compression (the fast protocol, unless
    /// `--no-compress`) and the signed manifest.
    fn plan<'a>(&self, manifest: Option<&'a [u8; MANIFEST_LEN]>) -> SendPlan<'a> {
        SendPlan {
            legacy: self.legacy,
            compress: !self.legacy && !self.no_compress,
            manifest,
        }
    }
}

/// The modelled link of the virtual ESP32: a profile, with any parameter overridden.
#[derive(Debug, Clone, clap::Args)]
#[command(next_help_heading = "Modelled link (virtual ESP32)")]
pub struct LinkArgs {
    /// Link profile: desktop, android, ios, esp32-classic [default: desktop].
    #[arg(long)]
    pub profile: Option<String>,
    /// ATT MTU (23-517).
    #[arg(long, value_parser = clap::value_parser!(u16).range(23..=517))]
    pub att_mtu: Option<u16>,
    /// Connection interval in ms (multiple of 1.25, 7.5-4000).
    #[arg(long, value_parser = crate::parse::interval_ms)]
    pub interval_ms: Option<f64>,
    /// PHY: 1m or 2m.
    #[arg(long)]
    pub phy: Option<String>,
    /// Largest link-layer payload: 27 (no data length extension) to 251.
    #[arg(long, value_parser = clap::value_parser!(u16).range(27..=251))]
    pub data_length: Option<u16>,
    /// Packets the central sends per connection event (phones limit it).
    #[arg(long, value_parser = clap::value_parser!(u16).range(1..))]
    pub packets_per_event: Option<u16>,
    /// The device's receive queue, in ATT writes (its announced window follows it).
    #[arg(long, value_parser = clap::value_parser!(u16).range(1..=1024))]
    pub rx_queue: Option<u16>,
    /// When the device's queue is full: stall (link-layer flow control) or drop (as trouble-host).
    #[arg(long)]
    pub queue_full: Option<String>,
    /// Flash timing: 4 KiB sector erase, in ms.
    #[arg(long, value_parser = crate::parse::flash_ms)]
    pub sector_erase_ms: Option<f64>,
    /// Flash timing: 64 KiB block erase, in ms.
    #[arg(long, value_parser = crate::parse::flash_ms)]
    pub block_erase_ms: Option<f64>,
    /// Flash timing: 256-byte page program, in ms.
    #[arg(long, value_parser = crate::parse::flash_ms)]
    pub page_program_ms: Option<f64>,
}

impl LinkArgs {
    /// Returns the first option set on the command line, for "applies only to ..." messages.
    pub fn first_set(&self) -> Option<&'static str> {
        [
            (self.profile.is_some(), "--profile"),
            (self.att_mtu.is_some(), "--att-mtu"),
            (self.interval_ms.is_some(), "--interval-ms"),
            (self.phy.is_some(), "--phy"),
            (self.data_length.is_some(), "--data-length"),
            (self.packets_per_event.is_some(), "--packets-per-event"),
            (self.rx_queue.is_some(), "--rx-queue"),
            (self.queue_full.is_some(), "--queue-full"),
            (self.sector_erase_ms.is_some(), "--sector-erase-ms"),
            (self.block_erase_ms.is_some(), "--block-erase-ms"),
            (self.page_program_ms.is_some(), "--page-program-ms"),
        ]
        .into_iter()
        .find_map(|(set, name)| set.then_some(name))
    }

    /// Returns the modelled session configuration these options describe.
    pub fn air_config(&self) -> Result<AirConfig> {
        let usage = |m: String| -> anyhow::Error { CliError::new(ExitCode::Usage, m).into() };
        let mut link = profile(self.profile.as_deref().unwrap_or("desktop"))?;
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
    /// The image's size.
    pub image_bytes: u32,
    /// Bytes the whole transfer takes on the link: the compressed stream's, or the image's.
    pub wire_bytes: u32,
    /// The image went as a compressed stream.
    pub compressed: bool,
    /// Where this run started on the wire (non-zero when it resumed an earlier one).
    pub resumed_from: u32,
    /// Wire bytes this run sent (`wire_bytes - resumed_from`).
    pub sent_bytes: u32,
    pub slot: Option<u8>,
    pub reason: Option<String>,
    pub seconds: f64,
    pub modelled: bool,
    /// Image bytes per second this run carried (its share of the image, over its time).
    pub throughput_bytes_per_s: f64,
    pub disconnects: u32,
    pub booted: Option<BootView>,
    /// Fingerprint of the key whose manifest the device took (`None`: unsigned).
    pub signed_by: Option<String>,
    /// The device took the manifest (a device older than protocol v4 gets the image
    /// unsigned).
    #[serde(skip)]
    went_signed: bool,
}

impl FlashReport {
    /// A successful run that carried what `outcome` saw, in `seconds`.
    fn activated(image_len: u32, outcome: &Outcome, seconds: f64, modelled: bool) -> Self {
        let Started {
            offset: resumed_from,
            total: wire_bytes,
            compressed,
            signed,
        } = outcome.started.unwrap_or(Started {
            offset: 0,
            total: image_len,
            compressed: false,
            signed: false,
        });
        let resumed_from = resumed_from.min(wire_bytes);
        let sent = wire_bytes - resumed_from;
        let image_share = image_len as f64 * sent as f64 / wire_bytes.max(1) as f64;
        FlashReport {
            outcome: "activated",
            protocol: "",
            image_bytes: image_len,
            wire_bytes,
            compressed,
            resumed_from,
            sent_bytes: sent,
            slot: outcome.slot,
            reason: None,
            seconds,
            modelled,
            throughput_bytes_per_s: image_share / seconds.max(1e-9),
            disconnects: 0,
            booted: None,
            signed_by: None,
            went_signed: signed,
        }
    }
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

/// A sender that cannot start: an empty image is an invalid image (exit 5).
pub fn cannot_send(e: ClientError) -> anyhow::Error {
    let code = match e {
        ClientError::BadImage(_) => ExitCode::InvalidImage,
        _ => ExitCode::Failure,
    };
    CliError::new(code, e.to_string()).into()
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

/// Refuses options that cannot apply to this target and protocol, before anything happens.
fn check_options(args: &FlashArgs, target: &TargetArgs) -> Result<()> {
    let usage = |m: String| -> Result<()> { Err(CliError::new(ExitCode::Usage, m).into()) };
    let sim = target.sim.is_some();
    if !sim {
        let model_only = args
            .link
            .first_set()
            .or(args.speed.map(|_| "--speed"))
            .or(args.power_cut_at.map(|_| "--power-cut-at"));
        if let Some(name) = model_only {
            return usage(format!(
                "{name} applies to the virtual ESP32's modelled link only: add --sim PATH, or leave it out"
            ));
        }
    }
    if args.mtu.is_some() {
        if sim {
            return usage(
                "--mtu is for transports that cannot tell the MTU; the virtual ESP32's link takes --att-mtu".into(),
            );
        }
        if !args.legacy {
            return usage(
                "--mtu sets the seed's packet size and applies to --legacy only; the fast protocol takes its chunk size from the device".into(),
            );
        }
    }
    if args.legacy && !args.disconnect_at.is_empty() {
        return usage(
            "--disconnect-at: the seed's protocol cannot resume after a dropped link; use the fast protocol (leave out --legacy)".into(),
        );
    }
    if args.legacy && args.key.is_some() {
        return usage(
            "--key: the seed's protocol has no room for a signature; use the fast protocol (leave out --legacy)".into(),
        );
    }
    if args.legacy && args.no_reboot {
        return usage(
            "--no-reboot: the seed's protocol always reboots after DONE; use the fast protocol (leave out --legacy)".into(),
        );
    }
    if sim && !args.legacy {
        let mtu = args.link.air_config()?.link.att_mtu;
        if mtu < ota_core::protocol::fast::MIN_ATT_MTU {
            return usage(format!(
                "--att-mtu {mtu}: the fast protocol's BEGIN needs an ATT MTU of at least {}; this MTU needs --legacy",
                ota_core::protocol::fast::MIN_ATT_MTU
            ));
        }
    }
    Ok(())
}

pub async fn run(args: FlashArgs, target: &TargetArgs, json: bool) -> Result<()> {
    check_options(&args, target)?;
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
    // The seed's protocol cannot carry a manifest: an IMAGE.sig beside the image is not read.
    let signed = if args.legacy {
        None
    } else {
        crate::cmd::sign::manifest_for(&image, &args.image, args.key.as_deref())?
    };
    let manifest = signed.map(|s| s.encode());
    let plan = args.plan(manifest.as_ref());
    let protocol = if args.legacy { "legacy" } else { "fast" };
    let mut bar = if target.sim.is_some() {
        Bar::modelled(protocol, json).image_len(image.len())
    } else {
        Bar::new(protocol, json).image_len(image.len())
    };
    let result = match &target.sim {
        Some(path) => flash_sim(&args, &plan, target, path, &image, &mut bar),
        None => flash_ble(&args, &plan, target, &image, &mut bar).await,
    };
    let out = match result {
        Ok(out) => out,
        Err(e) => {
            bar.abandon();
            return Err(e);
        }
    };
    if signed.is_some() && !out.went_signed && !json {
        eprintln!(
            "note: the device checks no signatures (firmware older than protocol v4): the image went unsigned"
        );
    }
    let out = FlashReport {
        protocol,
        signed_by: signed
            .filter(|_| out.went_signed)
            .map(|s| crate::keys::fingerprint_hex(&s.key)),
        ..out
    };
    if json {
        println!("{}", serde_json::to_string_pretty(&out)?);
    } else {
        bar.finish(format!(
            "{} in {:.1} s{}",
            rate(
                (out.throughput_bytes_per_s * out.seconds) as u64,
                Duration::from_secs_f64(out.seconds)
            ),
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
    plan: &SendPlan<'_>,
    target: &TargetArgs,
    path: &std::path::Path,
    image: &[u8],
    bar: &mut Bar,
) -> Result<FlashReport> {
    let mut dev = SimDevice::open(path, target.bootloader())?;
    let mut air = args.link.air_config()?;
    air.disconnect_at = args.disconnect_at.clone();
    if args.power_cut_at.is_some() || !args.disconnect_at.is_empty() {
        check_fault_positions(args, plan, &dev, image, &air)?;
    }
    if let Some(n) = args.power_cut_at {
        dev.dev.flash_mut().arm(FaultPlan::cut_at(n));
    }
    let mut outcome = Outcome::default();
    let r = dev.update_over_air(image, plan, &air, args.speed.unwrap_or(1.0), &mut |e, t| {
        outcome.event(e);
        bar.modelled_event(e, t)
    })?;
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
        AirOutcome::Stalled if r.supervision_drops > 0 => {
            return Err(CliError::new(
                ExitCode::Failure,
                format!(
                    "the link dropped {} times: each modelled flash operation outlasts the link's supervision timeout: use shorter flash timings (--page-program-ms, --sector-erase-ms)",
                    r.supervision_drops
                ),
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
    outcome.slot = slot;
    Ok(FlashReport {
        disconnects: r.disconnects,
        booted,
        ..FlashReport::activated(image.len() as u32, &outcome, r.modelled.as_secs_f64(), true)
    })
}

/// Refuses `--power-cut-at` or `--disconnect-at` positions the update never reaches: the same
/// update is run first on a copy of the device in RAM (the model is deterministic), counting
/// its flash operations and data writes.
fn check_fault_positions(
    args: &FlashArgs,
    plan: &SendPlan<'_>,
    dev: &SimDevice,
    image: &[u8],
    air: &virtual_esp32::air::AirConfig,
) -> Result<()> {
    let mut trial = SimDevice {
        dev: dev.dev.snapshot(),
        bootloader: dev.bootloader,
    };
    trial.dev.flash_mut().reset_stats();
    let r = trial.update_over_air(image, plan, air, 0.0, &mut |_, _| {})?;
    let ops = trial.dev.flash().mutating_ops();
    let usage = |m: String| -> Result<()> { Err(CliError::new(ExitCode::Usage, m).into()) };
    if let Some(n) = args.power_cut_at
        && n > ops
    {
        return usage(format!(
            "--power-cut-at {n}: this update makes only {ops} flash writes and erases; pick 1 to {ops}"
        ));
    }
    if let Some(&n) = args.disconnect_at.iter().find(|&&n| n > r.data_writes) {
        return usage(format!(
            "--disconnect-at {n}: this update makes only {} data writes; pick 1 to {}",
            r.data_writes, r.data_writes
        ));
    }
    Ok(())
}

async fn flash_ble(
    args: &FlashArgs,
    plan: &SendPlan<'_>,
    target: &TargetArgs,
    image: &[u8],
    bar: &mut Bar,
) -> Result<FlashReport> {
    if let Some(spec) = &target.hci {
        let mut link = crate::transport::hci::connect_hci_with(
            spec,
            target.device.as_deref(),
            Duration::from_secs_f64(target.scan_timeout),
            target.passkey,
        )
        .await?;
        link.disconnect_at = args.disconnect_at.clone();
        let report = send(&mut link, args, plan, image, bar).await?;
        return drops_reached(args, &link).map(|()| report);
    }
    let mut link = ble::BleLink::connect(
        target.device.as_deref(),
        Duration::from_secs_f64(target.scan_timeout),
    )
    .await?;
    link.disconnect_at = args.disconnect_at.clone();
    let report = send(&mut link, args, plan, image, bar).await?;
    drops_reached(args, &link).map(|()| report)
}

/// Over a real link the number of data writes is known only afterwards: a `--disconnect-at`
/// the update never reached is an error then, never silently ignored.
fn drops_reached<L: crate::transport::Link>(args: &FlashArgs, link: &L) -> Result<()> {
    let made = link.data_writes().unwrap_or(u32::MAX);
    match args.disconnect_at.iter().find(|&&n| n > made) {
        Some(n) => Err(CliError::new(
            ExitCode::Usage,
            format!(
                "--disconnect-at {n}: the update made only {made} data writes, so that drop never happened (the image was sent and selected without it); pick 1 to {made}"
            ),
        )
        .into()),
        None => Ok(()),
    }
}

/// Pushes `image` over any link with the chosen protocol.
pub async fn send<L: crate::transport::Link>(
    link: &mut L,
    args: &FlashArgs,
    plan: &SendPlan<'_>,
    image: &[u8],
    bar: &mut Bar,
) -> Result<FlashReport> {
    // Compressed when the device takes it (the sender falls back to the image as it is).
    let stream = plan.stream(image);
    let mut sender = plan.sender(
        image,
        stream.as_deref(),
        link.att_mtu().or(args.mtu).unwrap_or(247),
        SenderConfig {
            att_mtu: link.att_mtu(),
            reboot: !args.no_reboot,
            ..Default::default()
        },
    )?;
    let start = std::time::Instant::now();
    let mut outcome = Outcome::default();
    let image_len = image.len() as u32;
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
        disconnects,
        ..FlashReport::activated(image_len, &outcome, seconds, false)
    })
}

/// What a run's sender events told.
#[derive(Default)]
struct Outcome {
    slot: Option<u8>,
    failed: Option<ClientError>,
    /// The first Started: where this run began on the wire, the wire's length, and whether
    /// the image went compressed and signed.
    started: Option<Started>,
}

/// What the device accepted at the start of a run.
#[derive(Debug, Clone, Copy)]
struct Started {
    offset: u32,
    total: u32,
    compressed: bool,
    signed: bool,
}

impl Outcome {
    fn event(&mut self, e: &ClientEvent) {
        match *e {
            ClientEvent::Activated { slot } => self.slot = slot,
            ClientEvent::Failed(err) => self.failed = Some(err),
            ClientEvent::Started {
                offset,
                total,
                compressed,
                signed,
                ..
            } => {
                self.started.get_or_insert(Started {
                    offset,
                    total,
                    compressed,
                    signed,
                });
            }
            _ => {}
        }
    }
}

struct Watch<'a> {
    bar: &'a mut Bar,
    outcome: &'a mut Outcome,
}

impl Progress for Watch<'_> {
    fn event(&mut self, e: &ClientEvent) {
        self.outcome.event(e);
        self.bar.event(e);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sim::{SimDevice, SimLink};
    use crate::transport::Link;
    use ota_core::protocol::Characteristic;

    /// A link that fails for good after `writes_left` writes, as when the user's first run
    /// was cut short (the device keeps the session).
    struct CutShort<'a> {
        inner: &'a mut SimLink,
        writes_left: u32,
    }

    impl Link for CutShort<'_> {
        fn att_mtu(&self) -> Option<u16> {
            self.inner.att_mtu()
        }
        async fn write(
            &mut self,
            ch: Characteristic,
            data: &[u8],
            r: bool,
        ) -> Result<Result<(), u8>> {
            if self.writes_left == 0 {
                anyhow::bail!("link lost");
            }
            self.writes_left -= 1;
            self.inner.write(ch, data, r).await
        }
        async fn read_control(&mut self) -> Result<Vec<u8>> {
            self.inner.read_control().await
        }
        async fn notification(&mut self, t: Duration) -> Result<Option<Vec<u8>>> {
            self.inner.notification(t).await
        }
        async fn is_connected(&mut self) -> bool {
            self.writes_left > 0
        }
        async fn reconnect(&mut self) -> Result<()> {
            anyhow::bail!("the device is out of reach")
        }
    }

    fn args(image: &std::path::Path) -> FlashArgs {
        FlashArgs {
            image: image.to_path_buf(),
            legacy: false,
            no_reboot: true,
            force: false,
            no_compress: false,
            key: None,
            mtu: None,
            link: LinkArgs {
                profile: None,
                att_mtu: None,
                interval_ms: None,
                phy: None,
                data_length: None,
                packets_per_event: None,
                rx_queue: None,
                queue_full: None,
                sector_erase_ms: None,
                block_erase_ms: None,
                page_program_ms: None,
            },
            speed: None,
            power_cut_at: None,
            disconnect_at: Vec::new(),
        }
    }

    #[test]
    fn a_resumed_run_reports_the_bytes_it_sent_and_their_rate() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("dev.bin");
        let factory =
            virtual_esp32::app_image::build(ota_core::esp::Chip::Esp32c3, "f", "1.0.0", 30_000, 1);
        virtual_esp32::VirtualEsp32::create(
            &path,
            crate::cmd::sim::DEFAULT_PARTITIONS,
            &factory,
            ota_core::esp::Chip::Esp32c3,
            4 << 20,
        )
        .unwrap();
        let image = virtual_esp32::app_image::build(
            ota_core::esp::Chip::Esp32c3,
            "app",
            "2.0.0",
            200_000,
            2,
        );
        let image_path = dir.path().join("app.bin");
        let args = args(&image_path);
        let mut link =
            SimLink::connect(SimDevice::open(&path, Default::default()).unwrap()).unwrap();
        let rt = crate::runtime().unwrap();
        // The first run is cut off after 400 writes: the device keeps what it acknowledged.
        let first = rt.block_on(async {
            let mut cut = CutShort {
                inner: &mut link,
                writes_left: 400,
            };
            send(
                &mut cut,
                &args,
                &args.plan(None),
                &image,
                &mut Bar::new("", true),
            )
            .await
        });
        assert!(first.is_err(), "the cut-off run fails");
        // The second run resumes: it reports what it sent, not the whole image.
        let second = rt
            .block_on(send(
                &mut link,
                &args,
                &args.plan(None),
                &image,
                &mut Bar::new("", true),
            ))
            .unwrap();
        assert_eq!(second.image_bytes, image.len() as u32);
        assert!(second.resumed_from > 20_000, "{second:?}");
        assert_eq!(second.sent_bytes, second.wire_bytes - second.resumed_from);
        let share = second.sent_bytes as f64 / second.wire_bytes as f64;
        let rate = image.len() as f64 * share / second.seconds;
        assert!((second.throughput_bytes_per_s - rate).abs() < 1e-6 * rate);
    }
}
