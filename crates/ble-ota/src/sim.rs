//! The virtual ESP32 as a target: a flash file that stays "on" between runs, reached either
//! through the modelled BLE link (updates, with modelled time) or directly (commands).

use std::collections::VecDeque;
use std::path::Path;
use std::time::{Duration, Instant as WallInstant};

use anyhow::{Context, Result};
use ota_core::client::{ClientEvent, Sender, SenderConfig};
use ota_core::device::{ClientId, DeviceConfig, Event, Input, PreErase, Shell, UpdateEngine};
use ota_core::manifest::MANIFEST_LEN;
use ota_core::protocol::Characteristic;
use ota_core::time::Instant;
use virtual_esp32::air::{AirConfig, AirReport, update_over_air};
use virtual_esp32::{BootReport, BootloaderConfig, VirtualEsp32};

use crate::exit::{CliError, ExitCode};
use crate::transport::Link;

/// The client id a direct connection uses.
const CLIENT: ClientId = ClientId(1);

/// A virtual ESP32 opened from its flash file.
pub struct SimDevice {
    pub dev: VirtualEsp32,
    pub bootloader: BootloaderConfig,
}

impl SimDevice {
    /// Opens the device as it was left (booting it if it was off).
    pub fn open(path: &Path, bootloader: BootloaderConfig) -> Result<SimDevice> {
        if !path.exists() {
            return Err(CliError::new(
                ExitCode::NoDevice,
                format!(
                    "no virtual ESP32 at {}: create one with `ble-ota sim create {}`",
                    path.display(),
                    path.display()
                ),
            )
            .into());
        }
        let dev = VirtualEsp32::open_powered(path, bootloader)
            .with_context(|| format!("opening the virtual ESP32 at {}", path.display()))?;
        Ok(SimDevice { dev, bootloader })
    }

    /// Starts the device's OTA engine, as the firmware does after boot, on the device's chip
    /// revision (images the bootloader would not boot for it are refused).
    pub fn engine(&mut self, config: DeviceConfig) -> Result<UpdateEngine> {
        let config = DeviceConfig {
            chip_revision: self.dev.chip_revision(),
            trusted_keys: self.dev.trusted_keys(),
            ..config
        };
        let running = *self
            .dev
            .running_partition()
            .context("the virtual ESP32 is off")?;
        let table = self.dev.partition_table().clone();
        UpdateEngine::new(self.dev.flash_mut(), config, table, running).map_err(|e| {
            use ota_core::esp::SlotError;
            match e {
                // What a real device with this table answers: no OTA (REQUEST_NAK, NoOtaSlot).
                SlotError::NoOtadata | SlotError::NoOtaSlots => CliError::new(
                    ExitCode::Refused,
                    format!(
                        "the device refused: {} ({e})",
                        ota_core::protocol::Reason::NoOtaSlot.hint()
                    ),
                )
                .into(),
                other => anyhow::Error::new(other).context("starting the device's OTA engine"),
            }
        })
    }

    /// Resets the device: the bootloader picks the app, the rollback guard runs.
    pub fn reboot(&mut self) -> Result<BootReport> {
        let report = self.dev.reboot(self.bootloader)?;
        self.dev.record_power_state()?;
        Ok(report)
    }

    /// Erases the next update slot as the firmware does while it sits idle
    /// (`UpdateEngine::pre_erase_step`), before any client connects.
    pub fn pre_erase(&mut self) -> Result<()> {
        let mut engine = self.engine(DeviceConfig::new(self.dev.chip()))?;
        Self::pre_erase_with(&mut self.dev, &mut engine);
        Ok(())
    }

    fn pre_erase_with(dev: &mut VirtualEsp32, engine: &mut UpdateEngine) {
        while let Ok(PreErase::Erased { .. } | PreErase::Blank { .. }) =
            engine.pre_erase_step(dev.flash_mut())
        {}
    }

    /// Runs one update over the modelled link, calling `on_event` with each client event and
    /// the modelled time. `speed` paces it to the modelled time (1.0: real time; 0: as fast
    /// as the host computes).
    pub fn update_over_air(
        &mut self,
        image: &[u8],
        plan: &SendPlan<'_>,
        air: &AirConfig,
        speed: f64,
        on_event: &mut dyn FnMut(&ClientEvent, Duration),
    ) -> Result<AirReport> {
        let mut engine = self.engine(air.device_config(self.dev.chip()))?;
        Self::pre_erase_with(&mut self.dev, &mut engine);
        let stream = plan.stream(image);
        let mut sender = plan.sender(
            image,
            stream.as_deref(),
            air.link.att_mtu,
            SenderConfig {
                att_mtu: Some(air.link.att_mtu),
                ..SenderConfig::default()
            },
        )?;
        let wall = WallInstant::now();
        let report = update_over_air(&mut self.dev, &mut engine, &mut sender, air, &mut |e, t| {
            if speed > 0.0 {
                let due = t.div_f64(speed);
                if let Some(wait) = due.checked_sub(wall.elapsed()) {
                    std::thread::sleep(wait.min(Duration::from_millis(200)));
                }
            }
            on_event(e, t);
        });
        Ok(report)
    }
}

