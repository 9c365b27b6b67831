//! Links to a device. Every transport moves GATT writes and notifications; the protocol
//! itself runs in `ota-core`'s sender, driven by [`drive`].

pub mod ble;
pub mod hci;

use std::time::Duration;

use anyhow::Result;
use ota_core::client::{ClientEvent, Sender, SenderConfig};
use ota_core::protocol::Characteristic;
use ota_core::time::Instant;

/// Runs a BLE host future (trouble-host) to completion on a single-threaded runtime, polled as
/// a spawned local task.
///
/// Not with `Runtime::block_on` directly: trouble-host keeps wakers in embassy's
/// `WakerRegistration`, which wakes the stored waker whenever a new one does not `will_wake`
/// the same task. A clone of tokio's `block_on` waker does not compare equal to the original
/// (its vtable pointer differs), so every poll woke the next one and an idle `ble-ota device`
/// spun a core at 100%. A task's waker compares equal to its clones.
pub fn run_ble_host<F>(fut: F) -> Result<F::Output>
where
    F: std::future::Future + 'static,
    F::Output: 'static,
{
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let local = tokio::task::LocalSet::new();
    let out = local.block_on(&rt, async { tokio::task::spawn_local(fut).await })?;
    Ok(out)
}

/// One connected device, as the driver needs it.
pub trait Link {
    /// ATT MTU, when the transport knows it for sure.
    fn att_mtu(&self) -> Option<u16>;
    /// Writes a characteristic. The outer error is a link failure; the inner one an ATT error
    /// code the device answered a write request with.
    async fn write(
        &mut self,
        ch: Characteristic,
        data: &[u8],
        with_response: bool,
    ) -> Result<Result<(), u8>>;
    /// Reads OTA Control (the last control value, whole).
    async fn read_control(&mut self) -> Result<Vec<u8>>;
    /// Waits up to `timeout` for the next OTA Control notification; `Ok(None)` on timeout.
    async fn notification(&mut self, timeout: Duration) -> Result<Option<Vec<u8>>>;
    /// Returns true while connected.
    async fn is_connected(&mut self) -> bool;
    /// Connects again after the link dropped.
    async fn reconnect(&mut self) -> Result<()>;
    /// Data writes made so far, for transports that drop the link on request
    /// (`--disconnect-at`).
    fn data_writes(&self) -> Option<u32> {
        None
    }
}

/// Receives progress from [`drive`].
pub trait Progress {
    /// An event from the sender.
    fn event(&mut self, event: &ClientEvent);
}

/// How long the driver waits, once the link dropped, for notifications still on their way.
const TRAILING_NOTIFICATIONS: Duration = Duration::from_millis(200);

/// How often the driver retries a dropped link before giving up.
pub const MAX_RECONNECTS: u32 = 5;

/// Runs `sender` over `link` until it finishes. A dropped link is reconnected and the fast
/// protocol resumes where the device acknowledged. Returns how many times the link dropped
/// (forced with `--disconnect-at` or not) and was reconnected.
pub async fn drive<L: Link>(
    link: &mut L,
    sender: &mut Sender<'_>,
    progress: &mut dyn Progress,
) -> Result<u32> {
    let start = std::time::Instant::now();
    let now = || Instant(start.elapsed().as_millis() as u64);
    let mut buf = vec![0u8; 600];
    let mut reconnects = 0;
    while !sender.is_finished() {
        let mut link_lost = false;
        // Send what the sender allows: write commands until the window is full, or one request.
        while let Some(tx) = sender.poll_transmit(now(), &mut buf) {
            match link
                .write(tx.characteristic, &buf[..tx.len], tx.with_response)
                .await
            {
                Ok(result) => {
                    if tx.with_response {
                        sender.handle_write_result(now(), result);
                    }
                }
                Err(_) => {
                    link_lost = true;
                    break;
                }
            }
            // Let notifications in between writes so ACKs open the window early.
            while let Ok(Some(n)) = link.notification(Duration::ZERO).await {
                sender.handle_notification(now(), &n);
            }
            drain(sender, progress);
        }
        if !link_lost {
            let wait = sender
                .poll_timeout()
                .map(|t| Duration::from_millis(t.0.saturating_sub(now().0)))
                .unwrap_or(Duration::from_millis(500))
                .min(Duration::from_millis(500));
            match link.notification(wait).await {
                Ok(Some(n)) => sender.handle_notification(now(), &n),
                Ok(None) => {
                    sender.handle_timeout(now());
                    if !link.is_connected().await {
                        link_lost = true;
                    }
                }
                Err(_) => link_lost = true,
            }
        }
        if link_lost {
            // What the device sent before the link went still counts: the seed's firmware
            // restarts right after notifying DONE_ACK, and its answer may trail the drop.
            while let Ok(Some(n)) = link.notification(TRAILING_NOTIFICATIONS).await {
                sender.handle_notification(now(), &n);
            }
        }
        drain(sender, progress);
        if link_lost && !sender.is_finished() {
            sender.handle_disconnected();
            drain(sender, progress);
            if sender.is_finished() {
                break;
            }
            reconnects += 1;
            if reconnects > MAX_RECONNECTS {
                anyhow::bail!(
                    "the link dropped {MAX_RECONNECTS} times; move closer to the device and run the same command again (it resumes)"
                );
            }
            link.reconnect().await?;
        }
    }
    drain(sender, progress);
    Ok(reconnects)
}

fn drain(sender: &mut Sender<'_>, progress: &mut dyn Progress) {
    while let Some(e) = sender.poll_event() {
        progress.event(&e);
    }
}

/// Sends one fast-protocol command and returns the device's answer to it (an INFO cut short by
/// the ATT MTU is read back whole from OTA Control).
pub async fn command<L: Link>(
    link: &mut L,
    cmd: ota_core::protocol::fast::Command,
) -> Result<ota_core::protocol::fast::Response> {
    use ota_core::protocol::fast::{Response, is_cut_info};
    let mut buf = [0u8; 64];
    let n = cmd.encode(&mut buf)?;
    let opcode = cmd.opcode();
    if let Err(code) = link.write(Characteristic::Control, &buf[..n], true).await? {
        anyhow::bail!(
            "the device rejected the command with ATT error {code:#04x}: is it running OTA firmware?"
        );
    }
    // The same deadline the update's sender gives each answer.
    let timeout = Duration::from_millis(SenderConfig::default().answer_timeout_ms.into());
    let deadline = std::time::Instant::now() + timeout;
    while let Some(left) = deadline.checked_duration_since(std::time::Instant::now()) {
        let Some(bytes) = link.notification(left).await? else {
            break;
        };
        let resp = match Response::decode(&bytes) {
            Ok(r) => r,
            Err(_) if is_cut_info(&bytes) => Response::decode(&link.read_control().await?)?,
            Err(_) => continue,
        };
        if resp.answers(opcode) {
            return Ok(resp);
        }
    }
    anyhow::bail!(
        "no answer from the device within {} s: does its firmware speak the fast protocol? (`--legacy` for the seed's)",
        timeout.as_secs()
    )
}
