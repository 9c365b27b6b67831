//! [`OversizeGuard`]: an HCI transport that lets no ATT PDU longer than [`ATT_MTU`] reach
//! trouble-host whole, so a central that sends one gets an ATT error instead of silence.
//!
//! trouble-host 0.8 reassembles an L2CAP PDU into one packet of its pool; one longer than a
//! packet (a Write Request of 600 bytes, say) fails in its ACL handler and is dropped without
//! an answer, so the central's request times out after 30 s (ATT's transaction timeout) and
//! it must drop the link. No well-behaved central sends one (the device grants at most
//! [`ATT_MTU`]), but a hostile or broken one may.
//!
//! The guard sits between the controller's transport and trouble-host. It cuts such a PDU to
//! its opcode and handle (a Write Request becomes one with an empty value) and discards the
//! rest of its fragments. The write handler refuses an empty write to OTA Control or OTA Data
//! with ATT error `0x80 + BadLength`, so the central hears why at once.

use core::cell::Cell;
use core::convert::Infallible;

use bt_hci::ReadHciError;
use bt_hci::transport::{PacketKind, PacketToController, PacketToHost, Transport};
use embassy_sync::blocking_mutex::raw::CriticalSectionRawMutex;
use embassy_sync::mutex::Mutex;
use embedded_io::ReadExactError;

use crate::pool::ATT_MTU;

/// The fixed L2CAP channel of ATT.
const ATT_CID: u16 = 0x0004;
/// ACL packets carry at most this many bytes after their 4-byte header (HCI's 255-byte
/// buffers, what trouble-host's `ExternalController` reads into).
const MAX_ACL_PACKET: usize = 4 + 255;
/// Bytes of an ATT PDU kept when it is cut: its opcode and an attribute handle.
const KEPT_ATT_BYTES: u16 = 3;

/// An HCI transport that cuts ATT PDUs longer than [`ATT_MTU`] (see the [module docs](self)).
pub struct OversizeGuard<T> {
    inner: T,
    /// The packet as the controller sent it, before it is handed on.
    scratch: Mutex<CriticalSectionRawMutex, [u8; MAX_ACL_PACKET]>,
    /// The connection whose oversized PDU is being discarded, and the bytes still to come.
    discarding: Cell<Option<(u16, usize)>>,
    /// PDUs cut so far.
    cut: Cell<u32>,
}

impl<T> OversizeGuard<T> {
    /// Guards `inner`.
    pub fn new(inner: T) -> Self {
        OversizeGuard {
            inner,
            scratch: Mutex::new([0; MAX_ACL_PACKET]),
            discarding: Cell::new(None),
            cut: Cell::new(0),
        }
    }

    /// Returns how many oversized ATT PDUs were cut.
    pub fn cut_count(&self) -> u32 {
        self.cut.get()
    }

    /// Decides what to do with the ACL packet in `p` (its whole bytes, header included):
    /// `Some(len)` hands on its first `len` bytes (rewritten in place when cut), `None`
    /// drops it (a continuation of a cut PDU).
    fn filter_acl(&self, p: &mut [u8]) -> Option<usize> {
        if p.len() < 4 {
            return Some(p.len());
        }
        let word = u16::from_le_bytes([p[0], p[1]]);
        let (handle, boundary) = (word & 0x0FFF, (word >> 12) & 0b11);
        let data_len = u16::from_le_bytes([p[2], p[3]]) as usize;
        let data_len = data_len.min(p.len() - 4);
        // 0b01: a continuing fragment; 0b00 and 0b10: the first of a PDU.
        if boundary == 0b01 {
            if let Some((h, left)) = self.discarding.get()
                && h == handle
            {
                let left = left.saturating_sub(data_len);
                self.discarding.set((left > 0).then_some((handle, left)));
                return None;
            }
            return Some(4 + data_len);
        }
        if self.discarding.get().is_some_and(|(h, _)| h == handle) {
            // A new PDU where the rest of the cut one was due: the link is confused; stop.
            self.discarding.set(None);
        }
        if data_len < 4 {
            return Some(4 + data_len);
        }
        let l2cap_len = u16::from_le_bytes([p[4], p[5]]);
        let cid = u16::from_le_bytes([p[6], p[7]]);
        if cid != ATT_CID || l2cap_len <= ATT_MTU {
            return Some(4 + data_len);
        }
        let here = data_len - 4;
        let rest = l2cap_len as usize - here.min(l2cap_len as usize);
        if rest > 0 {
            self.discarding.set(Some((handle, rest)));
        }
        let kept = KEPT_ATT_BYTES.min(here as u16);
        p[4..6].copy_from_slice(&kept.to_le_bytes());
        p[2..4].copy_from_slice(&(4 + kept).to_le_bytes());
        // Whatever the boundary flag said, the cut PDU is whole in this packet.
        self.cut.set(self.cut.get() + 1);
        Some(4 + 4 + kept as usize)
    }
}

