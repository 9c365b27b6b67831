#!/usr/bin/env python3
"""Smoke test of e2e/virtual_controllers.py and e2e/legacy_client.py with Bumble hosts.

Each scenario starts a fresh `virtual_controllers.py` process (as a Rust test would:
ports read from its first stdout line, stdin a pipe), then drives Bumble hosts over
`tcp-client:127.0.0.1:PORT`:

- link: a peripheral advertises the OTA service; a central scans, connects, exchanges
  the MTU, requests data length 251 and the 2M PHY (both completions checked on both
  sides, and Read PHY), writes 100 KB as write-without-response chunks and checks them
  byte for byte, then gets a notification. The ACL packets each controller hands its
  host are checked against the fragment size. Run with 251-byte fragments and MTU 247,
  and with 251- and 27-byte fragments and MTU 517 (512-byte writes and notification).
- commands: unknown and unhandled commands get an error reply instead of silence.
- legacy: e2e/legacy_client.py updates a tiny fake seed device (accept, request NAK,
  done NAK) and must exit 0, 2 and 3. Against a fake device that grants MTU 517 it must fail
  (exit 1): the seed's unclamped packet size 514 is more than ATT carries.

    target/py-venv/bin/python e2e/smoke_peripheral_central.py [-k link] [-v]

Exits 0 when every scenario passes.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bumble import hci
from bumble.core import UUID, AdvertisingData
from bumble.device import Advertisement, Connection, Device, Peer
from bumble.gatt import Characteristic, CharacteristicValue, Service
from bumble.transport import open_transport

HERE = Path(__file__).resolve().parent
OTA_SERVICE_UUID = UUID("d6f1d96d-594c-4c53-b1c6-244a1dfde6d8")
OTA_DATA_UUID = UUID("23408888-1f40-4cd8-9b89-ca8d45f8a5b0")
OTA_CONTROL_UUID = UUID("7ad671aa-21c0-46a4-b722-270e3ae3d830")
PERIPHERAL_ADDRESS = hci.Address("F0:F1:F2:F3:F4:F5", hci.Address.RANDOM_DEVICE_ADDRESS)
CENTRAL_ADDRESS = hci.Address("C0:C1:C2:C3:C4:C5", hci.Address.RANDOM_DEVICE_ADDRESS)
STEP_TIMEOUT = 10.0

log = logging.getLogger("smoke")


def say(message: str) -> None:
    print(message, flush=True)


# --------------------------------------------------------------------------- helpers


@contextlib.asynccontextmanager
async def virtual_controllers(*args: str):
    """Run virtual_controllers.py; yields its ports. Closing its stdin stops it."""
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        str(HERE / "virtual_controllers.py"),
        *args,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
    )
    try:
        line = await asyncio.wait_for(process.stdout.readline(), STEP_TIMEOUT)
        ports = json.loads(line)["ports"]
        yield ports
    finally:
        process.stdin.close()
        try:
            code = await asyncio.wait_for(process.wait(), 5)
        except asyncio.TimeoutError:
            process.kill()
            await process.wait()
            raise AssertionError("virtual_controllers.py did not exit when stdin closed")
        assert code == 0, f"virtual_controllers.py exited with {code}"


class AclSpy:
    """Sits between a transport's source and its Bumble host and records ACL packets."""

    def __init__(self, host) -> None:
        self.host = host
        self.sizes: list[int] = []
        self.pb_flags: list[int] = []

    def on_packet(self, packet: bytes) -> None:
        if packet[0] == hci.HCI_ACL_DATA_PACKET:
            header = int.from_bytes(packet[1:3], "little")
            self.pb_flags.append((header >> 12) & 3)
            self.sizes.append(int.from_bytes(packet[3:5], "little"))
        self.host.on_packet(packet)


@contextlib.asynccontextmanager
async def bumble_device(port: int, name: str, address: hci.Address, spy: bool = False):
    async with await open_transport(f"tcp-client:127.0.0.1:{port}") as transport:
        device = Device.with_hci(name, address, transport.source, transport.sink)
        device.acl_spy = None
        if spy:
            device.acl_spy = AclSpy(device.host)
            transport.source.set_packet_sink(device.acl_spy)
        await device.power_on()
        yield device


def wait_event(emitter, event: str) -> asyncio.Future:
    future = asyncio.get_running_loop().create_future()

    def on_event(*args):
        if not future.done():
            future.set_result(args)

    emitter.once(event, on_event)
    return future


