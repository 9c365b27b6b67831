//! MCUmgr image upload over SMP (Zephyr): SMP packets of up to 2475 bytes split into write
//! commands and reassembled by the device, up to 3 requests in flight on phones, 1 on
//! desktops; the image's range erased by the first request.
//!
//! Protocol source: Zephyr's documentation, "SMP Protocol Specification" (the 8-byte SMP
//! header: `op`, `flags`, `len` (big-endian), `group` (big-endian), `seq`, `id`), "SMP Transport
//! Specification" (Bluetooth: requests are written to the SMP characteristic with write without
//! response, responses come back as notifications; a packet longer than one write is split
//! across several with no extra framing) and "Application/software image management group"
//! (image upload, group 1, command 1: a CBOR map with `off`, `data`, and in the first request
//! also `len` and `sha`; the response carries `rc` and `off`),
//! <https://docs.zephyrproject.org/latest/services/device_mgmt/>.
//!
//! Sources, device (zephyrproject-rtos/zephyr):
//! - `subsys/mgmt/mcumgr/transport/Kconfig.bluetooth`, `MCUMGR_TRANSPORT_BT_REASSEMBLY`: "the
//!   SMP BT transport will buffer and reassemble received packet fragments before passing it
//!   for further processing"; `subsys/mgmt/mcumgr/transport/Kconfig`:
//!   `MCUMGR_TRANSPORT_NETBUF_COUNT` (default 4 buffers, "used for both requests and
//!   responses") and `MCUMGR_TRANSPORT_NETBUF_SIZE`, the largest packet the device takes.
//!   A Bluetooth configuration of an MCUmgr sample sets the size to 2475, "one SMP packet
//!   divided into five Bluetooth Write Commands, transmitted with the maximum possible MTU
//!   value: 498 bytes" (5 × 495); that file reached us only as a search excerpt without its
//!   repository and path, but NordicSemiconductor/Android-nRF-Connect-Device-Manager
//!   `mcumgr-core/src/main/java/no/nordicsemi/android/mcumgr/response/McuMgrResponse.java`
//!   says the same ("in practice, it should not exceed 2475 bytes minus 8-byte header").
//! - `subsys/mgmt/mcumgr/grp/img_mgmt/src/img_mgmt.c`, the upload handler: for a request at
//!   offset 0, unless `CONFIG_IMG_ERASE_PROGRESSIVELY`, it erases "the entire req.size all at
//!   once" (`img_mgmt_erase_image_data(0, req.size)`, when the slot is not blank) before it
//!   writes the data and answers; the option has no default ("No defaults. Implicitly defaults
//!   to n", Zephyr 2.7's Kconfig reference; later releases not checked), so an ESP32 build
//!   erases up front.
//!   `subsys/mgmt/mcumgr/grp/img_mgmt/src/zephyr_img_mgmt.c`: `img_mgmt_erase_image_data`
//!   erases the image's size rounded up to the flash page, then the MCUboot trailer area at
//!   the slot's end when the image did not reach it; `img_mgmt_write_image_data` writes
//!   through `flash_img_buffered_write`, a `stream_flash` buffer of `CONFIG_IMG_BLOCK_BUF_SIZE`
//!   bytes (default 512, `subsys/dfu/Kconfig`), flushed whole and, with the last chunk, the
//!   rest. `drivers/flash/flash_esp32.c` erases with ESP-IDF's `esp_flash_erase_region`
//!   ([`erase_region_time`]).
//!
//! Sources, clients:
//! - Phones: nRF Connect Device Manager (NordicSemiconductor/Android-nRF-Connect-Device-Manager,
//!   commit e7334292 of 2026-02-18). `mcumgr-ble/.../McuMgrBleTransport.java` reads the
//!   device's buffer size with the MCUmgr parameters command and makes it the largest SMP
//!   packet, split into `MTU - 3` writes without response. `mcumgr-core/.../transfer/
//!   Uploader.kt`: at most `windowCapacity` requests in flight (`Semaphore(windowCapacity)`),
//!   the first chunk sent alone "to get the last offset", each chunk as large as the packet
//!   length allows (`getMaxChunkSize`) and, but for the last, rounded down to
//!   `memoryAlignment`; `ImageUploader.kt`: `sha` in the first request, `image` only when not
//!   0. `sample/.../fragment/mcumgr/ImageUpgradeFragment.java`: the app's defaults are 4
//!   buffers and alignment 4, and it passes `Math.max(1, windowCapacity - 1)` ("1 buffer is
//!   used for sending responses"): 3 requests in flight. Its pull request #53 ("SMP
//!   segmentation") measured 2-4 kB/s with one request in flight, 16-20 kB/s with 3, and 36
//!   kB/s with 3 and reassembly. The iOS library added the same pipelining and reassembly
//!   (nordicsemi/IOS-nRF-Connect-Device-Manager pull request #33); its defaults were not read
//!   here, the pattern gives iOS the Android app's.
//! - Desktops: smpmgr's library, intercreate/smpclient (commit 4970f3e9 of 2026-06-24).
//!   `src/smpclient/__init__.py`, `upload`: each request is awaited before the next is built,
//!   filled to `max_unencoded_size` (`_maximize_upload_packet`), which `_initialize` sets from
//!   the device's MCUmgr parameters (`buf_size`); `src/smpclient/transport/ble.py`, `send`:
//!   the packet split into `mtu_size - 3` writes with `response=False`. So: reassembly, one
//!   request in flight. smpmgr's pull request #28 (intercreate/smpmgr) reports 36-44 KB/s on
//!   an nRF5340. The ESP32-classic profile gets the desktop client ([`Platform::of`]).
//!
//! What the pattern keeps: upload requests of at most [`SMP_MTU`] bytes, each split into write
//! commands of `ATT MTU - 3` bytes; the first request alone, then up to 3 (phones) or 1
//! (desktops) requests in flight, each answered by a notification with the next offset once
//! the device wrote it. The device reassembles a request from its writes and handles it when
//! the last one arrives; for the first, it erases the image's range and one trailer sector
//! (flash work of that write, so the first answer comes after the erase), then every request's
//! data goes through the 512-byte block buffer (a page program per page a block touches).
//!
//! What it leaves out: the MCUmgr parameters read and the image list/test/reset commands
//! before and after the upload; the blank check of the slot before the erase (the slot is
//! taken to hold the previous image) and the SHA-256 the device computes (CPU time is not
//! modelled for any column); the MCUboot trailer is taken as one sector (its size depends on
//! MCUboot's swap mode, never less); smpmgr's first request would also carry `image: 0` and
//! `upgrade: false` (a few bytes), every client here encodes nRF Connect Device Manager's map.