/// One HCI packet's bytes as the controller sent them (without the packet-kind indicator).
struct Raw {
    kind: PacketKind,
    len: usize,
}

impl Raw {
    /// Header length, and where the payload length sits in it, for each packet kind.
    fn header(kind: PacketKind) -> Option<usize> {
        match kind {
            PacketKind::AclData | PacketKind::IsoData => Some(4),
            PacketKind::SyncData => Some(3),
            PacketKind::Event => Some(2),
            PacketKind::Cmd => None,
        }
    }

    fn payload_len(kind: PacketKind, h: &[u8]) -> usize {
        match kind {
            PacketKind::AclData => u16::from_le_bytes([h[2], h[3]]) as usize,
            PacketKind::IsoData => (u16::from_le_bytes([h[2], h[3]]) & 0x3FFF) as usize,
            PacketKind::SyncData => h[2] as usize,
            _ => h[1] as usize,
        }
    }
}

impl<'d> PacketToHost<'d> for Raw {
    fn read_hci<R: embedded_io::Read>(
        kind: PacketKind,
        data: &mut R,
        buf: &'d mut [u8],
    ) -> Result<Self, ReadHciError<R::Error>> {
        let header = Raw::header(kind).ok_or(ReadHciError::InvalidValue)?;
        let head = buf.get_mut(..header).ok_or(ReadHciError::BufferTooSmall)?;
        data.read_exact(head)?;
        let len = header + Raw::payload_len(kind, head);
        let body = buf
            .get_mut(header..len)
            .ok_or(ReadHciError::BufferTooSmall)?;
        data.read_exact(body)?;
        Ok(Raw { kind, len })
    }

    async fn read_hci_async<R: embedded_io_async::Read>(
        kind: PacketKind,
        data: &mut R,
        buf: &'d mut [u8],
    ) -> Result<Self, ReadHciError<R::Error>> {
        let header = Raw::header(kind).ok_or(ReadHciError::InvalidValue)?;
        let head = buf.get_mut(..header).ok_or(ReadHciError::BufferTooSmall)?;
        data.read_exact(head).await?;
        let len = header + Raw::payload_len(kind, head);
        let body = buf
            .get_mut(header..len)
            .ok_or(ReadHciError::BufferTooSmall)?;
        data.read_exact(body).await?;
        Ok(Raw { kind, len })
    }
}

impl<T: embedded_io::ErrorType> embedded_io::ErrorType for OversizeGuard<T> {
    type Error = T::Error;
}

