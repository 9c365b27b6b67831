// The wasm build of ota-web, run in a real JavaScript engine (Node.js), as `cargo xtask test`
// does after wasm-bindgen: the bindings a page uses exist and behave.
//
//   node crates/ota-web/js/node_smoke.mjs DIR_OF_WASM_BINDGEN_NODEJS_OUTPUT IMAGE.bin
import assert from "node:assert/strict";
import { createRequire } from "node:module";
import { readFileSync } from "node:fs";
import path from "node:path";

const [dir, imagePath] = process.argv.slice(2);
const require = createRequire(import.meta.url);
const ota = require(path.resolve(dir, "ota_web.js"));
const image = new Uint8Array(readFileSync(imagePath));

// The validator: a good image, then one flipped bit.
const good = JSON.parse(ota.inspect(image));
assert.equal(good.valid, true, JSON.stringify(good));
assert.equal(good.chip, "esp32c3");
const corrupt = image.slice();
corrupt[100] ^= 1;
const bad = JSON.parse(ota.inspect(corrupt));
assert.equal(bad.valid, false);
assert.ok(bad.problems.length > 0);

// An update as a page drives it: BEGIN (compressed) on OTA Control, with response.
const u = new ota.Updater(image, true, false, undefined, undefined);
const begin = u.pollTransmit(0);
assert.equal(begin.characteristic, "control");
assert.equal(begin.withResponse, true);
assert.equal(begin.bytes[0], 0x11, "BEGIN");
assert.equal(begin.bytes.length, 46, "a compressed BEGIN carries the stream's length and CRC");
assert.equal(u.pollTransmit(1), undefined, "nothing more until BEGIN is answered");
u.handleWriteResult(2, undefined);
// BEGIN_OK: resume 0, chunk 240, window 7680, slot 0.
u.handleNotification(3, Uint8Array.of(0x91, 0, 0, 0, 0, 240, 0, 0x00, 0x1e, 0, 0, 0));
const started = JSON.parse(u.pollEvent());
assert.equal(started.event, "started");
assert.equal(started.compressed, true);
const chunk = u.pollTransmit(4);
assert.equal(chunk.characteristic, "data");
assert.equal(chunk.withResponse, false, "chunks go as write commands");
assert.deepEqual([...chunk.bytes.slice(0, 4)], [0, 0, 0, 0], "the first chunk is at offset 0");
// A refusal reaches the page as an event with what to do.
u.handleNotification(5, Uint8Array.of(0xee, 0x00, 0x0d, 0, 0, 0, 0));
const failed = JSON.parse(u.pollEvent());
assert.equal(failed.event, "failed");
assert.match(failed.error, /FlashError/);
assert.equal(u.isFinished(), true);

// Bad input is an exception, not a crash.
assert.throws(() => new ota.Updater(new Uint8Array(0), true, false, undefined, undefined));
assert.throws(() => new ota.Updater(image, true, false, undefined, Uint8Array.of(1, 2, 3)));
console.log("ota-web in Node.js: inspect, Updater and errors behave");
