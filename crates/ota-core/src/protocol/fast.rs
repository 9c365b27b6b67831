//! The fast protocol: offset-tagged write-without-response chunks, a device-announced window,
//! cumulative acknowledgements, rewinds on gaps, resume by image hash, and verification before
//! the slot is selected. Opcodes avoid the seed's 0-6 so both protocols share OTA Control.
//!
//! Every multi-byte field is little-endian. `docs/protocol.md` has the tables and diagrams.

use super::Reason;

/// Version of the fast protocol reported by INFO.
pub const PROTOCOL_VERSION: u8 = 4;
/// Bytes of the offset that prefixes each data chunk.
pub const CHUNK_HEADER_LEN: usize = 4;
/// Length of an ACK (and of a REWIND): opcode and `next: u32`.
pub const ACK_LEN: usize = 1 + 4;
/// Length of a BEGIN command.
pub const BEGIN_LEN: usize = 1 + 4 + 32 + 1;
/// Length of a BEGIN for a compressed image: the stream's length and CRC-32 follow.
pub const BEGIN_COMPRESSED_LEN: usize = BEGIN_LEN + 4 + 4;
/// The smallest ATT MTU whose write carries BEGIN (`BEGIN_LEN` + 3 bytes of ATT header): below
/// it only the legacy protocol works.
pub const MIN_ATT_MTU: u16 = BEGIN_LEN as u16 + 3;

/// Command opcodes, written to OTA Control.
pub mod op {
    /// Ask for [`Info`](super::Info).
    pub const INFO: u8 = 0x10;
    /// Start or resume an update.
    pub const BEGIN: u8 = 0x11;
    /// All bytes sent: verify and select the new slot.
    pub const END: u8 = 0x12;
    /// Reboot into the selected slot.
    pub const REBOOT: u8 = 0x13;
    /// Make the running trial image permanent.
    pub const CONFIRM: u8 = 0x14;
    /// Discard the session.
    pub const ABORT: u8 = 0x15;
    /// Ask for an [`Ack`](super::Response::Ack) of the next expected offset.
    pub const STATUS: u8 = 0x16;
    /// A part of a signed manifest, before BEGIN (protocol v4): `[offset: u16][bytes]`
    /// ([`super::encode_manifest_part`]).
    pub const MANIFEST: u8 = 0x17;
    /// A command's success response is `RESPONSE_FLAG | opcode`.
    pub const RESPONSE_FLAG: u8 = 0x80;
    /// Notification: next expected offset.
    pub const ACK: u8 = 0xA0;
    /// Notification: a gap was seen; resend from the offset.
    pub const REWIND: u8 = 0xA1;
    /// Notification: a command or write was refused.
    pub const ERROR: u8 = 0xEE;
}

/// BEGIN flag bits; a device refuses bits it does not know.
pub mod begin_flags {
    /// The image comes as a raw deflate stream (RFC 1951; protocol v3): BEGIN then also
    /// carries the stream's length and CRC-32 ([`super::Stream`]), and chunk, ACK and REWIND
    /// offsets count stream bytes. A v2 device refuses the longer BEGIN (`BadLength`); the
    /// client then sends the image as it is.
    pub const COMPRESSED: u8 = 0x01;
    /// The image is signed (protocol v4): the client wrote its signed manifest
    /// ([`crate::manifest`]) with MANIFEST commands before this BEGIN, and a device that trusts
    /// a key verifies it before it erases or writes a byte.
    pub const SIGNED_MANIFEST: u8 = 0x02;
    /// Reboot into the new image once END_OK went out (protocol v2): the client saves the
    /// REBOOT round trip, as the seed's DONE does. A v1 device refuses it (`Unsupported`);
    /// the client then begins again without it.
    pub const REBOOT_AFTER_END: u8 = 0x04;
    /// Bits this version understands.
    pub const KNOWN: u8 = REBOOT_AFTER_END | COMPRESSED | SIGNED_MANIFEST;
}

