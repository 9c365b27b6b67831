//! A deterministic timing model of one BLE connection carrying ATT operations.
//!
//! The model has no I/O and never reads a clock: the caller submits ATT operations on either
//! side, advances modelled time, and polls what happened (the sans-I/O style of `quinn-proto`
//! and `str0m`). The same inputs always give the same outputs. It serves two users: the
//! simulated transport between the `ble-ota` client and the virtual ESP32, whose protocol
//! engines exchange their bytes through it, and the benchmarks, which compare protocols in
//! modelled time.
//!
//! # The model
//!
//! One connection between a central (the client: phone, laptop) and a peripheral (the ESP32),
//! with the parameters of [`LinkParams`]. Times are whole µs from [`Instant::ZERO`], the first
//! anchor point; connection events are anchored at every multiple of the connection interval.
//!
//! - **Airtime.** An LL data packet with `n` payload bytes takes [`airtime_us`]: preamble
//!   (1 octet on LE 1M, 2 on LE 2M) + access address 4 + header 2 + `n` + CRC 3 octets, at
//!   8 µs per octet on LE 1M and 4 µs on LE 2M; no MIC (unencrypted), no CTE.
//! - **Connection events.** The central sends a packet, the peripheral answers `T_IFS`
//!   (150 µs) later with a data or empty packet, and the next pair starts `T_IFS` after that.
//!   An event starts at an anchor point if either side has data to send; it goes on while
//!   either side has more (the MD bit), the central has not reached
//!   [`LinkParams::max_packets_per_event`], and the next pair plus its trailing `T_IFS` ends
//!   by the next anchor point minus [`LinkParams::event_end_margin_us`] (150 µs in every
//!   profile, a controller's guard before the next event). Events in which neither side has
//!   data are not modelled (but count as attended for the supervision timeout).
//! - **Host to controller latency.** A packet carries only data that was ready strictly
//!   before its event's anchor point: what a host submits, or a peripheral finishes, during
//!   event `k` goes out in event `k + 1` at the earliest.
//! - **ATT on the wire.** An ATT PDU gets the 4-byte L2CAP header and is cut into LL packets
//!   of at most [`LinkParams::max_ll_payload`] bytes, sent back to back (a PDU's fragments
//!   are never interleaved with another PDU's). Write request and write command: 3 + value;
//!   notification: 3 + value; read request: 3; write response: 1; read response: 1 + value;
//!   error response: 5.
//! - **Sequential requests.** The central has one request (write request or read)
//!   outstanding at a time; write commands behind a waiting request still go. The peripheral
//!   answers a request only once it processed it. Because of the latency rule a request sent
//!   in event `k` is answered in event `k + 1` at the earliest and the next request goes in
//!   event `k + 2`: back-to-back write requests take exactly two connection intervals each
//!   when the device is fast enough.
//! - **Peripheral receive queue.** Complete PDUs from the central enter a queue of
//!   [`LinkParams::rx_queue_depth`] PDUs (the one being processed included). The peripheral's
//!   host takes them one at a time: the model delivers a PDU
//!   ([`LinkEvent::DeliveredToPeripheral`]), the caller says how long it took
//!   ([`Link::peripheral_complete`], or [`Link::peripheral_complete_work`] split into CPU and
//!   flash work), and the slot frees that much later. At a full queue,
//!   [`QueuePolicy::Stall`] refuses the PDU's first packet at the link layer (the central
//!   sends it again in the next pair, nothing is lost), [`QueuePolicy::Drop`] acknowledges it
//!   and throws the PDU away ([`LinkEvent::Dropped`]).
//! - **TX buffers.** The central buffers [`LinkParams::central_tx_buffer`] PDUs, the
//!   peripheral [`LinkParams::peripheral_tx_buffer`] notifications; a PDU leaves the buffer
//!   when the link layer acknowledged its last fragment ([`LinkEvent::Transmitted`]). A full
//!   buffer refuses [`Link::central_submit`], as a real stack blocks its writer.
//! - **Radio stopped during flash work.** On the ESP32-C3/C6 esp-storage masks every
//!   interrupt around each ROM erase and program call, so the BLE controller stops while the
//!   flash erases or programs. The flash part of [`Link::peripheral_complete_work`] is such a
//!   span: connection events anchored inside it do not happen
//!   ([`LinkStats::missed_events`]), no packet pair overlaps it (an event in progress ends, a
//!   packet in the air is lost and sent again, a lost acknowledgement makes the central send
//!   its packet again), the peripheral sends nothing. Spans of consecutive PDUs with no
//!   anchor point between them are one outage. [`FlashTiming::ops_time`] is the rule for
//!   the span's length; [`FlashTiming::WORST_CASE_4MB_SPI_NOR`] gives datasheet maxima.
//! - **Supervision timeout.** When the time from the anchor point of the last event the
//!   peripheral attended to the next one it can attend reaches
//!   [`LinkParams::supervision_timeout`] (each profile cites its central's default), the link
//!   is lost ([`LinkEvent::SupervisionTimeout`]) and carries nothing more
//!   ([`SubmitError::Disconnected`]).
//! - **Not modelled:** packet loss and CRC errors other than those of flash spans, encryption,
//!   channel map, ATT transaction timeouts, peripheral latency, the central host's processing
//!   time (it takes what arrives at once), connection parameter updates, reconnection after
//!   a supervision timeout. The peripheral answers no faster than the next event even if it
//!   could reply within `T_IFS`. The supervision timer is measured from anchor points, not
//!   from the last packet received.
//!
//! Every parameter cites its source next to it: the Bluetooth Core Specification 5.x section
//! for packet formats, airtime and timing ([`params`]), the flash datasheet for
//! [`FlashTiming`].
//!
//! # Run loop
//!
//! The caller owns the two protocol engines and the clock of their timers, and repeats:
//!
//! 1. Drain [`Link::poll_event`] and hand each event to its engine:
//!    [`LinkEvent::DeliveredToPeripheral`] to the device, which processes it and reports the
//!    time it took with [`Link::peripheral_complete`] at once (or
//!    [`Link::peripheral_complete_work`], when part of it is flash work that stops the
//!    radio), then submits the notifications it produced with [`Link::peripheral_submit`]
//!    (they go out after that processing);
//!    [`LinkEvent::DeliveredToCentral`], [`LinkEvent::WriteResponse`] and
//!    [`LinkEvent::ReadResponse`] to the client.
//! 2. Let the client submit with [`Link::central_submit`] until it has nothing more or the
//!    buffer is full ([`SubmitError::Full`]: keep the operation and retry after the next
//!    [`LinkEvent::Transmitted`]).
//! 3. Move time: to [`Link::next_event_time`] with [`Link::advance_to_next`], or, when an
//!    engine's timer is due earlier, to that time with [`Link::advance_to`] and fire the
//!    timer. Advancing stops at the first step that produced events, so every reaction
//!    happens at the exact modelled time ([`Link::now`]).
//! 4. Stop when neither the link nor the engines have anything scheduled, or at
//!    [`LinkEvent::SupervisionTimeout`].
//!
//! ```
//! use std::time::Duration;
//! use ble_link_model::{CentralOp, Link, LinkEvent, LinkParams, Outcome};
//!
//! // A client that writes 4 chunks with write requests, one at a time, to a device that
//! // takes 1 ms per write.
//! let mut link = Link::new(LinkParams::desktop()).unwrap();
//! let mut to_send = 4;
//! let mut waiting = false;
//! loop {
//!     while let Some(event) = link.poll_event() {
//!         match event {
//!             LinkEvent::DeliveredToPeripheral { id, .. } => {
//!                 link.peripheral_complete(id, Duration::from_millis(1), Outcome::Accept).unwrap();
//!             }
//!             LinkEvent::WriteResponse { result, .. } => {
//!                 assert_eq!(result, Ok(()));
//!                 waiting = false;
//!             }
//!             _ => {}
//!         }
//!     }
//!     if !waiting && to_send > 0 {
//!         link.central_submit(CentralOp::WriteRequest { handle: 0x10, value: vec![0; 200] }).unwrap();
//!         to_send -= 1;
//!         waiting = true;
//!     }
//!     if link.advance_to_next().is_none() {
//!         break;
//!     }
//! }
//! // Two 7.5 ms intervals per request; the last answer arrives in the 8th event.
//! assert_eq!(link.now().as_millis(), 60);
//! assert_eq!(link.stats().bytes_to_peripheral, 800);
//! ```

#![forbid(unsafe_code)]
#![warn(missing_docs, unreachable_pub)]

mod att;
pub mod ceilings;
mod error;
mod flash;
mod link;
pub mod params;
mod time;

pub use att::{CentralOp, Outcome, PduId, PeripheralOp};
pub use error::{CompleteError, ParamError, SubmitError};
pub use flash::FlashTiming;
pub use link::{Link, LinkEvent, LinkStats};
pub use params::{LinkParams, Phy, Profile, QueuePolicy, T_IFS_US, airtime_us};
pub use time::Instant;
