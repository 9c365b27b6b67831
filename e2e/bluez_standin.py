#!/usr/bin/env python3
"""A BlueZ stand-in: owns `org.bluez` on a private D-Bus bus and carries every GATT operation
a BlueZ client makes (btleplug, Chromium) to a real BLE host, Bumble, on a virtual controller.
So `ble-ota` with its default transport (btleplug on BlueZ) talks to the virtual ESP32 served
by `ble-ota device`, the bytes crossing ota-gatt and trouble-host as they would from a laptop.

    dbus-daemon --config-file e2e/dbus-private.conf --address unix:path=/tmp/bus --nofork &
    DBUS_SYSTEM_BUS_ADDRESS=unix:path=/tmp/bus python e2e/bluez_standin.py --hci tcp-client:127.0.0.1:PORT
    DBUS_SYSTEM_BUS_ADDRESS=unix:path=/tmp/bus ble-ota flash app.bin

It implements what btleplug 0.13 (bluez-async 0.9) and Chromium's Web Bluetooth call, the way
BlueZ answers: ObjectManager on "/" (GetManagedObjects, InterfacesAdded, InterfacesRemoved),
one adapter `/org/bluez/hci0` (Adapter1: Powered, SetDiscoveryFilter with UUIDs,
Start/StopDiscovery), devices (Device1: Connect, signalling Connected first and
ServicesResolved once the GATT objects are announced; Disconnect; the properties they parse),
and for a connected device its GATT services, characteristics and descriptors
(GattCharacteristic1: ReadValue, which also signals a change of Value as BlueZ does;
WriteValue with type request or command, a command answered once queued; StartNotify, refused
with NotSupported without notify or indicate, and StopNotify; notifications as
PropertiesChanged of Value; a second read or write request while one is under way refused
with InProgress; GattDescriptor1: ReadValue). A refused request is org.bluez.Error.Failed
"Operation failed with ATT error: 0xNN", and one the link's end cancelled "Not connected".

Chromium needs the GATT objects announced (InterfacesAdded), and fires a value change for
its own reads, which a page must tell from notifications. `--drop-at N,M` ends the link at the
Nth write command (counted over the run), taking the write and never sending it; it ends as a
clean disconnect (0x13), not the supervision timeout (0x08) of a radio that lost it. `--mtu`
asks for a smaller ATT MTU than BlueZ's 517. Prints a JSON line for each characteristic read.

Where it differs from BlueZ, or leaves out:
- The GATT objects go with the link and are discovered afresh at each connection, as with
  BlueZ's `Cache = no`. BlueZ's default (`Cache = always`) keeps them across connections, so a
  client may meet a device whose table changed (new firmware) with the old handles; that case
  is not modelled.
- Pairing and agents (Chromium's UnregisterAgent at exit gets UnknownMethod), bonding, LE
  privacy, connection parameters, AcquireWrite and AcquireNotify (file-descriptor based writes
  and notifications), several adapters, and BR/EDR.
- Every ATT error is org.bluez.Error.Failed; BlueZ names a few otherwise (NotPermitted,
  NotAuthorized, InvalidArguments, NotSupported).

Prints {"ready": true} once it owns the name, and fails if something else owns it.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys

from bumble import hci
from bumble.att import ATT_Error
from bumble.core import AdvertisingData
from bumble.device import Advertisement, Device, Peer
from bumble.gatt import Characteristic
from bumble.transport import open_transport
from dbus_fast import BusType, PropertyAccess, RequestNameReply, Variant
from dbus_fast.aio import MessageBus
from dbus_fast.errors import DBusError
from dbus_fast.service import ServiceInterface, dbus_property, method, signal
from ota_scan import host

ADAPTER = "/org/bluez/hci0"
ADAPTER_ADDRESS = "00:1B:DC:F0:0D:01"


def variants(obj: ServiceInterface, names: dict[str, str]) -> dict[str, Variant]:
    """The properties `names` (name -> signature) of `obj`, as ObjectManager reports them."""
    out = {}
    for name, sig in names.items():
        value = getattr(obj, "_" + name)
        if value is not None:
            out[name] = Variant(sig, value)
    return out


class ObjectManager(ServiceInterface):
    def __init__(self, standin: "Standin"):
        super().__init__("org.freedesktop.DBus.ObjectManager")
        self.standin = standin

    @method()
    def GetManagedObjects(self) -> "a{oa{sa{sv}}}":
        return self.standin.managed_objects()

    @signal()
    def InterfacesAdded(self, path: "o", interfaces: "a{sa{sv}}") -> "oa{sa{sv}}":
        return [path, interfaces]

    @signal()
    def InterfacesRemoved(self, path: "o", interfaces: "as") -> "oas":
        return [path, interfaces]


class Adapter1(ServiceInterface):
    PROPS = {
        "Address": "s",
        "AddressType": "s",
        "Name": "s",
        "Alias": "s",
        "Modalias": "s",
        "Powered": "b",
        "Discovering": "b",
    }

    def __init__(self, standin: "Standin"):
        super().__init__("org.bluez.Adapter1")
        self.standin = standin
        self._Address = ADAPTER_ADDRESS
        self._AddressType = "public"
        self._Name = self._Alias = "bumble-standin"
        # Vendor, product and device IDs in uppercase hex, as bluez-async parses them.
        self._Modalias = "usb:v1D6Bp0246d0540"
        self._Powered = True
        self._Discovering = False
        self.uuid_filter: list[str] = []

    @dbus_property(access=PropertyAccess.READ)
    def Address(self) -> "s":
        return self._Address

    @dbus_property(access=PropertyAccess.READ)
    def AddressType(self) -> "s":
        return self._AddressType

    @dbus_property(access=PropertyAccess.READ)
    def Name(self) -> "s":
        return self._Name

    @dbus_property(access=PropertyAccess.READ)
    def Alias(self) -> "s":
        return self._Alias

    @dbus_property(access=PropertyAccess.READ)
    def Modalias(self) -> "s":
        return self._Modalias

    @dbus_property()
    def Powered(self) -> "b":
        return self._Powered

    @Powered.setter
    def Powered(self, value: "b"):
        self._Powered = value

    @dbus_property(access=PropertyAccess.READ)
    def Discovering(self) -> "b":
        return self._Discovering

    @method()
    def SetDiscoveryFilter(self, options: "a{sv}"):
        uuids = options.get("UUIDs")
        self.uuid_filter = [u.lower() for u in uuids.value] if uuids else []

    @method()
    async def StartDiscovery(self):
        await self.standin.start_discovery()
        self._Discovering = True
        self.emit_properties_changed({"Discovering": True})

    @method()
    async def StopDiscovery(self):
        await self.standin.stop_discovery()
        self._Discovering = False
        self.emit_properties_changed({"Discovering": False})


class Device1(ServiceInterface):
    PROPS = {
        "Address": "s",
        "AddressType": "s",
        "Name": "s",
        "Alias": "s",
        "RSSI": "n",
        "UUIDs": "as",
        "Paired": "b",
        "Connected": "b",
        "ServicesResolved": "b",
        "Trusted": "b",
        "Blocked": "b",
        "LegacyPairing": "b",
        "Adapter": "o",
    }

    def __init__(self, standin: "Standin", path: str, address: hci.Address):
        super().__init__("org.bluez.Device1")
        self.standin = standin
        self.path = path
        self.address = address
        self._Address = str(address).split("/")[0]
        self._AddressType = "public" if address.is_public else "random"
        self._Name = self._Alias = None
        self._RSSI = 0
        self._UUIDs: list[str] = []
        self._Paired = self._Connected = self._ServicesResolved = False
        self._Trusted = self._Blocked = self._LegacyPairing = False
        self._Adapter = ADAPTER
        self.connection = None
        self.gatt_paths: list[str] = []

    @dbus_property(access=PropertyAccess.READ)
    def Address(self) -> "s":
        return self._Address

    @dbus_property(access=PropertyAccess.READ)
    def AddressType(self) -> "s":
        return self._AddressType

    @dbus_property(access=PropertyAccess.READ)
    def Name(self) -> "s":
        return self._Name or ""

    @dbus_property(access=PropertyAccess.READ)
    def Alias(self) -> "s":
        return self._Alias or self._Address

    @dbus_property(access=PropertyAccess.READ)
    def RSSI(self) -> "n":
        return self._RSSI

    @dbus_property(access=PropertyAccess.READ)
    def UUIDs(self) -> "as":
        return self._UUIDs

    @dbus_property(access=PropertyAccess.READ)
    def Paired(self) -> "b":
        return self._Paired

    @dbus_property(access=PropertyAccess.READ)
    def Connected(self) -> "b":
        return self._Connected

    @dbus_property(access=PropertyAccess.READ)
    def ServicesResolved(self) -> "b":
        return self._ServicesResolved

    @dbus_property(access=PropertyAccess.READ)
    def Trusted(self) -> "b":
        return self._Trusted

    @dbus_property(access=PropertyAccess.READ)
    def Blocked(self) -> "b":
        return self._Blocked

    @dbus_property(access=PropertyAccess.READ)
    def LegacyPairing(self) -> "b":
        return self._LegacyPairing

    @dbus_property(access=PropertyAccess.READ)
    def Adapter(self) -> "o":
        return self._Adapter

    @method()
    async def Connect(self):
        if self._Connected:
            return
        await self.standin.connect(self)

    @method()
    async def Disconnect(self):
        await self.standin.drop(self)


class GattService1(ServiceInterface):
    PROPS = {"UUID": "s", "Primary": "b", "Device": "o"}

    def __init__(self, uuid: str, device: str):
        super().__init__("org.bluez.GattService1")
        self._UUID, self._Primary, self._Device = uuid, True, device

    @dbus_property(access=PropertyAccess.READ)
    def UUID(self) -> "s":
        return self._UUID

    @dbus_property(access=PropertyAccess.READ)
    def Primary(self) -> "b":
        return self._Primary

    @dbus_property(access=PropertyAccess.READ)
    def Device(self) -> "o":
        return self._Device


def att_failure(error: BaseException) -> DBusError:
    """A GATT failure as BlueZ reports it (a request the link's end cancelled: Not connected)."""
    if isinstance(error, asyncio.CancelledError):
        return DBusError("org.bluez.Error.Failed", "Not connected")
    if isinstance(error, ATT_Error):
        return DBusError(
            "org.bluez.Error.Failed",
            f"Operation failed with ATT error: 0x{int(error.error_code):02x}",
        )
    return DBusError("org.bluez.Error.Failed", f"{type(error).__name__}: {error}")


class GattCharacteristic1(ServiceInterface):
    PROPS = {"UUID": "s", "Service": "o", "Flags": "as", "Notifying": "b", "MTU": "q", "Value": "ay"}

    def __init__(self, characteristic: Characteristic, service: str, mtu: int, device=None):
        super().__init__("org.bluez.GattCharacteristic1")
        self.characteristic = characteristic
        self.device = device
        # A read or a write request under way (BlueZ's read_op and write_op).
        self.reading = self.writing = False
        p = characteristic.properties
        flags = []
        for bit, name in (
            (Characteristic.Properties.READ, "read"),
            (Characteristic.Properties.WRITE_WITHOUT_RESPONSE, "write-without-response"),
            (Characteristic.Properties.WRITE, "write"),
            (Characteristic.Properties.NOTIFY, "notify"),
            (Characteristic.Properties.INDICATE, "indicate"),
        ):
            if p & bit:
                flags.append(name)
        self._UUID = full_uuid(characteristic.uuid)
        self._Service = service
        self._Flags = flags
        self._Notifying = False
        self._MTU = mtu
        self._Value = b""

    @dbus_property(access=PropertyAccess.READ)
    def UUID(self) -> "s":
        return self._UUID

    @dbus_property(access=PropertyAccess.READ)
    def Service(self) -> "o":
        return self._Service

    @dbus_property(access=PropertyAccess.READ)
    def Flags(self) -> "as":
        return self._Flags

    @dbus_property(access=PropertyAccess.READ)
    def Notifying(self) -> "b":
        return self._Notifying

    @dbus_property(access=PropertyAccess.READ)
    def MTU(self) -> "q":
        return self._MTU

    # A notification is a change of Value (dbus-fast signals declared properties only).
    @dbus_property(access=PropertyAccess.READ)
    def Value(self) -> "ay":
        return self._Value

    @method()
    async def ReadValue(self, options: "a{sv}") -> "ay":
        # As BlueZ: one read at a time per characteristic, a second one is refused.
        if self.reading:
            raise DBusError("org.bluez.Error.InProgress", "In Progress")
        self.reading = True
        try:
            value = bytes(await self.characteristic.read_value())
        except (Exception, asyncio.CancelledError) as error:
            raise att_failure(error)
        finally:
            self.reading = False
        print(json.dumps({"read": self._UUID, "len": len(value)}), flush=True)
        # BlueZ caches what it read in Value and signals the change, as it does for a
        # notification: a client sees its read come back as a value change too.
        self._Value = value
        self.emit_properties_changed({"Value": value})
        return value

    @method()
    async def WriteValue(self, value: "ay", options: "a{sv}"):
        kind = options.get("type")
        with_response = kind is None or kind.value != "command"
        if not with_response and self.device is not None:
            # A drop the test asked for, as a radio losing the link: BlueZ took the write
            # command (it answers those once queued), but it never leaves.
            if await self.device.standin.count_data_write(self.device):
                return
        if not with_response:
            try:
                await self.characteristic.write_value(bytes(value), with_response=False)
            except (Exception, asyncio.CancelledError) as error:
                raise att_failure(error)
            return
        # As BlueZ: one write request at a time per characteristic, a second one is refused.
        if self.writing:
            raise DBusError("org.bluez.Error.InProgress", "In Progress")
        self.writing = True
        try:
            await self.characteristic.write_value(bytes(value), with_response=True)
        except (Exception, asyncio.CancelledError) as error:
            raise att_failure(error)
        finally:
            self.writing = False

    @method()
    async def StartNotify(self):
        if self._Notifying:
            return
        if "notify" not in self._Flags and "indicate" not in self._Flags:
            raise DBusError("org.bluez.Error.NotSupported", "Operation is not supported")
        try:
            await self.characteristic.subscribe(self.on_value)
        except (Exception, asyncio.CancelledError) as error:
            raise att_failure(error)
        self._Notifying = True
        self.emit_properties_changed({"Notifying": True})

    def on_value(self, value) -> None:
        self._Value = bytes(value)
        self.emit_properties_changed({"Value": self._Value})

    @method()
    async def StopNotify(self):
        if not self._Notifying:
            raise DBusError("org.bluez.Error.Failed", "No notify session started")
        try:
            await self.characteristic.unsubscribe(self.on_value)
        except (Exception, asyncio.CancelledError) as error:
            raise att_failure(error)
        self._Notifying = False
        self.emit_properties_changed({"Notifying": False})


class GattDescriptor1(ServiceInterface):
    PROPS = {"UUID": "s", "Characteristic": "o"}

    def __init__(self, descriptor, characteristic: str):
        super().__init__("org.bluez.GattDescriptor1")
        self.descriptor = descriptor
        self._UUID = full_uuid(descriptor.type)
        self._Characteristic = characteristic

    @dbus_property(access=PropertyAccess.READ)
    def UUID(self) -> "s":
        return self._UUID

    @dbus_property(access=PropertyAccess.READ)
    def Characteristic(self) -> "o":
        return self._Characteristic

    @method()
    async def ReadValue(self, options: "a{sv}") -> "ay":
        try:
            return bytes(await self.descriptor.read_value())
        except (Exception, asyncio.CancelledError) as error:
            raise att_failure(error)


def full_uuid(uuid) -> str:
    """A Bumble UUID in BlueZ's form: 128 bits, lowercase, hyphenated."""
    h = uuid.to_bytes(force_128=True)[::-1].hex()
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


class Standin:
    def __init__(self, bus: MessageBus, host: Device, drop_at: list[int] = (), mtu: int = 517):
        self.bus = bus
        self.host = host
        self.mtu = mtu
        self.drop_at = set(drop_at)
        self.data_writes = 0
        self.objects: dict[str, list[ServiceInterface]] = {}
        self.manager = ObjectManager(self)
        self.adapter = Adapter1(self)
        self.devices: dict[str, Device1] = {}
        bus.export("/", self.manager)
        self.add(ADAPTER, [self.adapter])
        host.on(Device.EVENT_ADVERTISEMENT, self.on_advertisement)

    def add(self, path: str, interfaces: list[ServiceInterface], announce: bool = False) -> None:
        for i in interfaces:
            self.bus.export(path, i)
        self.objects[path] = interfaces
        if announce:
            self.manager.InterfacesAdded(
                path, {i.name: variants(i, type(i).PROPS) for i in interfaces}
            )

    def remove(self, path: str) -> None:
        interfaces = self.objects.pop(path, [])
        for i in interfaces:
            self.bus.unexport(path, i)
        if interfaces:
            self.manager.InterfacesRemoved(path, [i.name for i in interfaces])

    def managed_objects(self) -> dict:
        return {
            path: {i.name: variants(i, type(i).PROPS) for i in ifaces}
            for path, ifaces in self.objects.items()
        }

    async def start_discovery(self) -> None:
        await self.host.start_scanning(filter_duplicates=False)

    async def stop_discovery(self) -> None:
        await self.host.stop_scanning()

    def on_advertisement(self, adv: Advertisement) -> None:
        uuids = []
        for ad_type in (
            AdvertisingData.COMPLETE_LIST_OF_128_BIT_SERVICE_CLASS_UUIDS,
            AdvertisingData.INCOMPLETE_LIST_OF_128_BIT_SERVICE_CLASS_UUIDS,
            AdvertisingData.COMPLETE_LIST_OF_16_BIT_SERVICE_CLASS_UUIDS,
        ):
            for found in adv.data.get_all(ad_type):
                for u in found if isinstance(found, list) else [found]:
                    uuids.append(full_uuid(u))
        wanted = self.adapter.uuid_filter
        if wanted and not any(u in wanted for u in uuids):
            return
        key = str(adv.address)
        path = f"{ADAPTER}/dev_" + key.split("/")[0].replace(":", "_")
        name = adv.data.get(AdvertisingData.COMPLETE_LOCAL_NAME) or adv.data.get(
            AdvertisingData.SHORTENED_LOCAL_NAME
        )
        name = name.decode() if isinstance(name, bytes) else name
        dev = self.devices.get(path)
        if dev is None:
            dev = Device1(self, path, adv.address)
            dev._UUIDs, dev._RSSI = uuids, adv.rssi
            if name:
                dev._Name = dev._Alias = name
            self.devices[path] = dev
            self.add(path, [dev], announce=True)
            return
        # As BlueZ: a signal only for what changed.
        changed = {}
        if adv.rssi != dev._RSSI:
            dev._RSSI = changed["RSSI"] = adv.rssi
        if name and dev._Name != name:
            dev._Name = dev._Alias = name
            changed.update({"Name": name, "Alias": name})
        if changed:
            dev.emit_properties_changed(changed)

    async def connect(self, dev: Device1) -> None:
        try:
            connection = await asyncio.wait_for(self.host.connect(dev.address), 20)
        except asyncio.TimeoutError:
            raise DBusError(
                "org.bluez.Error.Failed", "no connection within 20 s: is the device advertising?"
            )
        except (Exception, asyncio.CancelledError) as error:
            raise DBusError("org.bluez.Error.Failed", f"connection failed: {error!r}")
        dev.connection = connection
        # Only this connection's end counts (a late event of an older one must not end it).
        connection.on(
            "disconnection",
            lambda _reason: dev.connection is connection and self.disconnected(dev),
        )
        # As BlueZ: Connected first, the GATT objects as discovered, then ServicesResolved.
        dev._Connected = True
        dev.emit_properties_changed({"Connected": True})
        try:
            peer = Peer(connection)
            # BlueZ asks for the largest MTU at once (`--mtu` stands in for a stack that asks
            # for less); the device grants what it takes.
            mtu = await peer.request_mtu(self.mtu)
            await peer.discover_all()
        except (Exception, asyncio.CancelledError) as error:
            await self.drop(dev)
            raise att_failure(error)
        for path in dev.gatt_paths:
            self.remove(path)
        dev.gatt_paths = []
        for s_index, service in enumerate(peer.services):
            s_path = f"{dev.path}/service{s_index:04x}"
            self.add(s_path, [GattService1(full_uuid(service.uuid), dev.path)], announce=True)
            dev.gatt_paths.append(s_path)
            for c_index, characteristic in enumerate(service.characteristics):
                c_path = f"{s_path}/char{c_index:04x}"
                self.add(
                    c_path, [GattCharacteristic1(characteristic, s_path, mtu, dev)], announce=True
                )
                dev.gatt_paths.append(c_path)
                for d_index, descriptor in enumerate(characteristic.descriptors):
                    d_path = f"{c_path}/desc{d_index:04x}"
                    self.add(d_path, [GattDescriptor1(descriptor, c_path)], announce=True)
                    dev.gatt_paths.append(d_path)
        dev._ServicesResolved = True
        dev.emit_properties_changed({"ServicesResolved": True})

    async def drop(self, dev: Device1) -> None:
        """Ends `dev`'s link from this side and reports it gone."""
        if dev.connection is not None:
            try:
                await asyncio.wait_for(dev.connection.disconnect(), 5)
            except (Exception, asyncio.CancelledError):  # already gone
                pass
        self.disconnected(dev)

    async def count_data_write(self, dev: Device1) -> bool:
        """Counts a write command; at a count in `--drop-at`, drops the link and returns True."""
        self.data_writes += 1
        if self.data_writes not in self.drop_at or dev.connection is None:
            return False
        print(json.dumps({"dropped_at": self.data_writes}), flush=True)
        await self.drop(dev)
        return True

    def disconnected(self, dev: Device1) -> None:
        if not dev._Connected:
            return
        dev.connection = None
        # The GATT objects go with the link (BlueZ with `Cache = no`; see the module's notes).
        for path in dev.gatt_paths:
            self.remove(path)
        dev.gatt_paths = []
        dev._Connected = dev._ServicesResolved = False
        dev.emit_properties_changed({"Connected": False, "ServicesResolved": False})


async def run(args: argparse.Namespace) -> int:
    if not os.environ.get("DBUS_SYSTEM_BUS_ADDRESS"):
        print("error: set DBUS_SYSTEM_BUS_ADDRESS to the private bus", file=sys.stderr)
        return 2
    bus = await MessageBus(bus_type=BusType.SYSTEM).connect()
    async with await open_transport(args.hci) as transport:
        central = await host(transport, "bluez-standin")
        Standin(bus, central, args.drop_at, args.mtu)
        if await bus.request_name("org.bluez") != RequestNameReply.PRIMARY_OWNER:
            print(
                "error: org.bluez is owned already on this bus (a real bluetoothd?): point "
                "DBUS_SYSTEM_BUS_ADDRESS at a private bus (dbus-daemon --config-file "
                "e2e/dbus-private.conf)",
                file=sys.stderr,
            )
            return 1
        print(json.dumps({"ready": True}), flush=True)
        await asyncio.get_running_loop().create_future()
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description="org.bluez on a private bus, carried to Bumble.")
    parser.add_argument("--hci", required=True, help="Bumble transport, e.g. tcp-client:127.0.0.1:PORT")
    parser.add_argument(
        "--mtu", type=int, default=517, help="ATT MTU to ask for (BlueZ asks for 517)"
    )
    parser.add_argument(
        "--drop-at",
        type=lambda v: [int(n) for n in v.split(",")],
        default=[],
        help="end the link at these write commands (counted over the run, from 1)",
    )
    return asyncio.run(run(parser.parse_args()))


if __name__ == "__main__":
    sys.exit(main())
