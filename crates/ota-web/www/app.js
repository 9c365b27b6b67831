// The page: device, firmware, update, confirm. Everything about the protocol is in
// ble-ota.js and the WebAssembly core; this file only shows it.
//
// `document.body.dataset.state` tells where the page is (idle, updating, rebooted, confirmed,
// failed), and `dataset.ready` that it checked the browser and loaded its core, for people and
// for the headless-browser test alike.

import { OtaError, availability, checkSignature, chooseDevice, command, inspectImage, load, update } from "./ble-ota.js";

const $ = (id) => document.getElementById(id);
const page = {
  device: undefined,
  info: undefined,
  image: undefined,
  checked: undefined,
  manifest: undefined,
  manifestProblem: undefined,
};
let stopper;

function setState(state) {
  document.body.dataset.state = state;
}

function say(text, cls = "") {
  $("status").textContent = text;
  $("status").className = cls;
}

function fail(e) {
  const text = e instanceof OtaError ? e.message : `${e.name ?? "Error"}: ${e.message ?? e}`;
  $("error").textContent = text;
  $("error").hidden = false;
  setState("failed");
}

function clearError() {
  $("error").hidden = true;
}

function kb(bytes) {
  return `${(bytes / 1024).toFixed(1)} KiB`;
}

function clock(seconds) {
  const s = Math.max(0, Math.round(seconds));
  return `${Math.floor(s / 60)}:${String(s % 60).padStart(2, "0")}`;
}

function list(dl, rows) {
  dl.replaceChildren();
  for (const [k, v] of rows) {
    const dt = document.createElement("dt");
    dt.textContent = k;
    const dd = document.createElement("dd");
    dd.textContent = v;
    dl.append(dt, dd);
  }
  dl.hidden = false;
}

function stateWords(state, running) {
  if (running === "factory") return "the factory app";
  return {
    "pending-verify": "on trial: confirm it, or it rolls back at the next reset",
    valid: "confirmed",
    new: "selected, not booted yet",
  }[state] ?? state;
}

function showDevice() {
  const i = page.info;
  list($("device"), [
    ["Name", page.device.name ?? "(no name)"],
    ["Chip", i.chip ?? "unknown"],
    ["Running", `${i.app_name} ${i.app_version} from ${i.running}`],
    ["State", stateWords(i.running_state, i.running)],
    ["Largest image", kb(i.max_image_size)],
    ["Takes", [i.compressed_images && "compressed images", i.signatures_required && "signed images only"].filter(Boolean).join(", ") || "plain images"],
  ]);
}

/** Why the chosen image cannot go to the chosen device, or "" when it can. */
function whyNot() {
  const c = page.checked;
  let why = "";
  if (c && !c.valid) why = `This is not an app image the device would take: ${c.problems.join("; ")}`;
  else if (c && page.info?.chip && c.chip !== page.info.chip) {
    why = `This image is built for ${c.chip ?? "another chip"}, the device is an ${page.info.chip}: pick the image built for it.`;
  } else if (c && page.info && c.size > page.info.max_image_size) {
    why = `The image (${kb(c.size)}) is larger than the device's update slot (${kb(page.info.max_image_size)}).`;
  } else if (c && page.manifestProblem) {
    why = `The signature does not fit: ${page.manifestProblem}.`;
  } else if (c && page.info?.signatures_required && !page.manifest) {
    why = "This device takes signed images only: add the image's .sig (from ble-ota sign).";
  }
  return why;
}

/** After a choice: shows why the update cannot start, or enables it. */
function refreshStart() {
  const why = whyNot();
  if (why) fail(new OtaError(why));
  else if (document.body.dataset.state === "failed") {
    clearError();
    setState("idle");
  }
  enableStart();
}

function enableStart() {
  $("start").disabled = Boolean(whyNot()) || !page.device || !page.checked;
}

async function refreshDevice() {
  page.info = await command(page.device, "info");
  showDevice();
}

/** A device that answers no INFO: the seed's firmware, which only the seed's protocol updates. */
function showSeedDevice() {
  page.info = undefined;
  list($("device"), [
    ["Name", page.device.name ?? "(no name)"],
    ["Firmware", "answers no INFO: the seed's firmware (the C boilerplate), updated with the seed's protocol"],
  ]);
  $("legacy").checked = true;
  $("options").open = true;
}

$("choose").addEventListener("click", async () => {
  clearError();
  try {
    page.device = await chooseDevice();
    say(`Connecting to ${page.device.name ?? "the device"}…`);
    try {
      await refreshDevice();
    } catch (e) {
      if (e.code !== "no-answer") throw e;
      showSeedDevice();
    }
    say("");
    refreshStart();
  } catch (e) {
    fail(e);
  }
});

