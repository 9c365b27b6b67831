//! MCUmgr image upload over SMP (Zephyr): one request in flight.
//!
//! Source: Zephyr's documentation, "SMP Protocol Specification" (the 8-byte SMP header: `op`,
//! `flags`, `len` (big-endian), `group` (big-endian), `seq`, `id`), "SMP Transport
//! Specification" (Bluetooth: requests are written to the SMP characteristic with write
//! without response, responses come back as notifications) and "Application/software image
//! management group" (image upload, group 1, command 1: a CBOR map with `off`, `data`, and in
//! the first request also `image`, `len` and `sha`; the response carries `rc` and `off`),
//! <https://docs.zephyrproject.org/latest/services/device_mgmt/>.
//!
//! What the pattern keeps:
//! - One request in flight: the client sends the next chunk only after the response to the
//!   previous one, as the mcumgr clients (mcumgr CLI, nRF Connect Device Manager without its
//!   pipelining option) do.
//! - Each request is one write command whose value fits the ATT MTU: the client sizes the
//!   chunk so header + CBOR + data is at most `ATT MTU - 3` bytes (no SMP reassembly).
//! - The device writes through Zephyr's `stream_flash` buffer of `CONFIG_IMG_BLOCK_BUF_SIZE`
//!   bytes (default 512) with progressive erase (`CONFIG_IMG_ERASE_PROGRESSIVELY`): a
//!   sector erase when the writes reach a new sector, a buffered program whenever 512 bytes
//!   are collected, the rest at the end; the response goes out after the write.
//!
//! What it leaves out: image list/test/reset commands before and after the upload, and the
//! SHA-256 the device computes (CPU time is not modelled for any column).

use std::collections::VecDeque;
use std::time::Duration;

use ble_link_model::FlashTiming;

use super::{Client, Device, Write};
use crate::flash::FlashCost;

/// The SMP characteristic's handle in the model.
pub const SMP: u16 = 0x0020;
/// SMP header length.
pub const HEADER_LEN: usize = 8;
/// Zephyr's `CONFIG_IMG_BLOCK_BUF_SIZE` default: the device programs flash in blocks of this.
pub const BLOCK_BUF: usize = 512;
/// Image management group.
const GROUP_IMAGE: u16 = 1;
/// Upload command id.
const ID_UPLOAD: u8 = 1;
const OP_WRITE: u8 = 2;
const OP_WRITE_RSP: u8 = 3;

/// Minimal CBOR (RFC 8949) for the upload's maps: text keys, unsigned integers, byte strings.
pub mod cbor {
    /// Major types.
    const UINT: u8 = 0;
    const BYTES: u8 = 2;
    const TEXT: u8 = 3;
    const MAP: u8 = 5;

    /// Appends a head of major type `major` with argument `n`.
    pub fn head(out: &mut Vec<u8>, major: u8, n: u64) {
        let m = major << 5;
        match n {
            0..=23 => out.push(m | n as u8),
            24..=0xff => out.extend_from_slice(&[m | 24, n as u8]),
            0x100..=0xffff => {
                out.push(m | 25);
                out.extend_from_slice(&(n as u16).to_be_bytes());
            }
            0x1_0000..=0xffff_ffff => {
                out.push(m | 26);
                out.extend_from_slice(&(n as u32).to_be_bytes());
            }
            _ => {
                out.push(m | 27);
                out.extend_from_slice(&n.to_be_bytes());
            }
        }
    }

    /// Returns the length of a head with argument `n`.
    pub fn head_len(n: u64) -> usize {
        match n {
            0..=23 => 1,
            24..=0xff => 2,
            0x100..=0xffff => 3,
            0x1_0000..=0xffff_ffff => 5,
            _ => 9,
        }
    }

    /// Appends a map header of `n` pairs.
    pub fn map(out: &mut Vec<u8>, n: u64) {
        head(out, MAP, n);
    }
    /// Appends a text string.
    pub fn text(out: &mut Vec<u8>, s: &str) {
        head(out, TEXT, s.len() as u64);
        out.extend_from_slice(s.as_bytes());
    }
    /// Appends an unsigned integer.
    pub fn uint(out: &mut Vec<u8>, n: u64) {
        head(out, UINT, n);
    }
    /// Appends a byte string.
    pub fn bytes(out: &mut Vec<u8>, b: &[u8]) {
        head(out, BYTES, b.len() as u64);
        out.extend_from_slice(b);
    }

