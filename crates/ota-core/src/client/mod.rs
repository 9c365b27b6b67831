//! The client side: given an image, it emits the GATT writes of either protocol and reacts to
//! the device's notifications. Like the device engine it does no I/O.
//!
//! # Run loop
//!
//! 1. Drain [`Sender::poll_transmit`]: write each [`Transmit`] to its characteristic, with or
//!    without response as it says. While a write request is unanswered, only write commands
//!    come out (ATT allows one request in flight).
//! 2. Feed back what happened: [`Sender::handle_write_result`] when a write request is
//!    answered, [`Sender::handle_notification`] for each OTA Control notification,
//!    [`Sender::handle_disconnected`] when the link drops (a fast session then resumes on the
//!    next connection), [`Sender::handle_timeout`] at [`Sender::poll_timeout`].
//! 3. Drain [`Sender::poll_event`] for progress and the outcome.

#[cfg(feature = "compress")]
mod compress;

#[cfg(feature = "compress")]
pub use compress::{RESTART_INTERVAL, compress};

use heapless::Deque;
use sha2::{Digest, Sha256};

use crate::manifest::MANIFEST_LEN;
use crate::protocol::fast::{self, Command, DecodeError, Response};
use crate::protocol::{Characteristic, MAX_ATTRIBUTE_LEN, Reason, legacy, max_value_len};
use crate::time::Instant;

/// A write the transport must perform; its bytes are in the caller's buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct Transmit {
    /// Characteristic to write.
    pub characteristic: Characteristic,
    /// Write request (true) or write command (false).
    pub with_response: bool,
    /// Bytes at the start of the buffer.
    pub len: usize,
}

/// How the update ends, or progress on the way.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum ClientEvent {
    /// The device accepted the update; transfer starts at `offset` (non-zero when resuming).
    Started {
        /// First byte to send.
        offset: u32,
        /// Image size.
        total: u32,
        /// Chunk payload size in use.
        chunk_size: u16,
        /// Window the device announced.
        window: u32,
        /// The image goes as a compressed stream: `offset` and `total` count stream bytes.
        compressed: bool,
        /// The device took the image's signed manifest (false for one older than protocol
        /// v4, to which the image goes unsigned).
        signed: bool,
    },
    /// Every byte before `acked` is on the device.
    Progress {
        /// Acknowledged bytes.
        acked: u32,
        /// Image size.
        total: u32,
    },
    /// The device verified the image and selected `slot` for the next boot.
    Activated {
        /// The selected slot (`None` for the legacy protocol, which does not say).
        slot: Option<u8>,
    },
    /// The device reboots into the new image.
    Rebooting,
    /// The update failed.
    Failed(ClientError),
}

