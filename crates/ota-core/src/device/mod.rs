//! The update engine a device runs: both protocols on one GATT service, one client at a time.
//!
//! # Run loop
//!
//! The shell (firmware, virtual ESP32) owns the radio, the clock and the flash. Every shell
//! runs the same [driver]: it turns what happened on its link into an [`Input`] (a client
//! connected, its link changed, it wrote OTA Control or OTA Data, it left, time passed) and
//! calls [`UpdateEngine::serve`], which hands the engine's flash work, notifications and
//! events to the shell's [`Shell`]. It calls `serve` with [`Input::Tick`] again at
//! [`UpdateEngine::poll_timeout`] at the latest. (The `handle_*` and `poll_*` methods `serve`
//! is made of stay public for tests that drive the engine step by step.)
//!
//! A refused write request is answered with the ATT error `reason.att_error()`
//! ([`Reason::att_error`]); a write command cannot carry an error, so the engine also notifies
//! a fast-protocol client.
//!
//! # Safety of the flash
//!
//! The engine writes only inside the slot `esp_ota_get_next_update_partition` names (never the
//! running app, never factory). It erases that slot ahead of time while the device is idle
//! ([`UpdateEngine::pre_erase_step`]), and during an update only what is still unerased, one
//! 4 KiB sector at a time just ahead of the write pointer (never a 64 KiB block while a link is
//! up). It holds the first bytes back until the image header proved the image is for this
//! chip, reads the whole image back and compares its SHA-256 before selecting it in otadata,
//! and writes otadata exactly as ESP-IDF does. A power cut at any point leaves the running app
//! selected, or the new one complete and verified.

pub mod driver;
mod hash;
mod inflate;
mod transfer;
pub mod trial;

pub use driver::{Input, Shell};
pub use hash::Sha256Hasher;
pub use inflate::{INFLATER_RAM, WINDOW as INFLATE_WINDOW};

use embedded_storage::nor_flash::NorFlash;
use heapless::Deque;

use crate::esp::flash::{FlashWork, Metered};
use crate::esp::image::ImageValidator;
use crate::esp::{Chip, OtaImgState, OtaSlots, Partition, PartitionTable, SlotError};
use crate::manifest::{MANIFEST_LEN, Manifest, ManifestError, SignedManifest, TrustedKeys};
use crate::protocol::Characteristic;
use crate::protocol::air::{self, Phy};
use crate::protocol::fast::{
    self, Command, DecodeError, Info, Response, Resumable, SLOT_FACTORY, SLOT_OTHER, SlotInfo,
    SlotStateCode, begin_flags,
};
use crate::protocol::{
    LL_DEFAULT_DATA_LEN, MAX_ATTRIBUTE_LEN, MAX_LEGACY_PACKET_SIZE, Reason, legacy, max_value_len,
};
use crate::time::Instant;

use transfer::{Protocol, Transfer, WritePlan};

/// Identifies a connected client (the shell's connection handle).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct ClientId(pub u16);

/// Data chunks a device holds between its BLE receive path and the engine by default: the
/// window a client may have in flight (see [`DeviceConfig::new`]).
pub const DEFAULT_RX_QUEUE_CHUNKS: u16 = 32;

/// How the device announces and paces transfers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct DeviceConfig {
    /// The chip this runs on; images for other chips are refused.
    pub chip: Chip,
    /// The chip's revision, `major * 100 + minor` (`efuse_hal_chip_revision`): images whose
    /// chip revision range excludes it are refused, as the bootloader would not boot them.
    /// `None` (the default): unknown, not checked.
    pub chip_revision: Option<u16>,
    /// Data writes the shell can hold between its BLE receive path and the engine. The window
    /// announced to clients is this many chunks, so a client never overruns the queue.
    pub rx_queue_chunks: u16,
    /// Largest chunk payload the shell's buffers take (at most 508 = 512 - offset).
    pub max_chunk: u16,
    /// Acknowledgements per window: an ACK goes out each `window / acks_per_window` bytes.
    pub acks_per_window: u8,
    /// After reporting a gap, report it again if nothing arrived in order for this long.
    pub rewind_retry_ms: u32,
    /// Acknowledge unacknowledged progress after this long without data.
    pub idle_ack_ms: u32,
    /// 256-byte pages held in RAM and programmed together (1 to 128; default 128, 32 KiB).
    /// Each flash operation stops the BLE controller, and each stop ends the connection event
    /// under way and leaves the link idle until the next anchor point after it: about one
    /// connection interval lost per stop, whatever its length. Programming a batch of pages
    /// in one go (each page still its own short command) stops the link once per batch
    /// instead of once per page. The modelled effect on a 2M link at 7.5 ms: about 33 kB/s
    /// page by page, 103 kB/s by 16 KiB, 106 kB/s by 32 KiB. The buffer is 32 KiB of the
    /// engine whatever this says.
    pub program_batch_pages: u8,
    /// Drop a client that sent nothing for this long ([`Event::DropClient`]); 0: never.
    /// Default 30 s: a central that connects and idles, or stalls, would otherwise hold the
    /// device's connections (a device serves a few at most), and it does not advertise while
    /// all are held.
    pub idle_timeout_ms: u32,
    /// Public keys whose signed manifests the device takes ([`crate::manifest`]). Not empty:
    /// every fast-protocol update must come with a manifest one of them signed, checked at
    /// BEGIN before a byte is erased or written, and the seed's REQUEST is refused unless
    /// [`unsigned_legacy`](Self::unsigned_legacy). Default: none, unsigned images are taken.
    pub trusted_keys: TrustedKeys,
    /// With trusted keys: take the seed's protocol, which has no room for a signature, all
    /// the same (a product that must keep its old clients working while it moves to signing).
    pub unsigned_legacy: bool,
}

impl DeviceConfig {
    /// Defaults for `chip`: a 32-chunk receive queue, chunks up to 508 bytes, 4 ACKs per window.
    ///
    /// 32 chunks in flight cover an erase of a 4 KiB sector (45 ms typical) that the pre-erase
    /// did not reach, plus the two connection intervals an ACK needs to reach the client and
    /// open the window again. The shell's BLE receive queue must hold them (trouble-host:
    /// `l2cap-rx-queue-size` and packet pool of at least 32, plus margin).
    pub const fn new(chip: Chip) -> Self {
        DeviceConfig {
            chip,
            chip_revision: None,
            rx_queue_chunks: DEFAULT_RX_QUEUE_CHUNKS,
            max_chunk: (MAX_ATTRIBUTE_LEN - fast::CHUNK_HEADER_LEN) as u16,
            acks_per_window: 4,
            rewind_retry_ms: 300,
            idle_ack_ms: 100,
            program_batch_pages: transfer::MAX_PROGRAM_BATCH_PAGES as u8,
            idle_timeout_ms: 30_000,
            trusted_keys: TrustedKeys::NONE,
            unsigned_legacy: false,
        }
    }
}

