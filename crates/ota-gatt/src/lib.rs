//! The BLE OTA GATT service on [trouble-host](https://docs.rs/trouble-host), shared by the
//! ESP32 firmware and the virtual ESP32 (`ble-ota device`).
//!
//! [`run`] advertises the device, serves up to two centrals at once ([`CONNECTIONS`]), and drives `ota-core`'s
//! [`UpdateEngine`]: writes go to the engine, refused write requests get the engine's ATT
//! error, its notifications go out on OTA Control, a read of OTA Control returns
//! [`UpdateEngine::control_value`], and it returns when the engine asks for a reboot. It also
//! carries out the trial image's confirm policy ([`TrialPolicy`]), so the firmware and the
//! virtual ESP32 confirm or roll back by the very same code.
//!
//! # GATT table
//!
//! | Service / characteristic | UUID | Properties |
//! |---|---|---|
//! | OTA service | `d6f1d96d-594c-4c53-b1c6-244a1dfde6d8` | advertised |
//! | OTA Control | `7ad671aa-21c0-46a4-b722-270e3ae3d830` | read, write, notify (values up to 512 bytes) |
//! | OTA Data | `23408888-1f40-4cd8-9b89-ca8d45f8a5b0` | write, write without response (up to 512) |
//! | Device Information | `0x180A` | manufacturer `0x2A29`, model `0x2A24`, hardware `0x2A27`, firmware `0x2A26` (the running app's version) |
//!
//! # The receive path
//!
//! trouble-host queues received ATT PDUs per connection and silently drops a PDU when that
//! queue or its packet pool is full. Flash work (a 4 KiB sector erase takes 45 ms typical, a
//! 32 KiB batch of page programs 90 ms) must therefore never hold up the receive path, and a
//! client must never have more in flight than the device can queue. Here the GATT event loop
//! only sorts events: OTA writes and reads of OTA Control go, in order and still holding their
//! packet, into a queue of [`QUEUE_DEPTH`] entries that a second loop feeds to the engine (one
//! entry at a time, yielding in between, so the receive path runs between flash operations).
//! The window the engine announces is [`RX_QUEUE_CHUNKS`] chunks, less than that queue, and the
//! packet pool ([`pool`]) holds the whole queue plus room for replies and reassembly. A client
//! that overruns the window anyway loses chunks in trouble-host's queue; the engine sees the
//! gap and asks for the rest again (REWIND). Each of the [`CONNECTIONS`] has its own queue, but
//! the pool is one: a second central that floods writes while another updates can take its
//! packets. Data chunks lost that way cost the updater REWINDs (time), never bytes; a command
//! (BEGIN, END) dropped that way goes unanswered: the updater gives up after its answer
//! timeout, and run again it resumes.
//!
//! Every flash command stops the BLE controller (esp-storage masks interrupts around it), so
//! [`run`] erases the next update slot only while no central is connected, one sector at a time
//! with a pause after each ([`pre_erase`] does it at boot, before BLE starts).
//!
//! # Link tuning
//!
//! After a central connects the device asks for a data length of 251 octets, where the chip
//! has it the 2M PHY, and a short connection interval (a central connects to update, and the
//! new interval takes a few connection events to apply); when an update ends it asks for a
//! relaxed interval, and for the short one again when the next update starts. The ATT MTU is
//! the client's to exchange, up to [`ATT_MTU`] = 498: a seed client's packet size (MTU - 3,
//! unclamped) then stays within ATT's 512 bytes, and a full value fills exactly two 251-octet
//! PDUs. The PHY and interval the controller reports go to the engine, which sizes its chunks
//! to fill whole connection events.
#![no_std]
#![warn(missing_docs)]

mod fmt;
pub mod guard;
pub mod pool;

use core::cell::{Cell, RefCell};
use core::future::Future;
use core::pin::pin;

use bt_hci::cmd::le::{LeReadLocalSupportedFeatures, LeSetDataLength, LeSetPhy};
use bt_hci::controller::{ControllerCmdAsync, ControllerCmdSync};
use embassy_futures::select::{Either3, Either4, select3, select4};
use embassy_futures::yield_now;
use embassy_sync::blocking_mutex::raw::NoopRawMutex;
use embassy_sync::channel::Channel;
use embassy_sync::signal::Signal;
use embassy_time::{Duration, Timer, with_timeout};
use embedded_storage::nor_flash::NorFlash;
use ota_core::device::trial::{TrialAction, TrialFailure, TrialPolicy};
use ota_core::device::{
    ClientId, DeviceConfig, Event, Input, PreErase, Sha256Hasher, Shell, UpdateEngine,
};
use ota_core::esp::Chip;
use ota_core::esp::flash::FlashWork;
use ota_core::protocol::Characteristic as OtaChar;
use ota_core::protocol::air;
use ota_core::protocol::fast::Response;
use ota_core::protocol::{
    CONTROL_CHAR_UUID, DATA_CHAR_UUID, LL_DEFAULT_DATA_LEN, LL_MAX_DATA_LEN, LL_MAX_TX_TIME_US,
    OTA_SERVICE_UUID,
};
use ota_core::time::Instant;
use trouble_host::att::AttClient;
use trouble_host::prelude::*;

use crate::fmt::{debug, warning};
pub use crate::guard::OversizeGuard;
pub use crate::pool::{ATT_MTU, OtaPacketPool};

/// Data chunks the device announces it can hold (the engine's window is this many chunks).
pub const RX_QUEUE_CHUNKS: u16 = ota_core::device::DEFAULT_RX_QUEUE_CHUNKS;
/// Entries of the queue between the GATT event loop and the engine: the window plus room for
/// control writes and reads that arrive while the window is full.
pub const QUEUE_DEPTH: usize = RX_QUEUE_CHUNKS as usize + 8;
/// Largest attribute value (ATT's limit).
pub const MAX_VALUE_LEN: usize = ota_core::protocol::MAX_ATTRIBUTE_LEN;
/// Attribute table entries: GAP and GATT services, OTA service, Device Information.
const ATT_TABLE_SIZE: usize = 32;
/// Centrals served at once. The engine lets one of them update; the other can ask INFO, wait
/// its turn, or idle until it is dropped, without locking anyone out: the device advertises
/// again as soon as a connection is free.
pub const CONNECTIONS: usize = 2;