/// A command the client writes to OTA Control.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum Command {
    /// INFO.
    Info,
    /// BEGIN: the image's size and SHA-256 (and for a compressed image its stream) identify
    /// the session.
    Begin {
        /// Image length in bytes.
        size: u32,
        /// SHA-256 of the whole image.
        sha256: [u8; 32],
        /// [`begin_flags`].
        flags: u8,
        /// The compressed stream; present exactly when `flags` has
        /// [`begin_flags::COMPRESSED`].
        stream: Option<Stream>,
    },
    /// END.
    End,
    /// REBOOT.
    Reboot,
    /// CONFIRM.
    Confirm,
    /// ABORT.
    Abort,
    /// STATUS.
    Status,
}

/// Why bytes could not be decoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum DecodeError {
    /// Empty input.
    #[error("empty message")]
    Empty,
    /// Unknown opcode.
    #[error("unknown opcode {0:#04x}")]
    UnknownOpcode(u8),
    /// Wrong length for the opcode.
    #[error("bad length {len} for opcode {opcode:#04x}")]
    BadLength {
        /// The opcode.
        opcode: u8,
        /// The length received.
        len: usize,
    },
    /// A field holds an impossible value.
    #[error("bad field in opcode {0:#04x}")]
    BadField(u8),
}

impl DecodeError {
    /// Returns the refusal reason a device reports for this error.
    pub fn reason(self) -> Reason {
        match self {
            DecodeError::Empty | DecodeError::BadLength { .. } | DecodeError::BadField(_) => {
                Reason::BadLength
            }
            DecodeError::UnknownOpcode(_) => Reason::UnknownCommand,
        }
    }
}

/// Why bytes could not be encoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("output buffer too small: {needed} bytes needed")]
pub struct BufferTooSmall {
    /// Bytes the message needs.
    pub needed: usize,
}

impl Command {
    /// Returns the opcode.
    pub fn opcode(&self) -> u8 {
        match self {
            Command::Info => op::INFO,
            Command::Begin { .. } => op::BEGIN,
            Command::End => op::END,
            Command::Reboot => op::REBOOT,
            Command::Confirm => op::CONFIRM,
            Command::Abort => op::ABORT,
            Command::Status => op::STATUS,
        }
    }

    /// Decodes a command; trailing bytes are an error.
    pub fn decode(bytes: &[u8]) -> Result<Command, DecodeError> {
        let (&opcode, rest) = bytes.split_first().ok_or(DecodeError::Empty)?;
        let bare = |cmd| {
            if rest.is_empty() {
                Ok(cmd)
            } else {
                Err(DecodeError::BadLength {
                    opcode,
                    len: bytes.len(),
                })
            }
        };
        match opcode {
            op::INFO => bare(Command::Info),
            op::END => bare(Command::End),
            op::REBOOT => bare(Command::Reboot),
            op::CONFIRM => bare(Command::Confirm),
            op::ABORT => bare(Command::Abort),
            op::STATUS => bare(Command::Status),
            op::BEGIN => {
                let bad = || DecodeError::BadLength {
                    opcode,
                    len: bytes.len(),
                };
                if bytes.len() != BEGIN_LEN && bytes.len() != BEGIN_COMPRESSED_LEN {
                    return Err(bad());
                }
                let mut r = Reader(rest);
                let (size, sha256, flags) = (r.u32(), r.array(), r.u8());
                let compressed = flags & begin_flags::COMPRESSED != 0;
                if compressed != (bytes.len() == BEGIN_COMPRESSED_LEN) {
                    return Err(bad());
                }
                let stream = compressed.then(|| Stream {
                    len: r.u32(),
                    crc32: r.u32(),
                });
                Ok(Command::Begin {
                    size,
                    sha256,
                    flags,
                    stream,
                })
            }
            other => Err(DecodeError::UnknownOpcode(other)),
        }
    }

    /// Encodes into `out`, returning the length.
    pub fn encode(&self, out: &mut [u8]) -> Result<usize, BufferTooSmall> {
        let mut w = Writer::new(out);
        w.u8(self.opcode());
        if let Command::Begin {
            size,
            sha256,
            flags,
            stream,
        } = self
        {
            w.u32(*size);
            w.bytes(sha256);
            match stream {
                Some(s) => {
                    w.u8(*flags | begin_flags::COMPRESSED);
                    w.u32(s.len);
                    w.u32(s.crc32);
                }
                None => w.u8(*flags & !begin_flags::COMPRESSED),
            }
        }
        w.finish()
    }
}

