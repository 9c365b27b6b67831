"""Finding the device under test on Bumble, and its GATT API: shared by the e2e scripts."""

from __future__ import annotations

import asyncio
import sys

from bumble import hci
from bumble.core import UUID, AdvertisingData
from bumble.device import Advertisement, Device

# The seed's GATT API (its README): the OTA service and its two characteristics.
OTA_SERVICE_UUID = UUID("d6f1d96d-594c-4c53-b1c6-244a1dfde6d8")
OTA_CONTROL_UUID = UUID("7ad671aa-21c0-46a4-b722-270e3ae3d830")
OTA_DATA_UUID = UUID("23408888-1f40-4cd8-9b89-ca8d45f8a5b0")


async def find_ota_device(device: Device, timeout: float) -> hci.Address:
    """Scans until a device advertises the OTA service; asyncio.TimeoutError after `timeout`."""
    found: asyncio.Future[hci.Address] = asyncio.get_running_loop().create_future()

    def on_advertisement(advertisement: Advertisement) -> None:
        if found.done():
            return
        for ad_type in (
            AdvertisingData.COMPLETE_LIST_OF_128_BIT_SERVICE_CLASS_UUIDS,
            AdvertisingData.INCOMPLETE_LIST_OF_128_BIT_SERVICE_CLASS_UUIDS,
        ):
            for uuids in advertisement.data.get_all(ad_type):
                if OTA_SERVICE_UUID in (uuids if isinstance(uuids, list) else [uuids]):
                    found.set_result(advertisement.address)
                    return

    device.on(Device.EVENT_ADVERTISEMENT, on_advertisement)
    await device.start_scanning(filter_duplicates=False)
    try:
        return await asyncio.wait_for(found, timeout)
    finally:
        device.remove_listener(Device.EVENT_ADVERTISEMENT, on_advertisement)
        await device.stop_scanning()


async def host(transport, name: str) -> Device:
    """A powered-on Bumble host with a fresh static address on `transport`."""
    device = Device.with_hci(
        name,
        hci.Address.generate_static_address(),
        transport.source,
        transport.sink,
    )
    await device.power_on()
    return device


async def connect_ota_device(device: Device, scan_timeout: float, connect_timeout: float):
    """Connects to the first device advertising the OTA service; None if none did in time."""
    try:
        address = await find_ota_device(device, scan_timeout)
    except asyncio.TimeoutError:
        return None
    return await device.connect(address, timeout=connect_timeout)


async def connected_central(transport, name: str, scan_timeout: float):
    """A Bumble central named `name` on `transport`, connected to the first device advertising
    the OTA service; None, said on stderr, if none did in time."""
    device = await host(transport, name)
    connection = await connect_ota_device(device, scan_timeout, 30)
    if connection is None:
        print("error: no device advertising the OTA service", file=sys.stderr)
    return connection
