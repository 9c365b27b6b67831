//! `ble-ota demo`: the whole update cycle on a virtual ESP32, as a new user first sees it.

use std::path::PathBuf;

use anyhow::{Context, Result, bail, ensure};
use ble_link_model::Profile;
use ota_core::client::ClientError;
use ota_core::esp::Chip;
use ota_core::esp::image::verify_in_flash;
use ota_core::manifest::{MANIFEST_LEN, Manifest, TrustedKeys, fingerprint, public_key};
use ota_core::protocol::fast::{Command, Response};
use virtual_esp32::air::{AirConfig, AirOutcome, AirReport};
use virtual_esp32::{BootReport, DeviceSpec, FaultPlan, VirtualEsp32, app_image};

use crate::cmd::image::cstr;
use crate::cmd::sim::DEFAULT_PARTITIONS;
use crate::progress::{Bar, rate};
use crate::sim::{SendPlan, SimDevice, SimLink};
use crate::transport::command;

/// Options of `demo`.
#[derive(Debug, clap::Args)]
pub struct DemoArgs {
    /// Where to keep the virtual ESP32's flash file (default: a temporary folder, removed at
    /// the end).
    #[arg(long)]
    pub dir: Option<PathBuf>,
    /// Pace the progress bars to the modelled time times this factor (0: no pacing).
    #[arg(long, default_value_t = 4.0)]
    pub speed: f64,
    /// Link profile of the updates (desktop, android, ios, esp32-classic).
    #[arg(long, default_value = "desktop")]
    pub profile: String,
}

const CHIP: Chip = Chip::Esp32c3;

fn step(n: u32, title: &str) {
    println!("\n== {n}. {title}");
}

fn show(r: &BootReport) {
    let state = r
        .state
        .map(|s| format!("{s:?}"))
        .unwrap_or_else(|| "-".into());
    for p in &r.rolled_back {
        println!(
            "   rollback guard: {} booted again unconfirmed -> marked ABORTED, rebooted",
            p.name()
        );
    }
    println!(
        "   booted {} : {} {} (otadata state {state})",
        r.slot, r.project_name, r.version
    );
}

fn confirm(dev: SimDevice) -> Result<SimDevice> {
    let rt = crate::runtime()?;
    let mut link = SimLink::connect(dev)?;
    let r = rt.block_on(command(&mut link, Command::Confirm))?;
    ensure!(r == Response::ConfirmOk, "confirm failed: {r:?}");
    println!("   CONFIRM -> the image is now VALID");
    Ok(link.device)
}

fn update(
    dev: &mut SimDevice,
    image: &[u8],
    legacy: bool,
    air: &AirConfig,
    speed: f64,
) -> Result<AirReport> {
    let plan = if legacy {
        SendPlan::legacy()
    } else {
        SendPlan::fast()
    };
    update_with(dev, image, &plan, air, speed)
}

fn update_with(
    dev: &mut SimDevice,
    image: &[u8],
    plan: &SendPlan<'_>,
    air: &AirConfig,
    speed: f64,
) -> Result<AirReport> {
    let mut bar = Bar::modelled(if plan.legacy { "legacy" } else { "fast" }, false);
    let r = dev.update_over_air(image, plan, air, speed, &mut |e, t| {
        bar.modelled_event(e, t)
    })?;
    match r.outcome {
        AirOutcome::Activated { .. } => {
            bar.finish(format!("{} modelled", rate(r.image_len as u64, r.modelled)))
        }
        _ => bar.abandon(),
    }
    Ok(r)
}

