//! The system's Bluetooth through btleplug: BlueZ on Linux, CoreBluetooth on macOS, WinRT on
//! Windows. Kept thin: everything above it is tested through the other transports.
//!
//! Known platform limits: btleplug reports the ATT MTU inconsistently across platforms (23 until
//! it learns better on some), so the fast protocol relies on the chunk size the device announces
//! (the device knows its MTU) and uses btleplug's value only to lower it; the legacy packet size
//! is MTU - 3 from btleplug, or `--mtu` when btleplug does not know. On macOS,
//! btleplug queues write-without-response until CoreBluetooth says it can send, so nothing is
//! dropped silently; on Linux, BlueZ queues them in the kernel.

use std::time::Duration;

use anyhow::{Context, Result};
use btleplug::api::{
    Central, CentralState, Characteristic as GattChar, Manager as _, Peripheral as _, ScanFilter,
    WriteType,
};
use btleplug::platform::{Adapter, Manager, Peripheral};
use futures::StreamExt;
use ota_core::protocol::{CONTROL_CHAR_UUID, Characteristic, DATA_CHAR_UUID, OTA_SERVICE_UUID};
use tokio::sync::mpsc;
use uuid::Uuid;

use super::Link;
use crate::exit::{CliError, ExitCode};

/// A device seen while scanning.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Found {
    pub name: Option<String>,
    pub address: String,
    pub rssi: Option<i16>,
    #[serde(skip)]
    pub peripheral: Peripheral,
}

fn no_adapter(detail: impl std::fmt::Display) -> anyhow::Error {
    CliError::new(
        ExitCode::NoDevice,
        format!("no Bluetooth adapter or BlueZ available ({detail}); use --sim PATH for the virtual ESP32 or --hci tcp:HOST:PORT for an HCI controller"),
    )
    .into()
}

async fn adapter() -> Result<Adapter> {
    let manager = Manager::new().await.map_err(no_adapter)?;
    let adapter = manager
        .adapters()
        .await
        .map_err(no_adapter)?
        .into_iter()
        .next()
        .ok_or_else(|| no_adapter("the system lists no adapter"))?;
    if let Ok(CentralState::PoweredOff) = adapter.adapter_state().await {
        return Err(no_adapter("the adapter is powered off"));
    }
    Ok(adapter)
}

/// Scans for `timeout` and returns devices advertising the OTA service.
pub async fn scan(timeout: Duration) -> Result<Vec<Found>> {
    let adapter = adapter().await?;
    adapter
        .start_scan(ScanFilter {
            services: vec![Uuid::from_u128(OTA_SERVICE_UUID)],
        })
        .await
        .map_err(no_adapter)?;
    tokio::time::sleep(timeout).await;
    let _ = adapter.stop_scan().await;
    let mut found = Vec::new();
    for p in adapter.peripherals().await? {
        let props = p.properties().await?.unwrap_or_default();
        if !props.services.contains(&Uuid::from_u128(OTA_SERVICE_UUID)) {
            continue;
        }
        found.push(Found {
            name: props.local_name.or(props.advertisement_name),
            address: p.address().to_string(),
            rssi: props.rssi,
            peripheral: p,
        });
    }
    found.sort_by_key(|f| std::cmp::Reverse(f.rssi.unwrap_or(i16::MIN)));
    Ok(found)
}

/// A connected device.
pub struct BleLink {
    peripheral: Peripheral,
    control: GattChar,
    data: GattChar,
    notes: mpsc::UnboundedReceiver<Vec<u8>>,
    /// Drop the link just before these data writes (1-based), as `--disconnect-at` asks.
    pub disconnect_at: Vec<u32>,
    data_writes: u32,
}

impl BleLink {
    /// Scans and connects to the device named or addressed `selector` (the strongest one when
    /// `None`).
    pub async fn connect(selector: Option<&str>, timeout: Duration) -> Result<BleLink> {
        let found = scan(timeout).await?;
        let pick = found
            .into_iter()
            .find(|f| match selector {
                None => true,
                Some(s) => f.address.eq_ignore_ascii_case(s) || f.name.as_deref() == Some(s),
            })
            .ok_or_else(|| {
                CliError::new(ExitCode::NoDevice, match selector {
                    Some(s) => format!("no device `{s}` advertising the OTA service; run `ble-ota scan` to list devices"),
                    None => "no device advertising the OTA service; is it powered and in range? (`ble-ota scan`)".into(),
                })
            })?;
        Self::open(pick.peripheral).await
    }

