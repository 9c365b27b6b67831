//! `ble-ota`: update ESP32 firmware over Bluetooth LE.
//!
//! Every protocol rule lives in `ota-core`; this binary only parses arguments, moves bytes
//! between a transport and the core's sender, and shows progress.

mod cmd;

mod exit;
mod input;
mod keys;
mod parse;
mod progress;
mod sim;
mod target;
mod transport;

use clap::{Parser, Subcommand};

/// Update ESP32 firmware over Bluetooth LE, or try it on a virtual ESP32.
///
/// Commands that talk to a device use the system's Bluetooth by default; `--sim PATH` talks to
/// a virtual ESP32 instead (create one with `ble-ota sim create PATH`).
#[derive(Debug, Parser)]
#[command(
    name = "ble-ota",
    version,
    about,
    propagate_version = true,
    max_term_width = 100
)]
struct Cli {
    /// Print machine-readable JSON instead of text.
    #[arg(long, global = true)]
    json: bool,
    #[command(flatten)]
    target: target::TargetArgs,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the whole update cycle on a virtual ESP32: two updates, a refused image, a power
    /// cut, a rollback, and the timing of both protocols.
    Demo(cmd::demo::DemoArgs),
    /// List devices advertising the OTA service (system Bluetooth).
    Scan(cmd::scan::ScanArgs),
    /// Show the device's chip, running app, slots and any resumable update.
    Info,
    /// Push an app image and select it for the next boot (then reboot into it).
    Flash(cmd::flash::FlashArgs),
    /// Make the running trial image permanent (otherwise it rolls back at the next reboot).
    Confirm,
    /// Reboot the device.
    Reboot,
    /// Work with app image files offline.
    #[command(subcommand)]
    Image(cmd::image::ImageCmd),
    /// Make a signing key pair: NAME.key (private) and NAME.pub (for the firmware).
    Keygen(cmd::sign::KeygenArgs),
    /// Sign an app image: writes IMAGE.sig, which `flash` sends when it sits beside the image.
    Sign(cmd::sign::SignArgs),
    /// Create and power the virtual ESP32.
    #[command(subcommand)]
    Sim(cmd::sim::SimCmd),
    /// Run the virtual ESP32 (`--sim`) as a BLE peripheral on an HCI controller (`--hci`).
    Device(cmd::device::DeviceArgs),
    /// Serve the web updater on localhost: update from Chrome or Edge, nothing to install.
    Web(cmd::web::WebArgs),
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?)
}

fn main() -> std::process::ExitCode {
    restore_sigpipe();
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => return argument_error(e),
    };
    let json = cli.json;
    let target = cli.target;
    let one_device = matches!(
        cli.command,
        Command::Info | Command::Confirm | Command::Reboot | Command::Flash(_)
    );
    let checked = if one_device {
        target.one_device()
    } else {
        Ok(())
    };
    let result = checked.and_then(|()| match cli.command {
        Command::Demo(_) if json => Err(exit::CliError::new(
            exit::ExitCode::Usage,
            "`demo` tells a story for people and has no JSON output; script the same steps with `ble-ota --json sim ...` and `ble-ota --json --sim FILE flash ...`",
        )
        .into()),
        Command::Demo(a) => cmd::demo::run(a),
        Command::Image(c) => cmd::image::run(c, json),
        Command::Keygen(a) => cmd::sign::keygen(a, json),
        Command::Sign(a) => cmd::sign::sign(a, json),
        Command::Sim(c) => cmd::sim::run(c, &target, json),
        Command::Device(a) => cmd::device::run(a, &target, json),
        Command::Web(a) => cmd::web::run(a, json),
        Command::Scan(_) if target.hci.is_some() || target.sim.is_some() => Err(exit::CliError::new(
            exit::ExitCode::Usage,
            "`scan` lists what the system's Bluetooth adapter sees; over --hci or --sim there is nothing to list: `ble-ota info --hci SPEC` (or --sim FILE) finds the device and shows it",
        )
        .into()),
        Command::Scan(a) => runtime().and_then(|rt| rt.block_on(cmd::scan::run(a, json))),
        Command::Info => runtime().and_then(|rt| rt.block_on(cmd::control::info(&target, json))),
        Command::Confirm => {
            runtime().and_then(|rt| rt.block_on(cmd::control::confirm(&target, json)))
        }
        Command::Reboot => {
            runtime().and_then(|rt| rt.block_on(cmd::control::reboot(&target, json)))
        }
        Command::Flash(a) => {
            runtime().and_then(|rt| rt.block_on(cmd::flash::run(a, &target, json)))
        }
    });
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(err) => {
            let code = exit::code_of(&err);
            if json && exit::was_reported(&err) {
                // The command's JSON already says what went wrong.
            } else if json {
                let msg =
                    serde_json::json!({ "error": format!("{err:#}"), "exit_code": code as u8 });
                println!("{msg}");
            } else {
                eprintln!("error: {err:#}");
            }
            std::process::ExitCode::from(code as u8)
        }
    }
}

/// Reports a command-line error: as JSON when `--json` was given (the command could not be
/// parsed, so the flag is looked for among the raw arguments), else as clap prints it. Help
/// and version requests print normally and exit 0.
fn argument_error(e: clap::Error) -> std::process::ExitCode {
    use clap::error::ErrorKind;
    let json = std::env::args_os().skip(1).any(|a| a == "--json");
    if !json || matches!(e.kind(), ErrorKind::DisplayHelp | ErrorKind::DisplayVersion) {
        e.exit();
    }
    let code = exit::ExitCode::Usage as u8;
    let text = e.render().to_string();
    let message = text
        .lines()
        .next()
        .unwrap_or_default()
        .trim_start_matches("error: ");
    let msg = serde_json::json!({ "error": message, "exit_code": code });
    println!("{msg}");
    std::process::ExitCode::from(code)
}

/// Output piped into a program that stops reading (`ble-ota image inspect X | head -3`) ends
/// `ble-ota` quietly, as it does any Unix tool, instead of a panic in `println!`.
fn restore_sigpipe() {
    #[cfg(unix)]
    // SAFETY: called first in `main`, before any other thread exists; SIG_DFL is a valid
    // disposition for SIGPIPE.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
}