pub fn run(args: DemoArgs) -> Result<()> {
    let link = crate::cmd::flash::profile(&args.profile)?;
    let air = AirConfig::new(link);
    // Nothing is left in the current folder unless asked for.
    let temp;
    let dir = match &args.dir {
        Some(dir) => {
            std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
            dir.as_path()
        }
        None => {
            temp = tempfile::Builder::new()
                .prefix("ble-ota-demo-")
                .tempdir()
                .context("creating a temporary folder for the demo")?;
            temp.path()
        }
    };
    let path = dir.join("esp32c3.bin");
    let stock = virtual_esp32::BootloaderConfig { rollback: false };

    step(
        1,
        "A virtual ESP32-C3: 4 MB flash, factory + ota_0 + ota_1, factory app 1.0.0",
    );
    let factory = app_image::build(CHIP, "factory-app", "1.0.0", 120_000, 1);
    let mut created = VirtualEsp32::create(&path, DEFAULT_PARTITIONS, &factory, CHIP, 4 << 20)?;
    show(&created.boot(stock)?);
    created.record_power_state()?;
    drop(created);
    println!(
        "   flash file: {} (espflash --merge layout; `esptool image-info` reads its slots){}",
        path.display(),
        if args.dir.is_some() {
            ""
        } else {
            "; removed at the end (--dir DIR keeps it)"
        }
    );

    // Code-like payloads: they compress about as firmware does, as the updates show.
    let app = |version: &str, len: usize, seed: u64| {
        let mut spec = app_image::AppImageSpec::new(CHIP, "demo-app", version, len, seed);
        spec.code_like = true;
        app_image::build_with(&spec)
    };
    let v2 = app("2.0.0", 400_000, 2);
    let v3 = app("3.0.0", 420_000, 3);
    let v4 = app("4.0.0", 380_000, 4);
    let mut dev = SimDevice::open(&path, stock)?;

    step(
        2,
        &format!(
            "Update to 2.0.0 with the fast protocol, compressed ({} link profile)",
            args.profile
        ),
    );
    let r = update(&mut dev, &v2, false, &air, args.speed)?;
    ensure!(
        r.outcome == AirOutcome::Activated { slot: Some(0) },
        "update 1: {:?}",
        r.outcome
    );
    let b = dev.reboot()?;
    show(&b);
    ensure!(
        b.slot == "ota_0" && b.version == "2.0.0",
        "expected ota_0 2.0.0"
    );
    dev = confirm(dev)?;

    step(
        3,
        "Update to 3.0.0 with the seed's legacy protocol (a seed client works unchanged)",
    );
    let r = update(&mut dev, &v3, true, &air, args.speed)?;
    ensure!(
        matches!(r.outcome, AirOutcome::Activated { .. }),
        "update 2: {:?}",
        r.outcome
    );
    let b = dev.reboot()?;
    show(&b);
    ensure!(
        b.slot == "ota_1" && b.version == "3.0.0",
        "expected ota_1 3.0.0"
    );
    dev = confirm(dev)?;

    step(4, "A corrupt image (one flipped bit) is refused");
    let mut corrupt = v4.clone();
    corrupt[200_000] ^= 0x10;
    let r = update(&mut dev, &corrupt, false, &air, 0.0)?;
    match r.outcome {
        AirOutcome::Failed(ClientError::Refused { reason, .. }) => {
            println!("   refused by the device: {reason}")
        }
        other => bail!("the corrupt image was not refused: {other:?}"),
    }
    let b = dev.reboot()?;
    show(&b);
    ensure!(b.version == "3.0.0", "the corrupt image must not boot");

    step(5, "Power cut in the middle of an update");
    // About one flash operation per 256-byte page written: half the pages is about halfway.
    let ops_half = v4.len() as u64 / 256 / 2;
    dev.dev.flash_mut().arm(FaultPlan::cut_at(ops_half));
    let r = update(&mut dev, &v4, false, &air, 0.0)?;
    dev.dev.flash_mut().disarm();
    ensure!(
        r.outcome == AirOutcome::PowerLost,
        "expected a power loss, got {:?}",
        r.outcome
    );
    println!("   power lost during flash write/erase #{ops_half}, mid-transfer; the device is off");
    let b = dev.reboot()?;
    show(&b);
    ensure!(
        b.slot == "ota_1" && b.version == "3.0.0",
        "the old app must boot after a power cut"
    );

    step(6, "A trial image that is never confirmed rolls back");
    let r = update(&mut dev, &v4, false, &air, args.speed)?;
    ensure!(
        matches!(r.outcome, AirOutcome::Activated { .. }),
        "update 4: {:?}",
        r.outcome
    );
    let b = dev.reboot()?;
    show(&b);
    ensure!(b.version == "4.0.0", "expected 4.0.0 on trial");
    println!("   ... the app hangs before confirming; the watchdog resets it:");
    let b = dev.reboot()?;
    show(&b);
    ensure!(
        b.slot == "ota_1" && b.version == "3.0.0" && b.rolled_back.len() == 1,
        "expected a rollback to 3.0.0"
    );

    step(
        7,
        "Signed updates: the firmware trusts a vendor key (built with BLE_OTA_TRUSTED_KEYS)",
    );
    let dev = signed_updates(dev, &air, args.speed)?;

    step(8, "Summary");
    let rt = crate::runtime()?;
    let mut link = SimLink::connect(dev)?;
    let Response::Info(info) = rt.block_on(command(&mut link, Command::Info))? else {
        bail!("INFO failed")
    };
    println!("   {:<8} {:<12} {:<15} ", "slot", "app", "otadata state");
    let table = link.device.dev.partition_table().clone();
    for s in &info.slots {
        let name = if s.slot == 0xFF {
            "factory".to_string()
        } else {
            format!("ota_{}", s.slot)
        };
        // The version of the image each slot holds, read from its app descriptor.
        let version = table
            .find(&name)
            .and_then(|p| {
                verify_in_flash(link.device.dev.flash_mut(), p.offset, p.size, Some(CHIP)).ok()
            })
            .and_then(|i| i.app)
            .map(|d| cstr(&d.version))
            .unwrap_or_else(|| "(none)".into());
        let tag = if s.running { "running" } else { "" };
        println!(
            "   {:<8} {:<12} {:<15} {tag}",
            name,
            version,
            s.state.name()
        );
    }
    println!("   running: {} {}", info.app_name, info.app_version);
    timing_table()?;
    if args.dir.is_some() {
        println!(
            "\nDone: every step behaved as expected. Try `ble-ota --sim {} info`.",
            path.display()
        );
    } else {
        println!(
            "\nDone: every step behaved as expected. The device was temporary; `ble-ota demo --dir DIR` keeps it for `ble-ota --sim DIR/esp32c3.bin info`."
        );
    }
    Ok(())
}