/// Why an update failed on the client side.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
#[non_exhaustive]
pub enum ClientError {
    /// The device refused a command or a write.
    #[error("device refused: {reason}")]
    Refused {
        /// The refused command's opcode (0: data).
        opcode: u8,
        /// Why.
        reason: Reason,
    },
    /// A write request failed with an ATT error that carries no reason of ours.
    #[error("write rejected with ATT error {0:#04x}")]
    AttError(u8),
    /// Legacy: the device answered REQUEST with NAK.
    #[error(
        "device refused the update request (REQUEST_NAK): it may be busy, on trial, have no OTA slot, or take only signed images (which need the fast protocol); run `ble-ota info`"
    )]
    RequestNak,
    /// Legacy: the device answered DONE with NAK.
    #[error(
        "device refused the image (DONE_NAK): it is corrupt, truncated, for another chip or too large; check it with `ble-ota image inspect`"
    )]
    DoneNak,
    /// The device sent something this client does not understand.
    #[error("unexpected notification from device: {0}")]
    Protocol(DecodeError),
    /// The link dropped during a legacy update, which cannot resume.
    #[error(
        "link dropped during a legacy update; run it again (the fast protocol resumes instead)"
    )]
    Disconnected,
    /// Legacy: the link dropped after the whole image and DONE went out, before the device's
    /// answer. The seed's firmware restarts as soon as it takes an image, so the answer may
    /// be lost with the link (trouble-host 0.8 drops ATT PDUs it has not handed over yet).
    #[error(
        "the link dropped after the whole image and DONE were sent, before the device's answer: the seed's firmware restarts as soon as it takes an image, so it probably runs the new one now; check it, and run again only if it still runs the old one"
    )]
    DroppedAfterDone,
    /// BEGIN, END or REBOOT got no answer in time.
    #[error(
        "no answer to command {opcode:#04x}: is the device running firmware with the fast protocol? (`--legacy` speaks the seed's)"
    )]
    NoAnswer {
        /// The command's opcode.
        opcode: u8,
    },
    /// No progress despite repeated STATUS requests.
    #[error("device stopped acknowledging data; move closer or retry")]
    Stalled,
    /// The image is empty or larger than 4 GiB.
    #[error("an image of {0} bytes cannot be sent (empty, or 4 GiB and more): pass the app's .bin")]
    BadImage(usize),
    /// The ATT MTU is too small for the fast protocol's BEGIN.
    #[error(
        "ATT MTU {mtu} cannot carry the fast protocol's BEGIN (it needs {}): use the seed's protocol (--legacy)",
        crate::protocol::fast::MIN_ATT_MTU
    )]
    MtuTooSmall {
        /// The link's ATT MTU.
        mtu: u16,
    },
}

/// Client-side knobs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct SenderConfig {
    /// ATT MTU when the transport knows it (HCI); `None` (btleplug, Web Bluetooth): trust the
    /// device's announced chunk size.
    pub att_mtu: Option<u16>,
    /// Send REBOOT after END succeeded (fast protocol).
    pub reboot: bool,
    /// Ask for STATUS after this long without an acknowledgement.
    pub stall_timeout_ms: u32,
    /// Give up after this many STATUS requests in a row without progress.
    pub max_stalls: u8,
    /// Give up when BEGIN, END or REBOOT gets no answer for this long (END includes the
    /// device's read-back of the whole image).
    pub answer_timeout_ms: u32,
}

impl Default for SenderConfig {
    fn default() -> Self {
        SenderConfig {
            att_mtu: None,
            reboot: true,
            stall_timeout_ms: 2000,
            max_stalls: 5,
            answer_timeout_ms: 15_000,
        }
    }
}