/// Something the shell must act on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum Event {
    /// An update session started writing `slot`.
    UpdateStarted {
        /// Target OTA slot.
        slot: u8,
    },
    /// An image was verified and `slot` is selected for the next boot.
    UpdateActivated {
        /// The selected slot.
        slot: u8,
    },
    /// A session ended without an image (refusal, ABORT, flash error).
    UpdateFailed {
        /// Why.
        reason: Reason,
    },
    /// Reboot now (after the pending notifications went out): the new image boots.
    RebootRequested,
    /// Disconnect `client`: it sent nothing for [`DeviceConfig::idle_timeout_ms`] (an idle
    /// central, or one whose session stalled; a session stays resumable), so another central
    /// can get in.
    DropClient {
        /// The idle client.
        client: ClientId,
    },
    /// The running trial image was confirmed; stop any rollback watchdog.
    Confirmed,
}

/// CPU work of the engine beyond its flash commands: what a device model charges time for
/// (the device's CPU runs while the radio does).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct CpuWork {
    /// Image bytes hashed (SHA-256) as they arrived. The read-back of the slot is hashed too:
    /// it is [`FlashWork::bytes_read`](crate::esp::flash::FlashWork::bytes_read).
    pub hashed: u64,
    /// Image bytes inflated from a compressed stream.
    pub inflated: u64,
    /// Ed25519 signatures checked (a signed manifest at BEGIN).
    pub signatures: u32,
}

impl core::ops::AddAssign for CpuWork {
    fn add_assign(&mut self, o: CpuWork) {
        self.hashed += o.hashed;
        self.inflated += o.inflated;
        self.signatures += o.signatures;
    }
}

/// Why the engine could not start.
pub type EngineError = SlotError;

/// What one [`UpdateEngine::pre_erase_step`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum PreErase {
    /// The 4 KiB sector at flash address `offset` was erased (the flash was busy for one
    /// sector erase).
    Erased {
        /// Flash address of the sector.
        offset: u32,
    },
    /// The sector at `offset` already read blank: nothing was written.
    Blank {
        /// Flash address of the sector.
        offset: u32,
    },
    /// The whole slot the next update goes to is erased.
    Done,
    /// Not now: the running image is on trial, an update session exists, or there is no OTA
    /// slot. Try again after a confirm or once the session ended.
    NotNow,
}

/// A queued notification.
// Without an allocator the queue holds responses inline; it is 8 entries long.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone)]
enum Outgoing {
    Legacy(u8),
    Fast(Response),
}

const MAX_CLIENTS: usize = 4;

/// The engine inflates compressed images (the `inflate` feature: 10 KiB more RAM in the
/// engine). Without it, INFO says so and a compressed BEGIN is refused with `Unsupported`,
/// after which a client sends the image as it is.
const TAKES_COMPRESSED: bool = cfg!(feature = "inflate");

/// What the engine knows of a connected client's link.
#[derive(Debug, Clone, Copy)]
struct ClientLink {
    id: ClientId,
    /// ATT MTU.
    mtu: u16,
    /// The shell told the MTU ([`UpdateEngine::handle_mtu`]): writes longer than it carries
    /// are refused.
    mtu_known: bool,
    /// Link-layer data length from the client to the device, in octets.
    data_length: u16,
    /// PHY and connection interval (µs), once the shell knows them.
    timing: Option<(Phy, u32)>,
    /// The value length writes should carry on this link, worked out when the link changes.
    value_len: usize,
    /// The client sent a fast-protocol command on this connection: it learns of refused data
    /// writes by notification even without a session (a chunk before BEGIN).
    speaks_fast: bool,
    /// When the client last wrote (or was first seen by a tick); `None` until then.
    last_write: Option<Instant>,
    /// [`Event::DropClient`] went out for it.
    dropping: bool,
}

impl ClientLink {
    fn new(id: ClientId) -> Self {
        let mut link = ClientLink {
            id,
            mtu: 23,
            mtu_known: false,
            data_length: LL_DEFAULT_DATA_LEN,
            timing: None,
            value_len: 0,
            speaks_fast: false,
            last_write: None,
            dropping: false,
        };
        link.update_value_len();
        link
    }

    /// The value that fills whole connection events at the link's ATT MTU, data length, PHY
    /// and interval ([`air::best_value_len`], with the default end-of-event margin and room
    /// for an ACK notification in each event), or whole link-layer PDUs while the PHY and
    /// interval are unknown ([`air::packed_value_len`]).
    fn update_value_len(&mut self) {
        self.value_len = match self.timing {
            Some((phy, interval_us)) => air::best_value_len(
                self.mtu,
                &air::EventTiming {
                    phy,
                    data_length: self.data_length,
                    interval_us,
                    end_margin_us: air::DEFAULT_EVENT_END_MARGIN_US,
                    max_pairs: None,
                    reply_payload: ACK_NOTIFICATION_PAYLOAD,
                },
            ),
            None => air::packed_value_len(self.mtu, self.data_length),
        };
    }
}
const OUTBOX: usize = 8;

/// Session state beyond an in-progress transfer.
// No allocator to box the transfer in; it is about 1 KiB (its image bytes live in the
// engine's `Buffers`), and one session per engine.
#[allow(clippy::large_enum_variant)]
#[derive(Debug)]
enum Session<H> {
    Idle,
    Receiving(Transfer<H>),
    /// An image is verified and selected; the device should reboot.
    Activated {
        slot: u8,
        size: u32,
        sha256: [u8; 32],
        stream: Option<fast::Stream>,
        /// The client that ended the session, while it stays connected: only it may REBOOT
        /// or ABORT now.
        owner: Option<ClientId>,
    },
}

/// The device side of an update. See the [module docs](self) for the run loop.
#[derive(Debug)]
pub struct UpdateEngine<H: Sha256Hasher = sha2::Sha256> {
    config: DeviceConfig,
    slots: OtaSlots,
    running: Partition,
    running_state: Option<OtaImgState>,
    app_name: fast::Str32,
    app_version: fast::Str32,
    clients: heapless::Vec<ClientLink, MAX_CLIENTS>,
    packet_size: Option<u16>,
    session: Session<H>,
    outbox: Deque<(ClientId, Outgoing), OUTBOX>,
    events: Deque<Event, 4>,
    control_value: [u8; Response::MAX_LEN],
    control_len: usize,
    /// Bytes at the start of the next update slot known to be erased (by
    /// [`UpdateEngine::pre_erase_step`]); a transfer that starts takes them over.
    pre_erased: u32,
    /// Whether otadata was made to not fall back onto the next update slot before the
    /// pre-erase first changed it.
    pre_erase_prepared: bool,
    /// Flash work done and not yet taken ([`UpdateEngine::take_flash_work`]).
    flash_work: FlashWork,
    /// CPU work done and not yet taken ([`UpdateEngine::take_cpu_work`]).
    cpu_work: CpuWork,
    /// The RAM an update works in (32 KiB of image bytes, and the inflater), allocated once.
    bufs: transfer::Buffers,
    /// The running app's `secure_version`: a signed image with a lower one is a downgrade.
    running_secure_version: u32,
    /// The signed manifests clients are writing with MANIFEST commands, for their next BEGIN:
    /// one per client, so a central cannot overwrite another's.
    manifests: [ManifestUpload; MAX_CLIENTS],
}