/// A compressed image as BEGIN announces it: a raw deflate stream (RFC 1951, no zlib or gzip
/// wrapper) that inflates to the image.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct Stream {
    /// Stream length in bytes: what the chunks carry.
    pub len: u32,
    /// CRC-32 (ISO-HDLC, as zlib's `crc32`) of the stream: with the image's size and SHA-256
    /// it identifies the session, so a resume continues the same stream.
    pub crc32: u32,
}

impl Stream {
    /// Describes `stream`.
    pub fn of(stream: &[u8]) -> Stream {
        Stream {
            len: stream.len() as u32,
            crc32: crc::Crc::<u32>::new(&crc::CRC_32_ISO_HDLC).checksum(stream),
        }
    }
}

/// Features a device announces in INFO (protocol v3).
pub mod features {
    /// BEGIN with [`super::begin_flags::COMPRESSED`]: raw deflate streams.
    pub const COMPRESSED: u8 = 0x01;
    /// The device trusts signing keys (INFO lists their fingerprints) and takes only signed
    /// images (protocol v4).
    pub const SIGNATURES_REQUIRED: u8 = 0x02;
    /// With [`SIGNATURES_REQUIRED`]: the firmware was built to take the seed's protocol
    /// unsigned all the same.
    pub const UNSIGNED_LEGACY: u8 = 0x04;
}

/// Bytes of a MANIFEST command before the part: opcode and `offset: u16`.
pub const MANIFEST_PART_HEADER_LEN: usize = 3;

/// Encodes a MANIFEST command carrying `part`, the manifest's bytes from `offset`.
pub fn encode_manifest_part(
    offset: u16,
    part: &[u8],
    out: &mut [u8],
) -> Result<usize, BufferTooSmall> {
    let mut w = Writer::new(out);
    w.u8(op::MANIFEST);
    w.u16(offset);
    w.bytes(part);
    w.finish()
}

/// Splits a MANIFEST command into its offset and part (at least one byte).
pub fn decode_manifest_part(bytes: &[u8]) -> Result<(u16, &[u8]), DecodeError> {
    match bytes {
        [op::MANIFEST, lo, hi, part @ ..] if !part.is_empty() => {
            Ok((u16::from_le_bytes([*lo, *hi]), part))
        }
        [op::MANIFEST, ..] => Err(DecodeError::BadLength {
            opcode: op::MANIFEST,
            len: bytes.len(),
        }),
        [other, ..] => Err(DecodeError::UnknownOpcode(*other)),
        [] => Err(DecodeError::Empty),
    }
}

/// The head of a data chunk written to OTA Data: `[offset: u32][bytes]`.
pub fn encode_chunk_header(offset: u32) -> [u8; CHUNK_HEADER_LEN] {
    offset.to_le_bytes()
}

/// Splits a data write into its offset and payload.
pub fn decode_chunk(bytes: &[u8]) -> Result<(u32, &[u8]), DecodeError> {
    if bytes.len() <= CHUNK_HEADER_LEN {
        return Err(DecodeError::BadLength {
            opcode: 0,
            len: bytes.len(),
        });
    }
    let (head, payload) = bytes.split_at(CHUNK_HEADER_LEN);
    Ok((
        u32::from_le_bytes([head[0], head[1], head[2], head[3]]),
        payload,
    ))
}

/// An OTA slot as INFO reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct SlotInfo {
    /// `n` for `ota_n`; [`SLOT_FACTORY`] for factory.
    pub slot: u8,
    /// [`SlotStateCode`].
    pub state: SlotStateCode,
    /// This slot runs now.
    pub running: bool,
    /// The bootloader picks this slot at the next boot.
    pub boot: bool,
}

/// Slot number INFO uses for the factory app.
pub const SLOT_FACTORY: u8 = 0xFF;
/// Slot number INFO uses for an app partition that is neither factory nor OTA.
pub const SLOT_OTHER: u8 = 0xFE;

/// A slot number of INFO as people name it: `factory`, `other` or `ota_N`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SlotName(pub u8);