/// Pushes an image with either protocol.
#[derive(Debug)]
pub enum Sender<'a> {
    /// The seed's protocol.
    Legacy(LegacySender<'a>),
    /// The fast protocol.
    Fast(FastSender<'a>),
}

macro_rules! delegate {
    ($self:ident, $s:ident => $e:expr) => {
        match $self {
            Sender::Legacy($s) => $e,
            Sender::Fast($s) => $e,
        }
    };
}

impl<'a> Sender<'a> {
    /// The sender for `image`: the seed's protocol in packets for `legacy_mtu` when given, else
    /// the fast protocol with `config`, offering the compressed `stream` and sending the signed
    /// `manifest` when given (the seed's protocol carries neither).
    pub fn new(
        image: &'a [u8],
        legacy_mtu: Option<u16>,
        config: SenderConfig,
        stream: Option<&'a [u8]>,
        manifest: Option<&'a [u8; MANIFEST_LEN]>,
    ) -> Result<Self, ClientError> {
        if let Some(mtu) = legacy_mtu {
            return Ok(Sender::Legacy(LegacySender::new(image, mtu)?));
        }
        let mut fast = FastSender::new(image, config)?;
        if let Some(stream) = stream {
            fast = fast.with_stream(stream)?;
        }
        if let Some(m) = manifest {
            fast = fast.with_manifest(m);
        }
        Ok(Sender::Fast(fast))
    }

    /// Returns the next write to perform.
    pub fn poll_transmit(&mut self, now: Instant, buf: &mut [u8]) -> Option<Transmit> {
        delegate!(self, s => s.poll_transmit(now, buf))
    }
    /// A write request was answered (`Err(att_error)` when refused).
    pub fn handle_write_result(&mut self, now: Instant, result: Result<(), u8>) {
        delegate!(self, s => s.handle_write_result(now, result))
    }
    /// A notification arrived on OTA Control.
    pub fn handle_notification(&mut self, now: Instant, data: &[u8]) {
        delegate!(self, s => s.handle_notification(now, data))
    }
    /// The link dropped.
    pub fn handle_disconnected(&mut self) {
        delegate!(self, s => s.handle_disconnected())
    }
    /// Time passed.
    pub fn handle_timeout(&mut self, now: Instant) {
        delegate!(self, s => s.handle_timeout(now))
    }
    /// Returns when to call `handle_timeout` next.
    pub fn poll_timeout(&self) -> Option<Instant> {
        delegate!(self, s => s.poll_timeout())
    }
    /// Returns the next event.
    pub fn poll_event(&mut self) -> Option<ClientEvent> {
        delegate!(self, s => s.events.pop_front())
    }
    /// Returns true once the update succeeded or failed.
    pub fn is_finished(&self) -> bool {
        delegate!(self, s => s.is_finished())
    }
    /// Returns `(acknowledged, total)` bytes.
    pub fn progress(&self) -> (u32, u32) {
        delegate!(self, s => s.progress())
    }
}

type Events = Deque<ClientEvent, 8>;

fn push(events: &mut Events, e: ClientEvent) {
    if events.is_full() {
        events.pop_front();
    }
    let _ = events.push_back(e);
}

// ---------------------------------------------------------------------------------------------

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum LegacyState {
    SendPacketSize,
    SendRequest,
    AwaitRequestAck,
    Streaming,
    SendDone,
    AwaitDoneAck,
    Done,
    Failed,
}

/// The seed's protocol: packet size, REQUEST, data as write requests, DONE.
#[derive(Debug)]
pub struct LegacySender<'a> {
    image: &'a [u8],
    packet_size: u16,
    state: LegacyState,
    sent: u32,
    acked: u32,
    in_flight: bool,
    events: Events,
}

impl<'a> LegacySender<'a> {
    /// Prepares to send `image` in packets of `att_mtu - 3` bytes (at most 512), as the seed's
    /// client does.
    pub fn new(image: &'a [u8], att_mtu: u16) -> Result<Self, ClientError> {
        if image.is_empty() || image.len() > u32::MAX as usize {
            return Err(ClientError::BadImage(image.len()));
        }
        Ok(LegacySender {
            image,
            packet_size: max_value_len(att_mtu).max(1) as u16,
            state: LegacyState::SendPacketSize,
            sent: 0,
            acked: 0,
            in_flight: false,
            events: Deque::new(),
        })
    }

    fn total(&self) -> u32 {
        self.image.len() as u32
    }

    fn emit(&mut self, e: ClientEvent) {
        push(&mut self.events, e);
    }

    fn fail(&mut self, e: ClientError) {
        self.state = LegacyState::Failed;
        self.emit(ClientEvent::Failed(e));
    }

    fn poll_transmit(&mut self, _now: Instant, buf: &mut [u8]) -> Option<Transmit> {
        if self.in_flight {
            return None;
        }
        let (characteristic, len) = match self.state {
            LegacyState::SendPacketSize => {
                buf.get_mut(..2)?
                    .copy_from_slice(&self.packet_size.to_le_bytes());
                (Characteristic::Data, 2)
            }
            LegacyState::SendRequest => {
                *buf.first_mut()? = legacy::REQUEST;
                self.state = LegacyState::AwaitRequestAck;
                (Characteristic::Control, 1)
            }
            LegacyState::Streaming => {
                let start = self.sent as usize;
                let n = (self.image.len() - start).min(self.packet_size as usize);
                buf.get_mut(..n)?
                    .copy_from_slice(&self.image[start..start + n]);
                self.sent += n as u32;
                (Characteristic::Data, n)
            }
            LegacyState::SendDone => {
                *buf.first_mut()? = legacy::DONE;
                self.state = LegacyState::AwaitDoneAck;
                (Characteristic::Control, 1)
            }
            _ => return None,
        };
        self.in_flight = true;
        Some(Transmit {
            characteristic,
            with_response: true,
            len,
        })
    }

