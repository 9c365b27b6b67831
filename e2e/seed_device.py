#!/usr/bin/env python3
"""A device running the seed's firmware, as far as its OTA GATT service goes: the seed's
service and characteristics, REQUEST / DONE on OTA Control, packets on OTA Data (write requests
of at most the packet size written before REQUEST), and, like the seed, a restart after DONE_ACK
(the link drops). No answer to anything else, so a client that asks the fast protocol's INFO
waits in vain, as it would with the real seed. No flash: the image is kept in memory.

    python e2e/seed_device.py --hci tcp-client:127.0.0.1:PORT --name seed-esp32

Prints {"advertising": true} whenever it advertises (at start, and again after the restart),
and {"done": {...}} for the image taken (one per run): DONE's answer, the image's length and
SHA-256, and the packet size the client announced.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import sys

from bumble import hci
from bumble.device import Device
from bumble.transport import open_transport

from smoke_peripheral_central import DONE_ACK, FakeSeedDevice, advertisement_data


async def run(args: argparse.Namespace) -> int:
    async with await open_transport(args.hci) as transport:
        device = Device.with_hci(
            args.name, hci.Address("F0:5E:ED:00:00:01"), transport.source, transport.sink
        )
        await device.power_on()
        seed = FakeSeedDevice(device, refuse_request=False, refuse_image=False)
        await advertise(device, args.name)
        reply = await seed.finished
        image = bytes(seed.image)
        done = {
            "reply": reply,
            "len": len(image),
            "sha256": hashlib.sha256(image).hexdigest(),
            "packet_size": seed.packet_size,
        }
        print(json.dumps({"done": done}), flush=True)
        if reply == DONE_ACK:
            # The seed restarts into the new image: the link drops, and it advertises again.
            for connection in list(device.connections.values()):
                await connection.disconnect()
            await advertise(device, args.name)
        await asyncio.get_running_loop().create_future()
    return 0


async def advertise(device: Device, name: str) -> None:
    await device.start_advertising(
        advertising_data=advertisement_data(name),
        advertising_interval_min=20,
        advertising_interval_max=20,
    )
    print(json.dumps({"advertising": True}), flush=True)


def main() -> int:
    parser = argparse.ArgumentParser(description="The seed firmware's OTA service, on Bumble.")
    parser.add_argument("--hci", required=True, help="Bumble transport, e.g. tcp-client:127.0.0.1:PORT")
    parser.add_argument("--name", default="seed-esp32")
    return asyncio.run(run(parser.parse_args()))


if __name__ == "__main__":
    sys.exit(main())
