// Types of ble-ota.js, for pages written in TypeScript.

export const OTA_SERVICE: string;
export const OTA_CONTROL: string;
export const OTA_DATA: string;
export const MAX_RECONNECTS: number;

/** An error a user can act on: the message says what happened and what to do. */
export class OtaError extends Error {
  /** "no-answer": the device answered no command (the seed's firmware answers none). */
  code?: "no-answer";
}

/** Loads the WebAssembly core once. */
export function load(wasmUrl?: string | URL): Promise<unknown>;

export function availability(): Promise<{ ok: true } | { ok: false; why: string }>;

export interface ImageCheck {
  valid: boolean;
  problems: string[];
  chip: string | null;
  chip_id: number | null;
  project_name: string | null;
  version: string | null;
  secure_version: number | null;
  size: number;
}

/** Checks an image as the device will. */
export function inspectImage(image: Uint8Array): Promise<ImageCheck>;

/** Why the signature file cannot go with the image (not a .sig, or another image's), or undefined. */
export function checkSignature(image: Uint8Array, signature: Uint8Array): Promise<string | undefined>;

/** The browser's chooser, filtered on the OTA service. Needs a user gesture. */
export function chooseDevice(): Promise<BluetoothDevice>;

export type UpdateEvent =
  | { event: "started"; offset: number; total: number; chunk_size: number; window: number; compressed: boolean; signed: boolean }
  | { event: "progress"; acked: number; total: number }
  | { event: "reconnecting"; attempt: number }
  | { event: "activated"; slot: number | null }
  | { event: "rebooting" }
  | { event: "failed"; error: string };

export interface UpdateOptions {
  /** Deflate the image when the device takes it (default true). */
  compress?: boolean;
  /** The seed's protocol, for firmware built from the C boilerplate. */
  legacy?: boolean;
  /** ATT MTU for the seed's protocol (packets of MTU - 3); default 23. */
  attMtu?: number;
  /** The 152-byte IMAGE.sig from `ble-ota sign`. */
  manifest?: Uint8Array;
  onEvent?: (event: UpdateEvent) => void;
  signal?: AbortSignal;
}

export interface UpdateReport {
  slot: number | null | undefined;
  rebooting: boolean;
  reconnects: number;
  bytes: number;
  seconds: number;
  /** The image went deflated. */
  compressed: boolean;
  /** The device took the signed manifest. */
  signed: boolean;
}

/** Sends the image; the device reboots into it once verified and selected. */
export function update(device: BluetoothDevice, image: Uint8Array, options?: UpdateOptions): Promise<UpdateReport>;

export interface DeviceInfo {
  answers: true;
  ok: true;
  protocol_version: number;
  chip: string | null;
  running: string;
  running_state: string | null;
  app_name: string;
  app_version: string;
  max_image_size: number;
  slots: { slot: string; state: string; running: boolean; boots_next: boolean }[];
  resumable: { size: number; offset: number } | null;
  compressed_images: boolean;
  signatures_required: boolean;
  unsigned_legacy: boolean;
}

export function command(device: BluetoothDevice, name: "info", options?: { timeoutMs?: number }): Promise<DeviceInfo>;
export function command(
  device: BluetoothDevice,
  name: "confirm" | "reboot" | "abort" | "status",
  options?: { timeoutMs?: number },
): Promise<{ answers: true; ok: true }>;