async def within(awaitable, what: str, timeout: float = STEP_TIMEOUT):
    try:
        return await asyncio.wait_for(awaitable, timeout)
    except asyncio.TimeoutError:
        raise AssertionError(f"timed out waiting for {what}") from None


def advertisement_data(name: str) -> bytes:
    return bytes(
        AdvertisingData(
            [
                (AdvertisingData.FLAGS, bytes([0x06])),
                (AdvertisingData.COMPLETE_LIST_OF_128_BIT_SERVICE_CLASS_UUIDS, OTA_SERVICE_UUID.to_bytes()),
                (AdvertisingData.COMPLETE_LOCAL_NAME, name.encode()),
            ]
        )
    )


# ------------------------------------------------------------------- link scenario


class SinkPeripheral:
    """OTA-shaped GATT service that records every Data write and can notify on Control."""

    def __init__(self, device: Device) -> None:
        self.received = bytearray()
        self.writes = 0
        self.control_value = b"\x00"
        self.data = Characteristic(
            OTA_DATA_UUID,
            Characteristic.Properties.WRITE | Characteristic.Properties.WRITE_WITHOUT_RESPONSE,
            Characteristic.WRITEABLE,
            CharacteristicValue(write=self.on_data),
        )
        self.control = Characteristic(
            OTA_CONTROL_UUID,
            Characteristic.Properties.READ
            | Characteristic.Properties.WRITE
            | Characteristic.Properties.NOTIFY,
            Characteristic.READABLE | Characteristic.WRITEABLE,
            CharacteristicValue(read=lambda _c: self.control_value, write=self.on_control),
        )
        device.add_service(Service(OTA_SERVICE_UUID, [self.data, self.control]))

    def on_data(self, _connection, value: bytes) -> None:
        self.received += value
        self.writes += 1

    def on_control(self, _connection, value: bytes) -> None:
        self.control_value = bytes(value)


async def scan_for(device: Device, service: UUID) -> hci.Address:
    found = asyncio.get_running_loop().create_future()

    def on_advertisement(advertisement: Advertisement) -> None:
        uuids = advertisement.data.get(AdvertisingData.COMPLETE_LIST_OF_128_BIT_SERVICE_CLASS_UUIDS)
        if not found.done() and uuids and service in uuids:
            found.set_result(advertisement.address)

    device.on(Device.EVENT_ADVERTISEMENT, on_advertisement)
    await device.start_scanning()
    try:
        return await within(found, "an advertisement with the OTA service")
    finally:
        device.remove_listener(Device.EVENT_ADVERTISEMENT, on_advertisement)
        await device.stop_scanning()