    /// A decoded item of the subset above.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub enum Item<'a> {
        /// Unsigned integer.
        Uint(u64),
        /// Byte string.
        Bytes(&'a [u8]),
        /// Text string.
        Text(&'a str),
        /// Map header with its pair count.
        Map(u64),
    }

    /// Decodes the item at the start of `b`; returns it and the rest.
    pub fn item(b: &[u8]) -> Option<(Item<'_>, &[u8])> {
        let (&first, rest) = b.split_first()?;
        let (major, info) = (first >> 5, first & 0x1f);
        let (n, rest) = match info {
            0..=23 => (u64::from(info), rest),
            24 => (u64::from(*rest.first()?), &rest[1..]),
            25 => (
                u64::from(u16::from_be_bytes(rest.get(..2)?.try_into().ok()?)),
                &rest[2..],
            ),
            26 => (
                u64::from(u32::from_be_bytes(rest.get(..4)?.try_into().ok()?)),
                &rest[4..],
            ),
            27 => (
                u64::from_be_bytes(rest.get(..8)?.try_into().ok()?),
                &rest[8..],
            ),
            _ => return None,
        };
        match major {
            UINT => Some((Item::Uint(n), rest)),
            MAP => Some((Item::Map(n), rest)),
            BYTES | TEXT => {
                let len = usize::try_from(n).ok()?;
                let (s, rest) = (rest.get(..len)?, &rest[len..]);
                if major == BYTES {
                    Some((Item::Bytes(s), rest))
                } else {
                    Some((Item::Text(core::str::from_utf8(s).ok()?), rest))
                }
            }
            _ => None,
        }
    }
}

fn header(op: u8, len: usize, seq: u8) -> [u8; HEADER_LEN] {
    let len = (len as u16).to_be_bytes();
    let group = GROUP_IMAGE.to_be_bytes();
    [op, 0, len[0], len[1], group[0], group[1], seq, ID_UPLOAD]
}

/// Encodes one upload request: the first carries `image`, `len` and `sha` too.
fn request(off: usize, data: &[u8], first: Option<(usize, &[u8; 32])>, seq: u8) -> Vec<u8> {
    let mut body = Vec::with_capacity(data.len() + 64);
    cbor::map(&mut body, if first.is_some() { 5 } else { 2 });
    if let Some((len, sha)) = first {
        cbor::text(&mut body, "image");
        cbor::uint(&mut body, 0);
        cbor::text(&mut body, "len");
        cbor::uint(&mut body, len as u64);
        cbor::text(&mut body, "sha");
        cbor::bytes(&mut body, sha);
    }
    cbor::text(&mut body, "off");
    cbor::uint(&mut body, off as u64);
    cbor::text(&mut body, "data");
    cbor::bytes(&mut body, data);
    let mut out = header(OP_WRITE, body.len(), seq).to_vec();
    out.extend_from_slice(&body);
    out
}

/// The client (mcumgr-style): one upload request at a time.
#[derive(Debug)]
pub struct SmpClient<'a> {
    image: &'a [u8],
    sha: [u8; 32],
    max_value_len: usize,
    /// Next offset to send.
    off: usize,
    /// Offset the device confirmed.
    acked: usize,
    in_flight: bool,
    seq: u8,
}

impl<'a> SmpClient<'a> {
    /// A client for `image` whose writes carry at most `max_value_len` bytes.
    pub fn new(image: &'a [u8], max_value_len: usize) -> Self {
        use sha2::Digest;
        SmpClient {
            image,
            sha: sha2::Sha256::digest(image).into(),
            max_value_len,
            off: 0,
            acked: 0,
            in_flight: false,
            seq: 0,
        }
    }

    /// Returns the largest chunk of data a request at `off` can carry.
    fn chunk_len(&self, off: usize) -> usize {
        let left = self.image.len() - off;
        // Shrink until the encoded request fits the value (the byte string's head grows with
        // its length, so search down from the largest candidate).
        let mut n = left.min(self.max_value_len);
        loop {
            let first = (off == 0).then_some((self.image.len(), &self.sha));
            let overhead = request_overhead(off, n, first.map(|(l, _)| l));
            if HEADER_LEN + overhead + n <= self.max_value_len || n == 0 {
                return n;
            }
            n -= 1;
        }
    }
}

/// Bytes of a request besides the header and the data.
fn request_overhead(off: usize, data_len: usize, first_len: Option<usize>) -> usize {
    let first = first_len.map_or(0, |len| 6 + 1 + 4 + cbor::head_len(len as u64) + 4 + 2 + 32);
    1 + first + 4 + cbor::head_len(off as u64) + 5 + cbor::head_len(data_len as u64)
}