/// A manifest as MANIFEST commands bring it, part by part.
#[derive(Debug)]
struct ManifestUpload {
    /// Who writes it; `None`: free.
    client: Option<ClientId>,
    len: usize,
    bytes: [u8; MANIFEST_LEN],
}

impl ManifestUpload {
    const EMPTY: ManifestUpload = ManifestUpload {
        client: None,
        len: 0,
        bytes: [0; MANIFEST_LEN],
    };

    /// Takes `part` at `offset`: 0 starts the manifest over, anything else continues it.
    fn take(&mut self, offset: u16, part: &[u8]) -> Result<u16, Reason> {
        let offset = offset as usize;
        if offset == 0 {
            self.len = 0;
        } else if offset != self.len {
            return Err(Reason::BadOffset);
        }
        let end = offset + part.len();
        if end > MANIFEST_LEN {
            self.len = 0;
            return Err(Reason::BadLength);
        }
        self.bytes[offset..end].copy_from_slice(part);
        self.len = end;
        Ok(end as u16)
    }
}

impl UpdateEngine {
    /// Creates the engine for a device running `running` (a partition of `table`), reading the
    /// running app's descriptor and otadata state from `flash`. It hashes with `sha2`; see
    /// [`with_hasher`](Self::with_hasher) for another SHA-256 (a chip's accelerator).
    pub fn new<F: NorFlash>(
        flash: &mut F,
        config: DeviceConfig,
        table: PartitionTable,
        running: Partition,
    ) -> Result<Self, EngineError> {
        Self::with_hasher(flash, config, table, running)
    }
}

impl<H: Sha256Hasher> UpdateEngine<H> {
    /// [`new`](UpdateEngine::new), hashing images with `H`.
    pub fn with_hasher<F: NorFlash>(
        flash: &mut F,
        config: DeviceConfig,
        table: PartitionTable,
        running: Partition,
    ) -> Result<Self, EngineError> {
        let slots = OtaSlots::new(table)?;
        let running_state = if running.ota_slot().is_some() {
            slots.state_of(flash, &running)?
        } else {
            None
        };
        let (app_name, app_version, running_secure_version) =
            read_app_identity(flash, &running, config.chip);
        let mut engine = UpdateEngine {
            config,
            slots,
            running,
            running_state,
            app_name,
            app_version,
            clients: heapless::Vec::new(),
            packet_size: None,
            session: Session::Idle,
            outbox: Deque::new(),
            events: Deque::new(),
            control_value: [0; Response::MAX_LEN],
            control_len: 1,
            pre_erased: 0,
            pre_erase_prepared: false,
            flash_work: FlashWork::default(),
            cpu_work: CpuWork::default(),
            bufs: transfer::Buffers::new(),
            running_secure_version,
            manifests: [const { ManifestUpload::EMPTY }; MAX_CLIENTS],
        };
        engine.control_value[0] = legacy::NOP;
        Ok(engine)
    }

    // ----- getters -----

    /// Returns the value a read of OTA Control returns: the last control value written or
    /// notified (the seed's behaviour), whole even when a notification was cut by the MTU.
    pub fn control_value(&self) -> &[u8] {
        &self.control_value[..self.control_len]
    }

    /// Returns the running partition.
    pub fn running(&self) -> &Partition {
        &self.running
    }

    /// Returns the OTA view of the partition table.
    pub fn slots(&self) -> &OtaSlots {
        &self.slots
    }

    /// Returns true while an update owned by a connected client is receiving data.
    pub fn is_busy(&self) -> bool {
        matches!(&self.session, Session::Receiving(t) if t.owner.is_some())
    }

    /// Returns the chunk payload size announced to `client`: its link's value length (whole
    /// connection events, or whole link-layer PDUs while the PHY and interval are unknown)
    /// less the chunk's offset.
    pub fn chunk_size(&self, client: ClientId) -> u16 {
        let by_link = self
            .link(client)
            .value_len
            .saturating_sub(fast::CHUNK_HEADER_LEN) as u16;
        by_link.min(self.config.max_chunk).max(1)
    }

    /// Returns the window announced to `client`: what the receive queue holds.
    pub fn window(&self, client: ClientId) -> u32 {
        self.chunk_size(client) as u32 * self.config.rx_queue_chunks.max(1) as u32
    }

    /// INFO's feature bits.
    fn features(&self) -> u8 {
        let mut f = 0;
        if TAKES_COMPRESSED {
            f |= fast::features::COMPRESSED;
        }
        if !self.config.trusted_keys.is_empty() {
            f |= fast::features::SIGNATURES_REQUIRED;
            if self.config.unsigned_legacy {
                f |= fast::features::UNSIGNED_LEGACY;
            }
        }
        f
    }

    /// Builds INFO's answer for `client`.
    pub fn info<F: NorFlash>(&self, flash: &mut F, client: ClientId) -> Result<Info, SlotError> {
        let mut slots = heapless::Vec::new();
        let boot = self.slots.boot_partition(flash)?;
        if let Some(f) = self.slots.table().factory() {
            let _ = slots.push(SlotInfo {
                slot: SLOT_FACTORY,
                state: SlotStateCode::Unused,
                running: *f == self.running,
                boot: *f == boot,
            });
        }
        for s in self.slots.slot_states(flash)? {
            let _ = slots.push(SlotInfo {
                slot: s.partition.ota_slot().unwrap_or(SLOT_OTHER),
                state: SlotStateCode::from_state(s.state),
                running: s.partition == self.running,
                boot: s.partition == boot,
            });
        }
        let max_image_size = self
            .slots
            .next_update_partition(&self.running)
            .map(|p| p.size)
            .unwrap_or(0);
        let resumable = match &self.session {
            Session::Receiving(t) => match t.protocol {
                Protocol::Fast { size, sha256, .. } => Some(Resumable {
                    size,
                    sha256,
                    offset: t.next,
                }),
                Protocol::Legacy => None,
            },
            _ => None,
        };
        Ok(Info {
            protocol_version: fast::PROTOCOL_VERSION,
            chip_id: self.config.chip.id(),
            running_slot: slot_number(&self.running),
            app_name: self.app_name.clone(),
            app_version: self.app_version.clone(),
            max_image_size,
            chunk_size: self.chunk_size(client),
            window: self.window(client),
            slots,
            resumable,
            features: self.features(),
            trusted_keys: self
                .config
                .trusted_keys
                .keys()
                .iter()
                .map(crate::manifest::fingerprint)
                .collect(),
        })
    }

    // ----- inputs -----

    /// A client connected (ATT MTU 23 until [`handle_mtu`](Self::handle_mtu), data length 27
    /// until [`handle_data_length`](Self::handle_data_length)).
    pub fn handle_connected(&mut self, client: ClientId) {
        if !self.clients.iter().any(|c| c.id == client) {
            // More clients than slots: the oldest entry is forgotten; it only loses its link.
            if self.clients.is_full() {
                self.clients.remove(0);
            }
            let _ = self.clients.push(ClientLink::new(client));
        }
    }

