//! The client side of `ota-core` for the browser.
//!
//! A page drives an [`Updater`] on Web Bluetooth exactly as `ble-ota` drives ota-core's
//! sender over btleplug or HCI: it asks [`Updater::poll_transmit`] what to write, writes it to
//! OTA Control or OTA Data (with or without response, as told), hands every OTA Control
//! notification to [`Updater::handle_notification`] and every write's outcome to
//! [`Updater::handle_write_result`], calls [`Updater::handle_timeout`] when
//! [`Updater::poll_timeout`] says, and reads [`Updater::poll_event`] for progress and the end.
//! Nothing here touches the radio or a clock: times are the page's milliseconds
//! (`performance.now()`).
//!
//! [`encode_command`] and [`answer`] carry one command outside an update (INFO before it,
//! CONFIRM after the device rebooted into the new image), as `ble-ota info` and `confirm` do.
//!
//! [`inspect`] checks an image with the same validator as `ble-ota image inspect` and the
//! device, so a page refuses a file that is not an app image before it connects.
//!
//! Built for `wasm32-unknown-unknown` with wasm-bindgen; the same code compiles and is tested
//! natively.

use ota_core::client::{ClientEvent, Sender, SenderConfig};
use ota_core::esp::{Chip, ImageValidator};
use ota_core::manifest::{MANIFEST_LEN, SignedManifest};
use ota_core::protocol::Characteristic;
use ota_core::protocol::fast::{Command, Info, Response, SlotName, features, is_cut_info};
use ota_core::time::Instant;
use serde_json::json;
use wasm_bindgen::prelude::*;

/// The largest value a write carries (ATT's 512 bytes).
const MAX_WRITE: usize = ota_core::protocol::MAX_ATTRIBUTE_LEN;

/// Checks an app image as the device will, and describes it as JSON: `{"valid", "problems",
/// "chip", "chip_id", "project_name", "version", "secure_version", "size"}`.
#[wasm_bindgen]
pub fn inspect(image: &[u8]) -> String {
    let mut v = ImageValidator::new(None, u32::MAX);
    let mut problems = Vec::new();
    let fed = v.feed(image);
    let header = v.header().copied();
    let info = match fed.and_then(|()| v.report()) {
        Ok(info) => {
            problems.extend(info.problems().into_iter().flatten().map(|e| e.to_string()));
            Some(info)
        }
        Err(e) => {
            problems.push(e.to_string());
            None
        }
    };
    let app = info.as_ref().and_then(|i| i.app.as_ref());
    let text = |b: &[u8]| ota_core::esp::image::c_str(b).to_string();
    json!({
        "valid": problems.is_empty(),
        "problems": problems,
        "chip": header.and_then(|h| Chip::from_id(h.chip_id)).map(|c| c.name()),
        "chip_id": header.map(|h| h.chip_id),
        "project_name": app.map(|a| text(&a.project_name)),
        "version": app.map(|a| text(&a.version)),
        "secure_version": app.map(|a| a.secure_version),
        "size": image.len(),
    })
    .to_string()
}

/// Why `manifest` (an `IMAGE.sig`) cannot go with `image`, or `undefined` when it can: not a
/// manifest, or one made for another image. Whether its key is trusted only the device knows.
#[wasm_bindgen(js_name = manifestProblem)]
pub fn manifest_problem(image: &[u8], manifest: &[u8]) -> Option<String> {
    manifest_problem_of(image, manifest)
}

fn manifest_problem_of(image: &[u8], manifest: &[u8]) -> Option<String> {
    let signed = match SignedManifest::decode(manifest) {
        Ok(s) => s,
        Err(e) => {
            return Some(format!(
                "this is not a signature file from ble-ota sign: {e}"
            ));
        }
    };
    if !signed.is_for(image) {
        return Some(
            "this .sig belongs to another image (size, SHA-256, chip or versions differ): sign this one (ble-ota sign IMAGE --key NAME.key)".into(),
        );
    }
    None
}

/// What the updater owns: the image, its compressed stream and its signed manifest.
struct Payload {
    image: Vec<u8>,
    stream: Option<Vec<u8>>,
    manifest: Option<[u8; MANIFEST_LEN]>,
}

self_cell::self_cell!(
    struct Session {
        owner: Payload,
        #[covariant]
        dependent: Sender,
    }
);

/// One write the page must make.
#[wasm_bindgen]
pub struct Write {
    control: bool,
    with_response: bool,
    bytes: Vec<u8>,
}

#[wasm_bindgen]
impl Write {
    /// `"control"` (OTA Control) or `"data"` (OTA Data).
    #[wasm_bindgen(getter)]
    pub fn characteristic(&self) -> String {
        if self.control { "control" } else { "data" }.into()
    }

    /// A write request (`writeValueWithResponse`) or a write command
    /// (`writeValueWithoutResponse`).
    #[wasm_bindgen(getter, js_name = withResponse)]
    pub fn with_response(&self) -> bool {
        self.with_response
    }

    /// The value to write.
    #[wasm_bindgen(getter)]
    pub fn bytes(&self) -> Vec<u8> {
        self.bytes.clone()
    }
}

