//! The connection: a discrete-event state machine driven by its caller.

use std::collections::VecDeque;
use std::time::Duration;

use crate::att::{Answer, CentralOp, Outcome, PduId, PeripheralOp};
use crate::error::{CompleteError, ParamError, SubmitError};
use crate::params::{LinkParams, MAX_ATTRIBUTE_LEN, QueuePolicy, T_IFS_US, airtime_us, pair_us};
use crate::time::{Instant, ceil_us};

/// Something that happened on the link, for the caller to act on.
///
/// Every event carries the modelled time it happened at, `at`; [`Link::now`] equals the
/// latest `at` handed out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LinkEvent {
    /// The peripheral's host takes `op` from its receive queue and starts processing it.
    /// Answer with [`Link::peripheral_complete`] before advancing time again.
    DeliveredToPeripheral {
        /// Processing starts.
        at: Instant,
        /// The PDU's id.
        id: PduId,
        /// What the central sent.
        op: CentralOp,
    },
    /// A notification reached the central's host.
    DeliveredToCentral {
        /// The last fragment arrived.
        at: Instant,
        /// The PDU's id.
        id: PduId,
        /// What the peripheral sent.
        op: PeripheralOp,
    },
    /// The answer to a write request reached the central: `Err` carries the ATT error code.
    /// The central may send its next request from now on.
    WriteResponse {
        /// The answer arrived.
        at: Instant,
        /// The write request's id.
        request: PduId,
        /// Written, or refused with an ATT error code.
        result: Result<(), u8>,
    },
    /// The answer to a read reached the central: the value, or an ATT error code.
    ReadResponse {
        /// The answer arrived.
        at: Instant,
        /// The read request's id.
        request: PduId,
        /// The value, or an ATT error code.
        result: Result<Vec<u8>, u8>,
    },
    /// The link layer acknowledged the last fragment of a submitted PDU: it left the
    /// submitter's TX buffer, which has room for one more.
    Transmitted {
        /// The acknowledgement arrived.
        at: Instant,
        /// The PDU's id.
        id: PduId,
    },
    /// The peripheral's host dropped a central PDU because its receive queue was full
    /// ([`QueuePolicy::Drop`]). The central is not told; this event is for observers only.
    /// A dropped request is never answered.
    Dropped {
        /// The last fragment arrived.
        at: Instant,
        /// The PDU's id.
        id: PduId,
    },
    /// The link was lost: [`LinkParams::supervision_timeout`] passed since the anchor point
    /// of the last connection event the peripheral attended, while flash work kept its radio
    /// stopped. Emitted once; afterwards the link carries nothing, every buffer and queue is
    /// discarded, submits fail with [`SubmitError::Disconnected`] and
    /// [`Link::next_event_time`] is `None`.
    SupervisionTimeout {
        /// The supervision timer expired.
        at: Instant,
    },
}

impl LinkEvent {
    /// Returns when the event happened.
    pub fn at(&self) -> Instant {
        match self {
            LinkEvent::DeliveredToPeripheral { at, .. }
            | LinkEvent::DeliveredToCentral { at, .. }
            | LinkEvent::WriteResponse { at, .. }
            | LinkEvent::ReadResponse { at, .. }
            | LinkEvent::Transmitted { at, .. }
            | LinkEvent::Dropped { at, .. }
            | LinkEvent::SupervisionTimeout { at } => *at,
        }
    }
}

/// Counters of everything the link did so far.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct LinkStats {
    /// Modelled time since the link was created ([`Link::now`]).
    pub elapsed: Duration,
    /// Connection events that carried at least one packet pair. Events in which neither side
    /// had anything to send are not modelled and not counted.
    pub connection_events: u64,
    /// LL packets the central sent: data, empty and retransmitted ones.
    pub central_packets: u64,
    /// LL packets the peripheral sent, empty ones included.
    pub peripheral_packets: u64,
    /// Central packets carrying data (retransmissions included).
    pub central_data_packets: u64,
    /// Peripheral packets carrying data.
    pub peripheral_data_packets: u64,
    /// Central data packets sent again: the peripheral did not acknowledge them because its
    /// receive queue was full ([`QueuePolicy::Stall`]), or did not hear them, or the central
    /// did not hear the acknowledgement, because flash work stopped the peripheral's radio.
    pub retransmissions: u64,
    /// Radio time of all packets (the `T_IFS` gaps excluded).
    pub airtime: Duration,
    /// Central PDUs that entered the peripheral's receive queue.
    pub pdus_to_peripheral: u64,
    /// Attribute value bytes of those PDUs.
    pub bytes_to_peripheral: u64,
    /// Notifications and answers that reached the central.
    pub pdus_to_central: u64,
    /// Attribute value bytes of notifications and read responses that reached the central.
    pub bytes_to_central: u64,
    /// Central PDUs dropped at a full receive queue ([`QueuePolicy::Drop`]).
    pub dropped_pdus: u64,
    /// Attribute value bytes of those PDUs.
    pub dropped_bytes: u64,
    /// Connection events that did not happen because their anchor point fell inside a span
    /// of flash work that stopped the peripheral's radio
    /// ([`Link::peripheral_complete_work`]): the central transmitted and got no answer. Every
    /// anchor point up to [`Link::now`] counts, whether or not either side had data (the
    /// central polls an idle link with empty packets); after a supervision timeout none do.
    pub missed_events: u64,
}

/// A central PDU in the central's TX buffer.
#[derive(Debug, Clone)]
struct CentralTx {
    id: PduId,
    op: CentralOp,
    wire_len: u32,
    /// Submitted; eligible for connection events anchored strictly later.
    ready: u64,
    /// Bytes the peripheral's link layer acknowledged.
    sent: u32,
}