    /// The ATT MTU of `client` changed.
    pub fn handle_mtu(&mut self, client: ClientId, mtu: u16) {
        self.handle_connected(client);
        if let Some(link) = self.clients.iter_mut().find(|c| c.id == client) {
            link.mtu = mtu.max(23);
            link.mtu_known = true;
            link.update_value_len();
        }
    }

    /// The link-layer data length from `client` to the device changed (its receive octets, as
    /// the controller's Data Length Change event reports them).
    pub fn handle_data_length(&mut self, client: ClientId, rx_octets: u16) {
        self.handle_connected(client);
        if let Some(link) = self.clients.iter_mut().find(|c| c.id == client) {
            link.data_length = rx_octets;
            link.update_value_len();
        }
    }

    /// The PHY or the connection interval (in µs) of `client`'s link changed.
    pub fn handle_link_timing(&mut self, client: ClientId, phy: Phy, interval_us: u32) {
        self.handle_connected(client);
        if let Some(link) = self.clients.iter_mut().find(|c| c.id == client) {
            link.timing = Some((phy, interval_us));
            link.update_value_len();
        }
    }

    /// `client` disconnected. A fast session it owned stays resumable; a legacy one ends.
    pub fn handle_disconnected(&mut self, client: ClientId) {
        self.clients.retain(|c| c.id != client);
        for m in self
            .manifests
            .iter_mut()
            .filter(|m| m.client == Some(client))
        {
            *m = ManifestUpload::EMPTY;
        }
        self.outbox_retain(client);
        match &mut self.session {
            Session::Receiving(t) if t.owner == Some(client) => {
                t.owner = None;
                if t.protocol == Protocol::Legacy {
                    self.fail(Reason::NoSession);
                }
            }
            Session::Activated { owner, .. } if *owner == Some(client) => *owner = None,
            _ => {}
        }
    }

    /// Refuses a command that changes the session's fate (REBOOT, ABORT) from a client other
    /// than the one driving it, or that ended it, while that one is connected.
    fn check_owner(&self, client: ClientId) -> Result<(), Reason> {
        let owner = match &self.session {
            Session::Receiving(t) => t.owner,
            Session::Activated { owner, .. } => *owner,
            Session::Idle => None,
        };
        match owner {
            Some(o) if o != client => Err(Reason::Busy),
            _ => Ok(()),
        }
    }

    /// `client` wrote `data` to `characteristic`: the one entry point for the service's
    /// writes. An `Err` is the reason to refuse a write request with
    /// ([`Reason::att_error`]); a write command cannot carry one.
    pub fn handle_write<F: NorFlash>(
        &mut self,
        flash: &mut F,
        client: ClientId,
        characteristic: Characteristic,
        data: &[u8],
        now: Instant,
    ) -> Result<(), Reason> {
        if let Some(link) = self.clients.iter_mut().find(|c| c.id == client) {
            link.last_write = Some(now);
        }
        if let Err(reason) = self.check_write_len(client, data) {
            let notify = self.is_fast_client(client) || self.link(client).speaks_fast;
            if characteristic == Characteristic::Data && notify {
                self.notify_error(client, 0, reason, data.len() as u32);
            }
            return Err(reason);
        }
        match characteristic {
            Characteristic::Control => {
                self.handle_control_write(flash, client, data, now);
                Ok(())
            }
            Characteristic::Data => self.handle_data_write(flash, client, data, now),
        }
    }

    /// Refuses an empty write (no command or chunk is empty; it is also what an ATT PDU longer
    /// than the MTU is cut to before it reaches the GATT layer, see ota-gatt's
    /// `OversizeGuard`) and one longer than the client's ATT MTU carries.
    fn check_write_len(&self, client: ClientId, data: &[u8]) -> Result<(), Reason> {
        if data.is_empty() {
            return Err(Reason::BadLength);
        }
        let link = self.link(client);
        if link.mtu_known && data.len() > max_value_len(link.mtu) {
            return Err(Reason::ChunkTooLarge);
        }
        Ok(())
    }

    /// `client` wrote `data` to OTA Control. Answers come as notifications.
    pub fn handle_control_write<F: NorFlash>(
        &mut self,
        flash: &mut F,
        client: ClientId,
        data: &[u8],
        now: Instant,
    ) {
        let mut metered = Metered::new(flash);
        self.control_write(&mut metered, client, data, now);
        self.flash_work += metered.work;
    }

    fn control_write<F: NorFlash>(
        &mut self,
        flash: &mut F,
        client: ClientId,
        data: &[u8],
        now: Instant,
    ) {
        self.set_control_value(data);
        match data {
            [legacy::REQUEST] => self.legacy_request(flash, client, now),
            [legacy::DONE] => self.legacy_done(flash, client),
            [op, ..] if legacy::is_legacy_opcode(*op) && data.len() == 1 => {
                // NOP and the device's own codes written back: the seed ignored them too.
            }
            [fast::op::MANIFEST, ..] => {
                self.mark_fast(client);
                let taken = fast::decode_manifest_part(data)
                    .map_err(DecodeError::reason)
                    .and_then(|(offset, part)| {
                        let missing = if offset == 0 {
                            Reason::Busy
                        } else {
                            Reason::BadOffset
                        };
                        self.manifest_upload(client, offset == 0)
                            .ok_or(missing)?
                            .take(offset, part)
                    });
                match taken {
                    Ok(received) => self.respond(client, Response::ManifestOk { received }),
                    Err(reason) => {
                        self.notify_error(client, fast::op::MANIFEST, reason, data.len() as u32)
                    }
                }
            }
            _ => match Command::decode(data) {
                Ok(cmd) => {
                    self.mark_fast(client);
                    self.command(flash, client, cmd, now)
                }
                Err(e) => {
                    let opcode = data.first().copied().unwrap_or(0);
                    self.notify_error(client, opcode, e.reason(), data.len() as u32);
                }
            },
        }
    }

    /// Returns `client`'s manifest upload; with `start`, a free one (or one of a client gone)
    /// when it has none.
    fn manifest_upload(&mut self, client: ClientId, start: bool) -> Option<&mut ManifestUpload> {
        let i = match self.manifests.iter().position(|m| m.client == Some(client)) {
            Some(i) => i,
            None if start => {
                let clients = &self.clients;
                let i = self.manifests.iter().position(|m| {
                    m.client
                        .is_none_or(|c| !clients.iter().any(|link| link.id == c))
                })?;
                self.manifests[i] = ManifestUpload::EMPTY;
                self.manifests[i].client = Some(client);
                i
            }
            None => return None,
        };
        Some(&mut self.manifests[i])
    }

    /// `client` sent a fast-protocol command: refused data writes are told by notification.
    fn mark_fast(&mut self, client: ClientId) {
        if let Some(link) = self.clients.iter_mut().find(|c| c.id == client) {
            link.speaks_fast = true;
        }
    }

