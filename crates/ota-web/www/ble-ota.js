// ble-ota on Web Bluetooth: the shell around ota-core's client, compiled to WebAssembly.
//
// Every rule of the protocol (both protocols, compression, signed manifests, resume, the
// image checks) runs in the wasm `Updater`, the same Rust code `ble-ota` runs. This module only
// moves bytes: it writes what the updater asks for to OTA Control or OTA Data, feeds back
// notifications and write outcomes, and reconnects when the link drops.
//
//   import { load, chooseDevice, inspectImage, update, command } from "./ble-ota.js";
//   await load();
//   const device = await chooseDevice();          // needs a user gesture (a click)
//   const image = new Uint8Array(await file.arrayBuffer());
//   const report = await update(device, image, { onEvent: (e) => console.log(e) });
//   const info = await command(device, "info");    // after the reboot: on trial?
//   await command(device, "confirm");
//
// Works in Chrome and Edge (desktop and Android) and in Chromium on Linux with Web
// Bluetooth enabled. Pages must be served over https or from localhost.

import init, { Updater, answer, encodeCommand, inspect, manifestProblem } from "./pkg/ota_web.js";

/** The OTA service and its characteristics (the seed's UUIDs). */
export const OTA_SERVICE = "d6f1d96d-594c-4c53-b1c6-244a1dfde6d8";
export const OTA_CONTROL = "7ad671aa-21c0-46a4-b722-270e3ae3d830";
export const OTA_DATA = "23408888-1f40-4cd8-9b89-ca8d45f8a5b0";

/** How often a dropped link is reconnected before an update gives up (as `ble-ota flash`). */
export const MAX_RECONNECTS = 5;

/** ATT's "unlikely error": a refused write request, whose code the browser does not tell. */
const UNLIKELY_ERROR = 0x0e;

/**
 * An error a user can act on: `message` says what happened and what to do. `code` is
 * `"no-answer"` when the device did not answer a command (the seed's firmware answers none).
 */
export class OtaError extends Error {
  constructor(message, code) {
    super(message);
    this.name = "OtaError";
    this.code = code;
  }
}

/** The link dropped (internal: the update loop reconnects). */
class LinkLost extends Error {}

let loaded;

/** Loads the WebAssembly core once; `wasmUrl` overrides where `ota_web_bg.wasm` is fetched. */
export function load(wasmUrl) {
  loaded ??= init(wasmUrl ? { module_or_path: wasmUrl } : undefined);
  return loaded;
}

/** Whether this browser can reach Bluetooth at all, and if not, why. */
export async function availability() {
  if (!globalThis.isSecureContext) {
    return { ok: false, why: "Web Bluetooth needs a secure page: open it over https or from localhost." };
  }
  if (!navigator.bluetooth) {
    return {
      ok: false,
      why: "This browser has no Web Bluetooth. Use Chrome or Edge on a desktop or Android (on Linux, start Chromium with --enable-features=WebBluetooth), or the ble-ota command line.",
    };
  }
  // Not every Web Bluetooth implementation has getAvailability; without it, try anyway.
  if (navigator.bluetooth.getAvailability && !(await navigator.bluetooth.getAvailability())) {
    return { ok: false, why: "No Bluetooth adapter is available: turn Bluetooth on and reload." };
  }
  return { ok: true };
}

/** Checks an image as the device will: `{valid, problems, chip, project_name, version, ...}`. */
export async function inspectImage(image) {
  await load();
  return JSON.parse(inspect(image));
}

/**
 * Why `signature` (an `IMAGE.sig` from `ble-ota sign`) cannot go with `image`, or `undefined`:
 * not a signature file, or one for another image. Whether the device trusts its key, the
 * device says.
 */
export async function checkSignature(image, signature) {
  await load();
  return manifestProblem(image, signature);
}

/** Opens the browser's chooser for devices that advertise the OTA service. */
export async function chooseDevice() {
  const why = await availability();
  if (!why.ok) throw new OtaError(why.why);
  try {
    return await navigator.bluetooth.requestDevice({ filters: [{ services: [OTA_SERVICE] }] });
  } catch (e) {
    if (e.name === "NotFoundError") {
      throw new OtaError("No device was chosen. Is it powered, in range and advertising OTA?");
    }
    throw e;
  }
}

/** One GATT connection to the OTA service: writes, and OTA Control's notifications queued. */
class Link {
  constructor(device) {
    this.device = device;
    this.queue = [];
    this.wake = null;
    this.reading = false;
    this.onValue = (event) => {
      // Chromium also fires this for our own reads; those are not notifications.
      if (this.reading) return;
      const v = event.target.value;
      this.queue.push(new Uint8Array(v.buffer.slice(v.byteOffset, v.byteOffset + v.byteLength)));
      this.wake?.();
    };
    this.onDisconnected = () => {
      this.wake?.();
      this.dropped?.();
    };
    device.addEventListener("gattserverdisconnected", this.onDisconnected);
  }

