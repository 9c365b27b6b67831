//! `ble-ota`: update ESP32 firmware over Bluetooth LE.
//!
//! Every protocol rule lives in `ota-core`; this binary only parses arguments, moves bytes
//! between a transport and the core's sender, and shows progress.

mod cmd;
mod exit;
mod transport;

use clap::{Parser, Subcommand};

/// Update ESP32 firmware over Bluetooth LE, or try it on a virtual ESP32.
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
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// List devices advertising the OTA service (system Bluetooth).
    Scan(cmd::scan::ScanArgs),
    /// Work with app image files offline.
    #[command(subcommand)]
    Image(cmd::image::ImageCmd),
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?)
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let json = cli.json;
    let result = match cli.command {
        Command::Image(c) => cmd::image::run(c, json),
        Command::Scan(a) => runtime().and_then(|rt| rt.block_on(cmd::scan::run(a, json))),
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(err) => {
            let code = exit::code_of(&err);
            if json {
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