use std::collections::VecDeque;
use std::time::Duration;

use ble_link_model::{FlashTiming, LinkParams};

use super::{Client, Device, Platform, Work, Write, erase_region_time};

/// The SMP characteristic's handle in the model.
pub const SMP: u16 = 0x0020;
/// SMP header length.
pub const HEADER_LEN: usize = 8;
/// Largest SMP packet, header included: the device's `CONFIG_MCUMGR_TRANSPORT_NETBUF_SIZE`
/// with reassembly, as the clients read it from the MCUmgr parameters.
pub const SMP_MTU: usize = 2475;
/// Requests nRF Connect Device Manager keeps in flight (4 buffers, one for responses).
pub const PHONE_WINDOW: usize = 3;
/// Chunk alignment of nRF Connect Device Manager (the app's default memory alignment).
pub const PHONE_ALIGNMENT: usize = 4;
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

/// Encodes one upload request: the first carries `len` and `sha` too.
fn request(off: usize, data: &[u8], first: Option<(usize, &[u8; 32])>, seq: u8) -> Vec<u8> {
    let mut body = Vec::with_capacity(data.len() + 64);
    cbor::map(&mut body, if first.is_some() { 4 } else { 2 });
    cbor::text(&mut body, "data");
    cbor::bytes(&mut body, data);
    cbor::text(&mut body, "off");
    cbor::uint(&mut body, off as u64);
    if let Some((len, sha)) = first {
        cbor::text(&mut body, "len");
        cbor::uint(&mut body, len as u64);
        cbor::text(&mut body, "sha");
        cbor::bytes(&mut body, sha);
    }
    let mut out = header(OP_WRITE, body.len(), seq).to_vec();
    out.extend_from_slice(&body);
    out
}

/// Bytes of a request besides the header and the data.
fn request_overhead(off: usize, data_len: usize, first_len: Option<usize>) -> usize {
    let first = first_len.map_or(0, |len| 4 + cbor::head_len(len as u64) + 4 + 2 + 32);
    1 + 5 + cbor::head_len(data_len as u64) + 4 + cbor::head_len(off as u64) + first
}

