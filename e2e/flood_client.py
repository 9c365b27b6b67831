#!/usr/bin/env python3
"""A misbehaving fast-protocol client: it ignores the window and floods OTA Data.

On Bumble's BLE stack (independent of the Rust code) it connects to the first device
advertising the OTA service, exchanges the MTU, subscribes to OTA Control, sends BEGIN for
the image, and then writes the whole image as write-without-response chunks back to back,
never waiting for an ACK: far more than the device's receive queue holds. It then listens
for a while, counts ACK/REWIND notifications, and disconnects, leaving a resumable session
behind. A well-behaved client (`ble-ota flash`) then resumes it; the image must arrive intact.

    python e2e/flood_client.py --hci tcp-client:127.0.0.1:PORT --file app.bin

Prints one JSON line: {"chunks": N, "chunk_size": C, "window": W, "acked": A, "rewinds": R,
"errors": E}. Exit codes: 0 done, 1 failure, 4 no device.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import logging
import struct
import sys

from bumble.device import Peer
from bumble.transport import open_transport
from ota_scan import OTA_CONTROL_UUID, OTA_DATA_UUID, OTA_SERVICE_UUID, connect_ota_device, host


BEGIN = 0x11
BEGIN_OK = 0x91
ACK = 0xA0
REWIND = 0xA1
ERROR = 0xEE


async def run(args: argparse.Namespace, image: bytes) -> int:
    async with await open_transport(args.hci) as transport:
        device = await host(transport, "ble-ota-flood-client")
        connection = await connect_ota_device(device, args.scan_timeout, 10)
        if connection is None:
            print("error: no OTA device found", file=sys.stderr)
            return 4
        peer = Peer(connection)
        mtu = await peer.request_mtu(args.mtu)
        await peer.discover_service(OTA_SERVICE_UUID)
        service = peer.get_services_by_uuid(OTA_SERVICE_UUID)[0]
        await peer.discover_characteristics(service=service)
        control = peer.get_characteristics_by_uuid(OTA_CONTROL_UUID, service)[0]
        data = peer.get_characteristics_by_uuid(OTA_DATA_UUID, service)[0]
        notes: asyncio.Queue[bytes] = asyncio.Queue()
        await control.subscribe(lambda value: notes.put_nowait(bytes(value)))

        begin = struct.pack("<BI32sB", BEGIN, len(image), hashlib.sha256(image).digest(), 0)
        await control.write_value(begin, with_response=True)
        reply = await asyncio.wait_for(notes.get(), 10)
        if reply[0] != BEGIN_OK:
            print(f"error: BEGIN answered {reply.hex()}", file=sys.stderr)
            return 1
        _, resume, chunk_size, window, _slot = struct.unpack("<BIHIB", reply[:12])
        chunk_size = min(chunk_size, mtu - 3 - 4)

        # The flood: every chunk at once, no regard for the window.
        chunks = 0
        for offset in range(resume, len(image), chunk_size):
            payload = struct.pack("<I", offset) + image[offset : offset + chunk_size]
            await data.write_value(payload, with_response=False)
            chunks += 1

        acked = 0
        rewinds = 0
        errors = 0
        loop = asyncio.get_running_loop()
        deadline = loop.time() + args.listen
        while (left := deadline - loop.time()) > 0:
            try:
                note = await asyncio.wait_for(notes.get(), left)
            except asyncio.TimeoutError:
                break
            if note[0] == ACK:
                acked = max(acked, struct.unpack("<I", note[1:5])[0])
            elif note[0] == REWIND:
                rewinds += 1
            elif note[0] == ERROR:
                errors += 1
        print(
            json.dumps(
                {
                    "chunks": chunks,
                    "chunk_size": chunk_size,
                    "window": window,
                    "mtu": mtu,
                    "acked": acked,
                    "rewinds": rewinds,
                    "errors": errors,
                }
            ),
            flush=True,
        )
        try:
            await asyncio.wait_for(connection.disconnect(), 5)
        except Exception:
            pass
        return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hci", required=True, help="e.g. tcp-client:127.0.0.1:PORT")
    parser.add_argument("--file", required=True, help="the app image")
    parser.add_argument("--mtu", type=int, default=247)
    parser.add_argument("--scan-timeout", type=float, default=15.0)
    parser.add_argument("--listen", type=float, default=1.5, help="seconds to listen after the flood")
    parser.add_argument("--log-level", default="WARNING")
    args = parser.parse_args()
    logging.basicConfig(level=args.log_level.upper(), stream=sys.stderr)
    with open(args.file, "rb") as f:
        image = f.read()
    try:
        return asyncio.run(run(args, image))
    except Exception as error:
        print(f"error: {type(error).__name__}: {error}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