impl Client for SmpClient<'_> {
    fn poll_transmit(&mut self) -> Option<Write> {
        if self.in_flight || self.off >= self.image.len() {
            return None;
        }
        let n = self.chunk_len(self.off);
        let first = (self.off == 0).then_some((self.image.len(), &self.sha));
        let value = request(
            self.off,
            &self.image[self.off..self.off + n],
            first,
            self.seq,
        );
        debug_assert!(value.len() <= self.max_value_len);
        self.off += n;
        self.seq = self.seq.wrapping_add(1);
        self.in_flight = true;
        Some(Write {
            handle: SMP,
            value,
            with_response: false,
        })
    }

    fn handle_notification(&mut self, _handle: u16, value: &[u8]) {
        let mut rest = &value[HEADER_LEN..];
        let Some((cbor::Item::Map(pairs), r)) = cbor::item(rest) else {
            return;
        };
        rest = r;
        for _ in 0..pairs {
            let Some((key, r)) = cbor::item(rest) else {
                return;
            };
            let Some((val, r)) = cbor::item(r) else {
                return;
            };
            rest = r;
            if let (cbor::Item::Text("off"), cbor::Item::Uint(off)) = (key, val) {
                self.acked = off as usize;
            }
        }
        self.in_flight = false;
    }

    fn is_finished(&self) -> bool {
        self.acked == self.image.len()
    }
}

/// The device: img_mgmt's upload handler writing through `stream_flash`.
#[derive(Debug)]
pub struct SmpDevice {
    flash: FlashCost,
    /// Image length from the first request.
    len: usize,
    /// Next expected offset.
    off: usize,
    /// Bytes in the block buffer (not yet programmed).
    buffered: usize,
    /// Offset of the block buffer's first byte.
    flushed: usize,
    notes: VecDeque<(u16, Vec<u8>)>,
}

impl SmpDevice {
    /// A device writing to flash with `timing`.
    pub fn new(timing: FlashTiming) -> Self {
        SmpDevice {
            flash: FlashCost::new(timing),
            len: 0,
            off: 0,
            buffered: 0,
            flushed: 0,
            notes: VecDeque::new(),
        }
    }

    /// Returns the flash time charged.
    pub fn flash_time(&self) -> Duration {
        self.flash.total()
    }
}

impl Device for SmpDevice {
    fn handle_write(&mut self, _now: Duration, _handle: u16, value: &[u8]) -> Duration {
        let seq = value[6];
        let mut rest = &value[HEADER_LEN..];
        let Some((cbor::Item::Map(pairs), r)) = cbor::item(rest) else {
            return Duration::ZERO;
        };
        rest = r;
        let (mut off, mut data, mut len) = (None, &[][..], None);
        for _ in 0..pairs {
            let (key, r) = cbor::item(rest).expect("well-formed request");
            let (val, r) = cbor::item(r).expect("well-formed request");
            rest = r;
            match (key, val) {
                (cbor::Item::Text("off"), cbor::Item::Uint(n)) => off = Some(n as usize),
                (cbor::Item::Text("len"), cbor::Item::Uint(n)) => len = Some(n as usize),
                (cbor::Item::Text("data"), cbor::Item::Bytes(b)) => data = b,
                _ => {}
            }
        }
        if let Some(len) = len {
            self.len = len;
        }
        let mut took = Duration::ZERO;
        if off == Some(self.off) {
            self.off += data.len();
            self.buffered += data.len();
            // Program every full block, then the rest once the image is complete.
            while self.buffered >= BLOCK_BUF {
                took += self.flash.program(self.flushed as u64, BLOCK_BUF as u64);
                self.flushed += BLOCK_BUF;
                self.buffered -= BLOCK_BUF;
            }
            if self.off == self.len && self.buffered > 0 {
                took += self
                    .flash
                    .program(self.flushed as u64, self.buffered as u64);
                self.flushed += self.buffered;
                self.buffered = 0;
            }
        }
        let mut body = Vec::with_capacity(16);
        cbor::map(&mut body, 2);
        cbor::text(&mut body, "rc");
        cbor::uint(&mut body, 0);
        cbor::text(&mut body, "off");
        cbor::uint(&mut body, self.off as u64);
        let mut rsp = header(OP_WRITE_RSP, body.len(), seq).to_vec();
        rsp.extend_from_slice(&body);
        self.notes.push_back((SMP, rsp));
        took
    }

    fn poll_notification(&mut self) -> Option<(u16, Vec<u8>)> {
        self.notes.pop_front()
    }
}