    /// `client` wrote `data` to OTA Data. An `Err` is the reason to refuse a write request with.
    pub fn handle_data_write<F: NorFlash>(
        &mut self,
        flash: &mut F,
        client: ClientId,
        data: &[u8],
        now: Instant,
    ) -> Result<(), Reason> {
        // Fast clients write without response: a refused write is told by notification, also
        // with no session (a chunk before BEGIN) once the client has sent a fast command. The
        // seed's client, which writes with response, gets the ATT error alone: a notification
        // would read to it as the answer to its REQUEST.
        let notify = self.is_fast_client(client) || self.link(client).speaks_fast;
        let mut metered = Metered::new(flash);
        let result = self.data_write(&mut metered, client, data, now);
        self.flash_work += metered.work;
        if let (Err(reason), true) = (result, notify) {
            self.notify_error(client, 0, reason, 0);
        }
        result
    }

    /// Time passed: re-reports a gap the client has not repaired and acknowledges progress
    /// after a pause in the data.
    pub fn handle_tick(&mut self, now: Instant) {
        self.drop_idle_clients(now);
        let Session::Receiving(t) = &mut self.session else {
            return;
        };
        let (Some(owner), Protocol::Fast { .. }) = (t.owner, t.protocol) else {
            return;
        };
        let mut out = None;
        if let Some(at) = t.gap_reported {
            if now.since(at) >= self.config.rewind_retry_ms as u64 {
                t.gap_reported = Some(now);
                out = Some(Response::Rewind { next: t.next });
            }
        } else if t.next > t.last_acked
            && now.since(t.last_progress) >= self.config.idle_ack_ms as u64
        {
            t.last_acked = t.next;
            out = Some(Response::Ack { next: t.next });
        }
        if let Some(r) = out {
            self.push(owner, Outgoing::Fast(r));
        }
    }

    /// Asks the shell to drop every client that wrote nothing for `idle_timeout_ms`.
    fn drop_idle_clients(&mut self, now: Instant) {
        let timeout = self.config.idle_timeout_ms;
        let mut idle: heapless::Vec<ClientId, MAX_CLIENTS> = heapless::Vec::new();
        for c in self.clients.iter_mut() {
            let since = *c.last_write.get_or_insert(now);
            if timeout > 0 && !c.dropping && now.since(since) >= u64::from(timeout) {
                c.dropping = true;
                let _ = idle.push(c.id);
            }
        }
        for client in idle {
            self.push_event(Event::DropClient { client });
        }
    }

    /// Returns when [`handle_tick`](Self::handle_tick) must run next, if anything waits on time.
    pub fn poll_timeout(&self) -> Option<Instant> {
        let idle = self
            .clients
            .iter()
            .filter(|c| self.config.idle_timeout_ms > 0 && !c.dropping)
            .map(|c| match c.last_write {
                Some(at) => at.after_ms(self.config.idle_timeout_ms),
                // A tick stamps a newly connected client.
                None => Instant(0),
            })
            .min();
        [idle, self.session_timeout()].into_iter().flatten().min()
    }

    /// When the session's next ACK or REWIND is due, if one waits on time.
    fn session_timeout(&self) -> Option<Instant> {
        let Session::Receiving(t) = &self.session else {
            return None;
        };
        let (Some(_), Protocol::Fast { .. }) = (t.owner, t.protocol) else {
            return None;
        };
        if let Some(at) = t.gap_reported {
            Some(at.after_ms(self.config.rewind_retry_ms))
        } else if t.next > t.last_acked {
            Some(t.last_progress.after_ms(self.config.idle_ack_ms))
        } else {
            None
        }
    }

    /// Confirms the running trial image (the firmware's automatic policy, after its self-test).
    pub fn confirm<F: NorFlash>(&mut self, flash: &mut F) -> Result<(), Reason> {
        let mut metered = Metered::new(flash);
        let result = self.confirm_on(&mut metered);
        self.flash_work += metered.work;
        result
    }

    fn confirm_on<F: NorFlash>(&mut self, flash: &mut F) -> Result<(), Reason> {
        match self.running_state {
            Some(OtaImgState::PendingVerify) | Some(OtaImgState::New) => {
                self.slots
                    .set_active_state(flash, OtaImgState::Valid)
                    .map_err(|_| Reason::FlashError)?;
                self.running_state = Some(OtaImgState::Valid);
                self.push_event(Event::Confirmed);
                Ok(())
            }
            // Already permanent (VALID, or UNDEFINED: never on trial), or the factory app.
            _ => Err(Reason::NothingToConfirm),
        }
    }

    /// Erases ahead of time, while the device is idle, one 4 KiB sector of the slot the next
    /// update goes to, so that an update erases little or nothing while its link is up (every
    /// flash erase stops the BLE controller for 45 ms typical, up to 400 ms). Call it at boot
    /// before BLE starts and whenever no central is connected, until it returns
    /// [`PreErase::Done`] or [`PreErase::NotNow`], pausing between calls so the radio is
    /// served.
    ///
    /// Each call first reads the sector: one that reads blank is only counted, so after a
    /// reboot the erased extent is re-derived without a single flash write. Nothing is erased
    /// while the running image is on trial (the other slot is its way back), while an update
    /// session exists, or before otadata was made to not fall back onto the slot (as
    /// `esp_ota_begin` does before it erases).
    pub fn pre_erase_step<F: NorFlash>(&mut self, flash: &mut F) -> Result<PreErase, Reason> {
        let mut metered = Metered::new(flash);
        let result = self.pre_erase_on(&mut metered);
        self.flash_work += metered.work;
        result
    }

    fn pre_erase_on<F: NorFlash>(&mut self, flash: &mut F) -> Result<PreErase, Reason> {
        let on_trial = matches!(
            self.running_state,
            Some(OtaImgState::PendingVerify) | Some(OtaImgState::New)
        ) && self.running.ota_slot().is_some();
        if on_trial || !matches!(self.session, Session::Idle) {
            return Ok(PreErase::NotNow);
        }
        let Ok(target) = self.slots.next_update_partition(&self.running) else {
            return Ok(PreErase::NotNow);
        };
        if self.pre_erased >= target.size {
            return Ok(PreErase::Done);
        }
        let at = target.offset + self.pre_erased;
        let sector = crate::esp::flash::SECTOR_SIZE;
        let blank =
            crate::esp::flash::is_blank(flash, at, at + sector).map_err(|_| Reason::FlashError)?;
        if !blank {
            if !self.pre_erase_prepared {
                self.slots
                    .invalidate_inactive_except(flash, &self.running)
                    .map_err(|_| Reason::FlashError)?;
                self.pre_erase_prepared = true;
            }
            crate::esp::flash::erase(flash, at, at + sector).map_err(|_| Reason::FlashError)?;
        }
        self.pre_erased += sector;
        Ok(if blank {
            PreErase::Blank { offset: at }
        } else {
            PreErase::Erased { offset: at }
        })
    }

    /// Returns the flash work the engine did since the last call, command by command: what a
    /// device model charges time for. The shell on the chip can ignore it.
    pub fn take_flash_work(&mut self) -> FlashWork {
        core::mem::take(&mut self.flash_work)
    }