async def scenario_link(acl_size: int, mtu: int, total: int = 100 * 1024) -> dict[str, float]:
    chunk_size = min(mtu - 3, 512)
    timings: dict[str, float] = {}
    started = time.monotonic()
    async with virtual_controllers("--acl-size", str(acl_size)) as ports:
        async with (
            bumble_device(ports[0], "e2e-peripheral", PERIPHERAL_ADDRESS, spy=True) as peripheral,
            bumble_device(ports[1], "e2e-central", CENTRAL_ADDRESS, spy=True) as central,
        ):
            timings["start"] = time.monotonic() - started
            sink = SinkPeripheral(peripheral)
            peripheral_connected = wait_event(peripheral, "connection")
            await peripheral.start_advertising(
                advertising_data=advertisement_data("e2e-peri"),
                advertising_interval_min=20,
                advertising_interval_max=20,
            )

            t = time.monotonic()
            address = await scan_for(central, OTA_SERVICE_UUID)
            connection: Connection = await within(central.connect(address), "connection")
            (peripheral_connection,) = await within(peripheral_connected, "peripheral connection")
            timings["scan+connect"] = time.monotonic() - t

            # MTU
            peer = Peer(connection)
            got_mtu = await within(peer.request_mtu(mtu), "MTU exchange")
            assert got_mtu == mtu, f"MTU {got_mtu} != {mtu}"
            assert peripheral_connection.att_mtu == mtu, peripheral_connection.att_mtu

            # Data length: both hosts get an LE Data Length Change event.
            t = time.monotonic()
            dl_central = wait_event(connection, Connection.EVENT_CONNECTION_DATA_LENGTH_CHANGE)
            dl_peripheral = wait_event(
                peripheral_connection, Connection.EVENT_CONNECTION_DATA_LENGTH_CHANGE
            )
            await within(connection.set_data_length(251, 2120), "Set Data Length")
            await within(dl_central, "central Data Length Change")
            await within(dl_peripheral, "peripheral Data Length Change")
            assert connection.data_length.max_tx_octets == 251, connection.data_length
            assert peripheral_connection.data_length.max_rx_octets == 251, peripheral_connection.data_length

            # PHY: Command Status, then LE PHY Update Complete on both sides; Read PHY agrees.
            phy_central = wait_event(connection, Connection.EVENT_CONNECTION_PHY_UPDATE)
            phy_peripheral = wait_event(peripheral_connection, Connection.EVENT_CONNECTION_PHY_UPDATE)
            await within(connection.set_phy([hci.Phy.LE_2M], [hci.Phy.LE_2M]), "Set PHY")
            (central_phy,) = await within(phy_central, "central PHY Update Complete")
            (peripheral_phy,) = await within(phy_peripheral, "peripheral PHY Update Complete")
            for phy in (central_phy, peripheral_phy, await connection.get_phy(), await peripheral_connection.get_phy()):
                assert (phy.tx_phy, phy.rx_phy) == (hci.Phy.LE_2M, hci.Phy.LE_2M), phy
            timings["data length+phy"] = time.monotonic() - t

            # Discovery and subscription.
            await peer.discover_service(OTA_SERVICE_UUID)
            await peer.discover_characteristics()
            (data,) = peer.get_characteristics_by_uuid(OTA_DATA_UUID)
            (control,) = peer.get_characteristics_by_uuid(OTA_CONTROL_UUID)
            notifications: asyncio.Queue[bytes] = asyncio.Queue()
            await control.subscribe(lambda value: notifications.put_nowait(bytes(value)))

            # Bulk write without response.
            payload = random.Random(1).randbytes(total)
            t = time.monotonic()
            for offset in range(0, total, chunk_size):
                await data.write_value(payload[offset : offset + chunk_size], with_response=False)
            deadline = time.monotonic() + STEP_TIMEOUT
            while len(sink.received) < total and time.monotonic() < deadline:
                await asyncio.sleep(0.005)
            elapsed = time.monotonic() - t
            timings["100KB write"] = elapsed
            assert len(sink.received) == total, f"{len(sink.received)} of {total} bytes arrived"
            assert sink.received == payload, "data corrupted or reordered"
            assert sink.writes == (total + chunk_size - 1) // chunk_size, sink.writes

            # A write with response and a notification of the largest size.
            await data.write_value(b"\xa5" * chunk_size, with_response=True)
            value = bytes(range(256)) * 2
            value = value[:chunk_size]
            await peripheral.notify_subscribers(sink.control, value)
            got = await within(notifications.get(), "notification")
            assert got == value, "notification corrupted"

            # What each controller handed its host: never more than acl_size per packet,
            # and PDUs longer than that split into first + continuation fragments.
            continuations = {}
            for side, device in (("central", central), ("peripheral", peripheral)):
                spy: AclSpy = device.acl_spy
                assert spy.sizes and max(spy.sizes) <= acl_size, (side, max(spy.sizes), acl_size)
                assert hci.HCI_ACL_PB_FIRST_FLUSHABLE in spy.pb_flags, side
                continuations[side] = spy.pb_flags.count(hci.HCI_ACL_PB_CONTINUATION)
                if chunk_size + 7 > acl_size:
                    assert continuations[side] > 0, f"expected fragmented ACL data ({side})"

            await connection.disconnect()
    timings["total"] = time.monotonic() - started
    say(
        f"  link acl={acl_size} mtu={mtu}: {total} bytes in {sink.writes - 1} writes of "
        f"{chunk_size} ({total / timings['100KB write'] / 1024:.0f} KiB/s); "
        f"continuation fragments to hosts: {continuations}"
    )
    return timings


# --------------------------------------------------------------- commands scenario