impl core::fmt::Display for SlotName {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self.0 {
            SLOT_FACTORY => f.write_str("factory"),
            SLOT_OTHER => f.write_str("other"),
            n => write!(f, "ota_{n}"),
        }
    }
}

/// A slot's otadata state, compressed to one byte.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
#[repr(u8)]
pub enum SlotStateCode {
    /// NEW: selected, not yet booted.
    New = 0,
    /// PENDING_VERIFY: on trial.
    PendingVerify = 1,
    /// VALID: confirmed.
    Valid = 2,
    /// INVALID.
    Invalid = 3,
    /// ABORTED: a trial that was not confirmed.
    Aborted = 4,
    /// UNDEFINED: selected without rollback support.
    Undefined = 5,
    /// No otadata entry names this slot.
    Unused = 6,
}

impl SlotStateCode {
    /// Returns the code for a wire byte.
    pub fn from_u8(v: u8) -> Option<Self> {
        Some(match v {
            0 => Self::New,
            1 => Self::PendingVerify,
            2 => Self::Valid,
            3 => Self::Invalid,
            4 => Self::Aborted,
            5 => Self::Undefined,
            6 => Self::Unused,
            _ => return None,
        })
    }
    /// Returns the code for an otadata state (`None`: no entry).
    pub fn from_state(state: Option<crate::esp::OtaImgState>) -> Self {
        use crate::esp::OtaImgState as S;
        match state {
            None => Self::Unused,
            Some(S::New) => Self::New,
            Some(S::PendingVerify) => Self::PendingVerify,
            Some(S::Valid) => Self::Valid,
            Some(S::Invalid) => Self::Invalid,
            Some(S::Aborted) => Self::Aborted,
            Some(S::Undefined) | Some(S::Other(_)) => Self::Undefined,
        }
    }
    /// Returns a short lower-case name.
    pub fn name(self) -> &'static str {
        match self {
            Self::New => "new",
            Self::PendingVerify => "pending-verify",
            Self::Valid => "valid",
            Self::Invalid => "invalid",
            Self::Aborted => "aborted",
            Self::Undefined => "undefined",
            Self::Unused => "unused",
        }
    }
}

/// A session the device can resume.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct Resumable {
    /// Image size from BEGIN.
    pub size: u32,
    /// Image SHA-256 from BEGIN.
    pub sha256: [u8; 32],
    /// Next expected offset.
    pub offset: u32,
}

/// A NUL-free string of at most 32 bytes (app name and version from `esp_app_desc_t`).
pub type Str32 = heapless::String<32>;

/// INFO's answer: what a client needs before an update.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Info {
    /// [`PROTOCOL_VERSION`].
    pub protocol_version: u8,
    /// The device's chip id (image-header numbering).
    pub chip_id: u16,
    /// The running slot ([`SLOT_FACTORY`], [`SLOT_OTHER`] or `n`).
    pub running_slot: u8,
    /// Running app's project name.
    pub app_name: Str32,
    /// Running app's version.
    pub app_version: Str32,
    /// Largest image the update slot takes.
    pub max_image_size: u32,
    /// Payload bytes per data chunk (after the 4-byte offset).
    pub chunk_size: u16,
    /// Bytes the client may send beyond the last acknowledged offset.
    pub window: u32,
    /// Every OTA slot (and factory, when present).
    pub slots: heapless::Vec<SlotInfo, 17>,
    /// A session that BEGIN with the same size and hash resumes.
    pub resumable: Option<Resumable>,
    /// [`features`] bits (protocol v3; 0 from an older device).
    pub features: u8,
    /// Fingerprints of the keys the device trusts (protocol v4; empty from an older device).
    pub trusted_keys:
        heapless::Vec<crate::manifest::Fingerprint, { crate::manifest::MAX_TRUSTED_KEYS }>,
}

