#!/usr/bin/env python3
"""The seed's legacy OTA update flow, run by an independent BLE stack (Bumble's GATT client).

It does exactly what a client written for the C seed (esp32-ble-ota) does, so the Rust
device can be checked against a client that shares none of its code:

1. scan for the device (by --address, by --name, or the first one advertising the OTA
   service) and connect;
2. exchange the ATT MTU (--mtu) and compute packet_size = mtu - 3, never clamped (the seed's
   client does exactly this: with an MTU of 517 it would write 514);
3. subscribe to notifications on OTA Control, then write packet_size as u16 little-endian to
   OTA Data (write request);
4. write 0x01 (REQUEST) to OTA Control; wait for 0x02 (ACK) or 0x03 (NAK), and at least 1 s;
5. write the image in packet_size pieces to OTA Data (write requests, with response);
6. write 0x04 (DONE) to OTA Control; wait for 0x05 (DONE_ACK) or 0x06 (DONE_NAK).

    python e2e/legacy_client.py --hci tcp-client:127.0.0.1:PORT --name NAME --file app.bin

Exit codes: 0 update accepted (DONE_ACK), 1 failure (link, GATT, timeout), 2 request
refused (NAK) or bad arguments, 3 image refused (DONE_NAK), 4 no device found.
Progress goes to stdout, one line per step, flushed.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
import time

from bumble import hci
from bumble.core import UUID, AdvertisingData
from bumble.device import Advertisement, Device, Peer
from bumble.gatt import GATT_CLIENT_CHARACTERISTIC_CONFIGURATION_DESCRIPTOR
from bumble.transport import open_transport
from ota_scan import OTA_SERVICE_UUID, OTA_CONTROL_UUID, OTA_DATA_UUID


REQUEST = 0x01
REQUEST_ACK = 0x02
REQUEST_NAK = 0x03
DONE = 0x04
DONE_ACK = 0x05
DONE_NAK = 0x06

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_REQUEST_NAK = 2
EXIT_DONE_NAK = 3
EXIT_NOT_FOUND = 4


class Failure(Exception):
    """Ends the run with an exit code and a message."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code


def say(message: str) -> None:
    print(message, flush=True)


def advertised_services(advertisement: Advertisement) -> list[UUID]:
    uuids: list[UUID] = []
    for ad_type in (
        AdvertisingData.COMPLETE_LIST_OF_128_BIT_SERVICE_CLASS_UUIDS,
        AdvertisingData.INCOMPLETE_LIST_OF_128_BIT_SERVICE_CLASS_UUIDS,
    ):
        for found in advertisement.data.get_all(ad_type):
            uuids.extend(found if isinstance(found, list) else [found])
    return uuids


def advertised_name(advertisement: Advertisement) -> str | None:
    return advertisement.data.get(AdvertisingData.COMPLETE_LOCAL_NAME) or advertisement.data.get(
        AdvertisingData.SHORTENED_LOCAL_NAME
    )


async def find_device(device: Device, args: argparse.Namespace) -> hci.Address:
    """Scan until an advertisement matches --address, --name or the OTA service."""
    found: asyncio.Future[hci.Address] = asyncio.get_running_loop().create_future()
    wanted_address = args.address.upper() if args.address else None

    def on_advertisement(advertisement: Advertisement) -> None:
        if found.done():
            return
        address = advertisement.address
        if wanted_address is not None:
            match = address.to_string(with_type_qualifier=False).upper() == wanted_address
        elif args.name is not None:
            match = advertised_name(advertisement) == args.name
        else:
            match = OTA_SERVICE_UUID in advertised_services(advertisement)
        if match:
            found.set_result(address)

    device.on(Device.EVENT_ADVERTISEMENT, on_advertisement)
    await device.start_scanning(filter_duplicates=False)
    try:
        return await asyncio.wait_for(found, args.scan_timeout)
    except asyncio.TimeoutError:
        what = args.address or (f"named {args.name!r}" if args.name else "with the OTA service")
        raise Failure(EXIT_NOT_FOUND, f"no device {what} found in {args.scan_timeout} s")
    finally:
        device.remove_listener(Device.EVENT_ADVERTISEMENT, on_advertisement)
        await device.stop_scanning()


async def next_notification(queue: asyncio.Queue[bytes], timeout: float, waiting_for: str) -> int:
    try:
        value = await asyncio.wait_for(queue.get(), timeout)
    except asyncio.TimeoutError:
        raise Failure(EXIT_FAILURE, f"no notification ({waiting_for}) within {timeout} s")
    if len(value) != 1:
        raise Failure(EXIT_FAILURE, f"unexpected OTA Control notification {value.hex()}")
    return value[0]