/// Step 7: with a trusted key, unsigned, forged and downgraded images are refused before a
/// byte is written, and the signed one lands.
fn signed_updates(mut dev: SimDevice, air: &AirConfig, speed: f64) -> Result<SimDevice> {
    let secret = |what| -> Result<[u8; 32]> {
        let mut s = [0u8; 32];
        getrandom::fill(&mut s).map_err(|e| anyhow::anyhow!("no OS randomness for {what}: {e}"))?;
        Ok(s)
    };
    let (vendor, attacker) = (secret("the vendor key")?, secret("the attacker's key")?);
    let vendor_pub = public_key(&vendor);
    dev.dev.set_trusted_keys(TrustedKeys::new(&[vendor_pub]))?;
    println!(
        "   trusted key {} (`ble-ota keygen vendor`; vendor.pub goes into the firmware)",
        crate::keys::fingerprint_hex(&fingerprint(&vendor_pub))
    );
    let with_secure_version = |version: &str, secure_version: u32, seed: u64| {
        let mut spec = app_image::AppImageSpec::new(CHIP, "demo-app", version, 300_000, seed);
        spec.code_like = true;
        spec.secure_version = secure_version;
        app_image::build_with(&spec)
    };
    let v5 = with_secure_version("5.0.0", 2, 5);
    let signed = |img: &[u8], key: &[u8; 32]| -> Result<[u8; MANIFEST_LEN]> {
        Ok(Manifest::for_image(img)
            .map_err(|e| anyhow::anyhow!("demo image: {e}"))?
            .sign(key)
            .encode())
    };
    let refused = |dev: &mut SimDevice, img: &[u8], plan: SendPlan<'_>, what: &str| {
        // The idle device erased its next slot already, whoever connects next.
        dev.pre_erase()?;
        let before = dev.dev.flash().bytes().to_vec();
        let r = update_with(dev, img, &plan, air, 0.0)?;
        let changed = dev.dev.flash().bytes() != before.as_slice();
        match r.outcome {
            AirOutcome::Failed(e) if !changed => {
                let why = match e {
                    ClientError::Refused { reason, .. } => format!("{reason:?}"),
                    ClientError::RequestNak => "REQUEST_NAK".into(),
                    other => other.to_string(),
                };
                println!("   {what}: refused ({why}), no byte of flash written");
                Ok(())
            }
            other => bail!("{what} was not refused before writing: {other:?}"),
        }
    };
    refused(&mut dev, &v5, SendPlan::fast(), "unsigned 5.0.0")?;
    let forged = signed(&v5, &attacker)?;
    let plan = SendPlan {
        manifest: Some(&forged),
        ..SendPlan::fast()
    };
    refused(&mut dev, &v5, plan, "5.0.0 signed by another key")?;
    refused(
        &mut dev,
        &v5,
        SendPlan::legacy(),
        "5.0.0 over the seed's protocol (no room for a signature)",
    )?;
    let good = signed(&v5, &vendor)?;
    let plan = SendPlan {
        manifest: Some(&good),
        ..SendPlan::fast()
    };
    println!("   5.0.0 (secure_version 2) signed with the vendor key:");
    let r = update_with(&mut dev, &v5, &plan, air, speed)?;
    ensure!(
        matches!(r.outcome, AirOutcome::Activated { .. }),
        "the signed update failed: {:?}",
        r.outcome
    );
    let b = dev.reboot()?;
    show(&b);
    ensure!(b.version == "5.0.0", "expected 5.0.0 on trial");
    let mut dev = confirm(dev)?;
    let old = with_secure_version("3.1.0", 1, 6);
    let old_signed = signed(&old, &vendor)?;
    let plan = SendPlan {
        manifest: Some(&old_signed),
        ..SendPlan::fast()
    };
    refused(
        &mut dev,
        &old,
        plan,
        "3.1.0 (secure_version 1), signed with the vendor key: a downgrade",
    )?;
    Ok(dev)
}