/// A notification the device sends on OTA Control (also the value a read returns).
// `no_std` without an allocator: INFO stays inline.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Response {
    /// Answer to INFO.
    Info(Info),
    /// BEGIN accepted.
    BeginOk {
        /// Offset to continue from (0 for a new session).
        resume_offset: u32,
        /// Payload bytes per chunk.
        chunk_size: u16,
        /// Bytes allowed in flight beyond the acknowledged offset.
        window: u32,
        /// The slot being written.
        slot: u8,
    },
    /// END: the image verified and its slot is selected for the next boot.
    EndOk {
        /// The selected slot.
        slot: u8,
    },
    /// REBOOT accepted; the device reboots now.
    RebootOk,
    /// CONFIRM done: the running image is now VALID.
    ConfirmOk,
    /// ABORT done.
    AbortOk,
    /// A MANIFEST part was taken: the device holds `received` bytes of the manifest.
    ManifestOk {
        /// Manifest bytes held.
        received: u16,
    },
    /// Every byte before `next` is written.
    Ack {
        /// Next expected offset.
        next: u32,
    },
    /// A chunk arrived beyond `next`: resend from there.
    Rewind {
        /// Next expected offset.
        next: u32,
    },
    /// A command (`opcode`) or a data write (`opcode` 0) was refused.
    Error {
        /// The refused command's opcode, 0 for data.
        opcode: u8,
        /// Why.
        reason: Reason,
        /// Reason-specific detail (e.g. the expected offset, the slot size).
        detail: u32,
    },
}

/// Returns true if `bytes` is an INFO answer cut short by a small ATT MTU: the whole value is
/// on OTA Control, for a read.
pub fn is_cut_info(bytes: &[u8]) -> bool {
    bytes.first() == Some(&(op::RESPONSE_FLAG | op::INFO)) && Response::decode(bytes).is_err()
}

impl Response {
    /// Returns true if this response answers a command with `opcode`: an ERROR that names it,
    /// an ACK for STATUS, or any OK. REWIND and unsolicited ACKs answer nothing.
    pub fn answers(&self, opcode: u8) -> bool {
        match self {
            Response::Error { opcode: o, .. } => *o == opcode,
            Response::Ack { .. } => opcode == op::STATUS,
            Response::Rewind { .. } => false,
            _ => true,
        }
    }

    /// Largest encoded response (an INFO with 17 slots and a resumable session).
    pub const MAX_LEN: usize =
        3 + 1 + 2 + 1 + 33 + 33 + 4 + 2 + 4 + 1 + 17 * 3 + 1 + 40 + 1 + 1 + 4 * 8;

    /// Encodes into `out`, returning the length.
    pub fn encode(&self, out: &mut [u8]) -> Result<usize, BufferTooSmall> {
        let mut w = Writer::new(out);
        match self {
            Response::Info(info) => {
                w.u8(op::RESPONSE_FLAG | op::INFO);
                w.u16(0); // total length, patched below
                w.u8(info.protocol_version);
                w.u16(info.chip_id);
                w.u8(info.running_slot);
                w.str(&info.app_name);
                w.str(&info.app_version);
                w.u32(info.max_image_size);
                w.u16(info.chunk_size);
                w.u32(info.window);
                w.u8(info.slots.len() as u8);
                for s in &info.slots {
                    w.u8(s.slot);
                    w.u8(s.state as u8);
                    w.u8(s.running as u8 | (s.boot as u8) << 1);
                }
                match &info.resumable {
                    Some(r) => {
                        w.u8(1);
                        w.u32(r.size);
                        w.bytes(&r.sha256);
                        w.u32(r.offset);
                    }
                    None => w.u8(0),
                }
                w.u8(info.features);
                w.u8(info.trusted_keys.len() as u8);
                for fp in &info.trusted_keys {
                    w.bytes(fp);
                }
                let len = w.pos;
                w.patch_u16(1, len as u16);
            }
            Response::BeginOk {
                resume_offset,
                chunk_size,
                window,
                slot,
            } => {
                w.u8(op::RESPONSE_FLAG | op::BEGIN);
                w.u32(*resume_offset);
                w.u16(*chunk_size);
                w.u32(*window);
                w.u8(*slot);
            }
            Response::EndOk { slot } => {
                w.u8(op::RESPONSE_FLAG | op::END);
                w.u8(*slot);
            }
            Response::RebootOk => w.u8(op::RESPONSE_FLAG | op::REBOOT),
            Response::ConfirmOk => w.u8(op::RESPONSE_FLAG | op::CONFIRM),
            Response::AbortOk => w.u8(op::RESPONSE_FLAG | op::ABORT),
            Response::ManifestOk { received } => {
                w.u8(op::RESPONSE_FLAG | op::MANIFEST);
                w.u16(*received);
            }
            Response::Ack { next } => {
                w.u8(op::ACK);
                w.u32(*next);
            }
            Response::Rewind { next } => {
                w.u8(op::REWIND);
                w.u32(*next);
            }
            Response::Error {
                opcode,
                reason,
                detail,
            } => {
                w.u8(op::ERROR);
                w.u8(*opcode);
                w.u8(reason.code());
                w.u32(*detail);
            }
        }
        w.finish()
    }

