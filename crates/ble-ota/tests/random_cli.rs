//! Random command lines and random files, as a hostile tester types them: whatever the
//! input, `ble-ota` never panics, exits with a code from the README's table, and with
//! `--json` prints JSON (an error object with the exit code when it fails).
//!
//! Every command that talks to a device gets one (`--sim FILE`, or an HCI controller on a
//! port nothing listens on), so no case reaches the machine's Bluetooth.

use std::path::Path;
use std::process::Command;

use proptest::prelude::*;

/// Exit codes the README documents.
const CODES: std::ops::RangeInclusive<i32> = 0..=6;

/// What an argument slot can be: a literal, or one of the files of the case.
#[derive(Debug, Clone)]
enum Arg {
    Lit(&'static str),
    File(usize),
}

const COMMANDS: &[&[&str]] = &[
    &["info"],
    &["confirm"],
    &["reboot"],
    &["flash", "@"],
    &["image", "inspect", "@"],
    &["sim", "create", "@new"],
    &["sim", "boot", "@sim"],
    &["device"],
    &["scan"],
];

const FLAGS: &[&str] = &[
    "--json",
    "--legacy",
    "--no-reboot",
    "--force",
    "--rollback-bootloader",
    "--bogus",
];

const OPTIONS: &[&str] = &[
    "--mtu",
    "--att-mtu",
    "--interval-ms",
    "--phy",
    "--data-length",
    "--packets-per-event",
    "--rx-queue",
    "--queue-full",
    "--sector-erase-ms",
    "--block-erase-ms",
    "--page-program-ms",
    "--power-cut-at",
    "--disconnect-at",
    "--profile",
    "--scan-timeout",
    "--chip",
    "--chip-revision",
    "--flash-mb",
    "--device",
    "--partitions",
    "--factory",
    "--merged",
    "--name",
];

const VALUES: &[&str] = &[
    "0",
    "1",
    "3",
    "23",
    "40",
    "41",
    "185",
    "247",
    "517",
    "600",
    "65535",
    "4294967296",
    "-1",
    "1e30",
    "inf",
    "NaN",
    "7.5",
    "1.25",
    "0.001",
    "abc",
    "",
    "2m",
    "1m",
    "stall",
    "drop",
    "ios",
    "desktop",
    "esp32c3",
    "esp32c6",
    "esp32",
    "v0.4",
    "99.99",
    "tcp:127.0.0.1",
    "@",
];

/// The files a case can name: 0 a valid image, 1 a corrupt one, 2 random bytes, 3 an empty
/// file, 4 a folder, 5 a path that does not exist, 6 a partitions CSV.
const FILES: usize = 7;

fn arg() -> impl Strategy<Value = Vec<Arg>> {
    prop_oneof![
        3 => prop::sample::select(FLAGS).prop_map(|f| vec![Arg::Lit(f)]),
        6 => (prop::sample::select(OPTIONS), prop::sample::select(VALUES), 0..FILES).prop_map(
            |(o, v, f)| {
                let value = if v == "@" { Arg::File(f) } else { Arg::Lit(v) };
                vec![Arg::Lit(o), value]
            }
        ),
    ]
}

fn case() -> impl Strategy<Value = (usize, usize, bool, Vec<Vec<Arg>>, Vec<u8>)> {
    (
        0..COMMANDS.len(),
        0..FILES,
        any::<bool>(),
        prop::collection::vec(arg(), 0..5),
        prop::collection::vec(any::<u8>(), 0..3000),
    )
}

fn files(dir: &Path, noise: &[u8]) -> Vec<String> {
    let img =
        virtual_esp32::app_image::build(ota_core::esp::Chip::Esp32c3, "r", "2.0.0", 20_000, 1);
    let mut corrupt = img.clone();
    corrupt[3000] ^= 0x10;
    let write = |name: &str, bytes: &[u8]| {
        let p = dir.join(name);
        std::fs::write(&p, bytes).unwrap();
        p.to_str().unwrap().to_string()
    };
    let folder = dir.join("folder");
    std::fs::create_dir_all(&folder).unwrap();
    vec![
        write("app.bin", &img),
        write("corrupt.bin", &corrupt),
        write("noise.bin", noise),
        write("empty.bin", b""),
        folder.to_str().unwrap().to_string(),
        dir.join("missing.bin").to_str().unwrap().to_string(),
        write(
            "p.csv",
            b"nvs, data, nvs, , 0x4000,\notadata, data, ota, , 0x2000,\nphy_init, data, phy, , 0x1000,\nfactory, app, factory, , 1M,\nota_0, app, ota_0, , 1M,\nota_1, app, ota_1, , 1M,\n",
        ),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    #[test]
    fn no_command_line_panics_and_every_exit_code_is_documented(
        (command, file, over_hci, extra, noise) in case()
    ) {
        let dir = tempfile::tempdir().unwrap();
        let paths = files(dir.path(), &noise);
        let sim = dir.path().join("dev.bin");
        let created = Command::new(env!("CARGO_BIN_EXE_ble-ota"))
            .args(["sim", "create", sim.to_str().unwrap()])
            .output()
            .unwrap();
        prop_assert!(created.status.success());
        let sim = sim.to_str().unwrap().to_string();
        let mut args: Vec<String> = Vec::new();
        for word in COMMANDS[command] {
            args.push(match *word {
                "@" => paths[file].clone(),
                "@new" => dir.path().join("new.bin").to_str().unwrap().to_string(),
                "@sim" => sim.clone(),
                w => w.to_string(),
            });
        }
        for a in extra.iter().flatten() {
            args.push(match a {
                Arg::Lit(s) => s.to_string(),
                Arg::File(i) => paths[*i].clone(),
            });
        }
        // A device to talk to, never the machine's Bluetooth.
        if over_hci || COMMANDS[command][0] == "device" {
            args.extend(["--hci".into(), "tcp:127.0.0.1:1".into()]);
        }
        if !over_hci || COMMANDS[command][0] == "device" {
            args.extend(["--sim".into(), sim.clone()]);
        }
        if COMMANDS[command][0] == "flash" && !over_hci && !args.iter().any(|a| a == "--speed") {
            args.extend(["--speed".into(), "0".into()]);
        }
        let out = Command::new(env!("CARGO_BIN_EXE_ble-ota"))
            .args(&args)
            .output()
            .unwrap();
        let code = out.status.code().unwrap_or(-1);
        let stdout = String::from_utf8_lossy(&out.stdout);
        let stderr = String::from_utf8_lossy(&out.stderr);
        prop_assert!(!stderr.contains("panicked"), "{args:?} panicked:\n{stderr}");
        prop_assert!(CODES.contains(&code), "{args:?} exited {code}:\n{stdout}\n{stderr}");
        if args.iter().any(|a| a == "--json") && !args.iter().any(|a| a == "--help") {
            // One JSON value, or one per line (the device's events).
            let whole = serde_json::from_str::<serde_json::Value>(stdout.trim());
            let lines: Vec<_> = stdout
                .lines()
                .filter(|l| !l.trim().is_empty())
                .map(serde_json::from_str::<serde_json::Value>)
                .collect();
            prop_assert!(
                whole.is_ok() || (!lines.is_empty() && lines.iter().all(Result::is_ok)),
                "{args:?}: not JSON:\n{stdout}\n{stderr}"
            );
            if code != 0 {
                let last = whole
                    .ok()
                    .or_else(|| lines.last().and_then(|l| l.as_ref().ok().cloned()))
                    .unwrap();
                prop_assert_eq!(&last["exit_code"], &serde_json::json!(code), "{:?}: {}", args, stdout);
            }
        }
    }
}