/// An update of one device, with either protocol (see the [crate docs](crate)).
#[wasm_bindgen]
pub struct Updater {
    session: Session,
}

#[wasm_bindgen]
impl Updater {
    /// Prepares to send `image`: with the fast protocol, compressed when `compress` (a device
    /// that does not take compressed images gets it as it is), signed when `manifest` holds
    /// the 152-byte `IMAGE.sig`; with the seed's protocol when `legacy`, in packets for
    /// `att_mtu`. `att_mtu` is what the page knows of the ATT MTU: Web Bluetooth does not tell
    /// it, so pass none and the fast protocol uses the chunk size the device announces.
    #[wasm_bindgen(constructor)]
    pub fn new(
        image: Vec<u8>,
        compress: bool,
        legacy: bool,
        att_mtu: Option<u16>,
        manifest: Option<Vec<u8>>,
    ) -> Result<Updater, JsError> {
        Updater::create(image, compress, legacy, att_mtu, manifest).map_err(|e| JsError::new(&e))
    }
}

impl Updater {
    /// [`Updater::new`] with a plain error (JavaScript's errors exist only in a browser).
    pub fn create(
        image: Vec<u8>,
        compress: bool,
        legacy: bool,
        att_mtu: Option<u16>,
        manifest: Option<Vec<u8>>,
    ) -> Result<Updater, String> {
        let manifest = match manifest {
            Some(m) => {
                if let Some(problem) = manifest_problem_of(&image, &m) {
                    return Err(problem);
                }
                SignedManifest::decode(&m).ok().map(|s| s.encode())
            }
            None => None,
        };
        let stream = (compress && !legacy).then(|| ota_core::client::compress(&image));
        let payload = Payload {
            image,
            stream,
            manifest,
        };
        let session = Session::try_new(payload, |p| -> Result<Sender<'_>, String> {
            let config = SenderConfig {
                att_mtu,
                ..SenderConfig::default()
            };
            let legacy_mtu = legacy.then(|| att_mtu.unwrap_or(23));
            Sender::new(
                &p.image,
                legacy_mtu,
                config,
                p.stream.as_deref(),
                p.manifest.as_ref(),
            )
            .map_err(|e| e.to_string())
        })?;
        Ok(Updater { session })
    }
}

#[wasm_bindgen]
impl Updater {
    /// The next write to make, if any now.
    #[wasm_bindgen(js_name = pollTransmit)]
    pub fn poll_transmit(&mut self, now_ms: f64) -> Option<Write> {
        let mut buf = [0u8; MAX_WRITE];
        let t = self
            .session
            .with_dependent_mut(|_, s| s.poll_transmit(ms(now_ms), &mut buf))?;
        Some(Write {
            control: t.characteristic == Characteristic::Control,
            with_response: t.with_response,
            bytes: buf[..t.len].to_vec(),
        })
    }

    /// A write request's outcome: `att_error` is `undefined` on success, else the ATT error
    /// code (a DOMException of Web Bluetooth carries none; pass 0x0E, "unlikely error").
    #[wasm_bindgen(js_name = handleWriteResult)]
    pub fn handle_write_result(&mut self, now_ms: f64, att_error: Option<u8>) {
        let result = att_error.map_or(Ok(()), Err);
        self.session
            .with_dependent_mut(|_, s| s.handle_write_result(ms(now_ms), result));
    }

    /// A notification of OTA Control.
    #[wasm_bindgen(js_name = handleNotification)]
    pub fn handle_notification(&mut self, now_ms: f64, value: &[u8]) {
        self.session
            .with_dependent_mut(|_, s| s.handle_notification(ms(now_ms), value));
    }

    /// The link dropped: the fast protocol resumes on the next connection (call
    /// `pollTransmit` again once reconnected and subscribed).
    #[wasm_bindgen(js_name = handleDisconnected)]
    pub fn handle_disconnected(&mut self) {
        self.session
            .with_dependent_mut(|_, s| s.handle_disconnected());
    }

    /// Time passed (call it at [`poll_timeout`](Self::poll_timeout)).
    #[wasm_bindgen(js_name = handleTimeout)]
    pub fn handle_timeout(&mut self, now_ms: f64) {
        self.session
            .with_dependent_mut(|_, s| s.handle_timeout(ms(now_ms)));
    }

    /// When to call `handleTimeout` next, in the page's milliseconds.
    #[wasm_bindgen(js_name = pollTimeout)]
    pub fn poll_timeout(&self) -> Option<f64> {
        self.session
            .borrow_dependent()
            .poll_timeout()
            .map(|t| t.0 as f64)
    }

    /// The next event as JSON: `{"event": "started", "offset", "total", "chunk_size",
    /// "window", "compressed", "signed"}`, `progress` (`acked`, `total`), `activated` (`slot`),
    /// `rebooting`, or `failed` (`error`: what went wrong and what to do).
    #[wasm_bindgen(js_name = pollEvent)]
    pub fn poll_event(&mut self) -> Option<String> {
        let e = self.session.with_dependent_mut(|_, s| s.poll_event())?;
        Some(event_json(&e).to_string())
    }

