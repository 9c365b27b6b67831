//! Reference patterns of the best-known BLE OTA protocols, as small sans-I/O client and
//! device pairs that exchange the same ATT operations through the same [`Link`] and pay the
//! same flash time ([`FlashCost`](crate::flash::FlashCost)) as ours.
//!
//! They are patterns, not ports: each keeps what decides its speed (the ATT operation used for
//! data, the value size, what the client waits for and when, when the device writes flash)
//! and the byte layout of its data and acknowledgements, and leaves out what does not
//! (security, image management commands before and after the transfer). Each module says what
//! it keeps, what it leaves out, and where the protocol is documented.
//!
//! - [`espressif`]: Espressif's BLE OTA (esp-iot-solution `ble_ota`): 460-byte writes, one
//!   stop-and-wait acknowledgement per 4 KiB sector.
//! - [`smp`]: MCUmgr image upload over SMP (Zephyr): one request in flight.
//! - [`nordic`]: Nordic Secure DFU: write commands with a packet receipt notification every
//!   12 packets, 4 KiB objects created, checksummed and executed on the control point.

pub mod espressif;
pub mod nordic;
pub mod smp;

use std::time::Duration;

use ble_link_model::{
    CentralOp, Link, LinkEvent, LinkParams, LinkStats, Outcome, PeripheralOp, SubmitError,
};

/// A GATT write the client wants to make.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Write {
    /// Attribute handle.
    pub handle: u16,
    /// The value.
    pub value: Vec<u8>,
    /// Write request (true) or write command (false).
    pub with_response: bool,
}

/// The client half of a reference pattern.
pub trait Client {
    /// Returns the next write the protocol allows now, if any.
    fn poll_transmit(&mut self) -> Option<Write>;
    /// A notification arrived.
    fn handle_notification(&mut self, handle: u16, value: &[u8]);
    /// A write request was answered.
    fn handle_write_response(&mut self) {}
    /// Returns true once the transfer is complete (the device acknowledged the end).
    fn is_finished(&self) -> bool;
}

/// The device half of a reference pattern.
pub trait Device {
    /// Processes one write that arrived at modelled time `now` (since the link started);
    /// returns how long the device's receive path was busy with it.
    fn handle_write(&mut self, now: Duration, handle: u16, value: &[u8]) -> Duration;
    /// Returns the next notification to send, produced by the writes handled so far.
    fn poll_notification(&mut self) -> Option<(u16, Vec<u8>)>;
}

/// What one reference run measured.
#[derive(Debug, Clone)]
pub struct RefReport {
    /// Modelled time from the first write to the client's last awaited answer.
    pub modelled: Duration,
    /// Link statistics.
    pub link: LinkStats,
}

/// Runs `client` against `device` over a link with `params` until the client is finished.
///
/// # Panics
/// If nothing moves any more before the client is finished (a bug in a pattern), or the
/// pattern produces a write the link refuses.
pub fn run(params: LinkParams, client: &mut dyn Client, device: &mut dyn Device) -> RefReport {
    let mut link = Link::new(params).expect("link parameters must be valid");
    let mut waiting: Option<CentralOp> = None;
    let mut notes: std::collections::VecDeque<PeripheralOp> = Default::default();
    let mut finished_at = None;
    loop {
        while let Some(event) = link.poll_event() {
            match event {
                LinkEvent::DeliveredToPeripheral { at, id, op } => {
                    let now = at.elapsed();
                    let took = device.handle_write(now, op.handle(), op.value());
                    link.peripheral_complete(id, took, Outcome::Accept)
                        .expect("one completion per delivery");
                    while let Some((handle, value)) = device.poll_notification() {
                        notes.push_back(PeripheralOp::Notification { handle, value });
                    }
                }
                LinkEvent::DeliveredToCentral {
                    op: PeripheralOp::Notification { handle, value },
                    ..
                } => client.handle_notification(handle, &value),
                LinkEvent::WriteResponse { result, .. } => {
                    assert_eq!(result, Ok(()), "reference devices accept every write");
                    client.handle_write_response();
                }
                _ => {}
            }
            if finished_at.is_none() && client.is_finished() {
                finished_at = Some(link.now().elapsed());
            }
        }
        while let Some(op) = notes.pop_front() {
            if let Err(SubmitError::Full { .. }) = link.peripheral_submit(op.clone()) {
                notes.push_front(op);
                break;
            }
        }
        if let Some(modelled) = finished_at {
            return RefReport {
                modelled,
                link: link.stats(),
            };
        }
        loop {
            let op = match waiting.take() {
                Some(op) => op,
                None => match client.poll_transmit() {
                    None => break,
                    Some(w) if w.with_response => CentralOp::WriteRequest {
                        handle: w.handle,
                        value: w.value,
                    },
                    Some(w) => CentralOp::WriteCommand {
                        handle: w.handle,
                        value: w.value,
                    },
                },
            };
            match link.central_submit(op.clone()) {
                Ok(_) => {}
                Err(SubmitError::Full { .. }) => {
                    waiting = Some(op);
                    break;
                }
                Err(e) => panic!("the pattern produced a write the link refuses: {e}"),
            }
        }
        assert!(
            link.advance_to_next().is_some(),
            "the reference pattern stalled before it finished"
        );
    }
}