/// The client: nRF Connect Device Manager on phones, smpmgr on desktops.
#[derive(Debug)]
pub struct SmpClient<'a> {
    image: &'a [u8],
    sha: [u8; 32],
    max_value_len: usize,
    /// The platform, once known ([`Client::connected`] or [`SmpClient::with_platform`]).
    platform: Option<Platform>,
    /// Next offset to send.
    off: usize,
    /// Highest offset the device confirmed.
    acked: usize,
    /// Requests sent and not answered.
    in_flight: usize,
    /// The first request was answered (the window opens).
    started: bool,
    /// Writes of the request being sent.
    fragments: VecDeque<Vec<u8>>,
    seq: u8,
}

impl<'a> SmpClient<'a> {
    /// A client for `image` whose writes carry at most `max_value_len` bytes (ATT MTU - 3);
    /// it takes its platform from the link it runs on ([`Platform::of`]).
    pub fn new(image: &'a [u8], max_value_len: usize) -> Self {
        use sha2::Digest;
        SmpClient {
            image,
            sha: sha2::Sha256::digest(image).into(),
            max_value_len,
            platform: None,
            off: 0,
            acked: 0,
            in_flight: 0,
            started: false,
            fragments: VecDeque::new(),
            seq: 0,
        }
    }

    /// A client of `platform` whatever link it runs on.
    pub fn with_platform(image: &'a [u8], max_value_len: usize, platform: Platform) -> Self {
        SmpClient {
            platform: Some(platform),
            ..SmpClient::new(image, max_value_len)
        }
    }

    /// Returns the platform (desktop until one is known).
    pub fn platform(&self) -> Platform {
        self.platform.unwrap_or(Platform::Desktop)
    }

    /// Returns how many requests the client keeps in flight once the first was answered.
    pub fn window(&self) -> usize {
        match self.platform() {
            Platform::Android | Platform::Ios => PHONE_WINDOW,
            Platform::Desktop => 1,
        }
    }

    fn alignment(&self) -> usize {
        match self.platform() {
            Platform::Android | Platform::Ios => PHONE_ALIGNMENT,
            Platform::Desktop => 1,
        }
    }

    /// Returns the largest chunk of data a request at `off` can carry.
    fn chunk_len(&self, off: usize) -> usize {
        let left = self.image.len() - off;
        let first = (off == 0).then_some(self.image.len());
        // Shrink until the encoded request fits (the byte string's head grows with its
        // length, so search down from the largest candidate).
        let mut n = left.min(SMP_MTU);
        while n > 0 && HEADER_LEN + request_overhead(off, n, first) + n > SMP_MTU {
            n -= 1;
        }
        if off + n < self.image.len() {
            n -= n % self.alignment();
        }
        n
    }
}

impl Client for SmpClient<'_> {
    fn connected(&mut self, params: &LinkParams) {
        self.platform.get_or_insert(Platform::of(params));
    }

    fn poll_transmit(&mut self) -> Option<Write> {
        if self.fragments.is_empty() {
            let window = if self.started { self.window() } else { 1 };
            if self.in_flight >= window || self.off >= self.image.len() {
                return None;
            }
            let n = self.chunk_len(self.off);
            let first = (self.off == 0).then_some((self.image.len(), &self.sha));
            let packet = request(
                self.off,
                &self.image[self.off..self.off + n],
                first,
                self.seq,
            );
            debug_assert!(packet.len() <= SMP_MTU);
            self.fragments
                .extend(packet.chunks(self.max_value_len).map(<[u8]>::to_vec));
            self.off += n;
            self.seq = self.seq.wrapping_add(1);
            self.in_flight += 1;
        }
        self.fragments.pop_front().map(|value| Write {
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
                self.acked = self.acked.max(off as usize);
            }
        }
        self.in_flight = self.in_flight.saturating_sub(1);
        self.started = true;
    }

    fn is_finished(&self) -> bool {
        self.acked == self.image.len()
    }
}