    fn handle_write_result(&mut self, _now: Instant, result: Result<(), u8>) {
        self.in_flight = false;
        if let Err(code) = result {
            let e = match Reason::from_att_error(code) {
                Some(reason) => ClientError::Refused { opcode: 0, reason },
                None => ClientError::AttError(code),
            };
            return self.fail(e);
        }
        match self.state {
            LegacyState::SendPacketSize => self.state = LegacyState::SendRequest,
            LegacyState::Streaming => {
                self.acked = self.sent;
                self.emit(ClientEvent::Progress {
                    acked: self.acked,
                    total: self.total(),
                });
                if self.sent == self.total() {
                    self.state = LegacyState::SendDone;
                }
            }
            _ => {}
        }
    }

    fn handle_notification(&mut self, _now: Instant, data: &[u8]) {
        match (self.state, data) {
            (LegacyState::AwaitRequestAck, [legacy::REQUEST_ACK]) => {
                self.state = LegacyState::Streaming;
                self.emit(ClientEvent::Started {
                    offset: 0,
                    total: self.total(),
                    chunk_size: self.packet_size,
                    window: self.packet_size as u32,
                    compressed: false,
                    signed: false,
                });
            }
            (LegacyState::AwaitRequestAck, [legacy::REQUEST_NAK]) => {
                self.fail(ClientError::RequestNak)
            }
            (LegacyState::AwaitDoneAck, [legacy::DONE_ACK]) => {
                self.state = LegacyState::Done;
                self.emit(ClientEvent::Activated { slot: None });
                self.emit(ClientEvent::Rebooting);
            }
            (LegacyState::AwaitDoneAck, [legacy::DONE_NAK]) => self.fail(ClientError::DoneNak),
            // The control value echoes our own writes on some stacks; anything else is ignored
            // as the seed's client does.
            _ => {}
        }
    }

    fn handle_disconnected(&mut self) {
        match self.state {
            LegacyState::Done | LegacyState::Failed => {}
            LegacyState::AwaitDoneAck => self.fail(ClientError::DroppedAfterDone),
            _ => self.fail(ClientError::Disconnected),
        }
    }

    fn handle_timeout(&mut self, _now: Instant) {}

    fn poll_timeout(&self) -> Option<Instant> {
        None
    }

    fn is_finished(&self) -> bool {
        matches!(self.state, LegacyState::Done | LegacyState::Failed)
    }

    fn progress(&self) -> (u32, u32) {
        (self.acked, self.total())
    }
}

// ---------------------------------------------------------------------------------------------

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum FastState {
    SendManifest,
    AwaitManifest,
    SendBegin,
    AwaitBegin,
    Streaming,
    AwaitEnd,
    SendReboot,
    AwaitReboot,
    Done,
    Failed,
}

/// The fast protocol: windowed write commands, cumulative ACKs, rewinds, resume, END check.
#[derive(Debug)]
pub struct FastSender<'a> {
    image: &'a [u8],
    sha256: [u8; 32],
    /// The image as a raw deflate stream, sent instead of the image while the device takes it.
    stream: Option<(&'a [u8], fast::Stream)>,
    /// The image's signed manifest, written before each BEGIN (dropped for a device older
    /// than protocol v4, which cannot check it).
    manifest: Option<&'a [u8; MANIFEST_LEN]>,
    /// Manifest bytes the device holds.
    manifest_sent: u16,
    config: SenderConfig,
    state: FastState,
    chunk: u16,
    window: u32,
    acked: u32,
    next: u32,
    request_in_flight: bool,
    /// The command waiting for its answer, and until when.
    awaiting: Option<(u8, Instant)>,
    status_wanted: bool,
    /// END was sent right behind the last chunk, before its ACK (once per session).
    early_end_sent: bool,
    /// BEGIN asks the device to reboot by itself after END_OK (dropped for a v1 device).
    reboot_after_end: bool,
    last_progress: Instant,
    stalls: u8,
    rewinds: u32,
    events: Events,
}