/// The same 1 MiB image through both protocols on every link profile, side by side.
fn timing_table() -> Result<()> {
    // As large as the 1 MiB slot allows (header, descriptor, checksum and hash included).
    let image = app_image::build(CHIP, "bench", "1.0.0", (1 << 20) - 1024, 7);
    println!(
        "\n   Modelled update of a {} KiB image (link + flash model, no radio here):",
        image.len() / 1024
    );
    println!(
        "   {:<14} {:>22} {:>22} {:>8}",
        "profile", "legacy (seed)", "fast (ours)", "speedup"
    );
    for p in Profile::ALL {
        let air = AirConfig::new(p.params());
        let mut times = Vec::new();
        for legacy in [true, false] {
            let factory = app_image::build(CHIP, "factory-app", "1.0.0", 60_000, 1);
            let spec = DeviceSpec {
                chip: CHIP,
                flash_size: 4 << 20,
                partitions_csv: DEFAULT_PARTITIONS,
                factory_image: &factory,
                bootloader: None,
            };
            let mut dev = SimDevice {
                dev: VirtualEsp32::create_in_memory(&spec)?,
                bootloader: Default::default(),
            };
            dev.dev.boot(dev.bootloader)?;
            let plan = SendPlan {
                legacy,
                ..Default::default()
            };
            let r = dev.update_over_air(&image, &plan, &air, 0.0, &mut |_, _| {})?;
            ensure!(
                matches!(r.outcome, AirOutcome::Activated { .. }),
                "{}: {:?}",
                p.name(),
                r.outcome
            );
            times.push(r);
        }
        let cell = |r: &AirReport| {
            format!(
                "{:.1} s, {}",
                r.modelled.as_secs_f64(),
                rate(r.image_len as u64, r.modelled)
            )
        };
        println!(
            "   {:<14} {:>22} {:>22} {:>7.1}x",
            p.name(),
            cell(&times[0]),
            cell(&times[1]),
            times[0].modelled.as_secs_f64() / times[1].modelled.as_secs_f64()
        );
    }
    Ok(())
}