    /// Returns the CPU work (hashing, inflating) the engine did since the last call: what a
    /// device model charges time for.
    pub fn take_cpu_work(&mut self) -> CpuWork {
        if let Session::Receiving(t) = &mut self.session {
            self.cpu_work += core::mem::take(&mut t.cpu);
        }
        core::mem::take(&mut self.cpu_work)
    }

    /// Returns the bytes at the start of the next update slot known to be erased.
    pub fn pre_erased(&self) -> u32 {
        self.pre_erased
    }

    /// Returns true if the running image is on trial (PENDING_VERIFY).
    pub fn is_trial(&self) -> bool {
        self.running_state == Some(OtaImgState::PendingVerify)
    }

    // ----- outputs -----

    /// Writes the next notification into `buf` (at least [`Response::MAX_LEN`] bytes) and
    /// returns its client and length. It is cut to the client's MTU; the full value stays
    /// readable on OTA Control.
    pub fn poll_notification(&mut self, buf: &mut [u8]) -> Option<(ClientId, usize)> {
        loop {
            let (client, out) = self.outbox.pop_front()?;
            let len = match &out {
                Outgoing::Legacy(code) => match buf.first_mut() {
                    Some(b) => {
                        *b = *code;
                        1
                    }
                    None => continue,
                },
                Outgoing::Fast(r) => match r.encode(buf) {
                    Ok(n) => n,
                    Err(_) => continue,
                },
            };
            self.set_control_value(&buf[..len]);
            let len = len.min(max_value_len(self.mtu(client)));
            return Some((client, len));
        }
    }

