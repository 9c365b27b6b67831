#!/usr/bin/env python3
"""A central that connects to the OTA device and then sends nothing, as a careless or hostile
one in radio range would, on Bumble's BLE stack. It waits up to --wait seconds for the device
to drop the link.

    python e2e/idle_client.py --hci tcp-client:127.0.0.1:PORT --wait 10

Prints one JSON line: {"dropped": true, "after_s": S} (the device disconnected after S
seconds) or {"dropped": false}. Exit codes: 0 done, 4 no device.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time

from bumble.transport import open_transport
from ota_scan import connected_central


async def run(args: argparse.Namespace) -> int:
    async with await open_transport(args.hci) as transport:
        connection = await connected_central(transport, "ble-ota-idle", args.scan_timeout)
        if connection is None:
            return 4
        gone = asyncio.Event()
        connection.on("disconnection", lambda _reason: gone.set())
        start = time.monotonic()
        try:
            await asyncio.wait_for(gone.wait(), args.wait)
            print(json.dumps({"dropped": True, "after_s": round(time.monotonic() - start, 2)}))
        except asyncio.TimeoutError:
            print(json.dumps({"dropped": False}))
            await connection.disconnect()
        return 0


def main() -> int:
    parser = argparse.ArgumentParser(description="Connect and idle until the device drops us.")
    parser.add_argument("--hci", required=True, help="Bumble transport, e.g. tcp-client:127.0.0.1:PORT")
    parser.add_argument("--wait", type=float, default=10.0, help="seconds to wait for the drop")
    parser.add_argument("--scan-timeout", type=float, default=15.0)
    return asyncio.run(run(parser.parse_args()))


if __name__ == "__main__":
    sys.exit(main())
