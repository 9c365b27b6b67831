//! One image on its way into an OTA slot: in-order bytes are validated, hashed and programmed;
//! what the idle pre-erase left unerased is erased one 4 KiB sector at a time just ahead of the
//! write pointer. Never a 64 KiB block: while a link is up every flash operation stops the BLE
//! controller (esp-storage masks interrupts around it), and a block erase takes 150 ms typical,
//! up to 2-3 s, longer than a phone's supervision timeout.

use embedded_storage::nor_flash::NorFlash;

use super::inflate::{Inflater, Progress};
use super::{ClientId, CpuWork, Sha256Hasher};
use crate::esp::flash::{self, SECTOR_SIZE};
use crate::esp::image::ImageValidator;
use crate::esp::{OtaImgState, OtaSlots, Partition};
use crate::manifest::Manifest;
use crate::protocol::Reason;
use crate::protocol::fast::{Response, SLOT_OTHER, Stream};
use crate::time::Instant;

/// Which protocol drives the transfer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Protocol {
    /// The seed's: in-order write requests, size unknown until DONE.
    Legacy,
    /// The fast one: size and SHA-256 announced in BEGIN, which identify the session (with
    /// the stream, for a compressed image).
    Fast {
        size: u32,
        sha256: [u8; 32],
        stream: Option<Stream>,
    },
}

impl Protocol {
    /// The bytes the chunks carry, when announced: the stream's, or the image's.
    pub fn wire_len(&self) -> Option<u32> {
        match self {
            Protocol::Fast { size, stream, .. } => Some(stream.map_or(*size, |s| s.len)),
            Protocol::Legacy => None,
        }
    }
}

/// A NOR flash program page: bytes are held in RAM until whole pages can be programmed.
const PAGE_SIZE: usize = flash::PAGE_SIZE as usize;
/// The most pages a transfer holds in RAM before programming them (32 KiB).
pub(super) const MAX_PROGRAM_BATCH_PAGES: usize = 128;
/// The transfer's RAM for image bytes: a ring indexed by image offset (byte `o` at
/// `o % RING`) holding what is not programmed yet, and for a compressed image also deflate's
/// window (the last 32 KiB of output), which is why it is exactly the window's size.
const RING: usize = MAX_PROGRAM_BATCH_PAGES * PAGE_SIZE;
const _: () = assert!(RING == super::inflate::WINDOW);

/// The RAM an update works in, allocated once in the engine (a [`Transfer`] stays small, so
/// starting and ending one moves little on the stack).
pub(super) struct Buffers {
    /// The image's latest bytes (see [`RING`]): `slot.programmed..image_next` of the
    /// transfer wait for flash, whole pages going in batches.
    ring: [u8; RING],
    /// The inflater of a compressed session (with the `inflate` feature).
    #[cfg(feature = "inflate")]
    inflater: Inflater,
}

impl core::fmt::Debug for Buffers {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Buffers").finish_non_exhaustive()
    }
}

impl Buffers {
    pub fn new() -> Self {
        Buffers {
            ring: [0; RING],
            #[cfg(feature = "inflate")]
            inflater: Inflater::default(),
        }
    }

    /// Starts a new compressed stream (a no-op without the inflater).
    pub fn reset_inflater(&mut self) {
        #[cfg(feature = "inflate")]
        self.inflater.reset();
    }

    /// The ring and, with the `inflate` feature, the inflater.
    fn split(&mut self) -> (&mut [u8; RING], Option<&mut Inflater>) {
        #[cfg(feature = "inflate")]
        return (&mut self.ring, Some(&mut self.inflater));
        #[cfg(not(feature = "inflate"))]
        return (&mut self.ring, None);
    }
}

