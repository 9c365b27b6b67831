#!/usr/bin/env python3
"""The hostile-client suite: what a careless or hostile central in radio range can send to the
OTA service, on Bumble's BLE stack (independent of the Rust code), each case checked against
the answer docs/protocol.md documents.

    python e2e/hostile_client.py --hci tcp-client:127.0.0.1:PORT --file app.bin

`--file` is a valid app image for the device (used where a case needs real image bytes). The
cases run on three connections: one at MTU 517 (protocol abuse), one that never exchanges the
MTU (23), and one that drops the link right after END. The device must stay up, answer every
request, and never select anything but a whole verified image.

Prints one JSON line: {"cases": [{"case": NAME, "ok": BOOL, "saw": ...}, ...]}. Exit codes:
0 every case got its documented answer, 1 some did not (or the link failed), 4 no device.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import struct
import sys

from bumble import att
from bumble.device import Peer
from bumble.transport import open_transport
from ota_scan import OTA_CONTROL_UUID, OTA_DATA_UUID, connect_ota_device, host

# Fast-protocol opcodes and refusal reasons (docs/protocol.md).
INFO, BEGIN, END, REBOOT, CONFIRM, ABORT, STATUS = 0x10, 0x11, 0x12, 0x13, 0x14, 0x15, 0x16
BEGIN_OK, ACK, REWIND, ERROR = 0x91, 0xA0, 0xA1, 0xEE
UNKNOWN_COMMAND, BAD_LENGTH, NO_SESSION, IMAGE_TOO_LARGE = 0x01, 0x02, 0x03, 0x05
BAD_OFFSET, INCOMPLETE, CHUNK_TOO_LARGE, TRUNCATED = 0x0C, 0x0E, 0x14, 0x15
ATT_APP_ERROR = 0x80
# ATT's own errors a stack may answer an oversized write with.
ATT_INVALID_ATTRIBUTE_VALUE_LENGTH = 0x0D
ATT_INVALID_PDU = 0x04


class Link:
    """One connection: raw ATT requests and commands, and OTA Control's notifications."""

    def __init__(self, connection, peer: Peer, control, data):
        self.connection = connection
        self.peer = peer
        self.control = control
        self.data = data
        self.notes: asyncio.Queue[bytes] = asyncio.Queue()

    @classmethod
    async def open(cls, device, mtu: int | None, scan_timeout: float):
        connection = await connect_ota_device(device, scan_timeout, 30)
        if connection is None:
            return None
        peer = Peer(connection)
        if mtu is not None:
            await peer.request_mtu(mtu)
        await peer.discover_all()
        control = data = None
        for service in peer.services:
            for characteristic in service.characteristics:
                if characteristic.uuid == OTA_CONTROL_UUID:
                    control = characteristic
                elif characteristic.uuid == OTA_DATA_UUID:
                    data = characteristic
        if control is None or data is None:
            raise RuntimeError("the OTA characteristics are missing")
        link = cls(connection, peer, control, data)
        await control.subscribe(lambda value: link.notes.put_nowait(bytes(value)))
        return link

    async def request(self, handle: int, value: bytes):
        """A Write Request: ("ok",) or ("error", code); an unanswered one fails the run."""
        response = await self.peer.gatt_client.send_request(
            att.ATT_Write_Request(attribute_handle=handle, attribute_value=value)
        )
        if response is None:
            raise RuntimeError(f"a write request of {len(value)} bytes went unanswered")
        if response.op_code == att.Opcode.ATT_ERROR_RESPONSE:
            return ("error", int(response.error_code))
        return ("ok",)

    async def command(self, handle: int, value: bytes) -> None:
        await self.peer.gatt_client.send_command(
            att.ATT_Write_Command(attribute_handle=handle, attribute_value=value)
        )

    async def note(self, timeout: float = 2.0) -> bytes | None:
        try:
            return await asyncio.wait_for(self.notes.get(), timeout)
        except asyncio.TimeoutError:
            return None

    async def note_where(self, pred, timeout: float = 3.0) -> bytes | None:
        """The first notification `pred` accepts, skipping others (ACKs, echoes)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            left = deadline - loop.time()
            if left <= 0:
                return None
            n = await self.note(left)
            if n is None or pred(n):
                return n

    def drain(self) -> None:
        while not self.notes.empty():
            self.notes.get_nowait()

    async def control_cmd(self, value: bytes):
        self.drain()
        return await self.request(self.control.handle, value)

    async def read_control(self) -> bytes:
        response = await self.peer.gatt_client.send_request(
            att.ATT_Read_Request(attribute_handle=self.control.handle)
        )
        if response is None or response.op_code == att.Opcode.ATT_ERROR_RESPONSE:
            raise RuntimeError("OTA Control unreadable")
        return bytes(response.attribute_value)


def begin(size: int, sha: bytes, flags: int = 0) -> bytes:
    return bytes([BEGIN]) + struct.pack("<I", size) + sha + bytes([flags])


def chunk(offset: int, payload: bytes) -> bytes:
    return struct.pack("<I", offset) + payload


def error_of(note: bytes | None, opcode: int) -> int | None:
    """The reason of an ERROR notification for `opcode`, else None."""
    if note and len(note) == 7 and note[0] == ERROR and note[1] == opcode:
        return note[2]
    return None


def is_error(opcode: int):
    return lambda n: n[0] == ERROR and len(n) > 1 and n[1] == opcode


async def abuse(link: Link, image: bytes, cases: list[dict]) -> None:
    """Protocol abuse on one connection at a large MTU."""
    sha = hashlib.sha256(image).digest()
    c, d = link.control.handle, link.data.handle

    def case(name: str, ok: bool, saw) -> None:
        cases.append({"case": name, "ok": bool(ok), "saw": saw})

    # 1. Data before BEGIN, as a write request that is not the seed's 2-byte packet size.
    r = await link.request(d, chunk(0, image[:100]))
    case("data write request before BEGIN", r == ("error", ATT_APP_ERROR + NO_SESSION), r)

    # 2. Data before BEGIN, as a write command, once the client spoke the fast protocol.
    await link.control_cmd(bytes([INFO]))
    await link.note()
    link.drain()
    await link.command(d, chunk(0, image[:100]))
    n = await link.note_where(is_error(0))
    case("data write command before BEGIN", error_of(n, 0) == NO_SESSION, n and n.hex())

    # 3. Sizes 0 and 2^32 - 1.
    for size, want, name in ((0, TRUNCATED, "BEGIN size 0"), (0xFFFFFFFF, IMAGE_TOO_LARGE, "BEGIN size 2^32-1")):
        await link.control_cmd(begin(size, sha))
        n = await link.note_where(is_error(BEGIN))
        case(name, error_of(n, BEGIN) == want, n and n.hex())

    # 4. Malformed commands: BEGIN one byte short, END with a payload, unknown opcodes.
    await link.control_cmd(begin(len(image), sha)[:-1])
    n = await link.note_where(is_error(BEGIN))
    case("BEGIN one byte short", error_of(n, BEGIN) == BAD_LENGTH, n and n.hex())
    await link.control_cmd(bytes([END, 0]))
    n = await link.note_where(is_error(END))
    case("END with a payload", error_of(n, END) == BAD_LENGTH, n and n.hex())

    # 5. END before any data.
    await link.control_cmd(begin(len(image), sha))
    n = await link.note_where(lambda n: n[0] == BEGIN_OK or is_error(BEGIN)(n))
    started = bool(n) and n[0] == BEGIN_OK
    case("BEGIN of a valid image", started, n and n.hex())
    await link.control_cmd(bytes([END]))
    n = await link.note_where(is_error(END))
    case("END before the data", error_of(n, END) == INCOMPLETE, n and n.hex())

    # 6. A gap: the device asks to rewind to 0.
    await link.command(d, chunk(1000, image[1000:1100]))
    n = await link.note_where(lambda n: n[0] == REWIND)
    case("chunk past a gap", n is not None and n == bytes([REWIND]) + struct.pack("<I", 0), n and n.hex())

    # 7. Overlapping chunks: the new part is taken once.
    await link.command(d, chunk(0, image[:100]))
    await link.command(d, chunk(50, image[50:150]))
    await link.control_cmd(bytes([STATUS]))
    n = await link.note_where(lambda n: n[0] == ACK and n[1:] == struct.pack("<I", 150))
    case("overlapping chunks", n is not None, n and n.hex())

    # 8. Past the end of the image.
    await link.command(d, chunk(len(image) - 10, bytes(100)))
    n = await link.note_where(is_error(0))
    case("chunk past the image's end", error_of(n, 0) == BAD_OFFSET, n and n.hex())

    # 9. Writes longer than 512 bytes and longer than the MTU: an ATT error, not silence.
    for name, handle, size in (
        ("data write request of 600 bytes", d, 600),
        ("control write request of 600 bytes", c, 600),
    ):
        r = await link.request(handle, bytes(size))
        case(name, r[0] == "error", r)

    # 10. Command spam: 300 requests of unknown opcodes and STATUS, back to back.
    answered = 0
    for i in range(300):
        r = await link.request(c, bytes([0x20 + i % 0x50]) if i % 3 else bytes([STATUS]))
        answered += r == ("ok",)
    link.drain()
    await link.control_cmd(bytes([0x7F]))
    n = await link.note_where(is_error(0x7F))
    case("300 commands back to back", answered == 300 and error_of(n, 0x7F) == UNKNOWN_COMMAND, answered)

    # 11. REBOOT, CONFIRM and ABORT when they do not apply; then the device still serves.
    await link.control_cmd(bytes([CONFIRM]))
    n = await link.note_where(is_error(CONFIRM))
    case("CONFIRM with nothing on trial", error_of(n, CONFIRM) == 0x10, n and n.hex())
    await link.control_cmd(bytes([ABORT]))
    n = await link.note_where(lambda n: n[0] == 0x95)
    case("ABORT of its own session", n is not None, n and n.hex())
    await link.control_cmd(bytes([INFO]))
    value = await link.read_control()
    case("INFO after the abuse", value[:1] == bytes([0x90]), value[:4].hex())


async def small_mtu(link: Link, image: bytes, cases: list[dict]) -> None:
    """A central that never exchanges the MTU (23): INFO is cut, BEGIN cannot fit."""
    sha = hashlib.sha256(image).digest()

    def case(name: str, ok: bool, saw) -> None:
        cases.append({"case": name, "ok": bool(ok), "saw": saw})

    await link.control_cmd(bytes([INFO]))
    n = await link.note()
    # A read of the value, with Read Blob for the rest, as every GATT client does.
    whole = bytes(await link.control.read_value())
    total = struct.unpack("<H", whole[1:3])[0] if len(whole) >= 3 else -1
    # The notification is cut at MTU - 3; a read (long read by Bumble) gets the value whole.
    case("INFO at MTU 23", n is not None and len(n) <= 20 and total == len(whole), [n and len(n), len(whole)])
    r = await link.request(link.control.handle, begin(len(image), sha))
    case("BEGIN longer than MTU 23", r[0] == "error", r)


async def drop_during_end(link: Link, image: bytes, cases: list[dict]) -> None:
    """A whole image, END, and the link dropped before the answer."""
    sha = hashlib.sha256(image).digest()
    await link.control_cmd(begin(len(image), sha))
    n = await link.note_where(lambda n: n[0] == BEGIN_OK or is_error(BEGIN)(n))
    if not n or n[0] != BEGIN_OK:
        cases.append({"case": "disconnect during END", "ok": False, "saw": n and n.hex()})
        return
    step = 200
    for offset in range(0, len(image), step):
        await link.command(link.data.handle, chunk(offset, image[offset : offset + step]))
        if offset % (step * 8) == 0:
            await asyncio.sleep(0.05)
    await link.command(link.control.handle, bytes([END]))
    await link.connection.disconnect()
    # No answer to wait for: what counts is that the device stays up and its running slot
    # unchanged, which the test checks after every case.
    cases.append({"case": "disconnect during END", "ok": True, "saw": "link dropped at END"})


async def run(args: argparse.Namespace) -> int:
    image = open(args.file, "rb").read()
    cases: list[dict] = []
    async with await open_transport(args.hci) as transport:
        device = await host(transport, "ble-ota-hostile")
        for mtu, body in ((517, abuse), (None, small_mtu), (247, drop_during_end)):
            link = await Link.open(device, mtu, args.scan_timeout)
            if link is None:
                print("error: no device advertising the OTA service", file=sys.stderr)
                return 4
            await body(link, image, cases)
            if body is not drop_during_end:
                await link.connection.disconnect()
            # The device advertises again once the link is down.
            await asyncio.sleep(0.5)
    print(json.dumps({"cases": cases}), flush=True)
    return 0 if all(c["ok"] for c in cases) else 1


def main() -> int:
    parser = argparse.ArgumentParser(description="Hostile-client cases against the OTA service.")
    parser.add_argument("--hci", required=True, help="Bumble transport, e.g. tcp-client:127.0.0.1:PORT")
    parser.add_argument("--file", required=True, help="a valid app image for the device")
    parser.add_argument("--scan-timeout", type=float, default=15.0)
    return asyncio.run(run(parser.parse_args()))


if __name__ == "__main__":
    sys.exit(main())