async def scenario_commands() -> dict[str, float]:
    started = time.monotonic()
    async with virtual_controllers("--count", "1") as ports:
        async with bumble_device(ports[0], "e2e-cmd", CENTRAL_ADDRESS) as device:
            host = device.host
            cases = [
                # (command, expected event class)
                (hci.HCI_Command(b"", op_code=0xFC01), hci.HCI_Command_Status_Event),  # vendor
                (hci.HCI_LE_CS_Test_End_Command(), hci.HCI_Command_Status_Event),  # async
                (
                    hci.HCI_LE_Read_ISO_TX_Sync_Command(connection_handle=1),
                    hci.HCI_Command_Complete_Event,
                ),  # sync
            ]
            for command, expected in cases:
                event = await within(host._send_command(command), f"reply to {command.name}")
                assert isinstance(event, expected), (command.name, event)
                status = (
                    event.status
                    if isinstance(event, hci.HCI_Command_Status_Event)
                    else event.return_parameters.status
                )
                assert status == hci.HCI_ErrorCode.UNKNOWN_HCI_COMMAND_ERROR, (command.name, status)
            # Malformed parameters: Invalid HCI Command Parameters, not silence.
            event = await within(
                host._send_command(hci.HCI_Command(b"\x01", op_code=hci.HCI_LE_SET_PHY_COMMAND)),
                "reply to a malformed command",
            )
            assert event.status == hci.HCI_ErrorCode.INVALID_COMMAND_PARAMETERS_ERROR, event
            # Link tuning on a handle that does not exist.
            event = await within(
                host._send_command(
                    hci.HCI_LE_Set_PHY_Command(
                        connection_handle=0x0123, all_phys=0, tx_phys=2, rx_phys=2, phy_options=0
                    )
                ),
                "Set PHY status",
            )
            assert event.status == hci.HCI_ErrorCode.UNKNOWN_CONNECTION_IDENTIFIER_ERROR, event
    say("  commands: unknown, unhandled and malformed commands all answered")
    return {"total": time.monotonic() - started}


# ----------------------------------------------------------------- legacy scenario

REQUEST, REQUEST_ACK, REQUEST_NAK, DONE, DONE_ACK, DONE_NAK = range(1, 7)


class FakeSeedDevice:
    """The seed's OTA GATT behaviour, in a few lines (no flash, no image checks)."""

    def __init__(self, device: Device, refuse_request: bool, refuse_image: bool) -> None:
        self.device = device
        self.refuse_request = refuse_request
        self.refuse_image = refuse_image
        self.packet_size = 0
        self.updating = False
        self.image = bytearray()
        self.finished = asyncio.get_running_loop().create_future()
        self.control_value = b"\x00"
        self.data = Characteristic(
            OTA_DATA_UUID,
            Characteristic.Properties.WRITE,
            Characteristic.WRITEABLE,
            CharacteristicValue(write=self.on_data),
        )
        self.control = Characteristic(
            OTA_CONTROL_UUID,
            Characteristic.Properties.READ
            | Characteristic.Properties.WRITE
            | Characteristic.Properties.NOTIFY,
            Characteristic.READABLE | Characteristic.WRITEABLE,
            CharacteristicValue(read=lambda _c: self.control_value, write=self.on_control),
        )
        device.add_service(Service(OTA_SERVICE_UUID, [self.control, self.data]))
        self.last_data = b""

    def on_data(self, _connection, value: bytes) -> None:
        if self.updating:
            assert len(value) <= self.packet_size, (len(value), self.packet_size)
            self.image += value
        else:
            self.last_data = bytes(value)

    async def on_control(self, connection, value: bytes) -> None:
        if value == bytes([REQUEST]):
            self.packet_size = int.from_bytes(self.last_data[:2], "little")
            reply = REQUEST_NAK if self.refuse_request else REQUEST_ACK
            self.updating = reply == REQUEST_ACK
        elif value == bytes([DONE]):
            self.updating = False
            reply = DONE_NAK if self.refuse_image else DONE_ACK
        else:
            return
        self.control_value = bytes([reply])
        await self.device.notify_subscriber(connection, self.control, self.control_value)
        if reply != REQUEST_ACK and not self.finished.done():
            self.finished.set_result(reply)


async def run_legacy_client(port: int, image_path: str, mtu: int, *select: str) -> tuple[int, str]:
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        str(HERE / "legacy_client.py"),
        "--hci",
        f"tcp-client:127.0.0.1:{port}",
        *(select or ("--name", "ota-fake")),
        "--file",
        image_path,
        "--mtu",
        str(mtu),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    output, _ = await within(process.communicate(), "legacy_client.py", 60)
    return process.returncode, output.decode()