    /// Decodes a response; trailing bytes are an error. An INFO cut short by a small ATT MTU
    /// fails with `BadLength`: read OTA Control to get it whole.
    pub fn decode(bytes: &[u8]) -> Result<Response, DecodeError> {
        let (&opcode, rest) = bytes.split_first().ok_or(DecodeError::Empty)?;
        let bad_len = DecodeError::BadLength {
            opcode,
            len: bytes.len(),
        };
        let exact = |n: usize| {
            if rest.len() == n {
                Ok(())
            } else {
                Err(bad_len)
            }
        };
        let mut r = Reader(rest);
        let resp = match opcode {
            x if x == op::RESPONSE_FLAG | op::INFO => {
                if rest.len() < 2 || u16::from_le_bytes([rest[0], rest[1]]) as usize != bytes.len()
                {
                    return Err(bad_len);
                }
                return decode_info(&rest[2..]).ok_or(DecodeError::BadField(opcode));
            }
            x if x == op::RESPONSE_FLAG | op::BEGIN => {
                exact(11)?;
                Response::BeginOk {
                    resume_offset: r.u32(),
                    chunk_size: r.u16(),
                    window: r.u32(),
                    slot: r.u8(),
                }
            }
            x if x == op::RESPONSE_FLAG | op::END => {
                exact(1)?;
                Response::EndOk { slot: r.u8() }
            }
            x if x == op::RESPONSE_FLAG | op::REBOOT => {
                exact(0)?;
                Response::RebootOk
            }
            x if x == op::RESPONSE_FLAG | op::CONFIRM => {
                exact(0)?;
                Response::ConfirmOk
            }
            x if x == op::RESPONSE_FLAG | op::ABORT => {
                exact(0)?;
                Response::AbortOk
            }
            x if x == op::RESPONSE_FLAG | op::MANIFEST => {
                exact(2)?;
                Response::ManifestOk { received: r.u16() }
            }
            op::ACK => {
                exact(4)?;
                Response::Ack { next: r.u32() }
            }
            op::REWIND => {
                exact(4)?;
                Response::Rewind { next: r.u32() }
            }
            op::ERROR => {
                exact(6)?;
                let opcode = r.u8();
                let reason = Reason::from_code(r.u8()).ok_or(DecodeError::BadField(op::ERROR))?;
                Response::Error {
                    opcode,
                    reason,
                    detail: r.u32(),
                }
            }
            other => return Err(DecodeError::UnknownOpcode(other)),
        };
        Ok(resp)
    }
}

fn decode_info(b: &[u8]) -> Option<Response> {
    let mut r = Checked(b);
    let protocol_version = r.u8()?;
    let chip_id = r.u16()?;
    let running_slot = r.u8()?;
    let app_name = r.str()?;
    let app_version = r.str()?;
    let max_image_size = r.u32()?;
    let chunk_size = r.u16()?;
    let window = r.u32()?;
    let n = r.u8()?;
    let mut slots = heapless::Vec::new();
    for _ in 0..n {
        let slot = r.u8()?;
        let state = SlotStateCode::from_u8(r.u8()?)?;
        let flags = r.u8()?;
        if flags & !0b11 != 0 {
            return None;
        }
        slots
            .push(SlotInfo {
                slot,
                state,
                running: flags & 1 != 0,
                boot: flags & 2 != 0,
            })
            .ok()?;
    }
    let resumable = match r.u8()? {
        0 => None,
        1 => Some(Resumable {
            size: r.u32()?,
            sha256: r.array()?,
            offset: r.u32()?,
        }),
        _ => return None,
    };
    // v3 appends the features byte; later versions may append more, which is skipped.
    let features = r.u8().unwrap_or(0);
    // v4 appends the trusted keys' fingerprints.
    let mut trusted_keys = heapless::Vec::new();
    for _ in 0..r.u8().unwrap_or(0) {
        trusted_keys.push(r.array()?).ok()?;
    }
    Some(Response::Info(Info {
        protocol_version,
        chip_id,
        running_slot,
        app_name,
        app_version,
        max_image_size,
        chunk_size,
        window,
        slots,
        resumable,
        features,
        trusted_keys,
    }))
}