$("image").addEventListener("change", async () => {
  clearError();
  const file = $("image").files[0];
  page.image = page.checked = undefined;
  if (!file) return refreshStart();
  page.image = new Uint8Array(await file.arrayBuffer());
  page.checked = await inspectImage(page.image);
  await checkManifest();
  const c = page.checked;
  list($("image-info"), [
    ["File", `${file.name}, ${kb(c.size)}`],
    ["App", c.project_name ? `${c.project_name} ${c.version}` : "unknown"],
    ["Chip", c.chip ?? "unknown"],
    ["Check", c.valid ? "a valid app image" : "refused"],
  ]);
  refreshStart();
});

/** Checks the chosen signature against the chosen image. */
async function checkManifest() {
  page.manifestProblem = page.manifest && page.image ? await checkSignature(page.image, page.manifest) : undefined;
}

$("signature").addEventListener("change", async () => {
  clearError();
  const file = $("signature").files[0];
  page.manifest = file ? new Uint8Array(await file.arrayBuffer()) : undefined;
  await checkManifest();
  refreshStart();
});

$("start").addEventListener("click", async () => {
  clearError();
  setState("updating");
  $("start").disabled = $("choose").disabled = true;
  $("confirm").hidden = true;
  $("stop").hidden = false;
  stopper = new AbortController();
  const bar = $("bar");
  bar.value = 0;
  let runStart; // this run's first acknowledged byte and when
  const onEvent = (e) => {
    const t = performance.now();
    switch (e.event) {
      case "started":
        bar.max = e.total;
        bar.value = e.offset;
        runStart ??= { t, acked: e.offset };
        say(e.offset > 0
          ? `Resuming at ${kb(e.offset)} of ${kb(e.total)}.`
          : `Sending ${kb(e.total)}${e.compressed ? " compressed" : ""}${e.signed ? ", signed" : ""}.`);
        break;
      case "progress": {
        bar.max = e.total;
        bar.value = e.acked;
        runStart ??= { t, acked: e.acked };
        const rate = (e.acked - runStart.acked) / Math.max(0.001, (t - runStart.t) / 1000);
        const eta = rate > 0 ? clock((e.total - e.acked) / rate) : "–:––";
        $("figures").textContent = `${kb(e.acked)} of ${kb(e.total)} · ${(rate / 1024).toFixed(1)} KiB/s · ${eta} left`;
        break;
      }
      case "reconnecting":
        say(`The link dropped: reconnecting (attempt ${e.attempt}); it resumes where the device stopped.`);
        break;
      case "activated":
        say(`Verified and selected (slot ota_${e.slot}).`);
        break;
      case "rebooting":
        say("Verified and selected; the device is rebooting into it…");
        break;
    }
  };
  try {
    const options = {
      compress: $("compress").checked,
      legacy: $("legacy").checked,
      // The seed's packets are MTU - 3; the fast protocol takes the device's chunk size.
      attMtu: $("legacy").checked ? Number($("mtu").value) || 23 : undefined,
      manifest: page.manifest,
      onEvent,
      signal: stopper.signal,
    };
    const report = await update(page.device, page.image, options);
    bar.value = bar.max;
    window.bleOtaReport = report;
    const dropped = report.reconnects ? `, the link dropped ${report.reconnects}× and it resumed` : "";
    if (!page.info) {
      // The seed's firmware: it verified the image, selected it and restarts; it reports no
      // version to check, and has nothing to confirm.
      say(`Sent with the seed's protocol in ${report.seconds.toFixed(1)} s: the device took the image and restarts into it.`, "ok");
      setState("rebooted");
      return;
    }
    say(`Sent in ${report.seconds.toFixed(1)} s${dropped}. Waiting for the device to boot it…`);
    await refreshDevice();
    const i = page.info;
    setState("rebooted");
    if (i.running_state === "pending-verify") {
      say(`Running ${i.app_version} from ${i.running}, on trial. Check it works, then keep it.`, "ok");
      $("confirm").hidden = false;
    } else {
      say(`Running ${i.app_version} from ${i.running} (${stateWords(i.running_state, i.running)}).`, "ok");
    }
  } catch (e) {
    fail(e);
  } finally {
    $("stop").hidden = true;
    $("choose").disabled = false;
    enableStart();
  }
});

$("stop").addEventListener("click", () => stopper?.abort());

$("confirm").addEventListener("click", async () => {
  clearError();
  try {
    await command(page.device, "confirm");
    await refreshDevice();
    $("confirm").hidden = true;
    say(`Confirmed: ${page.info.app_version} stays.`, "ok");
    setState("confirmed");
  } catch (e) {
    fail(e);
  }
});

setState("idle");
const why = await availability();
if (!why.ok) {
  $("unavailable").textContent = why.why;
  $("unavailable").hidden = false;
  $("choose").disabled = true;
}
await load();
// The page has checked the browser and loaded its core.
document.body.dataset.ready = "yes";