    async fn open(peripheral: Peripheral) -> Result<BleLink> {
        peripheral.connect().await.context("connecting")?;
        peripheral
            .discover_services()
            .await
            .context("discovering services")?;
        let find = |uuid: u128| {
            peripheral
                .characteristics()
                .into_iter()
                .find(|c| c.uuid == Uuid::from_u128(uuid))
                .ok_or_else(|| CliError::new(ExitCode::NoDevice, "the device lacks the OTA characteristics: is it running firmware with the OTA service?"))
        };
        let control = find(CONTROL_CHAR_UUID)?;
        let data = find(DATA_CHAR_UUID)?;
        peripheral
            .subscribe(&control)
            .await
            .context("subscribing to OTA Control")?;
        let mut stream = peripheral.notifications().await?;
        let (tx, notes) = mpsc::unbounded_channel();
        tokio::spawn(async move {
            while let Some(n) = stream.next().await {
                if n.uuid == Uuid::from_u128(CONTROL_CHAR_UUID) && tx.send(n.value).is_err() {
                    break;
                }
            }
        });
        Ok(BleLink {
            peripheral,
            control,
            data,
            notes,
            disconnect_at: Vec::new(),
            data_writes: 0,
        })
    }
}

impl Link for BleLink {
    fn att_mtu(&self) -> Option<u16> {
        // btleplug reports the default 23 until some platforms learn the negotiated value: only
        // a larger value is news. It caps the legacy packet size (a packet larger than the MTU
        // allows would fail) and, for the fast protocol, never raises the device's chunk size.
        let mtu = self.peripheral.mtu();
        (mtu > 23).then_some(mtu)
    }

    async fn write(
        &mut self,
        ch: Characteristic,
        data: &[u8],
        with_response: bool,
    ) -> Result<Result<(), u8>> {
        if ch == Characteristic::Data {
            self.data_writes += 1;
            if self.disconnect_at.contains(&self.data_writes) {
                let _ = self.peripheral.disconnect().await;
                anyhow::bail!(
                    "link dropped on purpose before data write {}",
                    self.data_writes
                );
            }
        }
        let target = match ch {
            Characteristic::Control => &self.control,
            Characteristic::Data => &self.data,
        };
        let kind = if with_response {
            WriteType::WithResponse
        } else {
            WriteType::WithoutResponse
        };
        match self.peripheral.write(target, data, kind).await {
            Ok(()) => Ok(Ok(())),
            Err(e) if with_response && self.peripheral.is_connected().await.unwrap_or(false) => {
                // btleplug does not expose the ATT error code uniformly: report it as unlikely.
                tracing_att_error(&e);
                Ok(Err(0x0E))
            }
            Err(e) => Err(e.into()),
        }
    }

    async fn read_control(&mut self) -> Result<Vec<u8>> {
        Ok(self.peripheral.read(&self.control).await?)
    }

    async fn notification(&mut self, timeout: Duration) -> Result<Option<Vec<u8>>> {
        if timeout.is_zero() {
            return Ok(self.notes.try_recv().ok());
        }
        match tokio::time::timeout(timeout, self.notes.recv()).await {
            Ok(Some(v)) => Ok(Some(v)),
            Ok(None) => anyhow::bail!("notification stream ended: the link dropped"),
            Err(_) => Ok(None),
        }
    }

    async fn is_connected(&mut self) -> bool {
        self.peripheral.is_connected().await.unwrap_or(false)
    }

    fn data_writes(&self) -> Option<u32> {
        Some(self.data_writes)
    }

    async fn reconnect(&mut self) -> Result<()> {
        let fresh = BleLink::open(self.peripheral.clone()).await?;
        *self = fresh;
        Ok(())
    }
}

fn tracing_att_error(e: &btleplug::Error) {
    eprintln!("write request failed: {e}");
}