/// Returns the engine configuration that fits this crate's receive queue.
pub const fn device_config(chip: Chip) -> DeviceConfig {
    let mut config = DeviceConfig::new(chip);
    config.rx_queue_chunks = RX_QUEUE_CHUNKS;
    config
}

/// What the device asks of the link after a central connects.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct LinkTuning {
    /// Ask for 251-octet link-layer packets (LE Data Length Extension).
    pub data_length: bool,
    /// Ask for the 2M PHY (not on the original ESP32, a Bluetooth 4.2 chip).
    pub phy_2m: bool,
    /// Connection interval range while an update runs, in units of 1.25 ms.
    pub fast_interval: (u16, u16),
    /// Connection interval range otherwise, in units of 1.25 ms.
    pub idle_interval: (u16, u16),
    /// Supervision timeout in ms.
    pub supervision_timeout_ms: u32,
}

impl LinkTuning {
    /// The tuning for `chip`: DLE 251, 2M where the chip has it, 7.5-15 ms while updating
    /// and 30-50 ms otherwise.
    pub const fn for_chip(chip: Chip) -> Self {
        LinkTuning {
            data_length: true,
            phy_2m: !matches!(chip, Chip::Esp32),
            fast_interval: (6, 12),
            idle_interval: (24, 40),
            supervision_timeout_ms: 4000,
        }
    }

    /// No tuning requests at all.
    pub const NONE: LinkTuning = LinkTuning {
        data_length: false,
        phy_2m: false,
        fast_interval: (0, 0),
        idle_interval: (0, 0),
        supervision_timeout_ms: 4000,
    };
}

/// How the device presents itself.
#[derive(Debug, Clone, Copy)]
pub struct GattConfig<'a> {
    /// Advertised device name (at most 22 bytes; the advertisement carries what fits, the scan
    /// response the whole name).
    pub name: &'a str,
    /// Static random address (the two top bits are set here).
    pub address: [u8; 6],
    /// Device Information: manufacturer name.
    pub manufacturer: &'a str,
    /// Device Information: model number (e.g. the chip).
    pub model: &'a str,
    /// Device Information: hardware revision.
    pub hardware_revision: &'a str,
    /// Advertising interval in ms.
    pub adv_interval_ms: u32,
    /// Link tuning requests.
    pub tuning: LinkTuning,
    /// Require an encrypted, authenticated link for writes to OTA Control and OTA Data: LE
    /// Secure Connections pairing by passkey entry, the device displaying this 6-digit passkey
    /// (printed on the product, say) and the central's user typing it. Until the link is
    /// paired such writes get ATT error Insufficient Authentication (0x05), on which BlueZ,
    /// Android and iOS pair and retry; the device also asks to pair as soon as a central
    /// connects. Needs the `security` feature. `None`: no pairing (signatures keep foreign
    /// images out either way).
    pub passkey: Option<u32>,
}

impl<'a> GattConfig<'a> {
    /// A configuration for `chip` named `name`.
    pub fn new(name: &'a str, chip: Chip, address: [u8; 6]) -> Self {
        GattConfig {
            name,
            address,
            manufacturer: "Espressif Systems",
            model: chip.name(),
            hardware_revision: "0",
            adv_interval_ms: 30,
            tuning: LinkTuning::for_chip(chip),
            passkey: None,
        }
    }
}

/// A PHY as reported by the controller.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum Phy {
    /// 1 Mbit/s.
    Le1M,
    /// 2 Mbit/s.
    Le2M,
    /// Coded (long range).
    Coded,
}

impl From<PhyKind> for Phy {
    fn from(p: PhyKind) -> Self {
        match p {
            PhyKind::Le1M => Phy::Le1M,
            PhyKind::Le2M => Phy::Le2M,
            _ => Phy::Coded,
        }
    }
}

/// Something that happened, for the shell's log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum Note {
    /// Advertising (again): the controller accepted advertising enable.
    Advertising,
    /// A central connected.
    Connected {
        /// The engine's id of it, one per connection.
        client: ClientId,
        /// Its HCI connection handle.
        handle: u16,
        /// Its address, least significant byte first.
        peer: [u8; 6],
    },
    /// The ATT MTU changed.
    Mtu(u16),
    /// The link-layer data length changed.
    DataLength {
        /// Max octets sent per packet.
        tx: u16,
        /// Max octets received per packet.
        rx: u16,
    },
    /// The PHY changed.
    Phy {
        /// Transmit PHY.
        tx: Phy,
        /// Receive PHY.
        rx: Phy,
    },
    /// The connection parameters changed.
    ConnParams {
        /// Connection interval in µs.
        interval_us: u32,
        /// Peripheral latency in connection events.
        latency: u16,
    },
    /// A tuning request failed (the controller refused or does not support it).
    TuningFailed(&'static str),
    /// The engine asked the shell to act.
    Engine(Event),
    /// The engine found a gap in the data (chunks lost before it) and asked the client to
    /// resend from `next` (a REWIND notification).
    Gap {
        /// The offset the client must resend from.
        next: u32,
    },
    /// The central disconnected (HCI reason code).
    Disconnected(u8),
    /// Pairing: the passkey the device displays for the central's user to type.
    Passkey(u32),
    /// Pairing ended: the link is encrypted, and authenticated (MITM-protected) or not.
    Paired {
        /// The passkey was typed: the central is who the user meant.
        authenticated: bool,
    },
    /// Pairing failed (a wrong passkey, or the central gave up).
    PairingFailed,
    /// A write to OTA Control or Data refused because the link is not paired.
    NotPaired,
    /// The slot the next update goes to is erased ahead of time, as far as it goes.
    PreErased {
        /// Sectors this boot had to erase (the others read blank).
        erased_sectors: u32,
    },
    /// The central sent nothing for the engine's idle timeout: the device dropped the link
    /// (`DeviceConfig::idle_timeout_ms`).
    DroppedIdle,
    /// The flash commands the engine just issued (the chip spent their time already; a
    /// simulator paces itself by them, with `ble_link_model::FlashTiming::ops_time`).
    FlashWork(FlashWork),
}