/// What the peripheral sends.
#[derive(Debug, Clone)]
enum PeripheralBody {
    Notification(PeripheralOp),
    Answer { read: bool, answer: Answer },
}

/// A peripheral PDU in the peripheral's TX buffer.
#[derive(Debug, Clone)]
struct PeripheralTx {
    /// The notification's id, or the answered request's id.
    id: PduId,
    body: PeripheralBody,
    wire_len: u32,
    ready: u64,
    sent: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Command,
    WriteRequest,
    Read,
}

/// The PDU the peripheral's host is processing.
#[derive(Debug, Clone, Copy)]
struct Processing {
    id: PduId,
    kind: Kind,
    start: u64,
    /// Known once the caller completed it.
    finish: Option<u64>,
}

/// Where the connection event in progress stands.
#[derive(Debug, Clone, Copy)]
enum Phase {
    /// No connection event in progress.
    Idle,
    /// The next packet pair would start `at`, if the event goes on.
    PairStart { anchor: u64, pairs: u32, at: u64 },
    /// The central's packet of the current pair ends `at`; `resend` when it repeats a packet
    /// whose acknowledgement the central did not hear.
    CentralRx {
        anchor: u64,
        pairs: u32,
        at: u64,
        c_len: u32,
        p_len: u32,
        resend: bool,
    },
    /// The peripheral's packet of the current pair ends `at`; it acknowledges `acked` bytes
    /// of central data the peripheral took in this pair.
    PeripheralRx {
        anchor: u64,
        pairs: u32,
        at: u64,
        p_len: u32,
        acked: u32,
    },
}

/// One internal step of the simulation.
#[derive(Debug, Clone, Copy)]
enum Step {
    /// The supervision timer expires: the link is lost.
    Drop,
    /// The peripheral finishes processing.
    Finish,
    /// A connection event starts at this anchor point.
    Anchor(u64),
    /// The event in progress moves to its next phase.
    Phase,
}

/// One BLE connection between a central and a peripheral, in modelled time.
///
/// See the [crate documentation](crate) for the model and the run loop.
#[derive(Debug, Clone)]
pub struct Link {
    params: LinkParams,
    interval: u64,
    now: u64,
    next_id: u64,
    phase: Phase,
    last_anchor: Option<u64>,

    c_queue: VecDeque<CentralTx>,
    /// The central PDU being fragmented (started in an event, not fully acknowledged).
    c_current: Option<CentralTx>,
    /// A central PDU whose last fragment the peripheral received in the pair in progress; the
    /// central learns of it with the peripheral's packet.
    c_awaiting_ack: Option<PduId>,
    /// The request handed to the link layer whose answer has not arrived.
    outstanding: Option<PduId>,
    /// When the last answer arrived: the next request goes in a later event.
    unblocked_at: u64,

    p_queue: VecDeque<PeripheralTx>,
    p_current: Option<PeripheralTx>,
    rx_queue: VecDeque<(PduId, CentralOp)>,
    processing: Option<Processing>,
    /// End of the peripheral's latest known processing: it submits nothing before.
    device_free_at: u64,
    /// A central data packet of this length the peripheral took but whose acknowledgement the
    /// central did not hear: the central sends it again first.
    c_resend: Option<u32>,

    /// Spans `[start, end)` of flash work during which the peripheral's radio is stopped, in
    /// time order, adjacent ones merged; spans long past are pruned.
    blocks: VecDeque<(u64, u64)>,
    /// Missed anchor points of pruned spans.
    missed_pruned: u64,
    /// End of the latest span.
    outage_end: Option<u64>,
    /// Anchor point of the last connection event the peripheral attended before the outage
    /// the latest span belongs to (spans with no anchor point between them form one outage).
    outage_prev: u64,
    /// When the supervision timer expires, once an outage is long enough.
    drop_at: Option<u64>,
    /// When the link was lost.
    disconnected: Option<u64>,

    events: VecDeque<LinkEvent>,
    emitted: u64,
    stats: LinkStats,
}

impl Link {
    /// Creates a link that was established at [`Instant::ZERO`], its first anchor point.
    ///
    /// # Errors
    ///
    /// Returns the first parameter out of range ([`LinkParams::validate`]).
    pub fn new(params: LinkParams) -> Result<Self, ParamError> {
        params.validate()?;
        Ok(Link {
            params,
            interval: params.conn_interval_us() as u64,
            now: 0,
            next_id: 1,
            phase: Phase::Idle,
            last_anchor: None,
            c_queue: VecDeque::new(),
            c_current: None,
            c_awaiting_ack: None,
            outstanding: None,
            unblocked_at: 0,
            p_queue: VecDeque::new(),
            p_current: None,
            rx_queue: VecDeque::new(),
            processing: None,
            device_free_at: 0,
            c_resend: None,
            blocks: VecDeque::new(),
            missed_pruned: 0,
            outage_end: None,
            outage_prev: 0,
            drop_at: None,
            disconnected: None,
            events: VecDeque::new(),
            emitted: 0,
            stats: LinkStats::default(),
        })
    }

    /// Returns the parameters.
    pub fn params(&self) -> &LinkParams {
        &self.params
    }

    /// Returns the current modelled time.
    pub fn now(&self) -> Instant {
        Instant::from_micros(self.now)
    }

    /// Returns the counters, with `elapsed` set to [`Link::now`].
    pub fn stats(&self) -> LinkStats {
        LinkStats {
            elapsed: Duration::from_micros(self.now),
            missed_events: self.missed_events(),
            ..self.stats
        }
    }

    /// Returns when the link was lost to a supervision timeout, `None` while it is up.
    pub fn disconnected_at(&self) -> Option<Instant> {
        self.disconnected.map(Instant::from_micros)
    }

    /// Returns true while the link is up (no supervision timeout yet).
    pub fn is_connected(&self) -> bool {
        self.disconnected.is_none()
    }