    /// Returns the next event for the shell.
    pub fn poll_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }

    // ----- internals -----

    fn mtu(&self, client: ClientId) -> u16 {
        self.link(client).mtu
    }

    fn link(&self, client: ClientId) -> ClientLink {
        self.clients
            .iter()
            .find(|c| c.id == client)
            .copied()
            .unwrap_or_else(|| ClientLink::new(client))
    }

    /// Returns true if `client` drives a fast session: only such a client learns of a refused
    /// write command by notification (legacy clients get the ATT error of their write request).
    fn is_fast_client(&self, client: ClientId) -> bool {
        matches!(&self.session,
            Session::Receiving(t) if matches!(t.protocol, Protocol::Fast { .. }) && t.owner == Some(client))
    }

    fn set_control_value(&mut self, v: &[u8]) {
        let n = v.len().min(self.control_value.len());
        self.control_value[..n].copy_from_slice(&v[..n]);
        self.control_len = n;
    }

    fn push(&mut self, client: ClientId, out: Outgoing) {
        if self.outbox.is_full() {
            // Keep the newest: an old ACK is superseded, and errors repeat on the next write.
            self.outbox.pop_front();
        }
        let _ = self.outbox.push_back((client, out));
    }

    fn push_event(&mut self, e: Event) {
        if self.events.is_full() {
            self.events.pop_front();
        }
        let _ = self.events.push_back(e);
    }

    fn outbox_retain(&mut self, client: ClientId) {
        let n = self.outbox.len();
        for _ in 0..n {
            if let Some(item) = self.outbox.pop_front()
                && item.0 != client
            {
                let _ = self.outbox.push_back(item);
            }
        }
    }

    fn notify_error(&mut self, client: ClientId, opcode: u8, reason: Reason, detail: u32) {
        self.push(
            client,
            Outgoing::Fast(Response::Error {
                opcode,
                reason,
                detail,
            }),
        );
    }

    fn respond(&mut self, client: ClientId, r: Response) {
        self.push(client, Outgoing::Fast(r));
    }

    /// Takes back the selection END made (ABORT after END_OK): the otadata entry END wrote is
    /// marked ABORTED, which ESP-IDF's bootloader never selects, with or without rollback
    /// support, so the image that runs now boots again. Refused (the selection stays) if
    /// otadata no longer selects `slot`.
    fn deselect<F: NorFlash>(&mut self, flash: &mut F, slot: u8) -> Result<(), Reason> {
        let selected = self
            .slots
            .boot_partition(flash)
            .map_err(|_| Reason::FlashError)?;
        if selected.ota_slot() != Some(slot) || selected.offset == self.running.offset {
            return Err(Reason::RebootPending);
        }
        self.slots
            .set_active_state(flash, OtaImgState::Aborted)
            .map_err(|_| Reason::FlashError)?;
        self.fail(Reason::NoSession);
        Ok(())
    }

    /// Ends the session without an image.
    fn fail(&mut self, reason: Reason) {
        self.session = Session::Idle;
        self.push_event(Event::UpdateFailed { reason });
    }

    /// Refuses to start when another client updates, a reboot is pending or a trial runs.
    fn check_can_start(&self, client: ClientId) -> Result<(), Reason> {
        match &self.session {
            Session::Receiving(t) if t.owner.is_some() && t.owner != Some(client) => {
                return Err(Reason::Busy);
            }
            Session::Activated { .. } => return Err(Reason::RebootPending),
            _ => {}
        }
        if self.running_state == Some(OtaImgState::PendingVerify) {
            return Err(Reason::TrialPending);
        }
        Ok(())
    }

    fn new_transfer(
        &self,
        protocol: Protocol,
        client: ClientId,
        now: Instant,
    ) -> Result<Transfer<H>, Reason> {
        let target = self
            .slots
            .next_update_partition(&self.running)
            .map_err(|_| Reason::NoOtaSlot)?;
        // The transfer hashes every byte once and hands the validator its part.
        let validator = ImageValidator::new(Some(self.config.chip), target.size)
            .with_chip_revision(self.config.chip_revision)
            .with_external_hash();
        Ok(Transfer::new(
            protocol,
            client,
            target,
            self.running,
            validator,
            WritePlan {
                pre_erased: self.pre_erased,
                batch_pages: self.config.program_batch_pages,
            },
            now,
        ))
    }

    /// Re-reads the running image's otadata state: another part of the firmware (its
    /// automatic confirm policy) may have confirmed it through a second engine since.
    fn refresh_running_state<F: NorFlash>(&mut self, flash: &mut F) {
        if self.running.ota_slot().is_some()
            && let Ok(state) = self.slots.state_of(flash, &self.running)
        {
            self.running_state = state;
        }
    }

    fn legacy_request<F: NorFlash>(&mut self, flash: &mut F, client: ClientId, now: Instant) {
        if !self.config.trusted_keys.is_empty() && !self.config.unsigned_legacy {
            // The seed's protocol has no room for a signature.
            self.push(client, Outgoing::Legacy(legacy::REQUEST_NAK));
            return;
        }
        self.refresh_running_state(flash);
        let started = self
            .check_can_start(client)
            .and_then(|()| self.new_transfer(Protocol::Legacy, client, now));
        match started {
            Ok(t) => {
                let slot = t.target.ota_slot().unwrap_or(SLOT_OTHER);
                self.session = Session::Receiving(t);
                // The transfer owns the slot now; a failed one leaves it dirty.
                self.pre_erased = 0;
                self.push_event(Event::UpdateStarted { slot });
                self.push(client, Outgoing::Legacy(legacy::REQUEST_ACK));
            }
            Err(_) => self.push(client, Outgoing::Legacy(legacy::REQUEST_NAK)),
        }
    }

    fn legacy_done<F: NorFlash>(&mut self, flash: &mut F, client: ClientId) {
        let owned = matches!(&self.session,
            Session::Receiving(t) if t.protocol == Protocol::Legacy && t.owner == Some(client));
        if !owned {
            self.push(client, Outgoing::Legacy(legacy::DONE_NAK));
            return;
        }
        match self.activate(flash) {
            Ok(_) => {
                self.push(client, Outgoing::Legacy(legacy::DONE_ACK));
                self.push_event(Event::RebootRequested);
            }
            Err(_) => self.push(client, Outgoing::Legacy(legacy::DONE_NAK)),
        }
    }

    fn command<F: NorFlash>(
        &mut self,
        flash: &mut F,
        client: ClientId,
        cmd: Command,
        now: Instant,
    ) {
        let op = cmd.opcode();
        let result = match cmd {
            Command::Info => self
                .info(flash, client)
                .map(Response::Info)
                .map_err(|_| Reason::FlashError),
            Command::Begin {
                size,
                sha256,
                flags,
                stream,
            } => self.begin(flash, client, size, sha256, stream, flags, now),
            Command::End => self.end(flash, client),
            Command::Reboot => self.check_owner(client).map(|()| {
                self.push_event(Event::RebootRequested);
                Response::RebootOk
            }),
            Command::Confirm => self.confirm(flash).map(|()| Response::ConfirmOk),
            Command::Abort => self.check_owner(client).and_then(|()| match &self.session {
                Session::Receiving(_) => {
                    self.fail(Reason::NoSession);
                    Ok(Response::AbortOk)
                }
                Session::Activated { slot, .. } => {
                    let slot = *slot;
                    self.deselect(flash, slot).map(|()| Response::AbortOk)
                }
                Session::Idle => Ok(Response::AbortOk),
            }),
            Command::Status => match &mut self.session {
                Session::Receiving(t) if t.owner == Some(client) => {
                    t.last_acked = t.next;
                    Ok(Response::Ack { next: t.next })
                }
                Session::Activated { size, stream, .. } => Ok(Response::Ack {
                    next: stream.map_or(*size, |s| s.len),
                }),
                _ => Err(Reason::NoSession),
            },
        };
        match result {
            Ok(r) => self.respond(client, r),
            Err(reason) => self.notify_error(client, op, reason, 0),
        }
    }

    // BEGIN's fields, as they arrive.
    #[allow(clippy::too_many_arguments)]
    fn begin<F: NorFlash>(
        &mut self,
        flash: &mut F,
        client: ClientId,
        size: u32,
        sha256: [u8; 32],
        stream: Option<fast::Stream>,
        flags: u8,
        now: Instant,
    ) -> Result<Response, Reason> {
        let protocol = Protocol::Fast {
            size,
            sha256,
            stream,
        };
        if flags & !begin_flags::KNOWN != 0 || (stream.is_some() && !TAKES_COMPRESSED) {
            return Err(Reason::Unsupported);
        }
        // Before anything else, a resume included: nothing unsigned reaches the flash.
        let manifest = self.check_manifest(client, size, &sha256, flags)?;
        let chunk_size = self.chunk_size(client);
        let window = self.window(client);
        // What this client is told: an ACK every `ack_step` bytes.
        let ack_step = (window / self.config.acks_per_window.max(1) as u32).max(1);
        // The same image again: resume, or repeat the answer after END.
        match &mut self.session {
            Session::Activated {
                slot,
                size: s,
                sha256: h,
                stream: st,
                ..
            } if *s == size && *h == sha256 && *st == stream => {
                return Ok(Response::BeginOk {
                    resume_offset: stream.map_or(size, |s| s.len),
                    chunk_size,
                    window,
                    slot: *slot,
                });
            }
            Session::Receiving(t)
                if t.protocol == protocol && (t.owner.is_none() || t.owner == Some(client)) =>
            {
                t.owner = Some(client);
                t.gap_reported = None;
                t.last_acked = t.next;
                t.last_progress = now;
                t.ack_step = ack_step;
                t.reboot_after_end = flags & begin_flags::REBOOT_AFTER_END != 0;
                let slot = t.target.ota_slot().unwrap_or(SLOT_OTHER);
                return Ok(Response::BeginOk {
                    resume_offset: t.next,
                    chunk_size,
                    window,
                    slot,
                });
            }
            _ => {}
        }
        self.refresh_running_state(flash);
        self.check_can_start(client)?;
        let mut t = self.new_transfer(protocol, client, now)?;
        t.manifest = manifest;
        t.ack_step = ack_step;
        t.reboot_after_end = flags & begin_flags::REBOOT_AFTER_END != 0;
        if size > t.target.size {
            return Err(Reason::ImageTooLarge);
        }
        if size < MIN_IMAGE_LEN {
            return Err(Reason::Truncated);
        }
        if stream.is_some_and(|s| s.len == 0) {
            return Err(Reason::BadStream);
        }
        let slot = t.target.ota_slot().unwrap_or(SLOT_OTHER);
        // A new stream: the inflater starts over (a resumed session keeps it as it is).
        self.bufs.reset_inflater();
        self.session = Session::Receiving(t);
        self.pre_erased = 0;
        self.push_event(Event::UpdateStarted { slot });
        Ok(Response::BeginOk {
            resume_offset: 0,
            chunk_size,
            window,
            slot,
        })
    }

    /// On a device that trusts keys: the manifest `client` wrote must be signed by one of them
    /// and name this image (size, SHA-256), this chip, and a `secure_version` no lower than
    /// the running app's. Returns it, for END to check the image's app descriptor against.
    fn check_manifest(
        &mut self,
        client: ClientId,
        size: u32,
        sha256: &[u8; 32],
        flags: u8,
    ) -> Result<Option<Manifest>, Reason> {
        let trusted = &self.config.trusted_keys;
        if trusted.is_empty() {
            // Nothing to verify against: the manifest is not looked at.
            return Ok(None);
        }
        let upload = self.manifests.iter().find(|m| m.client == Some(client));
        let bytes = match upload {
            // Only a whole manifest counts: a part of one is no manifest (as the docs say).
            Some(m) if flags & begin_flags::SIGNED_MANIFEST != 0 && m.len == MANIFEST_LEN => {
                &m.bytes[..]
            }
            _ => return Err(Reason::SignatureRequired),
        };
        let signed = SignedManifest::decode(bytes).map_err(|_| Reason::BadSignature)?;
        if trusted.find(&signed.key).is_some() {
            self.cpu_work.signatures += 1;
        }
        let m = *signed.verify(trusted).map_err(|e| match e {
            ManifestError::UnknownKey(_) => Reason::UnknownKey,
            _ => Reason::BadSignature,
        })?;
        if m.size != size || m.sha256 != *sha256 || m.chip_id != self.config.chip.id() {
            return Err(Reason::ManifestMismatch);
        }
        if m.secure_version < self.running_secure_version {
            return Err(Reason::Downgrade);
        }
        Ok(Some(m))
    }

    fn end<F: NorFlash>(&mut self, flash: &mut F, client: ClientId) -> Result<Response, Reason> {
        match &self.session {
            Session::Activated { slot, .. } => return Ok(Response::EndOk { slot: *slot }),
            Session::Receiving(t) if t.owner == Some(client) => {
                if let Some(wire_len) = t.protocol.wire_len()
                    && t.next < wire_len
                {
                    return Err(Reason::Incomplete);
                }
            }
            Session::Receiving(t) if t.owner.is_some() => return Err(Reason::Busy),
            _ => return Err(Reason::NoSession),
        }
        let reboot = matches!(&self.session, Session::Receiving(t) if t.reboot_after_end);
        let slot = self.activate(flash)?;
        if reboot {
            // After END_OK, which the shell sends first.
            self.push_event(Event::RebootRequested);
        }
        Ok(Response::EndOk { slot })
    }

    /// Finishes the transfer: flushes, checks the image, reads it back, selects it.
    fn activate<F: NorFlash>(&mut self, flash: &mut F) -> Result<u8, Reason> {
        let Session::Receiving(t) = core::mem::replace(&mut self.session, Session::Idle) else {
            return Err(Reason::NoSession);
        };
        let stream = match t.protocol {
            Protocol::Fast { stream, .. } => stream,
            Protocol::Legacy => None,
        };
        let owner = t.owner;
        let result = t.finish(flash, &self.slots, &self.bufs);
        match result {
            Ok((slot, size, sha256)) => {
                self.session = Session::Activated {
                    slot,
                    size,
                    sha256,
                    stream,
                    owner,
                };
                self.push_event(Event::UpdateActivated { slot });
                Ok(slot)
            }
            Err(reason) => {
                self.fail(reason);
                Err(reason)
            }
        }
    }

    fn data_write<F: NorFlash>(
        &mut self,
        flash: &mut F,
        client: ClientId,
        data: &[u8],
        now: Instant,
    ) -> Result<(), Reason> {
        // Before REQUEST the seed's client writes its packet size here (MTU - 3, never
        // clamped). A detached fast session (its client dropped) does not stand in the way: the
        // seed's client has no ABORT and could never recover. That session stays resumable
        // until REQUEST actually starts a new one.
        let owner = match &self.session {
            Session::Receiving(t) => t.owner,
            _ => None,
        };
        if owner != Some(client)
            && data.len() == legacy::PACKET_SIZE_WRITE_LEN
            && !matches!(self.session, Session::Activated { .. })
        {
            if owner.is_some() {
                return Err(Reason::Busy);
            }
            let size = u16::from_le_bytes([data[0], data[1]]);
            if size == 0 {
                return Err(Reason::BadLength);
            }
            if size > MAX_LEGACY_PACKET_SIZE {
                return Err(Reason::ChunkTooLarge);
            }
            self.packet_size = Some(size);
            return Ok(());
        }
        // Chunks up to what the client's link carries; the announced chunk size is advice for
        // speed, not a limit (it follows the data length, which may change mid-session).
        let chunk_limit = max_value_len(self.mtu(client))
            .saturating_sub(fast::CHUNK_HEADER_LEN)
            .min(self.config.max_chunk as usize);
        let Session::Receiving(t) = &mut self.session else {
            return Err(match self.session {
                Session::Activated { .. } => Reason::RebootPending,
                _ => Reason::NoSession,
            });
        };
        match t.owner {
            Some(owner) if owner == client => {}
            Some(_) => return Err(Reason::Busy),
            None => return Err(Reason::NoSession),
        }
        let result = match t.protocol {
            Protocol::Legacy => {
                let limit = self
                    .packet_size
                    .map_or(MAX_ATTRIBUTE_LEN, |p| (p as usize).min(MAX_ATTRIBUTE_LEN));
                if data.len() > limit {
                    Err(Reason::ChunkTooLarge)
                } else {
                    let at = t.next;
                    t.accept(flash, &self.slots, &mut self.bufs, at, data, now)
                        .map(|_| None)
                }
            }
            Protocol::Fast { .. } => match fast::decode_chunk(data) {
                Err(_) => Err(Reason::BadLength),
                Ok((_, payload)) if payload.len() > chunk_limit => Err(Reason::ChunkTooLarge),
                Ok((offset, payload)) => t
                    .accept(flash, &self.slots, &mut self.bufs, offset, payload, now)
                    .map(|outcome| outcome.ack(t, now)),
            },
        };
        match result {
            Ok(Some(resp)) => {
                self.respond(client, resp);
                Ok(())
            }
            Ok(None) => Ok(()),
            Err(reason)
                if reason == Reason::BadOffset
                    || reason == Reason::ChunkTooLarge
                    || reason == Reason::BadLength =>
            {
                // The write is refused but the session survives: the client can resend right.
                Err(reason)
            }
            Err(reason) => {
                self.fail(reason);
                Err(reason)
            }
        }
    }
}