#[derive(Debug)]
pub(super) struct Transfer<H> {
    pub protocol: Protocol,
    /// The client driving it; `None` after a disconnect (resumable with the same BEGIN).
    pub owner: Option<ClientId>,
    pub target: Partition,
    /// The running app: otadata entries selecting it are never invalidated.
    running: Partition,
    /// Next expected offset on the wire (in the stream, for a compressed image): every byte
    /// before it was taken.
    pub next: u32,
    /// Image bytes validated and hashed (`next` but for a compressed image).
    image_next: u32,
    pub last_acked: u32,
    /// An ACK goes out every this many bytes (what BEGIN_OK announced, fixed for the session).
    pub ack_step: u32,
    /// Reboot once END_OK went out (BEGIN's `REBOOT_AFTER_END`).
    pub reboot_after_end: bool,
    /// When a gap at `next` was last reported; cleared by in-order progress.
    pub gap_reported: Option<Instant>,
    pub last_progress: Instant,
    validator: ImageValidator,
    hasher: H,
    /// SHA-256 of the image up to its checksum byte, once the stream passed it.
    image_digest: Option<[u8; 32]>,
    /// Bytes programmed at once (a whole number of pages).
    batch: usize,
    slot: SlotWriter<H>,
    /// Whether the inactive otadata entry pointing at the target was invalidated.
    otadata_prepared: bool,
    /// CPU work done since the engine last took it.
    pub cpu: CpuWork,
    /// The verified manifest BEGIN came with (a device that trusts keys): the image's app
    /// descriptor must agree with it before the slot is selected.
    pub manifest: Option<Manifest>,
}

/// How the slot will be written.
#[derive(Debug, Clone, Copy)]
pub(super) struct WritePlan {
    /// Bytes at the start of the slot known to be erased already.
    pub pre_erased: u32,
    /// Pages programmed together.
    pub batch_pages: u8,
}

/// Where an incoming chunk fell.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Accepted {
    /// It extended the in-order data.
    InOrder,
    /// Everything in it had arrived before.
    Duplicate,
    /// It starts beyond the next expected offset: something before it was lost.
    Gap,
}

impl Accepted {
    /// Returns the notification this arrival calls for: an ACK every `ack_step` bytes and at
    /// the end, one REWIND per gap (the tick repeats it if needed).
    pub fn ack<H>(self, t: &mut Transfer<H>, now: Instant) -> Option<Response> {
        match self {
            Accepted::InOrder => {
                let complete = t.protocol.wire_len() == Some(t.next);
                if t.next - t.last_acked >= t.ack_step || complete {
                    t.last_acked = t.next;
                    Some(Response::Ack { next: t.next })
                } else {
                    None
                }
            }
            Accepted::Gap if t.gap_reported.is_none() => {
                t.gap_reported = Some(now);
                Some(Response::Rewind { next: t.next })
            }
            Accepted::Gap | Accepted::Duplicate => None,
        }
    }
}

impl<H: Sha256Hasher> Transfer<H> {
    pub fn new(
        protocol: Protocol,
        owner: ClientId,
        target: Partition,
        running: Partition,
        validator: ImageValidator,
        plan: WritePlan,
        now: Instant,
    ) -> Self {
        let WritePlan {
            pre_erased,
            batch_pages,
        } = plan;
        Transfer {
            protocol,
            owner: Some(owner),
            target,
            running,
            next: 0,
            image_next: 0,
            last_acked: 0,
            ack_step: u32::MAX,
            reboot_after_end: false,
            manifest: None,
            gap_reported: None,
            last_progress: now,
            validator,
            hasher: H::default(),
            image_digest: None,
            batch: (batch_pages as usize).clamp(1, MAX_PROGRAM_BATCH_PAGES) * PAGE_SIZE,
            slot: SlotWriter {
                target,
                programmed: 0,
                erased: pre_erased.min(target.size),
                readback: H::default(),
                read_back: 0,
            },
            otadata_prepared: false,
            cpu: CpuWork::default(),
        }
    }

