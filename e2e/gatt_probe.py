#!/usr/bin/env python3
"""Probes every attribute of the device as any central in radio range could, on Bumble's BLE
stack (independent of the Rust code).

It connects to the first device advertising the OTA service, exchanges the MTU, discovers
every service, characteristic and descriptor, and then, for every attribute handle:

- a Read Request;
- Read Blob Requests at offsets 0, 1, 2, the value's length, the length + 1, and 600;
- a Write Request and a Write Command of one byte 0x00 (a NOP on OTA Control);

then asks OTA Control's CCCD for indications (which it must refuse) and notifications,
then floods: --flood Write Commands to every attribute back to back, and as many Read
Requests of OTA Control. Finally it reads OTA Control once more to prove the device still
serves. Every request must get an answer (a value or an ATT error) within the GATT timeout.

    python e2e/gatt_probe.py --hci tcp-client:127.0.0.1:PORT

Prints one JSON line: {"mtu": M, "control_handle": H, "attributes": [{"handle": H, "uuid": U,
"read": R, "blob": {"0": R, ...}, "write": W}, ...], "control_cccd": {"indicate": W,
"notify": W}, "flood": N, "alive": true,
"control_after": "00"}, where R is {"value": HEX} or {"error": CODE} and W {"ok": true} or
{"error": CODE}. Exit codes: 0 done,
1 failure (a request went unanswered, the link dropped), 4 no device.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import sys

from bumble import att
from bumble.gatt import GATT_CLIENT_CHARACTERISTIC_CONFIGURATION_DESCRIPTOR as GATT_CCCD_UUID
from bumble.device import Peer
from bumble.transport import open_transport
from ota_scan import OTA_CONTROL_UUID, connect_ota_device, host


EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_NOT_FOUND = 4


def outcome(response: att.ATT_PDU | None, value_field: str) -> dict:
    """A response as {"value": hex} or {"error": code}; None (no answer) fails the run."""
    if response is None:
        raise RuntimeError("a request went unanswered")
    if response.op_code == att.Opcode.ATT_ERROR_RESPONSE:
        return {"error": int(response.error_code)}
    return {"value": bytes(getattr(response, value_field)).hex()}


async def run(args: argparse.Namespace) -> int:
    async with await open_transport(args.hci) as transport:
        device = await host(transport, "ble-ota-gatt-probe")
        connection = await connect_ota_device(device, args.scan_timeout, 30)
        if connection is None:
            print("error: no device advertising the OTA service", file=sys.stderr)
            return EXIT_NOT_FOUND
        peer = Peer(connection)
        mtu = await peer.request_mtu(args.mtu)
        await peer.discover_all()
        client = peer.gatt_client

        handles: list[tuple[int, str]] = []
        control_handle = None
        for service in peer.services:
            for characteristic in service.characteristics:
                handles.append((characteristic.handle, str(characteristic.uuid)))
                if characteristic.uuid == OTA_CONTROL_UUID:
                    control_handle = characteristic.handle
                for descriptor in characteristic.descriptors:
                    handles.append((descriptor.handle, str(descriptor.type)))
        if control_handle is None:
            print("error: no OTA Control characteristic", file=sys.stderr)
            return EXIT_FAILURE

        attributes = []
        for handle, uuid in handles:
            entry: dict = {"handle": handle, "uuid": uuid}
            read = outcome(
                await client.send_request(att.ATT_Read_Request(attribute_handle=handle)),
                "attribute_value",
            )
            entry["read"] = read
            length = len(bytes.fromhex(read["value"])) if "value" in read else 0
            blob = {}
            for offset in sorted({0, 1, 2, length, length + 1, 600}):
                blob[str(offset)] = outcome(
                    await client.send_request(
                        att.ATT_Read_Blob_Request(attribute_handle=handle, value_offset=offset)
                    ),
                    "part_attribute_value",
                )
            entry["blob"] = blob
            response = await client.send_request(
                att.ATT_Write_Request(attribute_handle=handle, attribute_value=b"\x00")
            )
            if response is None:
                raise RuntimeError(f"write request to handle {handle} unanswered")
            if response.op_code == att.Opcode.ATT_ERROR_RESPONSE:
                entry["write"] = {"error": int(response.error_code)}
            else:
                entry["write"] = {"ok": True}
            await client.send_command(
                att.ATT_Write_Command(attribute_handle=handle, attribute_value=b"\x00")
            )
            attributes.append(entry)

        # OTA Control's CCCD: notifications may be switched on, indications may not.
        cccd = {}
        for service in peer.services:
            for characteristic in service.characteristics:
                if characteristic.uuid != OTA_CONTROL_UUID:
                    continue
                for descriptor in characteristic.descriptors:
                    if descriptor.type == GATT_CCCD_UUID:
                        for name, value in (("indicate", b"\x02\x00"), ("notify", b"\x01\x00")):
                            response = await client.send_request(
                                att.ATT_Write_Request(
                                    attribute_handle=descriptor.handle, attribute_value=value
                                )
                            )
                            if response is None:
                                raise RuntimeError("CCCD write unanswered")
                            cccd[name] = (
                                {"error": int(response.error_code)}
                                if response.op_code == att.Opcode.ATT_ERROR_RESPONSE
                                else {"ok": True}
                            )

        # The flood: write commands to every handle back to back, then reads of OTA Control.
        for _ in range(args.flood):
            for handle, _uuid in handles:
                await client.send_command(
                    att.ATT_Write_Command(attribute_handle=handle, attribute_value=b"\x00")
                )
        for _ in range(args.flood):
            outcome(
                await client.send_request(att.ATT_Read_Request(attribute_handle=control_handle)),
                "attribute_value",
            )
        after = outcome(
            await client.send_request(att.ATT_Read_Request(attribute_handle=control_handle)),
            "attribute_value",
        )
        print(
            json.dumps(
                {
                    "mtu": mtu,
                    "control_handle": control_handle,
                    "attributes": attributes,
                    "control_cccd": cccd,
                    "flood": args.flood,
                    "alive": "value" in after,
                    "control_after": after.get("value"),
                }
            ),
            flush=True,
        )
        await connection.disconnect()
        return EXIT_OK


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Read, read-blob, write and flood every attribute.")
    parser.add_argument("--hci", required=True, help="Bumble transport, e.g. tcp-client:127.0.0.1:PORT")
    parser.add_argument("--mtu", type=int, default=517, help="ATT MTU to request (default 517)")
    parser.add_argument("--flood", type=int, default=50, help="flood rounds (default 50)")
    parser.add_argument("--scan-timeout", type=float, default=15.0)
    parser.add_argument("--log-level", default="WARNING")
    args = parser.parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), stream=sys.stderr)
    try:
        return asyncio.run(run(args))
    except Exception as error:  # an unanswered request, a dropped link: report, exit 1
        print(f"error: {type(error).__name__}: {error}", file=sys.stderr)
        return EXIT_FAILURE


if __name__ == "__main__":
    sys.exit(main())
