#!/usr/bin/env python3
"""A central on Bumble's BLE stack that meets a device requiring LE Secure Connections: it
writes INFO before pairing (which the device must refuse with Insufficient Authentication,
0x05), pairs by passkey entry typing --passkey, and writes INFO again.

    python e2e/secure_client.py --hci tcp-client:127.0.0.1:PORT --passkey 123456

Prints one JSON line: {"before": W, "paired": BOOL, "pairing_error": STR|null, "after": W,
"info": HEX|null}, W being {"ok": true} or {"error": CODE}; "info" is the INFO answer
notified after pairing. Exit codes: 0 done, 4 no device.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys

from bumble import att
from bumble.device import Peer
from bumble.pairing import PairingConfig, PairingDelegate
from bumble.transport import open_transport
from ota_scan import OTA_CONTROL_UUID, connect_ota_device, host

INFO = 0x10


class TypesPasskey(PairingDelegate):
    """A user who types `passkey` when asked, as a phone's pairing dialog takes it."""

    def __init__(self, passkey: int):
        super().__init__(io_capability=PairingDelegate.IoCapability.KEYBOARD_INPUT_ONLY)
        self.passkey = passkey

    async def get_number(self) -> int | None:
        return self.passkey


async def write(peer: Peer, handle: int, value: bytes) -> dict:
    try:
        response = await peer.gatt_client.send_request(
            att.ATT_Write_Request(attribute_handle=handle, attribute_value=value)
        )
    except asyncio.CancelledError:
        # The device may drop the link after a failed pairing: the request ends with it.
        return {"error": "disconnected"}
    if response is None:
        raise RuntimeError("a write request went unanswered")
    if response.op_code == att.Opcode.ATT_ERROR_RESPONSE:
        return {"error": int(response.error_code)}
    return {"ok": True}


async def run(args: argparse.Namespace) -> int:
    async with await open_transport(args.hci) as transport:
        device = await host(transport, "ble-ota-secure")
        device.pairing_config_factory = lambda _connection: PairingConfig(
            sc=True, mitm=True, bonding=False, delegate=TypesPasskey(args.passkey)
        )
        connection = await connect_ota_device(device, args.scan_timeout, 30)
        if connection is None:
            print("error: no device advertising the OTA service", file=sys.stderr)
            return 4
        peer = Peer(connection)
        await peer.request_mtu(247)
        await peer.discover_all()
        control = next(
            c
            for s in peer.services
            for c in s.characteristics
            if c.uuid == OTA_CONTROL_UUID
        )
        notes: asyncio.Queue[bytes] = asyncio.Queue()
        await control.subscribe(lambda value: notes.put_nowait(bytes(value)))
        before = await write(peer, control.handle, bytes([INFO]))
        paired, pairing_error = True, None
        try:
            await asyncio.wait_for(connection.pair(), 30)
        except Exception as error:  # a wrong passkey ends in an SMP failure
            paired, pairing_error = False, f"{type(error).__name__}: {error}"
        # Whatever the pairing gave, the write again: refused unless the link is authenticated.
        after = await write(peer, control.handle, bytes([INFO]))
        info = None
        if "ok" in after:
            try:
                note = await asyncio.wait_for(notes.get(), 5)
                info = note.hex()
            except asyncio.TimeoutError:
                pass
        print(
            json.dumps(
                {
                    "before": before,
                    "paired": paired,
                    "pairing_error": pairing_error,
                    "after": after,
                    "info": info,
                }
            ),
            flush=True,
        )
        try:
            await asyncio.wait_for(connection.disconnect(), 5)
        except Exception:  # the device may have dropped the link after a failed pairing
            pass
        return 0


def main() -> int:
    parser = argparse.ArgumentParser(description="Pair by passkey, then write to OTA Control.")
    parser.add_argument("--hci", required=True, help="Bumble transport, e.g. tcp-client:127.0.0.1:PORT")
    parser.add_argument("--passkey", type=int, required=True, help="the passkey the user types")
    parser.add_argument("--scan-timeout", type=float, default=15.0)
    return asyncio.run(run(parser.parse_args()))


if __name__ == "__main__":
    sys.exit(main())
