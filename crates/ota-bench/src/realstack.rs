//! Part 3: wall time of one update through real BLE host stacks, the seed's protocol against
//! ours, side by side in one run. The virtual ESP32 runs `ota-gatt` on trouble-host
//! (`ble-ota device`) on one Bumble virtual controller; `ble-ota flash --hci` runs trouble-host
//! as central on another. Bumble's virtual link has no radio timing and no flow control, so the
//! ratio measures ATT round trips and host overhead, not airtime.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use serde::Serialize;

/// What part 3 measured.
#[derive(Debug, Clone, Serialize)]
pub struct RealStackRun {
    /// Image bytes.
    pub image_len: usize,
    /// Wall seconds of each legacy run.
    pub legacy_s: Vec<f64>,
    /// Wall seconds of each fast run.
    pub fast_s: Vec<f64>,
    /// median(legacy) / median(fast).
    pub ratio: f64,
}

/// A child killed when dropped, its stdout lines on a channel.
struct Proc {
    child: Child,
    lines: mpsc::Receiver<String>,
}

impl Proc {
    fn spawn(cmd: &mut Command) -> Result<Proc> {
        let mut child = cmd
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()?;
        let stdout = child.stdout.take().context("child stdout")?;
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Ok(Proc { child, lines })
    }

    fn wait_for(&self, what: &str, timeout: Duration) -> Result<String> {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) if line.contains(what) => return Ok(line),
                Ok(_) => {}
                Err(_) => bail!("no `{what}` line within {timeout:?}"),
            }
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One update with fresh controllers and a fresh virtual ESP32; returns its wall time.
fn one_update(
    ble_ota: &Path,
    python: &Path,
    root: &Path,
    image: &Path,
    legacy: bool,
) -> Result<f64> {
    let controllers = Proc::spawn(
        Command::new(python)
            .arg(root.join("e2e/virtual_controllers.py"))
            .args(["--count", "2"]),
    )?;
    let line = controllers.wait_for("ports", Duration::from_secs(30))?;
    let v: serde_json::Value = serde_json::from_str(&line)?;
    let port = |i: usize| {
        v["ports"][i]
            .as_u64()
            .context("port")
            .map(|p| format!("tcp:127.0.0.1:{p}"))
    };
    let dir = std::env::temp_dir().join(format!("ota-bench-{}-{}", std::process::id(), legacy));
    std::fs::create_dir_all(&dir)?;
    let sim = dir.join("esp32.bin");
    let out = Command::new(ble_ota)
        .arg("sim")
        .arg("create")
        .arg(&sim)
        .output()?;
    if !out.status.success() {
        bail!(
            "ble-ota sim create failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let device = Proc::spawn(
        Command::new(ble_ota)
            .args(["--json", "device", "--hci", &port(0)?, "--sim"])
            .arg(&sim)
            .args(["--name", "bench-esp32"]),
    )?;
    device.wait_for("advertising", Duration::from_secs(20))?;
    let mut flash = Command::new(ble_ota);
    flash.args([
        "--json",
        "flash",
        "--hci",
        &port(1)?,
        "--scan-timeout",
        "15",
    ]);
    if legacy {
        flash.arg("--legacy");
    }
    let started = Instant::now();
    let out = flash.arg(image).output()?;
    let took = started.elapsed().as_secs_f64();
    let _ = std::fs::remove_dir_all(&dir);
    if !out.status.success() {
        bail!(
            "ble-ota flash failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(took)
}

fn median(v: &[f64]) -> f64 {
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    s[s.len() / 2]
}

/// Runs `rounds` legacy and fast updates of `image`, alternating, and returns their times.
pub fn run(
    ble_ota: &Path,
    python: &Path,
    root: &Path,
    image: &[u8],
    rounds: usize,
) -> Result<RealStackRun> {
    let path: PathBuf =
        std::env::temp_dir().join(format!("ota-bench-image-{}.bin", std::process::id()));
    std::fs::write(&path, image)?;
    let (mut legacy_s, mut fast_s) = (Vec::new(), Vec::new());
    for _ in 0..rounds {
        legacy_s.push(one_update(ble_ota, python, root, &path, true)?);
        fast_s.push(one_update(ble_ota, python, root, &path, false)?);
    }
    let _ = std::fs::remove_file(&path);
    let ratio = median(&legacy_s) / median(&fast_s);
    Ok(RealStackRun {
        image_len: image.len(),
        legacy_s,
        fast_s,
        ratio,
    })
}
