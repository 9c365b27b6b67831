#!/usr/bin/env python3
"""The web updater in headless Chromium, as a user clicks through it: choose the device (the
browser's chooser, answered through the DevTools protocol), then each step given: refuse a
corrupt image (`--corrupt`); on a device that takes signed images only, refuse the image alone
and another image's signature, then add its own (`--sig`, `--wrong-sig`); update with the
fast protocol (`--fast`; `--stop-at F` presses Stop at that fraction and Update again, to
resume; `--screenshot` takes the page past 40%), confirm; then update with the seed's
protocol (`--legacy`, `--legacy-mtu`) and confirm. Chromium (`--chromium`, or $CHROMIUM)
reaches the device through BlueZ's D-Bus API, here the BlueZ stand-in (e2e/bluez_standin.py)
on the bus in DBUS_SYSTEM_BUS_ADDRESS; a dropped link is the stand-in's (`--drop-at`).

    python e2e/web_page.py --url http://localhost:PORT/ --corrupt bad.bin \\
        --fast app2.bin --legacy app3.bin --legacy-mtu 247 --screenshot page.png

Driven by Playwright (its Python package carries its own driver; the browser is the system's
Chromium). Prints one JSON object, what the page showed at each step, with `exception` and
`page_at_exception` when a step failed (then it exits 1).
"""

from __future__ import annotations

import argparse
import json
import os
import sys

from playwright.sync_api import Page, sync_playwright


def wait_for_progress(page: Page, fraction: float) -> None:
    """Waits until the bar reaches `fraction`, or the update ended."""
    page.wait_for_function(
        """(fraction) => {
            const bar = document.getElementById('bar');
            return bar.value / bar.max >= fraction || document.body.dataset.state !== 'updating';
        }""",
        arg=fraction,
        timeout=120_000,
        polling=20,
    )


def update_with(
    page: Page, image: str, screenshot: str | None = None, stop_at: float | None = None
) -> dict:
    """Picks `image`, presses Update (with `stop_at`, Stop at that fraction and Update again),
    waits for the reboot, presses Confirm."""
    page.set_input_files("#image", image)
    page.wait_for_function("() => !document.getElementById('start').disabled", timeout=10_000)
    page.click("#start")
    step: dict = {}
    if stop_at is not None:
        wait_for_progress(page, stop_at)
        page.click("#stop")
        page.wait_for_function("() => document.body.dataset.state === 'failed'", timeout=30_000)
        step["stopped"] = page.inner_text("#error")
        page.click("#start")
        page.wait_for_function(
            """() => document.getElementById('status').innerText.startsWith('Resuming')
                || document.body.dataset.state !== 'updating'""",
            timeout=30_000,
            polling=10,
        )
        step["restarted"] = page.inner_text("#status")
    if screenshot:
        # Mid-update, once past 40%: what the README shows.
        wait_for_progress(page, 0.4)
        page.screenshot(path=screenshot, full_page=True)
        step["screenshot_at"] = page.inner_text("#figures")
    page.wait_for_function(
        "() => ['rebooted', 'failed'].includes(document.body.dataset.state)", timeout=180_000
    )
    step["state"] = page.evaluate("document.body.dataset.state")
    step["status"] = page.inner_text("#status")
    step["report"] = page.evaluate("window.bleOtaReport")
    if step["state"] == "failed":
        step["error"] = page.inner_text("#error")
        return step
    step["device_after"] = page.inner_text("#device")
    if page.is_visible("#confirm"):
        page.click("#confirm")
        page.wait_for_function(
            "() => ['confirmed', 'failed'].includes(document.body.dataset.state)", timeout=30_000
        )
        step["confirmed"] = page.evaluate("document.body.dataset.state") == "confirmed"
        step["device_confirmed"] = page.inner_text("#device")
    return step


def refused_on_page(page: Page, image: str) -> dict:
    """Picks `image`, which the page must refuse: its error, and whether Update stays off."""
    # Wait for this refusal, not an earlier one still shown.
    page.evaluate("document.getElementById('error').hidden = true")
    page.set_input_files("#image", image)
    page.wait_for_selector("#error", state="visible")
    return {"error": page.inner_text("#error"), "start_disabled": page.is_disabled("#start")}