  get connected() {
    return this.device.gatt.connected;
  }

  /** Connects (again), retrying while the device is out of reach or rebooting. */
  async open({ attempts = 8, delayMs = 1000 } = {}) {
    let last;
    for (let i = 0; i < attempts; i++) {
      try {
        const server = await this.device.gatt.connect();
        const service = await server.getPrimaryService(OTA_SERVICE);
        this.control = await service.getCharacteristic(OTA_CONTROL);
        this.data = await service.getCharacteristic(OTA_DATA);
        this.control.removeEventListener("characteristicvaluechanged", this.onValue);
        this.control.addEventListener("characteristicvaluechanged", this.onValue);
        this.queue = [];
        // Settles when this connection drops: a write in flight then may never settle itself.
        this.lost = new Promise((resolve) => (this.dropped = resolve));
        await this.control.startNotifications();
        return;
      } catch (e) {
        last = e;
        if (e.name === "NotFoundError" && this.connected) {
          throw new OtaError(`${this.device.name ?? "The device"} has no OTA service: is it running OTA firmware?`);
        }
        await sleep(delayMs);
      }
    }
    throw new OtaError(`Cannot connect to ${this.device.name ?? "the device"} (${last?.message}). Move closer and try again.`);
  }

  /** Writes `bytes`; returns `undefined` or the refused write request's ATT error. */
  async write(which, bytes, withResponse) {
    const ch = which === "control" ? this.control : this.data;
    if (!this.connected) throw new LinkLost();
    try {
      const write = withResponse ? ch.writeValueWithResponse(bytes) : ch.writeValueWithoutResponse(bytes);
      write.catch(() => {}); // settled by the race below, or ignored once the link is gone
      if ((await Promise.race([write.then(() => "written"), this.lost])) !== "written") {
        throw new LinkLost();
      }
      return undefined;
    } catch (e) {
      if (!this.connected || e.name === "NetworkError") throw new LinkLost();
      if (!withResponse) throw e;
      return UNLIKELY_ERROR;
    }
  }

  /** Waits up to `ms` for this connection to drop (a device rebooting). */
  async droppedWithin(ms) {
    if (!this.connected) return;
    await Promise.race([this.lost, sleep(ms)]);
  }

  /** The next queued notification, if any. */
  take() {
    return this.queue.shift();
  }

  /** Waits up to `ms` for a notification: the value, or `undefined` on timeout. */
  async next(ms) {
    if (this.queue.length) return this.queue.shift();
    if (!this.connected) throw new LinkLost();
    await new Promise((resolve) => {
      const timer = setTimeout(done, ms);
      function done() {
        clearTimeout(timer);
        resolve();
      }
      this.wake = done;
    });
    this.wake = null;
    if (this.queue.length) return this.queue.shift();
    if (!this.connected) throw new LinkLost();
    return undefined;
  }

  /** Reads OTA Control whole (an INFO too long for one notification). */
  async read() {
    this.reading = true;
    try {
      const v = await this.control.readValue();
      return new Uint8Array(v.buffer.slice(v.byteOffset, v.byteOffset + v.byteLength));
    } finally {
      this.reading = false;
    }
  }

  close() {
    this.device.removeEventListener("gattserverdisconnected", this.onDisconnected);
    this.control?.removeEventListener("characteristicvaluechanged", this.onValue);
  }
}