/// The device: Zephyr's SMP Bluetooth transport with reassembly and img_mgmt's upload
/// handler writing through `stream_flash`.
#[derive(Debug)]
pub struct SmpDevice {
    timing: FlashTiming,
    /// Flash time charged so far.
    flash: Duration,
    /// Bytes of the request being reassembled.
    rx: Vec<u8>,
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
            timing,
            flash: Duration::ZERO,
            rx: Vec::new(),
            len: 0,
            off: 0,
            buffered: 0,
            flushed: 0,
            notes: VecDeque::new(),
        }
    }

    /// Returns the flash time charged.
    pub fn flash_time(&self) -> Duration {
        self.flash
    }

    /// Handles one reassembled request; returns its flash time.
    fn handle_request(&mut self, packet: &[u8]) -> Duration {
        let seq = packet[6];
        let mut rest = &packet[HEADER_LEN..];
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
        let mut took = Duration::ZERO;
        if let (Some(len), Some(0)) = (len, off) {
            // A new upload: the image's range and the MCUboot trailer erased at once.
            self.len = len;
            took += erase_region_time(&self.timing, len as u64) + self.timing.erase_time(1);
        }
        if off == Some(self.off) {
            self.off += data.len();
            self.buffered += data.len();
            // Program every full block, then the rest once the image is complete.
            while self.buffered >= BLOCK_BUF {
                took += self
                    .timing
                    .program_time(self.flushed as u64, BLOCK_BUF as u64);
                self.flushed += BLOCK_BUF;
                self.buffered -= BLOCK_BUF;
            }
            if self.off == self.len && self.buffered > 0 {
                took += self
                    .timing
                    .program_time(self.flushed as u64, self.buffered as u64);
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
}

impl Device for SmpDevice {
    fn handle_write(&mut self, _now: Duration, _handle: u16, value: &[u8]) -> Work {
        self.rx.extend_from_slice(value);
        if self.rx.len() < HEADER_LEN {
            return Work::ZERO;
        }
        let need = HEADER_LEN + usize::from(u16::from_be_bytes([self.rx[2], self.rx[3]]));
        assert!(need <= SMP_MTU, "a request larger than the device's buffer");
        if self.rx.len() < need {
            return Work::ZERO;
        }
        let packet: Vec<u8> = self.rx.drain(..need).collect();
        let flash = self.handle_request(&packet);
        self.flash += flash;
        Work::flash(flash)
    }

    fn poll_notification(&mut self) -> Option<(u16, Vec<u8>)> {
        self.notes.pop_front()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const T: FlashTiming = FlashTiming::TYPICAL_4MB_SPI_NOR;

    fn image(len: usize) -> Vec<u8> {
        (0..len).map(|i| (i * 7 + 3) as u8).collect()
    }

    /// Sends what the client allows; returns the writes.
    fn drain(c: &mut SmpClient<'_>) -> Vec<Write> {
        std::iter::from_fn(|| c.poll_transmit()).collect()
    }

    #[test]
    fn requests_fill_the_smp_mtu_and_are_split_into_writes() {
        let img = image(20_000);
        let mut c = SmpClient::with_platform(&img, 244, Platform::Desktop);
        let first = drain(&mut c);
        let lens: Vec<usize> = first.iter().map(|w| w.value.len()).collect();
        // 2475 bytes in writes of at most 244 bytes: 10 × 244 + 35.
        assert_eq!(lens.iter().sum::<usize>(), SMP_MTU);
        assert_eq!(lens.len(), 11);
        assert!(first.iter().all(|w| !w.with_response && w.handle == SMP));
        // The device answers once the last write arrived, after the erase.
        let mut d = SmpDevice::new(T);
        for w in &first[..10] {
            assert_eq!(d.handle_write(Duration::ZERO, SMP, &w.value), Work::ZERO);
            assert!(d.poll_notification().is_none());
        }
        let work = d.handle_write(Duration::ZERO, SMP, &first[10].value);
        let erase = erase_region_time(&T, 20_000) + T.erase_time(1);
        assert!(work.flash > erase, "{work:?}");
        let (_, rsp) = d.poll_notification().unwrap();
        c.handle_notification(SMP, &rsp);
        assert!(c.acked > 2000 && c.acked == d.off);
    }

    #[test]
    fn phones_keep_three_requests_in_flight_after_the_first() {
        let img = image(40_000);
        let mut c = SmpClient::with_platform(&img, 512, Platform::Android);
        let mut d = SmpDevice::new(T);
        let first = drain(&mut c);
        assert_eq!(first.len(), 5, "2475 bytes in 512-byte writes");
        for w in &first {
            d.handle_write(Duration::ZERO, SMP, &w.value);
        }
        assert!(drain(&mut c).is_empty(), "the first request goes alone");
        let (_, rsp) = d.poll_notification().unwrap();
        c.handle_notification(SMP, &rsp);
        let next = drain(&mut c);
        assert_eq!(next.len(), 3 * 5, "three requests of five writes");
        // Chunks are multiples of 4 bytes.
        for w in &next {
            d.handle_write(Duration::ZERO, SMP, &w.value);
        }
        assert_eq!(d.off % PHONE_ALIGNMENT, 0);
        let mut desktop = SmpClient::with_platform(&img, 512, Platform::Desktop);
        drain(&mut desktop);
        desktop.handle_notification(SMP, &rsp);
        assert_eq!(drain(&mut desktop).len(), 5, "one request at a time");
    }
}