/// Why [`run`] stopped other than for a reboot.
#[derive(Debug)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum RunError {
    /// The HCI controller failed (transport error).
    Controller,
    /// The host stack failed.
    Host(trouble_host::Error),
    /// The configuration does not fit (name too long).
    Config(&'static str),
}

impl<E> From<BleHostError<E>> for RunError {
    fn from(e: BleHostError<E>) -> Self {
        match e {
            BleHostError::Controller(_) => RunError::Controller,
            BleHostError::BleHost(e) => RunError::Host(e),
        }
    }
}

impl From<trouble_host::Error> for RunError {
    fn from(e: trouble_host::Error) -> Self {
        RunError::Host(e)
    }
}

/// The HCI commands the OTA stack needs: trouble-host's set plus the link tuning ones.
pub trait OtaController:
    Controller
    + ControllerCmdSync<LeSetDataLength>
    + ControllerCmdSync<LeReadLocalSupportedFeatures>
    + ControllerCmdAsync<LeSetPhy>
{
}

impl<C> OtaController for C where
    C: Controller
        + ControllerCmdSync<LeSetDataLength>
        + ControllerCmdSync<LeReadLocalSupportedFeatures>
        + ControllerCmdAsync<LeSetPhy>
{
}

/// The clock [`run`] and its trial policy use (embassy-time's, in milliseconds): create the
/// [`TrialPolicy`] at boot with it.
pub fn now() -> Instant {
    Instant(embassy_time::Instant::now().as_millis())
}

/// An entry of the queue between the GATT event loop and the engine. Events keep their
/// packet (and their reply) until the engine has handled them.
enum Item<'s, 'v> {
    Write {
        target: OtaChar,
        request: bool,
        event: WriteEvent<'s, 'v, OtaPacketPool>,
    },
    ReadControl(ReadEvent<'s, 'v, OtaPacketPool>),
    /// The link dropped (HCI reason): noted once everything queued before it was served, so
    /// the observer knows the device is done with the connection.
    Disconnected(u8),
    /// Not from the link: the connection's mailbox has something.
    Mail,
}

/// How a connection ended.
enum Served {
    Disconnected,
    Reboot,
}

/// Why [`run`] returned: the shell resets the chip either way.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum Exit {
    /// The engine asked for a reboot (a new image is selected, or a client sent REBOOT); the
    /// last notification went out and the central was disconnected.
    Reboot,
    /// The trial image failed its trial ([`TrialPolicy`]): reset while it is still
    /// PENDING_VERIFY, so the previous image boots.
    RollBack(TrialFailure),
}

type Observer<'o> = RefCell<&'o mut dyn FnMut(Note)>;

fn note(observer: &Observer<'_>, n: Note) {
    debug!("[ota-gatt] {:?}", n);
    (observer.borrow_mut())(n);
}

/// What the device's tasks share. Each borrow is short and never held across an `await`:
/// the GATT loop, the engine loop and the trial task all run on one executor.
struct Shared<'a, F, H: Sha256Hasher> {
    flash: RefCell<&'a mut F>,
    engine: RefCell<&'a mut UpdateEngine<H>>,
    trial: RefCell<&'a mut TrialPolicy>,
    observer: Observer<'a>,
    /// The engine asked for a reboot.
    reboot: Cell<bool>,
    /// An update runs (true: ask for the short connection interval), one per connection's
    /// link tuning.
    busy: [Signal<NoopRawMutex, bool>; CONNECTIONS],
    /// The trial task has something new to look at.
    trial_wake: Signal<NoopRawMutex, ()>,
    /// Centrals connected: no idle pre-erase while any is.
    connected: Cell<u8>,
    /// The next connection's [`ClientId`]: one per connection, never its HCI handle, which a
    /// controller may hand a new central while the last one's slot still drains its queue.
    next_client: Cell<u16>,
    /// What each connection must send or do: the engine may answer one client while serving
    /// another's input (a tick's ACK for the session owner, an idle client to drop).
    mailboxes: [Mailbox; CONNECTIONS],
    /// A connection ended: the advertiser may take another central.
    slot_free: Signal<NoopRawMutex, ()>,
    /// The idle pre-erase may have work again (a central left, an image was confirmed, a
    /// session ended).
    idle_wake: Signal<NoopRawMutex, ()>,
}

/// Notifications the driver hands over while a write is served, sent once the write is
/// answered (sending awaits the link; serving must not).
const NOTE_QUEUE: usize = 8;

/// A connection's mail from the driver.
struct Mailbox {
    /// The client this connection serves; `None` while the slot is free.
    client: Cell<Option<ClientId>>,
    notes: RefCell<heapless09::Deque<heapless09::Vec<u8, NOTE_LEN>, NOTE_QUEUE>>,
    /// The engine asked to drop this connection (it idled).
    drop_link: Cell<bool>,
    /// Something arrived for it.
    wake: Signal<NoopRawMutex, ()>,
}

impl Mailbox {
    const fn new() -> Self {
        Mailbox {
            client: Cell::new(None),
            notes: RefCell::new(heapless09::Deque::new()),
            drop_link: Cell::new(false),
            wake: Signal::new(),
        }
    }
}
/// The longest notification the engine sends.
const NOTE_LEN: usize = Response::MAX_LEN;