    /// Takes `payload`, which the client placed at `offset` (in the stream, for a compressed
    /// image, which `inflater` inflates).
    pub fn accept<F: NorFlash>(
        &mut self,
        flash: &mut F,
        slots: &OtaSlots,
        bufs: &mut Buffers,
        offset: u32,
        payload: &[u8],
        now: Instant,
    ) -> Result<Accepted, Reason> {
        let end = offset as u64 + payload.len() as u64;
        let limit = self.protocol.wire_len().unwrap_or(self.target.size);
        if end > limit as u64 {
            return Err(match self.protocol {
                Protocol::Fast { .. } => Reason::BadOffset,
                Protocol::Legacy => Reason::ImageTooLarge,
            });
        }
        if offset > self.next {
            return Ok(Accepted::Gap);
        }
        if end <= self.next as u64 {
            return Ok(Accepted::Duplicate);
        }
        let fresh = &payload[(self.next - offset) as usize..];
        let last = self.protocol.wire_len() == Some(self.next + fresh.len() as u32);
        let mut flushed = false;
        if let Protocol::Fast {
            size,
            stream: Some(_),
            ..
        } = self.protocol
        {
            // An engine without an inflater refuses a compressed BEGIN before this.
            let (ring, inflater) = bufs.split();
            let inflater = inflater.ok_or(Reason::Unsupported)?;
            let mut input = fresh;
            loop {
                // The inflater writes into the ring, never over bytes not programmed yet.
                let at = self.image_next as usize % RING;
                let room = RING - self.unprogrammed();
                let step = inflater.step(input, ring, at, room, last)?;
                input = &input[step.read..];
                if self.image_next as u64 + step.written as u64 > size as u64 {
                    return Err(Reason::BadStream);
                }
                if step.written > 0 {
                    self.cpu.inflated += step.written as u64;
                    flushed |= self.took(flash, slots, ring, step.written)?;
                }
                match step.progress {
                    Progress::Done if input.is_empty() => break,
                    Progress::Done => return Err(Reason::BadStream),
                    Progress::MoreOutput => {}
                    Progress::NeedsInput if input.is_empty() && !last => break,
                    Progress::NeedsInput => return Err(Reason::BadStream),
                }
            }
            if last && (!inflater.is_done() || self.image_next != size) {
                return Err(Reason::BadStream);
            }
        } else {
            flushed = self.take_image(flash, slots, &mut bufs.ring, fresh)?;
        }
        self.next += fresh.len() as u32;
        if last {
            // The last byte: program the tail now, so END's flash work is otadata alone.
            if self.validator.header().is_none() {
                return Err(Reason::BadImageFormat);
            }
            self.flush_tail(flash, slots, &bufs.ring)?;
        } else if !flushed {
            // One flash outage per write at most: a batch, or one sector erase.
            self.erase_ahead(flash, slots)?;
        }
        self.last_progress = now;
        self.gap_reported = None;
        Ok(Accepted::InOrder)
    }

    /// Bytes in the ring not programmed yet.
    fn unprogrammed(&self) -> usize {
        self.image_next.saturating_sub(self.slot.programmed) as usize
    }

    /// Puts the next image bytes into the ring and takes them ([`took`](Self::took)), a
    /// piece at a time where the ring is full or wraps. Returns true if a batch went to flash.
    fn take_image<F: NorFlash>(
        &mut self,
        flash: &mut F,
        slots: &OtaSlots,
        ring: &mut [u8; RING],
        mut fresh: &[u8],
    ) -> Result<bool, Reason> {
        let mut flushed = false;
        while !fresh.is_empty() {
            let at = self.image_next as usize % RING;
            // Never empty: `flush_batches` keeps less than a batch (at most the ring) waiting.
            let room = (RING - self.unprogrammed()).min(RING - at);
            let n = room.min(fresh.len());
            ring[at..at + n].copy_from_slice(&fresh[..n]);
            flushed |= self.took(flash, slots, ring, n)?;
            fresh = &fresh[n..];
        }
        Ok(flushed)
    }

    /// `n` new image bytes sit in the ring at `image_next` (without wrapping): validates and
    /// hashes them, and programs every whole batch waiting. Returns true if a batch went to
    /// flash.
    fn took<F: NorFlash>(
        &mut self,
        flash: &mut F,
        slots: &OtaSlots,
        ring: &[u8; RING],
        n: usize,
    ) -> Result<bool, Reason> {
        let at = self.image_next as usize % RING;
        let fresh = &ring[at..at + n];
        self.validator.feed(fresh).map_err(Reason::from)?;
        // One hash pass serves both the session (the whole file, against BEGIN's SHA-256) and
        // the image check (the image up to its checksum byte, against the appended SHA-256):
        // the hasher's state is snapshot where the image's hashed part ends.
        match self.validator.hashed_len() {
            Some(end) if self.image_digest.is_none() && end <= self.image_next + n as u32 => {
                let (head, tail) = fresh.split_at((end - self.image_next) as usize);
                self.hasher.update(head);
                self.image_digest = Some(self.hasher.clone().finalize());
                self.hasher.update(tail);
            }
            _ => self.hasher.update(fresh),
        }
        self.image_next += n as u32;
        self.cpu.hashed += n as u64;
        self.flush_batches(flash, slots, ring)
    }