impl<T> Transport for OversizeGuard<T>
where
    T: Transport,
    T::Error: From<ReadHciError<Infallible>>,
{
    async fn read<'a, P: PacketToHost<'a>>(&self, rx: &'a mut [u8]) -> Result<P, Self::Error> {
        let mut scratch = self.scratch.lock().await;
        loop {
            let raw: Raw = self.inner.read(&mut scratch[..]).await?;
            let len = match raw.kind {
                PacketKind::AclData => match self.filter_acl(&mut scratch[..raw.len]) {
                    Some(len) => len,
                    None => continue,
                },
                _ => raw.len,
            };
            let mut reader: &[u8] = &scratch[..len];
            return P::read_hci(raw.kind, &mut reader, rx).map_err(|e| {
                let e: ReadHciError<Infallible> = match e {
                    ReadHciError::BufferTooSmall => ReadHciError::BufferTooSmall,
                    ReadHciError::InvalidValue => ReadHciError::InvalidValue,
                    ReadHciError::Read(ReadExactError::UnexpectedEof) => {
                        ReadHciError::Read(ReadExactError::UnexpectedEof)
                    }
                    ReadHciError::Read(ReadExactError::Other(never)) => match never {},
                };
                e.into()
            });
        }
    }

    async fn write<P: PacketToController>(&self, tx: &P) -> Result<(), Self::Error> {
        self.inner.write(tx).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An ACL packet on `handle` with boundary flag `pb` carrying `data`.
    fn acl(handle: u16, pb: u16, data: &[u8]) -> heapless09::Vec<u8, MAX_ACL_PACKET> {
        let mut p = heapless09::Vec::new();
        let _ = p.extend_from_slice(&(handle | pb << 12).to_le_bytes());
        let _ = p.extend_from_slice(&(data.len() as u16).to_le_bytes());
        let _ = p.extend_from_slice(data);
        p
    }

    fn att(l2cap_len: u16, att: &[u8]) -> heapless09::Vec<u8, 255> {
        let mut d = heapless09::Vec::new();
        let _ = d.extend_from_slice(&l2cap_len.to_le_bytes());
        let _ = d.extend_from_slice(&ATT_CID.to_le_bytes());
        let _ = d.extend_from_slice(att);
        d
    }

    #[test]
    fn a_600_byte_write_request_is_cut_to_its_handle_and_its_fragments_dropped() {
        let g = OversizeGuard::new(());
        // Write Request (0x12) to handle 0x0010, 600 bytes of value: 603 bytes of ATT.
        let mut first_att = [0u8; 247];
        first_att[0] = 0x12;
        first_att[1] = 0x10;
        let mut p = acl(0x40, 0b10, &att(603, &first_att));
        let len = g.filter_acl(&mut p).unwrap();
        assert_eq!(&p[..len], &acl(0x40, 0b10, &att(3, &[0x12, 0x10, 0]))[..]);
        // 603 - 247 = 356 bytes follow in two continuations: both dropped.
        assert_eq!(g.filter_acl(&mut acl(0x40, 0b01, &[1; 251])), None);
        assert_eq!(g.filter_acl(&mut acl(0x40, 0b01, &[1; 105])), None);
        // The next PDU goes through untouched.
        let mut next = acl(0x40, 0b10, &att(3, &[0x0A, 0x10, 0]));
        let copy = next.clone();
        assert_eq!(g.filter_acl(&mut next), Some(copy.len()));
        assert_eq!(next, copy);
        assert_eq!(g.cut_count(), 1);
    }

    #[test]
    fn pdus_up_to_the_mtu_and_other_channels_pass_whole() {
        let g = OversizeGuard::new(());
        for (cid_att, l2cap_len) in [(true, ATT_MTU), (false, 1000)] {
            let mut d = att(l2cap_len, &[0x52; 200]);
            if !cid_att {
                d[2] = 0x05; // signalling channel
            }
            let mut p = acl(1, 0b10, &d);
            let copy = p.clone();
            assert_eq!(g.filter_acl(&mut p), Some(copy.len()));
            assert_eq!(p, copy);
            // Its continuation passes too.
            let mut c = acl(1, 0b01, &[0; 50]);
            assert_eq!(g.filter_acl(&mut c), Some(54));
        }
        assert_eq!(g.cut_count(), 0);
    }
}