async def run(args: argparse.Namespace, image: bytes) -> int:
    say(f"connecting to controller {args.hci}")
    async with await open_transport(args.hci) as hci_transport:
        device = Device.with_hci(
            "ble-ota-legacy-client",
            hci.Address.generate_static_address(),
            hci_transport.source,
            hci_transport.sink,
        )
        await device.power_on()

        say("scanning")
        address = await find_device(device, args)
        say(f"found {address.to_string(with_type_qualifier=False)}, connecting")
        connection = await device.connect(address, timeout=args.timeout)
        disconnected = asyncio.get_running_loop().create_future()
        connection.on(
            connection.EVENT_DISCONNECTION,
            lambda reason: disconnected.done() or disconnected.set_result(reason),
        )
        peer = Peer(connection)

        mtu = await peer.request_mtu(args.mtu)
        # The seed's client: MTU - 3, no clamping to ATT's 512-byte limit.
        packet_size = mtu - 3
        say(f"connected, MTU {mtu}, packet size {packet_size}")

        await peer.discover_service(OTA_SERVICE_UUID)
        services = peer.get_services_by_uuid(OTA_SERVICE_UUID)
        if not services:
            raise Failure(EXIT_FAILURE, "the device has no OTA service")
        await peer.discover_characteristics(service=services[0])
        controls = peer.get_characteristics_by_uuid(OTA_CONTROL_UUID, services[0])
        datas = peer.get_characteristics_by_uuid(OTA_DATA_UUID, services[0])
        if not controls or not datas:
            raise Failure(EXIT_FAILURE, "the OTA service lacks OTA Control or OTA Data")
        control, data = controls[0], datas[0]

        notifications: asyncio.Queue[bytes] = asyncio.Queue()
        await control.subscribe(lambda value: notifications.put_nowait(bytes(value)))
        # Bumble's subscribe() only logs a warning when there is nothing to subscribe to.
        if control.get_descriptor(GATT_CLIENT_CHARACTERISTIC_CONFIGURATION_DESCRIPTOR) is None:
            raise Failure(EXIT_FAILURE, "OTA Control has no CCCD: cannot subscribe")
        say("subscribed to OTA Control")

        await data.write_value(packet_size.to_bytes(2, "little"), with_response=True)
        say(f"packet size {packet_size} written to OTA Data")

        await control.write_value(bytes([REQUEST]), with_response=True)
        say("OTA request sent")
        # The seed's client gives the device a second after REQUEST before sending data.
        requested = time.monotonic()
        reply = await next_notification(notifications, args.timeout, "request ACK")
        await asyncio.sleep(max(0.0, 1.0 - (time.monotonic() - requested)))
        if reply == REQUEST_NAK:
            raise Failure(EXIT_REQUEST_NAK, "the device refused the OTA request (NAK)")
        if reply != REQUEST_ACK:
            raise Failure(EXIT_FAILURE, f"unexpected reply 0x{reply:02x} to the OTA request")
        say("OTA request acknowledged")

        started = time.monotonic()
        total = len(image)
        packets = (total + packet_size - 1) // packet_size
        next_report = 0
        for index in range(packets):
            chunk = image[index * packet_size : (index + 1) * packet_size]
            await data.write_value(chunk, with_response=True)
            sent = min((index + 1) * packet_size, total)
            percent = sent * 100 // total if total else 100
            if percent >= next_report or index + 1 == packets:
                say(f"progress {sent}/{total} bytes ({percent}%), packet {index + 1}/{packets}")
                next_report = percent - percent % 10 + 10
        elapsed = time.monotonic() - started
        rate = total / elapsed / 1024 if elapsed > 0 else float("inf")
        say(f"sent {total} bytes in {packets} packets, {elapsed:.2f} s ({rate:.1f} KiB/s)")

        await control.write_value(bytes([DONE]), with_response=True)
        say("OTA done sent")
        reply = await next_notification(notifications, args.timeout, "done ACK")
        if reply == DONE_NAK:
            raise Failure(EXIT_DONE_NAK, "the device refused the image (DONE_NAK)")
        if reply != DONE_ACK:
            raise Failure(EXIT_FAILURE, f"unexpected reply 0x{reply:02x} to OTA done")
        say("OTA done acknowledged: the device will boot the new image")

        if not disconnected.done():
            try:
                await asyncio.wait_for(connection.disconnect(), 5)
            except Exception:  # the device may already be rebooting
                pass
        return EXIT_OK


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description="Legacy (seed-compatible) BLE OTA client on Bumble's BLE stack."
    )
    parser.add_argument(
        "--hci", required=True, help="Bumble transport, e.g. tcp-client:127.0.0.1:PORT"
    )
    select = parser.add_mutually_exclusive_group()
    select.add_argument("--name", help="advertised local name of the device")
    select.add_argument("--address", help="device address, e.g. F0:F1:F2:F3:F4:F5")
    parser.add_argument("--file", required=True, help="the app image to send")
    parser.add_argument("--mtu", type=int, default=247, help="ATT MTU to request (default 247)")
    parser.add_argument("--scan-timeout", type=float, default=15.0, help="seconds (default 15)")
    parser.add_argument(
        "--timeout",
        type=float,
        default=60.0,
        help="seconds to wait for connection and each ACK (default 60)",
    )
    parser.add_argument("--log-level", default="WARNING", help="stderr log level")
    args = parser.parse_args(argv)
    if not 23 <= args.mtu <= 517:
        parser.error("--mtu must be 23..517")
    logging.basicConfig(level=args.log_level.upper(), stream=sys.stderr)

    try:
        with open(args.file, "rb") as file:
            image = file.read()
    except OSError as error:
        print(f"error: cannot read {args.file}: {error}", file=sys.stderr)
        return EXIT_FAILURE
    if not image:
        print(f"error: {args.file} is empty", file=sys.stderr)
        return EXIT_FAILURE

    try:
        return asyncio.run(run(args, image))
    except Failure as failure:
        print(f"error: {failure}", file=sys.stderr)
        return failure.code
    except Exception as error:  # link or GATT failure: report it, exit 1
        print(f"error: {type(error).__name__}: {error}", file=sys.stderr)
        return EXIT_FAILURE
    except KeyboardInterrupt:
        return EXIT_FAILURE


if __name__ == "__main__":
    sys.exit(main())