    /// Ends the transfer: the image must be complete and valid, the bytes must match the
    /// announced hash, and the flash must read back the same. Then otadata selects the slot.
    /// Returns the slot, the image size and its SHA-256.
    pub fn finish<F: NorFlash>(
        mut self,
        flash: &mut F,
        slots: &OtaSlots,
        bufs: &Buffers,
    ) -> Result<(u8, u32, [u8; 32]), Reason> {
        let validator = core::mem::replace(&mut self.validator, ImageValidator::new(None, 0));
        let info = validator
            .finish_with_digest(self.image_digest)
            .map_err(Reason::from)?;
        if let Some(m) = &self.manifest {
            // The signed hash fixes the bytes; this catches a manifest signed with the wrong
            // version or secure_version, which would defeat the next downgrade check.
            let agrees = info
                .app
                .is_some_and(|d| d.secure_version == m.secure_version && d.version == m.version);
            if !agrees {
                return Err(Reason::ManifestMismatch);
            }
        }
        let digest: [u8; 32] = core::mem::take(&mut self.hasher).finalize();
        if let Protocol::Fast { size, sha256, .. } = self.protocol {
            if self.protocol.wire_len() != Some(self.next) || self.image_next != size {
                return Err(Reason::Incomplete);
            }
            if digest != sha256 {
                return Err(Reason::SessionHashMismatch);
            }
        }
        self.flush_tail(flash, slots, &bufs.ring)?;
        let (target, next) = (self.target, self.image_next);
        // What the slot holds, read back as each batch was programmed, must hash to what
        // arrived. Only the image's bytes count (the padding of the last page does not).
        self.slot.read_back_to(flash, next)?;
        let readback: [u8; 32] = core::mem::take(&mut self.slot.readback).finalize();
        if readback != digest {
            return Err(Reason::FlashError);
        }
        slots
            .set_boot_partition(flash, &target, OtaImgState::New)
            .map_err(|e| match e {
                crate::esp::SlotError::SeqExhausted => Reason::OtadataExhausted,
                _ => Reason::FlashError,
            })?;
        Ok((target.ota_slot().unwrap_or(SLOT_OTHER), next, digest))
    }

    /// Programs what waits in the ring, the last bytes padded with erased ones to the flash's
    /// write unit.
    fn flush_tail<F: NorFlash>(
        &mut self,
        flash: &mut F,
        slots: &OtaSlots,
        ring: &[u8; RING],
    ) -> Result<(), Reason> {
        let n = self.unprogrammed();
        if n == 0 {
            return Ok(());
        }
        self.prepare_otadata(flash, slots)?;
        let unit = F::WRITE_SIZE.clamp(1, PAGE_SIZE);
        let whole = n / unit * unit;
        self.program_ring(flash, ring, whole, self.image_next)?;
        if whole < n {
            // The last write unit, within one page: its image bytes, then 0xFF.
            let mut last = [0xFF; PAGE_SIZE];
            let at = self.slot.programmed as usize % RING;
            for (i, b) in last[..n - whole].iter_mut().enumerate() {
                *b = ring[(at + i) % RING];
            }
            self.slot
                .program_pages(flash, &last[..unit], self.image_next)?;
        }
        Ok(())
    }

    /// Programs every whole batch waiting in the ring, one page-program command per page
    /// however the client chunked the data. Every flash operation stops the BLE controller
    /// (see the module docs), and each time the radio stops the connection event under way
    /// ends: one stop for many pages costs the link far less than a stop per page, while each
    /// page is still its own short command. Nothing touches flash before the image header
    /// proved the image is for this chip. Returns true if a batch went to flash.
    fn flush_batches<F: NorFlash>(
        &mut self,
        flash: &mut F,
        slots: &OtaSlots,
        ring: &[u8; RING],
    ) -> Result<bool, Reason> {
        let mut flushed = false;
        while self.unprogrammed() >= self.batch {
            if self.validator.header().is_none() {
                return Err(Reason::BadImageFormat);
            }
            self.prepare_otadata(flash, slots)?;
            self.program_ring(flash, ring, self.batch, u32::MAX)?;
            flushed = true;
        }
        Ok(flushed)
    }

    /// Programs the next `len` bytes of the ring from the program pointer: in two parts where
    /// the ring wraps, which falls on a 32 KiB boundary of the image, so each part starts on
    /// a page. `image_end` as for [`SlotWriter::program_pages`].
    fn program_ring<F: NorFlash>(
        &mut self,
        flash: &mut F,
        ring: &[u8; RING],
        len: usize,
        image_end: u32,
    ) -> Result<(), Reason> {
        let start = self.slot.programmed as usize % RING;
        let first = len.min(RING - start);
        self.slot
            .program_pages(flash, &ring[start..start + first], image_end)?;
        if first < len {
            self.slot
                .program_pages(flash, &ring[..len - first], image_end)?;
        }
        Ok(())
    }