/// How an image goes to a device: which protocol, compressed or not, signed or not.
#[derive(Debug, Clone, Copy, Default)]
pub struct SendPlan<'a> {
    /// The seed's protocol.
    pub legacy: bool,
    /// Offer the image compressed (the fast protocol only).
    pub compress: bool,
    /// The image's signed manifest (the fast protocol only).
    pub manifest: Option<&'a [u8; MANIFEST_LEN]>,
}

impl<'a> SendPlan<'a> {
    /// The seed's protocol, as its clients send.
    pub fn legacy() -> Self {
        SendPlan {
            legacy: true,
            ..Default::default()
        }
    }

    /// The fast protocol, compressed.
    pub fn fast() -> Self {
        SendPlan {
            compress: true,
            ..Default::default()
        }
    }

    /// The compressed stream to offer, when compressing.
    pub fn stream(&self, image: &[u8]) -> Option<Vec<u8>> {
        (self.compress && !self.legacy).then(|| ota_core::client::compress(image))
    }

    /// Builds the sender: the legacy one with packets for `legacy_mtu`, or the fast one with
    /// `config`, the stream and the manifest.
    pub fn sender<'s>(
        &self,
        image: &'s [u8],
        stream: Option<&'s [u8]>,
        legacy_mtu: u16,
        config: SenderConfig,
    ) -> Result<Sender<'s>>
    where
        'a: 's,
    {
        let legacy_mtu = self.legacy.then_some(legacy_mtu);
        Sender::new(image, legacy_mtu, config, stream, self.manifest)
            .map_err(crate::cmd::flash::cannot_send)
    }
}

/// A direct connection to the virtual ESP32's engine: every write is delivered at once.
pub struct SimLink {
    pub device: SimDevice,
    pub engine: UpdateEngine,
    notes: VecDeque<Vec<u8>>,
    start: WallInstant,
    /// The engine asked for a reboot.
    pub reboot_requested: bool,
}

impl SimLink {
    pub fn connect(mut device: SimDevice) -> Result<SimLink> {
        let engine = device.engine(DeviceConfig::new(device.dev.chip()))?;
        let mut link = SimLink {
            device,
            engine,
            notes: VecDeque::new(),
            start: WallInstant::now(),
            reboot_requested: false,
        };
        // A direct connection as a current phone or laptop makes it: MTU 247, data length 251.
        let _ = link.serve(Input::Connected(CLIENT));
        let _ = link.serve(Input::Link {
            client: CLIENT,
            mtu: SIM_LINK_MTU,
            data_length: ota_core::protocol::LL_MAX_DATA_LEN,
            timing: None,
        });
        Ok(link)
    }

    fn now(&self) -> Instant {
        Instant(self.start.elapsed().as_millis() as u64)
    }

    /// Serves one input through the device driver.
    fn serve(&mut self, input: Input<'_>) -> Result<(), ota_core::protocol::Reason> {
        let now = self.now();
        let mut shell = SimShell {
            notes: &mut self.notes,
            reboot: &mut self.reboot_requested,
        };
        self.engine
            .serve(self.device.dev.flash_mut(), input, now, &mut shell)
    }
}

/// The direct link's side of the driver: notifications queue for the client, a reboot
/// request is remembered. Flash work costs nothing on this link.
struct SimShell<'a> {
    notes: &'a mut VecDeque<Vec<u8>>,
    reboot: &'a mut bool,
}

impl Shell for SimShell<'_> {
    fn notify(&mut self, _client: ClientId, value: &[u8]) {
        self.notes.push_back(value.to_vec());
    }
    fn event(&mut self, event: Event) {
        if event == Event::RebootRequested {
            *self.reboot = true;
        }
    }
}

/// The ATT MTU of a direct connection.
const SIM_LINK_MTU: u16 = 247;

impl Link for SimLink {
    fn att_mtu(&self) -> Option<u16> {
        Some(SIM_LINK_MTU)
    }

    async fn write(
        &mut self,
        ch: Characteristic,
        data: &[u8],
        _with_response: bool,
    ) -> Result<Result<(), u8>> {
        let input = Input::Write {
            client: CLIENT,
            characteristic: ch,
            data,
        };
        Ok(self.serve(input).map_err(|r| r.att_error()))
    }

    async fn read_control(&mut self) -> Result<Vec<u8>> {
        Ok(self.engine.control_value().to_vec())
    }

    async fn notification(&mut self, _timeout: Duration) -> Result<Option<Vec<u8>>> {
        if self.notes.is_empty() {
            let _ = self.serve(Input::Tick);
        }
        Ok(self.notes.pop_front())
    }

    async fn is_connected(&mut self) -> bool {
        true
    }

    async fn reconnect(&mut self) -> Result<()> {
        Ok(())
    }
}
