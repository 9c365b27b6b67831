//! `ble-ota scan`: list devices advertising the OTA service.

use std::time::Duration;

use anyhow::Result;

use crate::transport::ble;

/// Scan options.
#[derive(Debug, clap::Args)]
pub struct ScanArgs {
    /// How long to listen, in seconds.
    #[arg(long, default_value_t = 5.0)]
    pub timeout: f64,
}

pub async fn run(args: ScanArgs, json: bool) -> Result<()> {
    let found = ble::scan(Duration::from_secs_f64(args.timeout)).await?;
    if json {
        println!("{}", serde_json::to_string_pretty(&found)?);
        return Ok(());
    }
    if found.is_empty() {
        println!(
            "No device advertising the OTA service found in {:.0} s.",
            args.timeout
        );
    }
    for f in found {
        println!(
            "{}  {:<24}  {}",
            f.address,
            f.name.as_deref().unwrap_or("(no name)"),
            f.rssi.map(|r| format!("{r} dBm")).unwrap_or_default()
        );
    }
    Ok(())
}