def run(args: argparse.Namespace, page: Page, out: dict) -> None:
    page.on("console", lambda m: print(f"page: {m.text}", file=sys.stderr))
    page.on("pageerror", lambda e: print(f"page error: {e}", file=sys.stderr))

    # The chooser: pick the first device offered, as a user would click it.
    cdp = page.context.new_cdp_session(page)
    cdp.send("DeviceAccess.enable")

    def prompted(prompt: dict) -> None:
        if not prompt["devices"]:
            return  # offered again as devices are found
        out["offered"] = [d["name"] for d in prompt["devices"]]
        cdp.send(
            "DeviceAccess.selectPrompt",
            {"id": prompt["id"], "deviceId": prompt["devices"][0]["id"]},
        )

    cdp.on("DeviceAccess.deviceRequestPrompted", prompted)

    page.goto(args.url)
    page.wait_for_function("() => document.body.dataset.ready === 'yes'", timeout=30_000)
    out["unavailable"] = page.is_visible("#unavailable")
    page.click("#choose")
    page.wait_for_selector("#device", state="visible", timeout=60_000)
    out["device"] = page.inner_text("#device")

    if args.corrupt:
        # A corrupt image: refused on the page, before anything is sent.
        out["corrupt"] = refused_on_page(page, args.corrupt)

    if args.sig:
        # A device that takes signed images only: the image alone is refused on the page, with
        # the image's .sig it goes.
        out["unsigned"] = refused_on_page(page, args.fast)
        if args.wrong_sig:
            # Another image's signature: refused on the page too.
            page.set_input_files("#signature", args.wrong_sig)
            page.wait_for_function(
                "() => document.getElementById('error').innerText.includes('does not fit')"
            )
            out["wrong_sig"] = {
                "error": page.inner_text("#error"),
                "start_disabled": page.is_disabled("#start"),
            }
        page.set_input_files("#signature", args.sig)

    if args.fast:
        out["fast"] = update_with(page, args.fast, args.screenshot, args.stop_at)
    if args.legacy:
        page.evaluate("document.getElementById('options').open = true")
        page.check("#legacy")
        page.fill("#mtu", str(args.legacy_mtu))
        out["legacy"] = update_with(page, args.legacy)


def main() -> int:
    parser = argparse.ArgumentParser(description="The web updater, clicked through in Chromium.")
    parser.add_argument("--url", required=True)
    parser.add_argument("--corrupt", help="a corrupt image the page must refuse")
    parser.add_argument("--fast", help="an image to send with the fast protocol")
    parser.add_argument("--sig", help="the fast image's .sig, for a device that requires one")
    parser.add_argument("--wrong-sig", help="with --sig: another image's .sig, tried first")
    parser.add_argument("--legacy", help="then an image to send with the seed's protocol")
    parser.add_argument("--legacy-mtu", type=int, default=23)
    parser.add_argument("--screenshot")
    parser.add_argument(
        "--stop-at", type=float, help="press Stop at this fraction of the fast update, then Update"
    )
    parser.add_argument("--chromium", default=os.environ.get("CHROMIUM", "/usr/bin/chromium"))
    args = parser.parse_args()
    out: dict = {}
    with sync_playwright() as p:
        browser = p.chromium.launch(
            executable_path=args.chromium,
            headless=True,
            # Web Bluetooth is behind a flag on Linux; the sandbox needs user namespaces that
            # containers often lack.
            args=["--enable-features=WebBluetooth", "--no-sandbox"],
        )
        page = browser.new_page(viewport={"width": 820, "height": 1000})
        try:
            run(args, page, out)
        except Exception as error:
            out["exception"] = f"{type(error).__name__}: {error}"
            # Where the page stood when it went wrong.
            try:
                out["page_at_exception"] = page.evaluate(
                    """() => ({state: document.body.dataset.state,
                        status: document.getElementById('status').innerText,
                        error: document.getElementById('error').innerText,
                        figures: document.getElementById('figures').innerText})"""
                )
            except Exception:
                pass
        finally:
            browser.close()
    print(json.dumps(out))
    return 1 if "exception" in out else 0


if __name__ == "__main__":
    sys.exit(main())