impl<'a> FastSender<'a> {
    /// Prepares to send `image`; hashes it once.
    pub fn new(image: &'a [u8], config: SenderConfig) -> Result<Self, ClientError> {
        if image.is_empty() || image.len() > u32::MAX as usize {
            return Err(ClientError::BadImage(image.len()));
        }
        if let Some(mtu) = config.att_mtu
            && mtu < crate::protocol::fast::MIN_ATT_MTU
        {
            return Err(ClientError::MtuTooSmall { mtu });
        }
        Ok(FastSender {
            image,
            sha256: Sha256::digest(image).into(),
            stream: None,
            manifest: None,
            manifest_sent: 0,
            config,
            state: FastState::SendBegin,
            chunk: 1,
            window: 0,
            acked: 0,
            next: 0,
            request_in_flight: false,
            awaiting: None,
            status_wanted: false,
            early_end_sent: false,
            reboot_after_end: config.reboot,
            last_progress: Instant(0),
            stalls: 0,
            rewinds: 0,
            events: Deque::new(),
        })
    }

    /// Sends the image as `stream`, its raw deflate (RFC 1951) compression, to a device that
    /// takes compressed images (protocol v3); a device that does not gets the image as it is.
    /// The device checks that the stream inflates to the image (its size and SHA-256).
    /// With a known ATT MTU too small for the longer BEGIN (below 49), the image goes as it
    /// is.
    pub fn with_stream(mut self, stream: &'a [u8]) -> Result<Self, ClientError> {
        if stream.is_empty() || stream.len() > u32::MAX as usize {
            return Err(ClientError::BadImage(stream.len()));
        }
        let fits = self
            .config
            .att_mtu
            .is_none_or(|mtu| max_value_len(mtu) >= fast::BEGIN_COMPRESSED_LEN);
        if fits {
            self.stream = Some((stream, fast::Stream::of(stream)));
        }
        Ok(self)
    }

    /// Sends `manifest` ([`crate::manifest`]) before BEGIN, so that a device that trusts the
    /// key which signed it takes the image. A device older than protocol v4 refuses MANIFEST
    /// as an unknown command; the image then goes unsigned, as such a device checks no
    /// signature ([`is_signed`](Self::is_signed) turns false).
    pub fn with_manifest(mut self, manifest: &'a [u8; MANIFEST_LEN]) -> Self {
        self.manifest = Some(manifest);
        self.state = FastState::SendManifest;
        self
    }

    /// Returns true while the image goes with its signed manifest.
    pub fn is_signed(&self) -> bool {
        self.manifest.is_some()
    }

    /// Returns true while the image goes as a compressed stream (false once a device refused
    /// it).
    pub fn is_compressed(&self) -> bool {
        self.stream.is_some()
    }

    /// Returns the image's size.
    pub fn image_len(&self) -> u32 {
        self.image.len() as u32
    }

    /// Returns the image's SHA-256 (the session's identity).
    pub fn sha256(&self) -> &[u8; 32] {
        &self.sha256
    }

    /// Returns how many times the device reported a gap.
    pub fn rewinds(&self) -> u32 {
        self.rewinds
    }