/// The GATT server's side of the device driver ([`UpdateEngine::serve`], and
/// [`UpdateEngine::hand_over`] after the trial task's confirm and the idle pre-erase): flash
/// work goes to the observer, notifications to the mailbox of the client's connection, events
/// to [`Shared::handle_event`].
struct GattShell<'s, 'a, F, H: Sha256Hasher> {
    shared: &'s Shared<'a, F, H>,
}

impl<F: NorFlash, H: Sha256Hasher> GattShell<'_, '_, F, H> {
    /// Serves one input on the shared flash and engine.
    fn serve(&mut self, input: Input<'_>) -> Result<(), ota_core::protocol::Reason> {
        let shared = self.shared;
        let mut flash = shared.flash.borrow_mut();
        let mut engine = shared.engine.borrow_mut();
        engine.serve(&mut **flash, input, now(), self)
    }
}

impl<F: NorFlash, H: Sha256Hasher> Shell for GattShell<'_, '_, F, H> {
    fn flash_work(&mut self, work: FlashWork) {
        if work != FlashWork::default() {
            note(&self.shared.observer, Note::FlashWork(work));
        }
    }
    fn notify(&mut self, client: ClientId, value: &[u8]) {
        let Some(mailbox) = self.shared.mailbox(client) else {
            return; // its connection is gone
        };
        let mut notes = mailbox.notes.borrow_mut();
        if notes.is_full() {
            // The engine's own outbox keeps the newest as well.
            notes.pop_front();
        }
        if let Ok(v) = heapless09::Vec::from_slice(value) {
            let _ = notes.push_back(v);
        }
        mailbox.wake.signal(());
    }
    fn event(&mut self, event: Event) {
        self.shared.handle_event(event);
    }
}

impl<F: NorFlash, H: Sha256Hasher> Shared<'_, F, H> {
    /// A [`ClientId`] no slot holds (0 is the engine's own, for INFO at start).
    fn new_client(&self) -> ClientId {
        loop {
            let id = self.next_client.get();
            self.next_client.set(id.checked_add(1).unwrap_or(1));
            if self.mailbox(ClientId(id)).is_none() {
                return ClientId(id);
            }
        }
    }

    /// Returns the mailbox of `client`'s connection.
    fn mailbox(&self, client: ClientId) -> Option<&Mailbox> {
        self.mailboxes
            .iter()
            .find(|m| m.client.get() == Some(client))
    }

    /// Hands the engine's flash work and events on after a call outside [`UpdateEngine::serve`]
    /// (pre-erase, confirm).
    fn hand_over(&self) {
        let mut engine = self.engine.borrow_mut();
        engine.hand_over(&mut GattShell { shared: self });
    }

    /// Hands an engine event on: to the shell's observer, the trial policy, the link tuning
    /// and the reboot flag.
    fn handle_event(&self, e: Event) {
        note(&self.observer, Note::Engine(e));
        match e {
            Event::RebootRequested => self.reboot.set(true),
            Event::UpdateStarted { .. } => self.busy.iter().for_each(|b| b.signal(true)),
            Event::UpdateActivated { .. } | Event::UpdateFailed { .. } => {
                self.busy.iter().for_each(|b| b.signal(false));
                self.idle_wake.signal(());
            }
            Event::Confirmed => {
                self.trial.borrow_mut().handle_confirmed();
                self.trial_wake.signal(());
                self.idle_wake.signal(());
            }
            // The connection it names drops its link.
            Event::DropClient { client } => {
                if let Some(m) = self.mailbox(client) {
                    m.drop_link.set(true);
                    m.wake.signal(());
                }
            }
        }
    }
}