async def scenario_legacy(
    mtu: int,
    refuse_request: bool = False,
    refuse_image: bool = False,
    size: int = 100 * 1024,
    select: tuple[str, ...] = (),
    expect_exit: int | None = None,
) -> dict[str, float]:
    started = time.monotonic()
    image = random.Random(2).randbytes(size)
    with tempfile.NamedTemporaryFile(suffix=".bin", delete=False) as file:
        file.write(image)
    try:
        async with virtual_controllers() as ports:
            async with bumble_device(ports[0], "ota-fake", PERIPHERAL_ADDRESS) as device:
                fake = FakeSeedDevice(device, refuse_request, refuse_image)
                await device.start_advertising(
                    advertising_data=advertisement_data("ota-fake"),
                    advertising_interval_min=20,
                    advertising_interval_max=20,
                )
                code, output = await run_legacy_client(ports[1], file.name, mtu, *select)
                expected = 2 if refuse_request else 3 if refuse_image else 0
                if expect_exit is not None:
                    expected = expect_exit
                if code != expected:
                    raise AssertionError(f"legacy_client exited {code}, expected {expected}:\n{output}")
                if expected == 0:
                    assert fake.image == image, "the fake device got a different image"
                    assert fake.packet_size == mtu - 3, fake.packet_size
                if expect_exit == 1:
                    # The seed's client against a device that grants MTU 517: its unclamped
                    # packet size 514 exceeds ATT's 512-byte value limit and the first write
                    # is refused. This is why our device grants at most 498.
                    assert "INVALID_ATTRIBUTE_LENGTH" in output, output
    finally:
        os.unlink(file.name)
    elapsed = time.monotonic() - started
    outcome = "NAK" if refuse_request else "DONE_NAK" if refuse_image else "accepted"
    transfer = next(
        (line for line in output.splitlines() if line.startswith("sent ")), "no transfer"
    )
    say(f"  legacy mtu={mtu} {outcome}: exit {code}; {transfer}")
    return {"total": elapsed}


async def scenario_legacy_not_found() -> dict[str, float]:
    started = time.monotonic()
    with tempfile.NamedTemporaryFile(suffix=".bin") as file:
        file.write(b"\x00" * 100)
        file.flush()
        async with virtual_controllers() as ports:
            code, output = await run_legacy_client(
                ports[1], file.name, 247, "--name", "nobody", "--scan-timeout", "1"
            )
    assert code == 4, f"legacy_client exited {code}, expected 4:\n{output}"
    say("  legacy with no device: exit 4")
    return {"total": time.monotonic() - started}


# ---------------------------------------------------------------------------- main

SCENARIOS = {
    "link-251": lambda: scenario_link(acl_size=251, mtu=247),
    "link-251-mtu517": lambda: scenario_link(acl_size=251, mtu=517),
    "link-27-mtu517": lambda: scenario_link(acl_size=27, mtu=517),
    "commands": scenario_commands,
    "legacy-247": lambda: scenario_legacy(mtu=247),
    "legacy-517-uncapped-device": lambda: scenario_legacy(
        mtu=517,
        select=("--address", PERIPHERAL_ADDRESS.to_string(with_type_qualifier=False)),
        expect_exit=1,
    ),
    "legacy-nak": lambda: scenario_legacy(mtu=247, refuse_request=True, size=1000),
    "legacy-done-nak": lambda: scenario_legacy(mtu=247, refuse_image=True, size=1000),
    "legacy-not-found": scenario_legacy_not_found,
}


async def async_main(selected: list[str]) -> int:
    failures = 0
    for name in selected:
        say(f"{name}:")
        try:
            timings = await SCENARIOS[name]()
        except Exception as error:
            failures += 1
            log.exception("scenario %s failed", name)
            say(f"  FAILED: {type(error).__name__}: {error}")
            continue
        say("  ok in " + ", ".join(f"{k} {v:.2f} s" for k, v in timings.items()))
    return 1 if failures else 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "-k", dest="filter", default="", help="run only scenarios whose name contains this"
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="Bumble debug logs")
    args = parser.parse_args()
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.WARNING)
    selected = [name for name in SCENARIOS if args.filter in name]
    if not selected:
        parser.error(f"no scenario matches {args.filter!r}; have {', '.join(SCENARIOS)}")
    started = time.monotonic()
    code = asyncio.run(async_main(selected))
    say(f"{'PASS' if code == 0 else 'FAIL'} ({time.monotonic() - started:.1f} s)")
    return code


if __name__ == "__main__":
    sys.exit(main())