    /// Returns how many more PDUs [`Link::central_submit`] takes now (none once the link was
    /// lost).
    pub fn central_tx_free(&self) -> usize {
        if self.disconnected.is_some() {
            return 0;
        }
        (self.params.central_tx_buffer as usize).saturating_sub(self.central_tx_len())
    }

    /// Returns how many more notifications [`Link::peripheral_submit`] takes now (none once
    /// the link was lost).
    pub fn peripheral_tx_free(&self) -> usize {
        if self.disconnected.is_some() {
            return 0;
        }
        (self.params.peripheral_tx_buffer as usize).saturating_sub(self.peripheral_tx_len())
    }

    /// Returns the PDUs in the peripheral's receive queue, the one being processed included.
    pub fn rx_queue_len(&self) -> usize {
        self.rx_occupancy()
    }

    /// Returns true when nothing is buffered, in flight, queued or being processed and every
    /// event was polled; once the link was lost, as soon as its events were polled.
    pub fn is_idle(&self) -> bool {
        self.c_queue.is_empty()
            && self.c_current.is_none()
            && self.c_awaiting_ack.is_none()
            && self.c_resend.is_none()
            && self.p_queue.is_empty()
            && self.p_current.is_none()
            && self.rx_queue.is_empty()
            && self.processing.is_none()
            && self.events.is_empty()
    }

    /// Queues an ATT operation at the central, ready now; returns its id.
    ///
    /// It goes out in the first connection event anchored after [`Link::now`] that has room;
    /// a request also waits until the previous request's answer arrived (write commands pass
    /// a waiting request).
    ///
    /// # Errors
    ///
    /// [`SubmitError::Full`] when the central's TX buffer is full (retry after a
    /// [`LinkEvent::Transmitted`]); [`SubmitError::ValueTooLong`] when the value does not fit
    /// one ATT PDU; [`SubmitError::Disconnected`] once the link was lost.
    pub fn central_submit(&mut self, op: CentralOp) -> Result<PduId, SubmitError> {
        self.check_connected()?;
        self.check_value(op.value().len())?;
        if self.central_tx_free() == 0 {
            return Err(SubmitError::Full {
                capacity: self.params.central_tx_buffer,
            });
        }
        let id = self.new_id();
        let wire_len = op.wire_len();
        self.c_queue.push_back(CentralTx {
            id,
            op,
            wire_len,
            ready: self.now,
            sent: 0,
        });
        Ok(id)
    }

    /// Queues a notification at the peripheral; returns its id.
    ///
    /// The peripheral's host is one serial processor: the notification is ready when the
    /// processing the caller last completed ends (or now, if that is over), so a notification
    /// submitted right after [`Link::peripheral_complete`] follows that PDU's work and its
    /// answer.
    ///
    /// # Errors
    ///
    /// [`SubmitError::Full`] when the peripheral's TX buffer is full;
    /// [`SubmitError::ValueTooLong`] when the value does not fit one ATT PDU;
    /// [`SubmitError::Disconnected`] once the link was lost.
    pub fn peripheral_submit(&mut self, op: PeripheralOp) -> Result<PduId, SubmitError> {
        self.check_connected()?;
        self.check_value(op.value().len())?;
        if self.peripheral_tx_free() == 0 {
            return Err(SubmitError::Full {
                capacity: self.params.peripheral_tx_buffer,
            });
        }
        let id = self.new_id();
        let wire_len = op.wire_len();
        let ready = self.now.max(self.device_free_at);
        let body = PeripheralBody::Notification(op);
        self.p_queue.push_back(PeripheralTx {
            id,
            body,
            wire_len,
            ready,
            sent: 0,
        });
        Ok(id)
    }

    /// Reports that the peripheral finished processing PDU `id` after `took` (rounded up to a
    /// whole µs) of CPU work, counted from `start`, the `at` of its
    /// [`LinkEvent::DeliveredToPeripheral`]. The radio keeps running throughout: the same as
    /// [`Link::peripheral_complete_work`] with `cpu = took` and no flash work.
    ///
    /// Its receive queue slot frees at `start + took` and the next queued PDU is delivered
    /// then. A write request is answered with `ATT_WRITE_RSP` (or `ATT_ERROR_RSP` for
    /// [`Outcome::Reject`]), a read with `ATT_READ_RSP` carrying [`Outcome::Value`]; the
    /// answer is ready at `start + took`. A write command is not answered.
    ///
    /// Call it right after [`LinkEvent::DeliveredToPeripheral`], before advancing time: the
    /// model does not rewrite the past, so a completion arriving after time moved beyond
    /// `start + took` ends at [`Link::now`] instead.
    ///
    /// # Errors
    ///
    /// [`CompleteError::NotProcessing`] when `id` is not the PDU being processed or was
    /// completed already; [`CompleteError::OutcomeMismatch`] when `outcome` does not answer
    /// the PDU (a value for a write, [`Outcome::Accept`] for a read);
    /// [`CompleteError::Disconnected`] once the link was lost.
    pub fn peripheral_complete(
        &mut self,
        id: PduId,
        took: Duration,
        outcome: Outcome,
    ) -> Result<(), CompleteError> {
        self.peripheral_complete_work(id, took, Duration::ZERO, outcome)
    }

