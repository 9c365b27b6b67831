"""Finding the device under test on Bumble: shared by the e2e client scripts."""

from __future__ import annotations

import asyncio

from bumble import hci
from bumble.core import UUID, AdvertisingData
from bumble.device import Advertisement, Device

OTA_SERVICE_UUID = UUID("d6f1d96d-594c-4c53-b1c6-244a1dfde6d8")


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