    /// The bytes the chunks carry: the stream, or the image.
    fn wire(&self) -> &'a [u8] {
        self.stream.map_or(self.image, |(s, _)| s)
    }

    /// Bytes on the wire, which offsets, ACKs and progress count.
    fn total(&self) -> u32 {
        self.wire().len() as u32
    }

    fn emit(&mut self, e: ClientEvent) {
        push(&mut self.events, e);
    }

    fn fail(&mut self, e: ClientError) {
        self.state = FastState::Failed;
        self.emit(ClientEvent::Failed(e));
    }

    fn control(&mut self, cmd: Command, now: Instant, buf: &mut [u8]) -> Option<Transmit> {
        let len = cmd.encode(buf).ok()?;
        self.request_in_flight = true;
        if cmd != Command::Status {
            self.awaiting = Some((cmd.opcode(), now.after_ms(self.config.answer_timeout_ms)));
        }
        Some(Transmit {
            characteristic: Characteristic::Control,
            with_response: true,
            len,
        })
    }

    fn poll_transmit(&mut self, now: Instant, buf: &mut [u8]) -> Option<Transmit> {
        if !self.request_in_flight {
            match self.state {
                FastState::SendManifest => return self.manifest_part(now, buf),
                FastState::SendBegin => {
                    self.state = FastState::AwaitBegin;
                    let mut flags = 0;
                    if self.reboot_after_end {
                        flags |= fast::begin_flags::REBOOT_AFTER_END;
                    }
                    if self.manifest.is_some() {
                        flags |= fast::begin_flags::SIGNED_MANIFEST;
                    }
                    let cmd = Command::Begin {
                        size: self.image_len(),
                        sha256: self.sha256,
                        flags,
                        stream: self.stream.map(|(_, s)| s),
                    };
                    return self.control(cmd, now, buf);
                }
                FastState::SendReboot => {
                    self.state = FastState::AwaitReboot;
                    return self.control(Command::Reboot, now, buf);
                }
                FastState::Streaming if self.status_wanted => {
                    self.status_wanted = false;
                    return self.control(Command::Status, now, buf);
                }
                // END follows the last chunk at once: the device handles writes in order, so
                // it sees END after every chunk, and the final ACK's round trip is saved. If a
                // chunk was lost, END is refused as Incomplete and the stream resumes.
                FastState::Streaming
                    if self.acked == self.total()
                        || (self.next >= self.total() && !self.early_end_sent) =>
                {
                    self.early_end_sent = true;
                    self.state = FastState::AwaitEnd;
                    return self.control(Command::End, now, buf);
                }
                _ => {}
            }
        }
        if self.state != FastState::Streaming
            || self.next >= self.total()
            || self.next - self.acked >= self.window
        {
            return None;
        }
        let room = (self.window - (self.next - self.acked)) as usize;
        let n = (self.total() - self.next).min(self.chunk as u32) as usize;
        let n = n
            .min(room)
            .min(buf.len().saturating_sub(fast::CHUNK_HEADER_LEN));
        if n == 0 {
            return None;
        }
        let start = self.next as usize;
        buf[..fast::CHUNK_HEADER_LEN].copy_from_slice(&fast::encode_chunk_header(self.next));
        buf[fast::CHUNK_HEADER_LEN..fast::CHUNK_HEADER_LEN + n]
            .copy_from_slice(&self.wire()[start..start + n]);
        if self.next == self.acked {
            // The stall clock runs from the moment data is outstanding.
            self.last_progress = now;
        }
        self.next += n as u32;
        Some(Transmit {
            characteristic: Characteristic::Data,
            with_response: false,
            len: fast::CHUNK_HEADER_LEN + n,
        })
    }

    /// The next MANIFEST command: as much of the manifest as one write request carries (at
    /// the smallest MTU the fast protocol works with when the MTU is unknown).
    fn manifest_part(&mut self, now: Instant, buf: &mut [u8]) -> Option<Transmit> {
        let manifest = self.manifest?;
        let value = max_value_len(self.config.att_mtu.unwrap_or(fast::MIN_ATT_MTU));
        let room = value
            .min(buf.len())
            .saturating_sub(fast::MANIFEST_PART_HEADER_LEN);
        let from = self.manifest_sent as usize;
        let part = &manifest[from..(from + room).min(MANIFEST_LEN)];
        let len = fast::encode_manifest_part(self.manifest_sent, part, buf).ok()?;
        self.state = FastState::AwaitManifest;
        self.request_in_flight = true;
        self.awaiting = Some((
            fast::op::MANIFEST,
            now.after_ms(self.config.answer_timeout_ms),
        ));
        Some(Transmit {
            characteristic: Characteristic::Control,
            with_response: true,
            len,
        })
    }

    fn handle_write_result(&mut self, _now: Instant, result: Result<(), u8>) {
        self.request_in_flight = false;
        if let Err(code) = result {
            let e = match Reason::from_att_error(code) {
                Some(reason) => ClientError::Refused { opcode: 0, reason },
                None => ClientError::AttError(code),
            };
            self.fail(e);
        }
    }

    fn handle_notification(&mut self, now: Instant, data: &[u8]) {
        if self.is_finished() {
            return;
        }
        let resp = match Response::decode(data) {
            Ok(r) => r,
            // INFO cut by the MTU, or a legacy byte echoed: not for us.
            Err(_) if data.len() <= 1 || fast::is_cut_info(data) => return,
            Err(e) => return self.fail(ClientError::Protocol(e)),
        };
        match resp {
            Response::ManifestOk { received } if self.state == FastState::AwaitManifest => {
                if received as usize == MANIFEST_LEN {
                    self.state = FastState::SendBegin;
                } else if received > self.manifest_sent && (received as usize) < MANIFEST_LEN {
                    self.manifest_sent = received;
                    self.state = FastState::SendManifest;
                } else {
                    self.fail(ClientError::Protocol(DecodeError::BadField(
                        fast::op::RESPONSE_FLAG | fast::op::MANIFEST,
                    )));
                }
            }
            Response::Error {
                opcode: fast::op::MANIFEST,
                reason: Reason::UnknownCommand,
                ..
            } if self.state == FastState::AwaitManifest => {
                // A device older than protocol v4 checks no signature: send the image as it is.
                self.manifest = None;
                self.state = FastState::SendBegin;
            }
            Response::BeginOk {
                resume_offset,
                chunk_size,
                window,
                ..
            } if self.state == FastState::AwaitBegin => {
                let own = self
                    .config
                    .att_mtu
                    .map(|m| max_value_len(m).saturating_sub(fast::CHUNK_HEADER_LEN) as u16)
                    .unwrap_or(u16::MAX);
                self.chunk = chunk_size
                    .min(own)
                    .min((MAX_ATTRIBUTE_LEN - fast::CHUNK_HEADER_LEN) as u16)
                    .max(1);
                self.window = window.max(self.chunk as u32);
                self.acked = resume_offset.min(self.total());
                self.next = self.acked;
                self.last_progress = now;
                self.stalls = 0;
                self.state = FastState::Streaming;
                self.emit(ClientEvent::Started {
                    offset: self.acked,
                    total: self.total(),
                    chunk_size: self.chunk,
                    window: self.window,
                    compressed: self.stream.is_some(),
                    signed: self.manifest.is_some(),
                });
            }
            Response::Ack { next }
                if matches!(self.state, FastState::Streaming | FastState::AwaitEnd) =>
            {
                if next > self.acked && next <= self.total() {
                    self.acked = next;
                    self.next = self.next.max(next);
                    self.last_progress = now;
                    self.stalls = 0;
                    self.emit(ClientEvent::Progress {
                        acked: next,
                        total: self.total(),
                    });
                } else if next == self.acked && self.status_pending_reply() {
                    // STATUS answered with no progress: resend everything after it.
                    self.next = next;
                }
            }
            Response::Rewind { next }
                if self.state == FastState::Streaming
                    && next >= self.acked
                    && next <= self.total() =>
            {
                self.rewinds += 1;
                self.acked = next;
                self.next = next;
                self.last_progress = now;
                self.emit(ClientEvent::Progress {
                    acked: next,
                    total: self.total(),
                });
            }
            Response::EndOk { slot } if self.state == FastState::AwaitEnd => {
                self.emit(ClientEvent::Activated { slot: Some(slot) });
                if self.reboot_after_end {
                    // The device reboots by itself after END_OK.
                    self.state = FastState::Done;
                    self.emit(ClientEvent::Rebooting);
                } else if self.config.reboot {
                    self.state = FastState::SendReboot;
                } else {
                    self.state = FastState::Done;
                }
            }
            Response::Error {
                opcode: fast::op::BEGIN,
                reason: Reason::Unsupported | Reason::BadLength,
                ..
            } if self.state == FastState::AwaitBegin && self.stream.is_some() => {
                // A device without compressed images (protocol v2 and older refuse the longer
                // BEGIN): begin again with the image as it is.
                self.stream = None;
                self.state = FastState::SendBegin;
            }
            Response::Error {
                opcode: fast::op::BEGIN,
                reason: Reason::Unsupported,
                ..
            } if self.state == FastState::AwaitBegin && self.reboot_after_end => {
                // A protocol v1 device: begin again without the flag, REBOOT after END.
                self.reboot_after_end = false;
                self.state = FastState::SendBegin;
            }
            Response::RebootOk if self.state == FastState::AwaitReboot => {
                self.state = FastState::Done;
                self.emit(ClientEvent::Rebooting);
            }
            Response::Error {
                opcode: fast::op::END,
                reason: Reason::Incomplete,
                ..
            } if self.state == FastState::AwaitEnd && self.acked < self.total() => {
                // END went out behind a chunk that was lost: resend from the last ACK.
                self.state = FastState::Streaming;
                self.next = self.acked;
                self.last_progress = now;
            }
            Response::Error { opcode, reason, .. } => {
                if opcode == 0 && reason == Reason::BadOffset {
                    // A stale chunk from before a rewind: harmless.
                    return;
                }
                self.fail(ClientError::Refused { opcode, reason });
            }
            // Late or duplicate answers (an ACK after END, a second BEGIN_OK) change nothing.
            _ => {}
        }
    }

    fn status_pending_reply(&self) -> bool {
        self.stalls > 0
    }

    fn handle_disconnected(&mut self) {
        self.request_in_flight = false;
        self.status_wanted = false;
        self.awaiting = None;
        match self.state {
            FastState::Done | FastState::Failed => {}
            // The device had answered END; the reboot may be what dropped the link.
            FastState::AwaitReboot => {
                self.state = FastState::Done;
                self.emit(ClientEvent::Rebooting);
            }
            // Resume: BEGIN again on the next connection (the device forgot the manifest).
            _ => {
                self.manifest_sent = 0;
                self.state = if self.manifest.is_some() {
                    FastState::SendManifest
                } else {
                    FastState::SendBegin
                };
            }
        }
    }

    fn handle_timeout(&mut self, now: Instant) {
        let awaiting = matches!(
            self.state,
            FastState::AwaitManifest
                | FastState::AwaitBegin
                | FastState::AwaitEnd
                | FastState::AwaitReboot
        );
        if let (true, Some((opcode, deadline))) = (awaiting, self.awaiting)
            && now >= deadline
        {
            self.awaiting = None;
            if self.state == FastState::AwaitReboot {
                // The image is selected already; a device may reset before it answers.
                self.state = FastState::Done;
                return self.emit(ClientEvent::Rebooting);
            }
            return self.fail(ClientError::NoAnswer { opcode });
        }
        if self.state != FastState::Streaming
            || self.acked == self.total() && self.next == self.acked
        {
            return;
        }
        if now.since(self.last_progress) >= self.config.stall_timeout_ms as u64 {
            self.stalls += 1;
            if self.stalls > self.config.max_stalls {
                return self.fail(ClientError::Stalled);
            }
            self.status_wanted = true;
            self.last_progress = now;
        }
    }

    fn poll_timeout(&self) -> Option<Instant> {
        let stall = (self.state == FastState::Streaming && self.next > self.acked)
            .then(|| self.last_progress.after_ms(self.config.stall_timeout_ms));
        let answer = matches!(
            self.state,
            FastState::AwaitManifest
                | FastState::AwaitBegin
                | FastState::AwaitEnd
                | FastState::AwaitReboot
        )
        .then_some(self.awaiting.map(|(_, d)| d))
        .flatten();
        [stall, answer].into_iter().flatten().min()
    }

    fn is_finished(&self) -> bool {
        matches!(self.state, FastState::Done | FastState::Failed)
    }

    fn progress(&self) -> (u32, u32) {
        (self.acked, self.total())
    }
}