    /// Reports that the peripheral processed PDU `id` with `cpu` of CPU work followed by
    /// `flash` of flash work (each rounded up to a whole µs), counted from `start`, the `at`
    /// of its [`LinkEvent::DeliveredToPeripheral`].
    ///
    /// During the CPU work the radio runs as usual. During the flash work, the span
    /// `[start + cpu, start + cpu + flash)`, the peripheral's radio is stopped: on the
    /// ESP32-C3/C6 esp-storage masks every interrupt around each ROM erase and program call,
    /// so the BLE controller attends no connection event. In that span:
    ///
    /// - a connection event whose anchor point falls inside it does not happen (the central
    ///   sends and gets no answer; counted in [`LinkStats::missed_events`]);
    /// - no packet pair overlaps it: an event in progress ends before its first pair that
    ///   would, and a packet in the air when the span starts is lost (a lost central packet is
    ///   sent again; a lost acknowledgement makes the central send its packet again, which the
    ///   peripheral acknowledges without taking it twice);
    /// - the peripheral sends nothing.
    ///
    /// With `cpu` zero the span starts when the PDU arrived, so the peripheral's packet of
    /// that very pair is lost too; pass the host's latency as `cpu` if the controller answers
    /// before the host starts writing. Spans of consecutive PDUs with no connection event
    /// between them form one outage. When the time from the anchor point of the last event
    /// the peripheral attended to the next one it can attend reaches
    /// [`LinkParams::supervision_timeout`], the link is lost at that anchor point plus the
    /// timeout ([`LinkEvent::SupervisionTimeout`]).
    ///
    /// The receive queue slot frees, the next queued PDU is delivered and the answer (if any)
    /// is ready at `start + cpu + flash`, as for [`Link::peripheral_complete`]. A completion
    /// given after time moved on does not rewrite the past: both ends of the span and the end
    /// of processing are taken no earlier than [`Link::now`].
    ///
    /// # Errors
    ///
    /// As [`Link::peripheral_complete`].
    pub fn peripheral_complete_work(
        &mut self,
        id: PduId,
        cpu: Duration,
        flash: Duration,
        outcome: Outcome,
    ) -> Result<(), CompleteError> {
        if self.disconnected.is_some() {
            return Err(CompleteError::Disconnected);
        }
        let max_read = (self.params.att_mtu as usize - 1).min(MAX_ATTRIBUTE_LEN);
        let now = self.now;
        let Some(p) = self
            .processing
            .as_mut()
            .filter(|p| p.id == id && p.finish.is_none())
        else {
            return Err(CompleteError::NotProcessing(id));
        };
        let answer = match (p.kind, outcome) {
            (Kind::Command, Outcome::Accept | Outcome::Reject(_)) => None,
            (Kind::WriteRequest, Outcome::Accept) => Some(Answer::Written),
            (Kind::WriteRequest | Kind::Read, Outcome::Reject(code)) => Some(Answer::Error(code)),
            (Kind::Read, Outcome::Value(mut value)) => {
                value.truncate(max_read);
                Some(Answer::Read(value))
            }
            _ => return Err(CompleteError::OutcomeMismatch(id)),
        };
        let cpu_end = p.start.saturating_add(ceil_us(cpu));
        let flash_end = cpu_end.saturating_add(ceil_us(flash));
        let finish = flash_end.max(now);
        p.finish = Some(finish);
        let read = p.kind == Kind::Read;
        self.device_free_at = finish;
        self.block(cpu_end.max(now), finish);
        if let Some(answer) = answer {
            let wire_len = answer.wire_len();
            let body = PeripheralBody::Answer { read, answer };
            self.p_queue.push_back(PeripheralTx {
                id,
                body,
                wire_len,
                ready: finish,
                sent: 0,
            });
        }
        Ok(())
    }

    /// Returns the next event, oldest first.
    pub fn poll_event(&mut self) -> Option<LinkEvent> {
        self.events.pop_front()
    }

    /// Returns when the model's next internal step happens, `None` when nothing will happen
    /// until the caller submits or completes something.
    pub fn next_event_time(&self) -> Option<Instant> {
        self.next_step().map(|(t, _)| Instant::from_micros(t))
    }

    /// Runs the model up to `t` and returns the time reached.
    ///
    /// Internal steps run in time order. The call stops right after the first step that
    /// produced events, at that step's time, so the caller can react at the exact modelled
    /// time (complete a delivery, send the next request); call again to go on. Otherwise time
    /// moves to `t`. Time never goes back: a `t` before [`Link::now`] does nothing.
    pub fn advance_to(&mut self, t: Instant) -> Instant {
        let target = t.as_micros();
        let emitted = self.emitted;
        while let Some((time, step)) = self.next_step() {
            if time > target {
                break;
            }
            self.now = self.now.max(time);
            self.run(step);
            if self.emitted != emitted {
                return self.now();
            }
        }
        self.now = self.now.max(target);
        self.now()
    }

    /// Runs the model to its next internal step ([`Link::next_event_time`]) and returns the
    /// time reached, or `None` when nothing is scheduled.
    pub fn advance_to_next(&mut self) -> Option<Instant> {
        let (t, _) = self.next_step()?;
        Some(self.advance_to(Instant::from_micros(t)))
    }

    fn new_id(&mut self) -> PduId {
        let id = PduId(self.next_id);
        self.next_id += 1;
        id
    }

    fn check_connected(&self) -> Result<(), SubmitError> {
        match self.disconnected {
            Some(_) => Err(SubmitError::Disconnected),
            None => Ok(()),
        }
    }

    /// Records that the peripheral's radio is stopped during `[start, end)` (`start` is never
    /// before [`Link::now`] nor before the end of the previous span), and arms the
    /// supervision timeout when the outage it belongs to is long enough.
    fn block(&mut self, start: u64, end: u64) {
        if end <= start {
            return;
        }
        let i = self.interval;
        // Spans that ended an interval ago matter no more for packets or anchor points.
        while let Some(&(s, e)) = self.blocks.front() {
            if e.saturating_add(i) > self.now {
                break;
            }
            self.missed_pruned += self.missed_in(s, e, u64::MAX);
            self.blocks.pop_front();
        }
        // A new outage starts unless no anchor point lies between the previous span and this
        // one (an anchor point at `start` is inside this span).
        let continues = self
            .outage_end
            .is_some_and(|prev_end| prev_end.div_ceil(i) * i >= start);
        if !continues {
            // The last anchor point before the span: the peripheral attended it.
            self.outage_prev = start.saturating_sub(1) / i * i;
        }
        self.outage_end = Some(end);
        match self.blocks.back_mut() {
            Some(last) if last.1 == start => last.1 = end,
            _ => self.blocks.push_back((start, end)),
        }
        let next_attended = end.div_ceil(i) * i;
        let timeout = self.params.supervision_timeout_us();
        if self.drop_at.is_none() && next_attended - self.outage_prev >= timeout {
            self.drop_at = Some(self.outage_prev + timeout);
        }
    }