    /// Bytes acknowledged and in all (on the wire: the stream's when compressed).
    pub fn progress(&self) -> Vec<u32> {
        let (acked, total) = self.session.borrow_dependent().progress();
        vec![acked, total]
    }

    /// Whether the update ended (activated, rebooting or failed).
    #[wasm_bindgen(js_name = isFinished)]
    pub fn is_finished(&self) -> bool {
        self.session.borrow_dependent().is_finished()
    }
}

fn ms(now_ms: f64) -> Instant {
    Instant(now_ms.max(0.0) as u64)
}

/// A client event as the page reads it.
fn event_json(e: &ClientEvent) -> serde_json::Value {
    match *e {
        ClientEvent::Started {
            offset,
            total,
            chunk_size,
            window,
            compressed,
            signed,
        } => json!({"event": "started", "offset": offset, "total": total,
            "chunk_size": chunk_size, "window": window, "compressed": compressed,
            "signed": signed}),
        ClientEvent::Progress { acked, total } => {
            json!({"event": "progress", "acked": acked, "total": total})
        }
        ClientEvent::Activated { slot } => json!({"event": "activated", "slot": slot}),
        ClientEvent::Rebooting => json!({"event": "rebooting"}),
        ClientEvent::Failed(err) => json!({"event": "failed", "error": err.to_string()}),
    }
}

/// A command by the name a page uses for it.
fn command_named(name: &str) -> Result<Command, String> {
    Ok(match name {
        "info" => Command::Info,
        "confirm" => Command::Confirm,
        "reboot" => Command::Reboot,
        "abort" => Command::Abort,
        "status" => Command::Status,
        other => {
            return Err(format!(
                "unknown command {other:?}: use info, confirm, reboot, abort or status"
            ));
        }
    })
}

/// The bytes to write (with response) to OTA Control for the command `name`: `"info"`,
/// `"confirm"`, `"reboot"`, `"abort"` or `"status"`.
#[wasm_bindgen(js_name = encodeCommand)]
pub fn encode_command(name: &str) -> Result<Vec<u8>, JsError> {
    encode_command_bytes(name).map_err(|e| JsError::new(&e))
}

/// [`encode_command`] with a plain error, for native callers and tests.
pub fn encode_command_bytes(name: &str) -> Result<Vec<u8>, String> {
    let mut buf = [0u8; 64];
    let n = command_named(name)?
        .encode(&mut buf)
        .map_err(|e| e.to_string())?;
    Ok(buf[..n].to_vec())
}

/// What an OTA Control notification `value` says to the command `name`, as JSON:
/// `{"answers": false}` when it answers something else (keep waiting), `{"answers": true,
/// "cut": true}` when it is an INFO cut short by the ATT MTU (read OTA Control for the whole
/// value and ask again), else `{"answers": true, "ok": bool, ...}`: for INFO the device as
/// `ble-ota info --json` shows it, for a refusal `error`.
#[wasm_bindgen]
pub fn answer(name: &str, value: &[u8]) -> Result<String, JsError> {
    answer_json(name, value).map_err(|e| JsError::new(&e))
}

/// [`answer`] with a plain error, for native callers and tests.
pub fn answer_json(name: &str, value: &[u8]) -> Result<String, String> {
    let opcode = command_named(name)?.opcode();
    if opcode == Command::Info.opcode() && is_cut_info(value) {
        return Ok(json!({"answers": true, "cut": true}).to_string());
    }
    let Ok(resp) = Response::decode(value) else {
        return Ok(json!({"answers": false}).to_string());
    };
    if !resp.answers(opcode) {
        return Ok(json!({"answers": false}).to_string());
    }
    let out = match resp {
        Response::Info(info) => {
            let mut v = info_json(&info);
            v["answers"] = true.into();
            v["ok"] = true.into();
            v
        }
        Response::Error { reason, .. } => {
            json!({"answers": true, "ok": false, "error": format!("the device refused: {reason}")})
        }
        _ => json!({"answers": true, "ok": true}),
    };
    Ok(out.to_string())
}

/// INFO with the field names of `ble-ota info --json`.
fn info_json(i: &Info) -> serde_json::Value {
    let running_state = i.slots.iter().find(|s| s.running).map(|s| s.state.name());
    json!({
        "protocol_version": i.protocol_version,
        "chip": Chip::from_id(i.chip_id).map(|c| c.name()),
        "running": SlotName(i.running_slot).to_string(),
        "running_state": running_state,
        "app_name": i.app_name.as_str(),
        "app_version": i.app_version.as_str(),
        "max_image_size": i.max_image_size,
        "slots": i.slots.iter().map(|s| json!({
            "slot": SlotName(s.slot).to_string(),
            "state": s.state.name(),
            "running": s.running,
            "boots_next": s.boot,
        })).collect::<Vec<_>>(),
        "resumable": i.resumable.map(|r| json!({"size": r.size, "offset": r.offset})),
        "compressed_images": i.features & features::COMPRESSED != 0,
        "signatures_required": i.features & features::SIGNATURES_REQUIRED != 0,
        "unsigned_legacy": i.features & features::UNSIGNED_LEGACY != 0,
    })
}