function sleep(ms) {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

/**
 * Updates `device` with `image` (a Uint8Array of an ESP-IDF app image).
 *
 * Options: `compress` (default true: deflated when the device takes it), `legacy` (the seed's
 * protocol, for old firmware), `attMtu` (the seed's protocol sends MTU - 3 bytes a packet; the
 * browser does not tell the MTU, so 23 unless you know better), `manifest` (the 152-byte
 * `IMAGE.sig` from `ble-ota sign`), `onEvent` (every event:
 * `started`, `progress`, `reconnecting`, `activated`, `rebooting`), `signal` (an AbortSignal).
 *
 * The device reboots into the image once it is verified and selected.
 * Resolves to `{slot, rebooting, reconnects, bytes, seconds, compressed, signed}` (`signed`:
 * the device took the manifest); rejects with an OtaError.
 */
export async function update(device, image, options = {}) {
  const { compress = true, legacy = false, attMtu, manifest, onEvent = () => {}, signal } = options;
  await load();
  let updater;
  try {
    updater = new Updater(image, compress, legacy, legacy ? (attMtu ?? 23) : attMtu, manifest);
  } catch (e) {
    throw new OtaError(String(e.message ?? e));
  }
  const link = new Link(device);
  const t0 = performance.now();
  const now = () => performance.now() - t0;
  const report = {
    slot: undefined,
    rebooting: false,
    reconnects: 0,
    bytes: 0,
    seconds: 0,
    compressed: false,
    signed: false,
  };
  let failure;
  const drain = () => {
    for (let e = updater.pollEvent(); e; e = updater.pollEvent()) {
      const event = JSON.parse(e);
      if (event.event === "started") {
        report.compressed = event.compressed;
        report.signed = event.signed;
      }
      if (event.event === "activated") report.slot = event.slot;
      if (event.event === "rebooting") report.rebooting = true;
      if (event.event === "progress") report.bytes = event.acked;
      if (event.event === "failed") failure = event.error;
      onEvent(event);
    }
  };
  try {
    await link.open();
    const stopped = () => {
      if (signal?.aborted) throw new OtaError("Stopped. Start again to resume where it stopped.");
    };
    while (!updater.isFinished()) {
      stopped();
      let lost = false;
      try {
        // Write while the updater allows (a window of write commands, or one request).
        for (let w = updater.pollTransmit(now()); w; w = updater.pollTransmit(now())) {
          stopped();
          const refused = await link.write(w.characteristic, w.bytes, w.withResponse);
          if (w.withResponse) updater.handleWriteResult(now(), refused);
          for (let n = link.take(); n; n = link.take()) updater.handleNotification(now(), n);
          drain();
        }
        const due = updater.pollTimeout();
        const wait = due === undefined ? 500 : Math.min(500, Math.max(0, due - now()));
        const n = await link.next(wait);
        if (n) updater.handleNotification(now(), n);
        else updater.handleTimeout(now());
      } catch (e) {
        if (!(e instanceof LinkLost)) throw e;
        lost = true;
      }
      if (lost) {
        // What arrived before the link went (a device restarting right after its last
        // answer) still counts.
        for (let n = link.take(); n; n = link.take()) updater.handleNotification(now(), n);
      }
      drain();
      if (lost && !updater.isFinished()) {
        updater.handleDisconnected();
        drain();
        if (updater.isFinished()) break;
        if (++report.reconnects > MAX_RECONNECTS) {
          throw new OtaError(`The link dropped ${MAX_RECONNECTS} times. Move closer and start again: it resumes where it stopped.`);
        }
        onEvent({ event: "reconnecting", attempt: report.reconnects });
        await link.open();
      }
    }
    drain();
    if (report.rebooting) await link.droppedWithin(10_000);
  } finally {
    link.close();
    updater.free();
  }
  if (failure) throw new OtaError(failure);
  report.seconds = now() / 1000;
  return report;
}

/**
 * Sends one command (`"info"`, `"confirm"`, `"reboot"`, `"abort"`, `"status"`) and resolves to
 * the device's answer; for INFO the device as `ble-ota info --json` shows it.
 */
export async function command(device, name, { timeoutMs = 5000 } = {}) {
  await load();
  // Every command but REBOOT may be sent again when the link drops before the answer.
  for (let attempt = 1; ; attempt++) {
    try {
      return await commandOnce(device, name, timeoutMs);
    } catch (e) {
      if (!(e instanceof LinkLost)) throw e;
      if (name === "reboot") return { answers: true, ok: true };
      if (attempt === 3) throw new OtaError(`The link dropped three times during ${name}. Move closer and try again.`);
    }
  }
}

async function commandOnce(device, name, timeoutMs) {
  const bytes = encodeCommand(name);
  const link = new Link(device);
  try {
    await link.open();
    const refused = await link.write("control", bytes, true);
    if (refused !== undefined) {
      throw new OtaError(`The device rejected ${name}: is it running OTA firmware?`);
    }
    const deadline = performance.now() + timeoutMs;
    while (performance.now() < deadline) {
      const value = await link.next(deadline - performance.now());
      if (!value) continue;
      let a = JSON.parse(answer(name, value));
      if (!a.answers) continue;
      if (a.cut) a = JSON.parse(answer(name, await link.read()));
      if (!a.ok) throw new OtaError(a.error);
      return a;
    }
    throw new OtaError(
      `No answer to ${name} within ${timeoutMs / 1000} s: does the device's firmware speak the fast protocol? (The seed's firmware does not: update it with the seed's protocol.)`,
      "no-answer",
    );
  } finally {
    link.close();
  }
}