    /// Returns the anchor points in `[start, end)` that are missed by `upto` (inclusive):
    /// before the link was lost.
    fn missed_in(&self, start: u64, end: u64, upto: u64) -> u64 {
        let i = self.interval;
        let mut hi = end.min(upto.saturating_add(1));
        if let Some(d) = self.drop_at {
            hi = hi.min(d);
        }
        if hi <= start {
            return 0;
        }
        hi.div_ceil(i) - start.div_ceil(i)
    }

    fn missed_events(&self) -> u64 {
        self.missed_pruned
            + self
                .blocks
                .iter()
                .map(|&(s, e)| self.missed_in(s, e, self.now))
                .sum::<u64>()
    }

    /// Returns true when the peripheral's radio is stopped at some time in `[from, to)`.
    fn overlaps_block(&self, from: u64, to: u64) -> bool {
        self.blocks.iter().any(|&(s, e)| s < to && e > from)
    }

    /// Returns the first anchor point at or after `a` outside every span.
    fn attended_from(&self, mut a: u64) -> u64 {
        let i = self.interval;
        for &(s, e) in &self.blocks {
            if s <= a && a < e {
                a = e.div_ceil(i) * i;
            }
        }
        a
    }

    fn check_value(&self, len: usize) -> Result<(), SubmitError> {
        let max = self.params.max_value_len();
        if len > max {
            return Err(SubmitError::ValueTooLong { len, max });
        }
        Ok(())
    }

    fn central_tx_len(&self) -> usize {
        self.c_queue.len()
            + usize::from(self.c_current.is_some())
            + usize::from(self.c_awaiting_ack.is_some())
    }

    fn peripheral_tx_len(&self) -> usize {
        let is_notification = |p: &PeripheralTx| matches!(p.body, PeripheralBody::Notification(_));
        self.p_queue.iter().filter(|p| is_notification(p)).count()
            + self.p_current.iter().filter(|p| is_notification(p)).count()
    }

    fn rx_occupancy(&self) -> usize {
        self.rx_queue.len() + usize::from(self.processing.is_some())
    }

    fn rx_full(&self) -> bool {
        self.rx_occupancy() >= self.params.rx_queue_depth as usize
    }

    fn emit(&mut self, event: LinkEvent) {
        self.events.push_back(event);
        self.emitted += 1;
    }

    /// Returns the central PDU the ATT bearer hands to the link layer next in the event
    /// anchored at `anchor`: the oldest one submitted before the anchor, skipping requests
    /// while a request is outstanding or its answer arrived after the anchor.
    fn central_pick(&self, anchor: u64) -> Option<usize> {
        self.c_queue.iter().position(|c| {
            c.ready < anchor
                && (!c.op.is_request()
                    || (self.outstanding.is_none() && self.unblocked_at < anchor))
        })
    }

    /// Returns true when the peripheral sends its queue's head in the event at `anchor`.
    fn peripheral_pick(&self, anchor: u64) -> bool {
        self.p_current.is_none() && self.p_queue.front().is_some_and(|p| p.ready < anchor)
    }

    /// Returns true when the central's PDU waits for a receive slot that only a completion
    /// the caller has not given yet can free: events would only carry retransmissions.
    fn central_stuck(&self) -> bool {
        self.c_resend.is_none()
            && self.c_current.as_ref().is_some_and(|c| c.sent == 0)
            && self.params.full_queue == QueuePolicy::Stall
            && self.rx_full()
            && self.processing.is_some_and(|p| p.finish.is_none())
    }

    /// Returns the next anchor point at which either side has something to send.
    fn next_anchor(&self) -> Option<u64> {
        let i = self.interval;
        let mut lo = self.now.div_ceil(i) * i;
        if let Some(last) = self.last_anchor {
            lo = lo.max(last + i);
        }
        // The first anchor strictly after `ready`.
        let after = |ready: u64| (ready / i + 1) * i;
        let mut best: Option<u64> = None;
        let mut offer = |a: u64| {
            let a = a.max(lo);
            best = Some(best.map_or(a, |b| b.min(a)));
        };
        if self.c_resend.is_some() {
            offer(lo);
        }
        if self.c_current.is_some() {
            if !self.central_stuck() {
                offer(lo);
            }
        } else {
            for c in &self.c_queue {
                if !c.op.is_request() {
                    offer(after(c.ready));
                } else if self.outstanding.is_none() {
                    offer(after(c.ready.max(self.unblocked_at)));
                }
            }
        }
        if self.p_current.is_some() {
            offer(lo);
        } else if let Some(p) = self.p_queue.front() {
            offer(after(p.ready));
        }
        // Anchor points inside a span are missed: the event is the next one attended.
        best.map(|a| self.attended_from(a))
    }