/// Reads fields from a slice whose length was checked beforehand.
struct Reader<'a>(&'a [u8]);

impl Reader<'_> {
    fn take<const N: usize>(&mut self) -> [u8; N] {
        let (head, rest) = self.0.split_at(N);
        self.0 = rest;
        let mut out = [0; N];
        out.copy_from_slice(head);
        out
    }
    fn u8(&mut self) -> u8 {
        self.take::<1>()[0]
    }
    fn u16(&mut self) -> u16 {
        u16::from_le_bytes(self.take())
    }
    fn u32(&mut self) -> u32 {
        u32::from_le_bytes(self.take())
    }
    fn array<const N: usize>(&mut self) -> [u8; N] {
        self.take()
    }
}

/// Reads fields from a slice of unknown length.
struct Checked<'a>(&'a [u8]);

impl Checked<'_> {
    fn take<const N: usize>(&mut self) -> Option<[u8; N]> {
        if self.0.len() < N {
            return None;
        }
        let mut r = Reader(self.0);
        let v = r.take::<N>();
        self.0 = r.0;
        Some(v)
    }
    fn u8(&mut self) -> Option<u8> {
        Some(self.take::<1>()?[0])
    }
    fn u16(&mut self) -> Option<u16> {
        Some(u16::from_le_bytes(self.take()?))
    }
    fn u32(&mut self) -> Option<u32> {
        Some(u32::from_le_bytes(self.take()?))
    }
    fn array<const N: usize>(&mut self) -> Option<[u8; N]> {
        self.take()
    }
    fn str(&mut self) -> Option<Str32> {
        let len = self.u8()? as usize;
        if len > 32 || self.0.len() < len {
            return None;
        }
        let (s, rest) = self.0.split_at(len);
        self.0 = rest;
        let mut out = Str32::new();
        out.push_str(core::str::from_utf8(s).ok()?).ok()?;
        Some(out)
    }
}

/// Writes fields, remembering overflow instead of panicking.
struct Writer<'a> {
    out: &'a mut [u8],
    pos: usize,
    overflow: bool,
}

impl<'a> Writer<'a> {
    fn new(out: &'a mut [u8]) -> Self {
        Writer {
            out,
            pos: 0,
            overflow: false,
        }
    }
    fn bytes(&mut self, b: &[u8]) {
        match self.out.get_mut(self.pos..self.pos + b.len()) {
            Some(dst) if !self.overflow => dst.copy_from_slice(b),
            _ => self.overflow = true,
        }
        self.pos += b.len();
    }
    fn u8(&mut self, v: u8) {
        self.bytes(&[v]);
    }
    fn u16(&mut self, v: u16) {
        self.bytes(&v.to_le_bytes());
    }
    fn u32(&mut self, v: u32) {
        self.bytes(&v.to_le_bytes());
    }
    fn str(&mut self, s: &str) {
        self.u8(s.len() as u8);
        self.bytes(s.as_bytes());
    }
    fn patch_u16(&mut self, at: usize, v: u16) {
        if !self.overflow {
            self.out[at..at + 2].copy_from_slice(&v.to_le_bytes());
        }
    }
    fn finish(self) -> Result<usize, BufferTooSmall> {
        if self.overflow {
            Err(BufferTooSmall { needed: self.pos })
        } else {
            Ok(self.pos)
        }
    }
}