/// Runs the OTA GATT server on `controller` until the engine asks for a reboot or a trial
/// image fails its trial ([`Exit`]); the shell then resets the chip.
///
/// - `engine` runs on `flash`; the shell keeps both and may use them after `run` returns.
/// - `trial` is the confirm policy of this boot ([`TrialPolicy::new`] at boot, not on trial for
///   a confirmed image). Advertising that has really started (the controller accepted
///   advertising enable) counts as BLE up; `self_test` runs when the policy asks for it
///   (auto policy), and `run` confirms the image itself.
/// - `observer` hears what happens on the link.
///
/// Up to [`CONNECTIONS`] centrals are served at once; the engine lets one of them update.
pub async fn run<C, F, T, H>(
    controller: C,
    flash: &mut F,
    engine: &mut UpdateEngine<H>,
    trial: &mut TrialPolicy,
    self_test: T,
    config: &GattConfig<'_>,
    observer: &mut dyn FnMut(Note),
) -> Result<Exit, RunError>
where
    C: OtaController,
    F: NorFlash,
    T: Future<Output = bool>,
    H: Sha256Hasher,
{
    // Device Information's firmware revision: the running app's version.
    let version = match engine.info(flash, ClientId(0)) {
        Ok(info) => info.app_version,
        Err(_) => Default::default(),
    };
    let shared = Shared {
        flash: RefCell::new(flash),
        engine: RefCell::new(engine),
        trial: RefCell::new(trial),
        observer: RefCell::new(observer),
        reboot: Cell::new(false),
        busy: [const { Signal::new() }; CONNECTIONS],
        trial_wake: Signal::new(),
        connected: Cell::new(0),
        next_client: Cell::new(1),
        mailboxes: [const { Mailbox::new() }; CONNECTIONS],
        slot_free: Signal::new(),
        idle_wake: Signal::new(),
    };

    let mut address = config.address;
    address[5] |= 0xC0; // static random address
    let mut resources: HostResources<OtaPacketPool, CONNECTIONS, 2> = HostResources::new();
    let builder =
        trouble_host::new(controller, &mut resources).set_random_address(Address::random(address));
    #[cfg(feature = "security")]
    let builder = match config.passkey {
        Some(passkey) => builder
            .set_io_capabilities(IoCapabilities::DisplayOnly)
            .set_passkey(Some(passkey)),
        None => builder,
    };
    #[cfg(not(feature = "security"))]
    if config.passkey.is_some() {
        return Err(RunError::Config(
            "a passkey needs ota-gatt's `security` feature",
        ));
    }
    let stack = builder.build();
    let mut runner = stack.runner();
    let mut peripheral = stack.peripheral();

    // The attribute table.
    let mut control_store = [0u8; MAX_VALUE_LEN];
    let mut data_store = [0u8; MAX_VALUE_LEN];
    let mut table: AttributeTable<'_, NoopRawMutex, ATT_TABLE_SIZE> = AttributeTable::new();
    GapConfig::Peripheral(PeripheralConfig {
        name: config.name,
        appearance: &appearance::UNKNOWN,
    })
    .build(&mut table)
    .map_err(RunError::Config)?;
    let (control, data_handle) = {
        let mut ota = table.add_service(Service::new(Uuid::from(OTA_SERVICE_UUID)));
        let control = ota
            .add_characteristic(
                Uuid::from(CONTROL_CHAR_UUID),
                [
                    CharacteristicProp::Read,
                    CharacteristicProp::Write,
                    CharacteristicProp::Notify,
                ],
                heapless09::Vec::<u8, MAX_VALUE_LEN>::new(),
                &mut control_store,
            )
            .build();
        let data = ota
            .add_characteristic(
                Uuid::from(DATA_CHAR_UUID),
                [
                    CharacteristicProp::Write,
                    CharacteristicProp::WriteWithoutResponse,
                ],
                heapless09::Vec::<u8, MAX_VALUE_LEN>::new(),
                &mut data_store,
            )
            .build();
        ota.build();
        (control, data.handle)
    };
    {
        let mut dis = table.add_service(Service::new(service::DEVICE_INFORMATION));
        dis.add_characteristic_ro(
            characteristic::MANUFACTURER_NAME_STRING,
            config.manufacturer,
        );
        dis.add_characteristic_ro(characteristic::MODEL_NUMBER_STRING, config.model);
        dis.add_characteristic_ro(
            characteristic::HARDWARE_REVISION_STRING,
            config.hardware_revision,
        );
        dis.add_characteristic_ro(characteristic::FIRMWARE_REVISION_STRING, version.as_str());
        dis.build();
    }
    let server: AttributeServer<'_, NoopRawMutex, OtaPacketPool, ATT_TABLE_SIZE, CONNECTIONS> =
        AttributeServer::new(table);

    // Advertising data: flags, the OTA service, as much of the name as fits; the scan
    // response carries the whole name.
    let uuid = [OTA_SERVICE_UUID.to_le_bytes()];
    let name = config.name.as_bytes();
    let room = 31 - 3 - 18 - 2;
    let mut adv_data = [0u8; 31];
    let adv_len = AdStructure::encode_slice(
        &[
            AdStructure::Flags(LE_GENERAL_DISCOVERABLE | BR_EDR_NOT_SUPPORTED),
            AdStructure::CompleteServiceUuids128(&uuid),
            if name.len() <= room {
                AdStructure::CompleteLocalName(name)
            } else {
                AdStructure::ShortenedLocalName(&name[..room])
            },
        ],
        &mut adv_data,
    )
    .map_err(|_| RunError::Config("advertising data"))?;
    let mut scan_data = [0u8; 31];
    let scan_len = AdStructure::encode_slice(
        &[AdStructure::CompleteLocalName(&name[..name.len().min(29)])],
        &mut scan_data,
    )
    .map_err(|_| RunError::Config("scan response data"))?;
    let params = AdvertisementParameters {
        interval_min: Duration::from_millis(config.adv_interval_ms as u64),
        interval_max: Duration::from_millis(config.adv_interval_ms as u64 + 10),
        ..Default::default()
    };

    // Accepted connections, on their way to a free slot.
    let incoming: Channel<NoopRawMutex, GattConnection<'_, '_, OtaPacketPool>, 1> = Channel::new();
    let advertise_loop = async {
        loop {
            while usize::from(shared.connected.get()) >= CONNECTIONS {
                shared.slot_free.wait().await;
            }
            // `advertise` returns once the controller accepted advertising enable: only then
            // is BLE up, for the log and for the trial policy.
            let advertised = peripheral
                .advertise(
                    &params,
                    Advertisement::ConnectableScannableUndirected {
                        adv_data: &adv_data[..adv_len],
                        scan_data: &scan_data[..scan_len],
                    },
                )
                .await;
            let advertiser = match advertised {
                Ok(a) => a,
                Err(e) => break Err::<core::convert::Infallible, RunError>(e.into()),
            };
            note(&shared.observer, Note::Advertising);
            shared.trial.borrow_mut().handle_advertising(now());
            shared.trial_wake.signal(());
            let conn = match advertiser.accept().await {
                Ok(c) => c,
                Err(e) => break Err(e.into()),
            };
            shared.connected.set(shared.connected.get() + 1);
            let conn = match conn.with_attribute_server(&server) {
                Ok(c) => c,
                Err(e) => break Err(e.into()),
            };
            incoming.send(conn).await;
        }
    };
    let slot = |index: usize| {
        let (stack, server, control, shared, incoming) =
            (&stack, &server, &control, &shared, &incoming);
        async move {
            let mailbox = &shared.mailboxes[index];
            loop {
                let conn = incoming.receive().await;
                let client = shared.new_client();
                mailbox.client.set(Some(client));
                let served = serve(
                    stack,
                    &conn,
                    client,
                    server,
                    control,
                    data_handle,
                    shared,
                    config,
                    index,
                )
                .await;
                mailbox.client.set(None);
                mailbox.notes.borrow_mut().clear();
                mailbox.drop_link.set(false);
                if let Served::Disconnected = served {
                    shared.connected.set(shared.connected.get() - 1);
                    shared.slot_free.signal(());
                    shared.idle_wake.signal(());
                } else {
                    // Served::Reboot. Let the last notification reach the air, then drop the
                    // link as a reset does.
                    Timer::after_millis(250).await;
                    conn.raw().disconnect();
                    let _ = with_timeout(Duration::from_secs(3), async {
                        loop {
                            if let GattConnectionEvent::Disconnected { reason } = conn.next().await
                            {
                                note(&shared.observer, Note::Disconnected(reason.into_inner()));
                                break;
                            }
                        }
                    })
                    .await;
                    return Exit::Reboot;
                }
            }
        }
    };
    const _: () = assert!(CONNECTIONS == 2, "one slot future per connection below");
    let serve_loop = async {
        match select3(advertise_loop, slot(0), slot(1)).await {
            Either3::First(Err(e)) => Err(e),
            Either3::First(Ok(never)) => match never {},
            Either3::Second(exit) | Either3::Third(exit) => Ok(exit),
        }
    };
    match select4(
        runner.run(),
        serve_loop,
        supervise_trial(&shared, self_test),
        erase_while_idle(&shared),
    )
    .await
    {
        Either4::First(Ok(())) => Err(RunError::Controller),
        Either4::First(Err(e)) => Err(e.into()),
        Either4::Second(r) => r,
        Either4::Third(why) => Ok(Exit::RollBack(why)),
        Either4::Fourth(never) => match never {},
    }
}