    /// Returns the earliest internal step; at equal times the link is lost first, then a
    /// finishing peripheral frees its slot before a packet arrives. Nothing once the link was
    /// lost.
    fn next_step(&self) -> Option<(u64, Step)> {
        if self.disconnected.is_some() {
            return None;
        }
        let mut best: Option<(u64, u8, Step)> = None;
        let mut consider = |t: u64, rank: u8, step: Step| {
            if best.is_none_or(|(bt, br, _)| (t, rank) < (bt, br)) {
                best = Some((t, rank, step));
            }
        };
        if let Some(d) = self.drop_at {
            consider(d, 0, Step::Drop);
        }
        if let Some(Processing {
            finish: Some(f), ..
        }) = self.processing
        {
            consider(f, 1, Step::Finish);
        }
        match self.phase {
            Phase::Idle => {
                if let Some(a) = self.next_anchor() {
                    consider(a, 4, Step::Anchor(a));
                }
            }
            Phase::CentralRx { at, .. } => consider(at, 2, Step::Phase),
            Phase::PeripheralRx { at, .. } => consider(at, 3, Step::Phase),
            Phase::PairStart { at, .. } => consider(at, 4, Step::Phase),
        }
        best.map(|(t, _, step)| (t, step))
    }

    /// The supervision timer expired: the link is lost and everything in flight with it.
    fn disconnect(&mut self) {
        // Count the missed anchor points while the spans are still known.
        self.missed_pruned = self.missed_events();
        self.blocks.clear();
        self.disconnected = Some(self.now);
        self.phase = Phase::Idle;
        self.c_queue.clear();
        self.c_current = None;
        self.c_awaiting_ack = None;
        self.c_resend = None;
        self.outstanding = None;
        self.p_queue.clear();
        self.p_current = None;
        self.rx_queue.clear();
        self.processing = None;
        self.emit(LinkEvent::SupervisionTimeout { at: self.now() });
    }

    fn run(&mut self, step: Step) {
        match step {
            Step::Drop => self.disconnect(),
            Step::Finish => {
                self.processing = None;
                self.try_deliver();
            }
            Step::Anchor(anchor) => {
                self.last_anchor = Some(anchor);
                // `next_anchor` skips anchor points inside spans; one that a span covers
                // all the same is missed (counted by `missed_events`).
                if self.attended_from(anchor) == anchor {
                    self.pair_start(anchor, 0, anchor);
                }
            }
            Step::Phase => match self.phase {
                Phase::Idle => {}
                Phase::PairStart { anchor, pairs, at } => self.pair_start(anchor, pairs, at),
                Phase::CentralRx {
                    anchor,
                    pairs,
                    at,
                    c_len,
                    p_len,
                    resend,
                } => self.central_rx(anchor, pairs, at, c_len, p_len, resend),
                Phase::PeripheralRx {
                    anchor,
                    pairs,
                    at,
                    p_len,
                    acked,
                } => self.peripheral_rx(anchor, pairs, at, p_len, acked),
            },
        }
    }

    /// Starts the next packet pair at `at`, or closes the event: when neither side has more
    /// data (MD), when the central sent its packets-per-event limit, when the pair and the
    /// `T_IFS` after it would not end by the next anchor point minus the event end margin, or
    /// when the pair's packets would overlap a span in which the peripheral's radio is
    /// stopped.
    fn pair_start(&mut self, anchor: u64, pairs: u32, at: u64) {
        let max_ll = self.params.max_ll_payload as u32;
        let resend = self.c_resend;
        let c_pick = if self.c_current.is_none() && resend.is_none() {
            self.central_pick(anchor)
        } else {
            None
        };
        let c_len = match (resend, &self.c_current, c_pick) {
            (Some(len), _, _) => len,
            (None, Some(c), _) => (c.wire_len - c.sent).min(max_ll),
            (None, None, Some(i)) => self.c_queue[i].wire_len.min(max_ll),
            (None, None, None) => 0,
        };
        let p_pick = self.peripheral_pick(anchor);
        let p_len = match &self.p_current {
            Some(p) => (p.wire_len - p.sent).min(max_ll),
            None if p_pick => self.p_queue[0].wire_len.min(max_ll),
            None => 0,
        };
        let more_data = resend.is_some()
            || self.c_current.is_some()
            || c_pick.is_some()
            || self.p_current.is_some()
            || p_pick;
        let capped = self
            .params
            .max_packets_per_event
            .is_some_and(|m| pairs >= u32::from(m));
        let pair = u64::from(pair_us(self.params.phy, c_len as u16, p_len as u16));
        let fits = at + pair <= anchor + u64::from(self.params.event_budget_us());
        let c_air = u64::from(airtime_us(self.params.phy, c_len as u16));
        let p_air = u64::from(airtime_us(self.params.phy, p_len as u16));
        let radio_on = !self.overlaps_block(at, at + c_air + u64::from(T_IFS_US) + p_air);
        if !more_data || capped || !fits || !radio_on {
            self.phase = Phase::Idle;
            return;
        }
        if pairs == 0 {
            self.stats.connection_events += 1;
        }
        if let Some(i) = c_pick {
            let c = self
                .c_queue
                .remove(i)
                .expect("picked index is in the queue");
            if c.op.is_request() {
                self.outstanding = Some(c.id);
            }
            self.c_current = Some(c);
        }
        if p_pick {
            self.p_current = self.p_queue.pop_front();
        }
        // The peripheral's packet is counted once it was sent (`peripheral_rx`).
        self.stats.central_packets += 1;
        self.stats.central_data_packets += u64::from(c_len > 0);
        self.stats.retransmissions += u64::from(resend.is_some());
        self.stats.airtime += Duration::from_micros(c_air);
        self.phase = Phase::CentralRx {
            anchor,
            pairs: pairs + 1,
            at: at + c_air,
            c_len,
            p_len,
            resend: resend.is_some(),
        };
    }