    /// Erases at most one sector of what the next batch will cover, if the pre-erase did not:
    /// the erases spread over the writes that fill the batch, so no flash outage is longer
    /// than one sector erase.
    fn erase_ahead<F: NorFlash>(&mut self, flash: &mut F, slots: &OtaSlots) -> Result<(), Reason> {
        let image_end = match self.protocol {
            Protocol::Fast { size, .. } => size,
            Protocol::Legacy => self.validator.total_len().unwrap_or(self.target.size),
        };
        let wanted = (self.slot.programmed as usize + self.unprogrammed() + self.batch)
            .min(image_end as usize)
            .min(self.target.size as usize) as u32;
        if self.slot.erased < wanted && self.validator.header().is_some() {
            // As before any change to the slot: otadata must not fall back onto it.
            self.prepare_otadata(flash, slots)?;
            self.slot.erase_sector(flash)?;
        }
        Ok(())
    }

    /// Before the first byte lands in the slot: stop otadata from falling back onto it, as
    /// `esp_ota_begin` does (IDF v5.5+, `esp_ota_invalidate_inactive_ota_data_slot`).
    fn prepare_otadata<F: NorFlash>(
        &mut self,
        flash: &mut F,
        slots: &OtaSlots,
    ) -> Result<(), Reason> {
        if !self.otadata_prepared {
            slots
                .invalidate_inactive_except(flash, &self.running)
                .map_err(|_| Reason::FlashError)?;
            self.otadata_prepared = true;
        }
        Ok(())
    }
}

/// The slot's program and erase pointers, and the hash of what was read back.
#[derive(Debug)]
struct SlotWriter<H> {
    target: Partition,
    /// Bytes programmed into the slot.
    programmed: u32,
    /// Bytes of the slot erased so far (sector multiple).
    erased: u32,
    /// SHA-256 of the slot's bytes `0..read_back`, read from flash after they were programmed.
    readback: H,
    read_back: u32,
}

impl<H: Sha256Hasher> SlotWriter<H> {
    /// Erases the next 4 KiB sector.
    fn erase_sector<F: NorFlash>(&mut self, flash: &mut F) -> Result<(), Reason> {
        let from = self.target.offset + self.erased;
        flash::erase(flash, from, from + SECTOR_SIZE).map_err(|_| Reason::FlashError)?;
        self.erased += SECTOR_SIZE;
        Ok(())
    }

    /// Programs `data` at the program pointer one page (one command) at a time, first erasing,
    /// one sector at a time, what the erase-ahead did not reach; then reads back what it
    /// programmed up to `image_end` (the padding after the image's last byte is not hashed).
    fn program_pages<F: NorFlash>(
        &mut self,
        flash: &mut F,
        data: &[u8],
        image_end: u32,
    ) -> Result<(), Reason> {
        let end = self.programmed + data.len() as u32;
        if end > self.target.size {
            return Err(Reason::ImageTooLarge);
        }
        for page in data.chunks(PAGE_SIZE) {
            let page_end = self.programmed + page.len() as u32;
            while self.erased < page_end {
                self.erase_sector(flash)?;
            }
            flash::write(flash, self.target.offset + self.programmed, page)
                .map_err(|_| Reason::FlashError)?;
            self.programmed = page_end;
        }
        // Read the batch back now, while the link goes on carrying the next one: at the end
        // only the last batch is left to read.
        self.read_back_to(flash, self.programmed.min(image_end))
    }

    /// Reads the slot back from where the last read-back stopped up to `end`, hashing it.
    fn read_back_to<F: NorFlash>(&mut self, flash: &mut F, end: u32) -> Result<(), Reason> {
        let mut buf = [0u8; 256];
        while self.read_back < end {
            let n = (end - self.read_back).min(buf.len() as u32) as usize;
            flash::read(flash, self.target.offset + self.read_back, &mut buf[..n])
                .map_err(|_| Reason::FlashError)?;
            self.readback.update(&buf[..n]);
            self.read_back += n as u32;
        }
        Ok(())
    }
}