/// Pause after each sector erased while BLE runs, so the controller, whose interrupts wait for
/// the erase, is served between erases.
const IDLE_ERASE_PAUSE_MS: u64 = 50;

/// Erases the slot the next update goes to ahead of time, before BLE starts (at boot): one
/// sector at a time, yielding in between so other tasks (the watchdog) run. Returns the
/// sectors it had to erase; the others read blank. Stops early, without error, where
/// [`UpdateEngine::pre_erase_step`] says not now (a trial image).
pub async fn pre_erase<F: NorFlash, H: Sha256Hasher>(
    flash: &mut F,
    engine: &mut UpdateEngine<H>,
) -> u32 {
    let mut erased = 0;
    loop {
        match engine.pre_erase_step(flash) {
            Ok(PreErase::Erased { .. }) => erased += 1,
            Ok(PreErase::Blank { .. }) => {}
            Ok(PreErase::Done | PreErase::NotNow) => return erased,
            Err(_e) => {
                warning!("[ota-gatt] pre-erase: {:?}", _e);
                return erased;
            }
        }
        yield_now().await;
    }
}

/// The idle pre-erase while BLE runs: only while no central is connected, one sector at a
/// time with a pause after each erase, so an update later erases little or nothing while its
/// link is up.
async fn erase_while_idle<F: NorFlash, H: Sha256Hasher>(
    shared: &Shared<'_, F, H>,
) -> core::convert::Infallible {
    let mut erased = 0u32;
    loop {
        if shared.connected.get() > 0 {
            shared.idle_wake.wait().await;
            continue;
        }
        let step = {
            let mut flash = shared.flash.borrow_mut();
            shared.engine.borrow_mut().pre_erase_step(&mut **flash)
        };
        shared.hand_over();
        match step {
            Ok(PreErase::Erased { .. }) => {
                erased += 1;
                Timer::after_millis(IDLE_ERASE_PAUSE_MS).await;
            }
            Ok(PreErase::Blank { .. }) => yield_now().await,
            Ok(PreErase::Done) => {
                if erased > 0 {
                    note(
                        &shared.observer,
                        Note::PreErased {
                            erased_sectors: erased,
                        },
                    );
                    erased = 0;
                }
                shared.idle_wake.wait().await;
            }
            Ok(PreErase::NotNow) => shared.idle_wake.wait().await,
            Err(_e) => {
                warning!("[ota-gatt] pre-erase: {:?}", _e);
                shared.idle_wake.wait().await;
            }
        }
    }
}

/// Carries out the trial policy: runs the self-test when asked, confirms, and returns when the
/// image must roll back. Never returns for an image that is not on trial.
async fn supervise_trial<F: NorFlash, H: Sha256Hasher>(
    shared: &Shared<'_, F, H>,
    self_test: impl Future<Output = bool>,
) -> TrialFailure {
    let mut self_test = pin!(self_test);
    let mut testing = false;
    loop {
        loop {
            let Some(action) = shared.trial.borrow_mut().poll_action() else {
                break;
            };
            match action {
                TrialAction::RunSelfTest => testing = true,
                TrialAction::Confirm => {
                    let confirmed = {
                        let mut flash = shared.flash.borrow_mut();
                        shared.engine.borrow_mut().confirm(&mut **flash)
                    };
                    if confirmed.is_err() {
                        shared.trial.borrow_mut().handle_confirm_failed();
                    }
                    // The engine's `Confirmed` event reaches the policy here.
                    shared.hand_over();
                }
                TrialAction::RollBack(why) => {
                    warning!("[ota-gatt] trial failed: {}: rolling back", why.describe());
                    return why;
                }
            }
        }
        let deadline = shared.trial.borrow().poll_timeout();
        let timer = async {
            match deadline {
                Some(at) => Timer::at(embassy_time::Instant::from_millis(at.0)).await,
                None => core::future::pending().await,
            }
        };
        let test = async {
            if testing {
                self_test.as_mut().await
            } else {
                core::future::pending().await
            }
        };
        match select3(shared.trial_wake.wait(), timer, test).await {
            Either3::First(()) => {}
            Either3::Second(()) => shared.trial.borrow_mut().handle_tick(now()),
            Either3::Third(passed) => {
                testing = false;
                shared.trial.borrow_mut().handle_self_test(passed, now());
            }
        }
    }
}