    /// The peripheral received the central's packet: it acknowledges it, or, first fragment at
    /// a full queue under [`QueuePolicy::Stall`], does not (the central sends it again). A
    /// packet the peripheral already took (`resend`) is acknowledged and not taken again. If
    /// the peripheral's radio stopped while the packet was in the air, it is lost and the
    /// event ends.
    fn central_rx(
        &mut self,
        anchor: u64,
        pairs: u32,
        at: u64,
        c_len: u32,
        p_len: u32,
        resend: bool,
    ) {
        let c_air = u64::from(airtime_us(self.params.phy, c_len as u16));
        if self.overlaps_block(at - c_air, at) {
            // Nobody heard it and nobody answers: the central sends it again later (a resend
            // was counted as a retransmission when it went out).
            if c_len > 0 && !resend {
                self.stats.retransmissions += 1;
            }
            self.phase = Phase::Idle;
            return;
        }
        let mut acked = 0;
        if resend {
            acked = c_len;
        } else if c_len > 0 {
            let stall = self.params.full_queue == QueuePolicy::Stall && self.rx_full();
            let c = self
                .c_current
                .as_mut()
                .expect("a data packet belongs to the current PDU");
            if c.sent == 0 && stall {
                self.stats.retransmissions += 1;
            } else {
                acked = c_len;
                c.sent += c_len;
                if c.sent == c.wire_len {
                    let c = self.c_current.take().expect("checked above");
                    self.c_awaiting_ack = Some(c.id);
                    let bytes = c.op.value().len() as u64;
                    if self.rx_full() {
                        // Only reachable under `Drop`: `Stall` refused the first fragment,
                        // and nothing but this stream fills the queue.
                        self.stats.dropped_pdus += 1;
                        self.stats.dropped_bytes += bytes;
                        self.emit(LinkEvent::Dropped {
                            at: Instant::from_micros(at),
                            id: c.id,
                        });
                    } else {
                        self.stats.pdus_to_peripheral += 1;
                        self.stats.bytes_to_peripheral += bytes;
                        self.rx_queue.push_back((c.id, c.op));
                        self.try_deliver();
                    }
                }
            }
        }
        let p_end = at + u64::from(T_IFS_US) + u64::from(airtime_us(self.params.phy, p_len as u16));
        self.phase = Phase::PeripheralRx {
            anchor,
            pairs,
            at: p_end,
            p_len,
            acked,
        };
    }

    /// The central received the peripheral's packet: the acknowledgement of its own packet and
    /// maybe the last fragment of a notification or answer. If the peripheral's radio is
    /// stopped during the packet, it is not sent: the central hears no acknowledgement of the
    /// `acked` bytes it sent (and sends them again), and the event ends.
    fn peripheral_rx(&mut self, anchor: u64, pairs: u32, at: u64, p_len: u32, acked: u32) {
        let p_air = u64::from(airtime_us(self.params.phy, p_len as u16));
        if self.overlaps_block(at - p_air, at) {
            if acked > 0 {
                self.c_resend = Some(acked);
            }
            self.phase = Phase::Idle;
            return;
        }
        self.c_resend = None;
        self.stats.peripheral_packets += 1;
        self.stats.peripheral_data_packets += u64::from(p_len > 0);
        self.stats.airtime += Duration::from_micros(p_air);
        let t = Instant::from_micros(at);
        if let Some(id) = self.c_awaiting_ack.take() {
            self.emit(LinkEvent::Transmitted { at: t, id });
        }
        if p_len > 0 {
            let p = self
                .p_current
                .as_mut()
                .expect("a data packet belongs to the current PDU");
            p.sent += p_len;
            if p.sent == p.wire_len {
                let p = self.p_current.take().expect("checked above");
                self.stats.pdus_to_central += 1;
                match p.body {
                    PeripheralBody::Notification(op) => {
                        self.stats.bytes_to_central += op.value().len() as u64;
                        self.emit(LinkEvent::DeliveredToCentral {
                            at: t,
                            id: p.id,
                            op,
                        });
                        self.emit(LinkEvent::Transmitted { at: t, id: p.id });
                    }
                    PeripheralBody::Answer { read, answer } => {
                        if self.outstanding == Some(p.id) {
                            self.outstanding = None;
                            self.unblocked_at = at;
                        }
                        let request = p.id;
                        let event = match (read, answer) {
                            (true, Answer::Read(value)) => {
                                self.stats.bytes_to_central += value.len() as u64;
                                LinkEvent::ReadResponse {
                                    at: t,
                                    request,
                                    result: Ok(value),
                                }
                            }
                            (true, Answer::Error(code)) => LinkEvent::ReadResponse {
                                at: t,
                                request,
                                result: Err(code),
                            },
                            (_, Answer::Error(code)) => LinkEvent::WriteResponse {
                                at: t,
                                request,
                                result: Err(code),
                            },
                            _ => LinkEvent::WriteResponse {
                                at: t,
                                request,
                                result: Ok(()),
                            },
                        };
                        self.emit(event);
                    }
                }
            }
        }
        self.phase = Phase::PairStart {
            anchor,
            pairs,
            at: at + u64::from(T_IFS_US),
        };
    }