/// LL payload of an ACK notification: L2CAP and ATT headers and the ACK.
const ACK_NOTIFICATION_PAYLOAD: u16 =
    (crate::protocol::L2CAP_HEADER + crate::protocol::ATT_WRITE_HEADER + fast::ACK_LEN) as u16;

/// Shortest possible app image: its 24-byte header.
const MIN_IMAGE_LEN: u32 = 24;
/// End of `esp_app_desc_t` in an image (0x20 + 256).
const APP_DESC_END: u32 = 0x120;

/// Returns INFO's slot number for a partition.
fn slot_number(p: &Partition) -> u8 {
    if p.is_factory() {
        SLOT_FACTORY
    } else {
        p.ota_slot().unwrap_or(SLOT_OTHER)
    }
}

/// Reads the project name, version and `secure_version` from the app descriptor of the image
/// in `part`.
fn read_app_identity<F: NorFlash>(
    flash: &mut F,
    part: &Partition,
    chip: Chip,
) -> (fast::Str32, fast::Str32, u32) {
    let mut name = fast::Str32::new();
    let mut version = fast::Str32::new();
    let mut v = ImageValidator::new(Some(chip), part.size);
    let mut buf = [0u8; 64];
    let mut pos = 0u32;
    while v.app_descriptor().is_none() && pos < APP_DESC_END {
        if crate::esp::flash::read(flash, part.offset + pos, &mut buf).is_err()
            || v.feed(&buf).is_err()
        {
            break;
        }
        pos += buf.len() as u32;
    }
    let mut secure_version = 0;
    if let Some(desc) = v.app_descriptor() {
        let _ = name.push_str(crate::esp::image::c_str(&desc.project_name));
        let _ = version.push_str(crate::esp::image::c_str(&desc.version));
        secure_version = desc.secure_version;
    }
    (name, version, secure_version)
}
