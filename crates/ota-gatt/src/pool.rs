//! The packet pool: buffers big enough for the device's ATT MTU of 498 and the 4-byte L2CAP
//! header. trouble-host answers an MTU exchange with the pool's MTU at most, so this pool is
//! also what caps the MTU. trouble-host's own pools offer 512 (ATT MTU 508) or 1024 bytes;
//! this one wastes nothing.
//!
//! Every received write holds one buffer until the update engine has taken it, so the pool
//! is sized for the receive queue ([`crate::RX_QUEUE_CHUNKS`]) plus room for responses,
//! notifications and reassembly.

use core::cell::{RefCell, UnsafeCell};

use embassy_sync::blocking_mutex::Mutex;
use embassy_sync::blocking_mutex::raw::CriticalSectionRawMutex;
use trouble_host::prelude::{Packet, PacketPool};

/// Largest ATT MTU the stack negotiates: the core's [`DEVICE_ATT_MTU`] (498, so a seed
/// client's unclamped packet size MTU - 3 stays within 512 and a full value fills two PDUs).
///
/// [`DEVICE_ATT_MTU`]: ota_core::protocol::DEVICE_ATT_MTU
pub const ATT_MTU: u16 = ota_core::protocol::DEVICE_ATT_MTU;
/// Bytes per buffer: the ATT MTU plus the L2CAP header.
pub const PACKET_LEN: usize = ATT_MTU as usize + 4;
/// Buffers in the pool.
pub const PACKETS: usize = crate::QUEUE_DEPTH + 24;

/// Which buffers are free; the buffers themselves live in [`BUFS`], reached only through raw
/// pointers to one slot each.
static FREE: Mutex<CriticalSectionRawMutex, RefCell<[bool; PACKETS]>> =
    Mutex::new(RefCell::new([true; PACKETS]));

struct Bufs(UnsafeCell<[[u8; PACKET_LEN]; PACKETS]>);
// SAFETY: each slot is accessed only by the one packet that owns it (FREE hands it out once).
unsafe impl Sync for Bufs {}
static BUFS: Bufs = Bufs(UnsafeCell::new([[0; PACKET_LEN]; PACKETS]));

/// The OTA stack's packet pool (a static one; both roles of one process share it).
pub struct OtaPacketPool;

/// A buffer of [`OtaPacketPool`].
pub struct OtaPacket {
    index: usize,
    buf: *mut u8,
}

// SAFETY: a packet owns its slot exclusively until dropped; the pool only hands out free slots.
unsafe impl Send for OtaPacket {}

impl PacketPool for OtaPacketPool {
    type Packet = OtaPacket;
    const MTU: usize = PACKET_LEN;

    fn allocate() -> Option<OtaPacket> {
        let index = FREE.lock(|free| {
            let mut free = free.borrow_mut();
            let index = free.iter().position(|f| *f)?;
            free[index] = false;
            Some(index)
        })?;
        // SAFETY: slot `index` was free and is now ours alone; no reference to the whole
        // array is ever formed.
        let buf = unsafe { (BUFS.0.get() as *mut [u8; PACKET_LEN]).add(index) as *mut u8 };
        // SAFETY: `buf` points at PACKET_LEN bytes of the slot we own.
        unsafe { core::ptr::write_bytes(buf, 0, PACKET_LEN) };
        Some(OtaPacket { index, buf })
    }

    fn capacity() -> usize {
        PACKETS
    }
}

/// Buffers not in use right now (for tests and diagnostics).
pub fn available() -> usize {
    FREE.lock(|free| free.borrow().iter().filter(|f| **f).count())
}

impl Packet for OtaPacket {}

impl AsRef<[u8]> for OtaPacket {
    fn as_ref(&self) -> &[u8] {
        // SAFETY: `buf` points at this packet's slot, which nobody else uses until drop.
        unsafe { core::slice::from_raw_parts(self.buf, PACKET_LEN) }
    }
}

impl AsMut<[u8]> for OtaPacket {
    fn as_mut(&mut self) -> &mut [u8] {
        // SAFETY: as above, and `&mut self` makes the access exclusive.
        unsafe { core::slice::from_raw_parts_mut(self.buf, PACKET_LEN) }
    }
}

impl Drop for OtaPacket {
    fn drop(&mut self) {
        let index = self.index;
        FREE.lock(|free| free.borrow_mut()[index] = true);
    }
}