    /// Starts processing the receive queue's head if the peripheral is free.
    fn try_deliver(&mut self) {
        if self.processing.is_some() {
            return;
        }
        let Some((id, op)) = self.rx_queue.pop_front() else {
            return;
        };
        let kind = match op {
            CentralOp::WriteRequest { .. } => Kind::WriteRequest,
            CentralOp::WriteCommand { .. } => Kind::Command,
            CentralOp::Read { .. } => Kind::Read,
        };
        self.processing = Some(Processing {
            id,
            kind,
            start: self.now,
            finish: None,
        });
        self.emit(LinkEvent::DeliveredToPeripheral {
            at: self.now(),
            id,
            op,
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cmd(len: usize) -> CentralOp {
        CentralOp::WriteCommand {
            handle: 1,
            value: vec![0; len],
        }
    }

    fn next_delivery(link: &mut Link) -> (Instant, PduId) {
        loop {
            while let Some(event) = link.poll_event() {
                if let LinkEvent::DeliveredToPeripheral { at, id, .. } = event {
                    return (at, id);
                }
            }
            link.advance_to_next().expect("a delivery is scheduled");
        }
    }

    #[test]
    fn idle_link_schedules_nothing() {
        let mut link = Link::new(LinkParams::desktop()).unwrap();
        assert_eq!(link.next_event_time(), None);
        assert_eq!(link.advance_to_next(), None);
        assert!(link.is_idle());
        // Time moves on its own when asked to.
        assert_eq!(
            link.advance_to(Instant::from_micros(1_000_000)),
            Instant::from_micros(1_000_000)
        );
        assert_eq!(
            link.advance_to(Instant::from_micros(5)),
            Instant::from_micros(1_000_000)
        );
    }

    #[test]
    fn advance_stops_at_the_first_event() {
        let mut link = Link::new(LinkParams::desktop()).unwrap();
        link.central_submit(cmd(10)).unwrap();
        // The data waits for the first anchor after its submission.
        assert_eq!(link.next_event_time(), Some(Instant::from_micros(7500)));
        let reached = link.advance_to(Instant::from_micros(1_000_000));
        let arrival = 7500 + u64::from(airtime_us(crate::Phy::Le2M, 17));
        assert_eq!(reached, Instant::from_micros(arrival));
        assert!(matches!(
            link.poll_event(),
            Some(LinkEvent::DeliveredToPeripheral { .. })
        ));
        assert_eq!(link.poll_event(), None);
    }

    #[test]
    fn data_submitted_at_an_anchor_waits_for_the_next_one() {
        let mut link = Link::new(LinkParams::desktop()).unwrap();
        link.advance_to(Instant::from_micros(7500));
        link.central_submit(cmd(10)).unwrap();
        assert_eq!(link.next_event_time(), Some(Instant::from_micros(15_000)));
    }

    #[test]
    fn completion_errors() {
        let mut link = Link::new(LinkParams::desktop()).unwrap();
        let w = link.central_submit(cmd(10)).unwrap();
        let r = link.central_submit(CentralOp::Read { handle: 2 }).unwrap();
        let (_, id) = next_delivery(&mut link);
        assert_eq!(id, w);
        assert_eq!(
            link.peripheral_complete(r, Duration::ZERO, Outcome::Accept),
            Err(CompleteError::NotProcessing(r))
        );
        assert_eq!(
            link.peripheral_complete(w, Duration::ZERO, Outcome::Value(vec![1])),
            Err(CompleteError::OutcomeMismatch(w))
        );
        link.peripheral_complete(w, Duration::ZERO, Outcome::Reject(0x80))
            .unwrap();
        assert_eq!(
            link.peripheral_complete(w, Duration::ZERO, Outcome::Accept),
            Err(CompleteError::NotProcessing(w))
        );
        let (_, id) = next_delivery(&mut link);
        assert_eq!(id, r);
        assert_eq!(
            link.peripheral_complete(r, Duration::ZERO, Outcome::Accept),
            Err(CompleteError::OutcomeMismatch(r))
        );
        link.peripheral_complete(r, Duration::ZERO, Outcome::Reject(0x0a))
            .unwrap();
        let mut answer = None;
        while link.advance_to_next().is_some() {
            while let Some(event) = link.poll_event() {
                if let LinkEvent::ReadResponse {
                    request, result, ..
                } = event
                {
                    answer = Some((request, result));
                }
            }
        }
        assert_eq!(answer, Some((r, Err(0x0a))));
    }

    #[test]
    fn a_stall_waiting_on_the_caller_schedules_nothing_until_it_completes() {
        let params = LinkParams {
            rx_queue_depth: 1,
            full_queue: QueuePolicy::Stall,
            ..LinkParams::desktop()
        };
        let mut link = Link::new(params).unwrap();
        link.central_submit(cmd(244)).unwrap();
        link.central_submit(cmd(244)).unwrap();
        let (start, first) = next_delivery(&mut link);
        // Not completed: the second PDU is refused for the rest of the event (4 more pairs of
        // the 5 that fit), then nothing is scheduled.
        while link.advance_to_next().is_some() {}
        assert_eq!(link.stats().retransmissions, 4);
        assert_eq!(link.next_event_time(), None);
        assert!(link.now() > start);
        // A late completion ends now, not in the past.
        link.peripheral_complete(first, Duration::ZERO, Outcome::Accept)
            .unwrap();
        let (at, _) = next_delivery(&mut link);
        assert_eq!(
            at.as_micros(),
            15_000 + u64::from(airtime_us(crate::Phy::Le2M, 251))
        );
        assert_eq!(link.stats().pdus_to_peripheral, 2);
    }

    #[test]
    fn notifications_respect_the_peripheral_buffer() {
        let params = LinkParams {
            peripheral_tx_buffer: 2,
            ..LinkParams::desktop()
        };
        let mut link = Link::new(params).unwrap();
        let note = || PeripheralOp::Notification {
            handle: 3,
            value: vec![7; 20],
        };
        link.peripheral_submit(note()).unwrap();
        link.peripheral_submit(note()).unwrap();
        assert_eq!(
            link.peripheral_submit(note()),
            Err(SubmitError::Full { capacity: 2 })
        );
        assert_eq!(link.peripheral_tx_free(), 0);
        let mut transmitted = 0;
        while link.advance_to_next().is_some() {
            while let Some(event) = link.poll_event() {
                transmitted += usize::from(matches!(event, LinkEvent::Transmitted { .. }));
            }
        }
        assert_eq!(transmitted, 2);
        assert_eq!(link.peripheral_tx_free(), 2);
        assert_eq!(link.stats().pdus_to_central, 2);
        // Both in one event: the central polls while the peripheral has more data.
        assert_eq!(link.stats().connection_events, 1);
        assert!(link.is_idle());
    }
}
