//! `ble-ota info`, `confirm` and `reboot`: one fast-protocol command each.

use std::time::Duration;

use anyhow::Result;
use ota_core::esp::Chip;
use ota_core::protocol::fast::{Command, Info, Response, SlotName, features};
use serde::Serialize;

use crate::cmd::sim::print_boot;
use crate::exit::{CliError, ExitCode};
use crate::sim::{SimDevice, SimLink};
use crate::target::TargetArgs;
use crate::transport::{Link, ble, command};

/// Sends `cmd` to the target and returns the answer; for a virtual ESP32, also returns the
/// connection so the caller can act on a reboot request.
async fn ask(target: &TargetArgs, cmd: Command) -> Result<(Response, Option<SimLink>)> {
    match &target.sim {
        Some(path) => {
            let mut link = SimLink::connect(SimDevice::open(path, target.bootloader())?)?;
            let r = command(&mut link, cmd).await?;
            Ok((r, Some(link)))
        }
        None if target.hci.is_some() => {
            let mut link = crate::transport::hci::connect_hci_with(
                target.hci.as_deref().unwrap_or_default(),
                target.device.as_deref(),
                Duration::from_secs_f64(target.scan_timeout),
                target.passkey,
            )
            .await?;
            let r = command(&mut link, cmd).await?;
            Ok((r, None))
        }
        None => {
            let mut link = ble::BleLink::connect(
                target.device.as_deref(),
                Duration::from_secs_f64(target.scan_timeout),
            )
            .await?;
            let r = command(&mut link, cmd).await?;
            let _ = link.is_connected().await;
            Ok((r, None))
        }
    }
}

fn refusal(r: Response) -> anyhow::Error {
    match r {
        Response::Error { reason, .. } => {
            CliError::new(ExitCode::Refused, format!("the device refused: {reason}")).into()
        }
        other => anyhow::anyhow!("unexpected answer from the device: {other:?}"),
    }
}

/// INFO as JSON.
#[derive(Debug, Serialize)]
struct InfoView {
    protocol_version: u8,
    chip: String,
    running: String,
    app_name: String,
    app_version: String,
    max_image_size: u32,
    chunk_size: u16,
    window: u32,
    slots: Vec<SlotView>,
    resumable: Option<ResumableView>,
    /// The device takes compressed images (protocol v3).
    compressed_images: bool,
    /// The device takes only signed images (protocol v4).
    signatures_required: bool,
    /// With signatures required: the seed's protocol is taken unsigned all the same.
    unsigned_legacy: bool,
    /// Fingerprints of the keys the device trusts.
    trusted_keys: Vec<String>,
}

#[derive(Debug, Serialize)]
struct SlotView {
    slot: String,
    state: &'static str,
    running: bool,
    boots_next: bool,
}

#[derive(Debug, Serialize)]
struct ResumableView {
    size: u32,
    sha256: String,
    offset: u32,
}

fn view(i: &Info) -> InfoView {
    InfoView {
        protocol_version: i.protocol_version,
        chip: Chip::from_id(i.chip_id)
            .map(|c| c.name().to_string())
            .unwrap_or_else(|| format!("id {}", i.chip_id)),
        running: SlotName(i.running_slot).to_string(),
        app_name: i.app_name.to_string(),
        app_version: i.app_version.to_string(),
        max_image_size: i.max_image_size,
        chunk_size: i.chunk_size,
        window: i.window,
        slots: i
            .slots
            .iter()
            .map(|s| SlotView {
                slot: SlotName(s.slot).to_string(),
                state: s.state.name(),
                running: s.running,
                boots_next: s.boot,
            })
            .collect(),
        resumable: i.resumable.map(|r| ResumableView {
            size: r.size,
            sha256: hex::encode(r.sha256),
            offset: r.offset,
        }),
        compressed_images: i.features & features::COMPRESSED != 0,
        signatures_required: i.features & features::SIGNATURES_REQUIRED != 0,
        unsigned_legacy: i.features & features::UNSIGNED_LEGACY != 0,
        trusted_keys: i
            .trusted_keys
            .iter()
            .map(crate::keys::fingerprint_hex)
            .collect(),
    }
}

pub async fn info(target: &TargetArgs, json: bool) -> Result<()> {
    let (r, _) = ask(target, Command::Info).await?;
    let Response::Info(i) = r else {
        return Err(refusal(r));
    };
    let v = view(&i);
    if json {
        println!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(());
    }
    println!(
        "{} running {} {} from {} (protocol v{}{})",
        v.chip,
        v.app_name,
        v.app_version,
        v.running,
        v.protocol_version,
        if v.compressed_images {
            ", takes compressed images"
        } else {
            ""
        }
    );
    println!(
        "update slot takes up to {} bytes; chunks of {} bytes, window {} bytes",
        v.max_image_size, v.chunk_size, v.window
    );
    for s in &v.slots {
        let mut tags = Vec::new();
        if s.running {
            tags.push("running");
        }
        if s.boots_next {
            tags.push("boots next");
        }
        println!("  {:<8} {:<15} {}", s.slot, s.state, tags.join(", "));
    }
    if v.signatures_required {
        println!(
            "takes only signed images (keys {}){}",
            v.trusted_keys.join(", "),
            if v.unsigned_legacy {
                "; the seed's protocol unsigned all the same"
            } else {
                ""
            }
        );
    }
    if let Some(r) = &v.resumable {
        println!(
            "resumable update: {} of {} bytes (sha256 {})",
            r.offset,
            r.size,
            &r.sha256[..16]
        );
    }
    Ok(())
}

pub async fn confirm(target: &TargetArgs, json: bool) -> Result<()> {
    let (r, _) = ask(target, Command::Confirm).await?;
    if r != Response::ConfirmOk {
        return Err(refusal(r));
    }
    if json {
        println!("{}", serde_json::json!({ "confirmed": true }));
    } else {
        println!("the running image is confirmed (VALID): it stays after reboots");
    }
    Ok(())
}

pub async fn reboot(target: &TargetArgs, json: bool) -> Result<()> {
    let (r, link) = ask(target, Command::Reboot).await?;
    if r != Response::RebootOk {
        return Err(refusal(r));
    }
    match link {
        Some(mut link) if link.reboot_requested => print_boot(&link.device.reboot()?, json),
        _ if json => println!("{}", serde_json::json!({ "rebooting": true })),
        _ => println!("the device is rebooting"),
    }
    Ok(())
}