/// Serves one connection, in slot `index`, until it drops or the engine asks for a reboot.
#[allow(clippy::too_many_arguments)]
async fn serve<'s, 'v, C: OtaController, F: NorFlash, H: Sha256Hasher>(
    stack: &Stack<'_, C, OtaPacketPool>,
    conn: &GattConnection<'s, 'v, OtaPacketPool>,
    client: ClientId,
    server: &AttributeServer<'_, NoopRawMutex, OtaPacketPool, ATT_TABLE_SIZE, CONNECTIONS>,
    control: &Characteristic<heapless09::Vec<u8, MAX_VALUE_LEN>>,
    data_handle: u16,
    shared: &Shared<'_, F, H>,
    config: &GattConfig<'_>,
    index: usize,
) -> Served {
    let mailbox = &shared.mailboxes[index];
    let busy = &shared.busy[index];
    let observer = &shared.observer;
    let peer = conn.raw().peer_address();
    note(
        observer,
        Note::Connected {
            client,
            handle: conn.raw().handle().raw(),
            peer: peer.addr.into_inner(),
        },
    );
    shared.engine.borrow_mut().handle_connected(client);
    busy.reset();
    // Ask the central to pair at once (an SMP Security Request), before it writes.
    #[cfg(feature = "security")]
    if config.passkey.is_some() && conn.raw().request_security().is_err() {
        warning!("[ota-gatt] cannot ask the central to pair");
    }
    let paired = || match config.passkey {
        None => true,
        Some(_) => conn
            .raw()
            .security_level()
            .is_ok_and(|level| level.authenticated()),
    };
    let queue: Channel<NoopRawMutex, Item<'s, 'v>, QUEUE_DEPTH> = Channel::new();
    // The data length from the central, as the controller last reported it, and the PHY
    // and interval (µs) once known: they decide the value length the engine announces.
    let rx_octets = Cell::new(LL_DEFAULT_DATA_LEN);
    let rx_phy: Cell<Option<air::Phy>> = Cell::new(Some(air::Phy::Le1M));
    let interval_us: Cell<Option<u32>> = Cell::new(None);

    // The receive path: sorts events, never waits on flash work.
    let receive = async {
        loop {
            match conn.next().await {
                GattConnectionEvent::Disconnected { reason } => {
                    queue.send(Item::Disconnected(reason.into_inner())).await;
                    core::future::pending::<()>().await;
                }
                GattConnectionEvent::Gatt { event } => match event {
                    // OTA writes on a link that must be paired and is not: refused, requests with
                    // Insufficient Authentication, on which a central pairs and retries.
                    GattEvent::Write(event)
                        if (event.handle() == control.handle || event.handle() == data_handle)
                            && !paired() =>
                    {
                        note(observer, Note::NotPaired);
                        if matches!(event.payload().incoming(), AttClient::Request(_)) {
                            match event.reject(AttErrorCode::INSUFFICIENT_AUTHENTICATION) {
                                Ok(reply) => reply.send().await,
                                Err(_e) => warning!("[ota-gatt] cannot answer: {:?}", _e),
                            }
                        } else {
                            drop(event.into_payload());
                        }
                    }
                    GattEvent::Write(event)
                        if event.handle() == control.handle || event.handle() == data_handle =>
                    {
                        let target = if event.handle() == control.handle {
                            OtaChar::Control
                        } else {
                            OtaChar::Data
                        };
                        let request = matches!(event.payload().incoming(), AttClient::Request(_));
                        queue
                            .send(Item::Write {
                                target,
                                request,
                                event,
                            })
                            .await;
                    }
                    GattEvent::Read(event) if event.handle() == control.handle => {
                        queue.send(Item::ReadControl(event)).await;
                    }
                    // OTA Control notifies and never indicates: a request for indications (bit
                    // 1 of its CCCD) is refused with "CCCD Improperly Configured" (0xFD, Core
                    // Spec Supplement Part B 1.2), so no client waits for confirmations.
                    GattEvent::Write(event)
                        if Some(event.handle()) == control.cccd_handle
                            && matches!(event.payload().incoming(), AttClient::Request(_))
                            && event.with_data(|_, v| v.first().is_some_and(|b| b & 0x02 != 0)) =>
                    {
                        match event.reject(AttErrorCode::CCCD_IMPROPERLY_CONFIGURED) {
                            Ok(reply) => reply.send().await,
                            Err(_e) => warning!("[ota-gatt] cannot answer: {:?}", _e),
                        }
                    }
                    // A write command gets no answer, even when refused (Core Spec Vol 3
                    // Part F 3.4.5.3). trouble-host 0.8 answers one to a handle that is not
                    // writable with an Error Response, which a client takes as the answer to
                    // its next request: drop such commands here without a reply.
                    other if matches!(other.payload().incoming(), AttClient::Command(_)) => {
                        drop(other.into_payload());
                    }
                    // Everything else the attribute server answers from its table.
                    other => match other.accept() {
                        Ok(reply) => reply.send().await,
                        Err(_e) => warning!("[ota-gatt] cannot answer: {:?}", _e),
                    },
                },
                #[cfg(feature = "security")]
                GattConnectionEvent::PassKeyDisplay(key) => {
                    note(observer, Note::Passkey(key.value()))
                }
                #[cfg(feature = "security")]
                GattConnectionEvent::PairingComplete { security_level, .. } => note(
                    observer,
                    Note::Paired {
                        authenticated: security_level.authenticated(),
                    },
                ),
                #[cfg(feature = "security")]
                GattConnectionEvent::PairingFailed(_) => note(observer, Note::PairingFailed),
                GattConnectionEvent::PhyUpdated {
                    tx_phy,
                    rx_phy: phy,
                } => {
                    rx_phy.set(match Phy::from(phy) {
                        Phy::Le1M => Some(air::Phy::Le1M),
                        Phy::Le2M => Some(air::Phy::Le2M),
                        Phy::Coded => None,
                    });
                    note(
                        observer,
                        Note::Phy {
                            tx: tx_phy.into(),
                            rx: phy.into(),
                        },
                    )
                }
                GattConnectionEvent::DataLengthUpdated {
                    max_tx_octets,
                    max_rx_octets,
                    ..
                } => {
                    rx_octets.set(max_rx_octets);
                    note(
                        observer,
                        Note::DataLength {
                            tx: max_tx_octets,
                            rx: max_rx_octets,
                        },
                    )
                }
                GattConnectionEvent::ConnectionParamsUpdated {
                    conn_interval,
                    peripheral_latency,
                    ..
                } => {
                    interval_us.set(Some(conn_interval.as_micros() as u32));
                    note(
                        observer,
                        Note::ConnParams {
                            interval_us: conn_interval.as_micros() as u32,
                            latency: peripheral_latency,
                        },
                    )
                }
                _ => {}
            }
        }
    };

    // The engine, through the device driver: one queue entry at a time, yielding in between.
    let work = async {
        let mut link = (0u16, 0u16, None);
        let mut shell = GattShell { shared };
        loop {
            let timeout = shared.engine.borrow().poll_timeout();
            let timer = async {
                match timeout {
                    Some(at) => Timer::after_millis(at.0.saturating_sub(now().0)).await,
                    None => core::future::pending().await,
                }
            };
            // Another connection's input may leave mail for this one (a tick's ACK).
            let item = match select3(queue.receive(), timer, mailbox.wake.wait()).await {
                Either3::First(item) => Some(item),
                Either3::Second(()) => None,
                Either3::Third(()) => Some(Item::Mail),
            };
            let current = (
                conn.raw().att_mtu(),
                rx_octets.get(),
                rx_phy.get().zip(interval_us.get()),
            );
            if current != link {
                if current.0 != link.0 {
                    note(observer, Note::Mtu(current.0));
                }
                link = current;
                let input = Input::Link {
                    client,
                    mtu: link.0,
                    data_length: link.1,
                    timing: link.2,
                };
                let _ = shell.serve(input);
            }
            let mut ended = false;
            match item {
                None => {
                    let _ = shell.serve(Input::Tick);
                }
                Some(Item::Mail) => {}
                Some(Item::Write {
                    target,
                    request,
                    event,
                }) => {
                    let verdict = event.with_data(|_, data| {
                        shell.serve(Input::Write {
                            client,
                            characteristic: target,
                            data,
                        })
                    });
                    let reply = match verdict {
                        Err(reason) if request => {
                            event.reject(AttErrorCode::new(reason.att_error()))
                        }
                        _ => event.accept_unprocessed(),
                    };
                    if let Ok(reply) = reply {
                        reply.send().await;
                    }
                }
                Some(Item::ReadControl(event)) => {
                    // trouble-host 0.8 answers `accept_unprocessed` reads with an empty value
                    // and panics on a Read Blob past the end (gatt.rs, `&data[offset..]`). So
                    // the table holds the engine's control value and the attribute server
                    // answers: Read and Read Blob right, Invalid Offset past the end.
                    let stored = server.table().write(
                        control.handle,
                        0,
                        shared.engine.borrow().control_value(),
                    );
                    let reply = match stored {
                        Ok(()) => event.accept(),
                        Err(_) => event.reject(AttErrorCode::UNLIKELY_ERROR),
                    };
                    match reply {
                        Ok(reply) => reply.send().await,
                        Err(_e) => warning!("[ota-gatt] cannot answer a read: {:?}", _e),
                    }
                }
                Some(Item::Disconnected(reason)) => {
                    note(observer, Note::Disconnected(reason));
                    let _ = shell.serve(Input::Disconnected(client));
                    ended = true;
                }
            }
            loop {
                let Some(value) = mailbox.notes.borrow_mut().pop_front() else {
                    break;
                };
                if let Ok(Response::Rewind { next }) = Response::decode(&value) {
                    note(observer, Note::Gap { next });
                }
                if !ended && control.notify_raw(conn, &value, false).await.is_err() {
                    warning!("[ota-gatt] notification failed");
                }
            }
            if ended {
                return Served::Disconnected;
            }
            if shared.reboot.get() {
                return Served::Reboot;
            }
            if mailbox.drop_link.replace(false) {
                // An idle central holds one of the device's connections; with every one
                // held, nobody else can get in: drop it (its session, if any, stays
                // resumable).
                note(observer, Note::DroppedIdle);
                conn.raw().disconnect();
            }
            yield_now().await;
        }
    };

    // Link tuning requests; their completions arrive as connection events.
    let tuning = async {
        let tuning = config.tuning;
        let link = conn.raw();
        if tuning.data_length
            && link
                .update_data_length(stack, LL_MAX_DATA_LEN, LL_MAX_TX_TIME_US)
                .await
                .is_err()
        {
            note(observer, Note::TuningFailed("data length"));
        }
        if tuning.phy_2m && link.set_phy(stack, PhyKind::Le2M).await.is_err() {
            note(observer, Note::TuningFailed("2M PHY"));
        }
        if tuning.fast_interval.0 == 0 {
            core::future::pending::<()>().await;
        }
        // Short from the start (a central connects to update, and a parameter update takes a
        // few connection events to apply), relaxed once an update ended, short again when the
        // next one starts.
        let mut fast = true;
        loop {
            let (min, max) = if fast {
                tuning.fast_interval
            } else {
                tuning.idle_interval
            };
            let params = RequestedConnParams {
                min_connection_interval: Duration::from_micros(min as u64 * 1250),
                max_connection_interval: Duration::from_micros(max as u64 * 1250),
                max_latency: 0,
                min_event_length: Duration::from_secs(0),
                max_event_length: Duration::from_secs(0),
                supervision_timeout: Duration::from_millis(tuning.supervision_timeout_ms as u64),
            };
            if link.update_connection_params(stack, &params).await.is_err() {
                note(observer, Note::TuningFailed("connection interval"));
            }
            loop {
                let wanted = busy.wait().await;
                if wanted != fast {
                    fast = wanted;
                    break;
                }
            }
        }
    };

    match select3(receive, work, tuning).await {
        Either3::Second(served) => served,
        _ => Served::Disconnected,
    }
}
