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
            | LinkEvent::Dropped { at, .. } => *at,
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
    /// Central packets the peripheral did not acknowledge because its receive queue was full
    /// ([`QueuePolicy::Stall`]); each was sent again.
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
    /// The central's packet of the current pair ends `at`.
    CentralRx {
        anchor: u64,
        pairs: u32,
        at: u64,
        c_len: u32,
        p_len: u32,
    },
    /// The peripheral's packet of the current pair ends `at`.
    PeripheralRx {
        anchor: u64,
        pairs: u32,
        at: u64,
        p_len: u32,
    },
}

/// One internal step of the simulation.
#[derive(Debug, Clone, Copy)]
enum Step {
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
            ..self.stats
        }
    }

    /// Returns how many more PDUs [`Link::central_submit`] takes now.
    pub fn central_tx_free(&self) -> usize {
        (self.params.central_tx_buffer as usize).saturating_sub(self.central_tx_len())
    }

    /// Returns how many more notifications [`Link::peripheral_submit`] takes now.
    pub fn peripheral_tx_free(&self) -> usize {
        (self.params.peripheral_tx_buffer as usize).saturating_sub(self.peripheral_tx_len())
    }

    /// Returns the PDUs in the peripheral's receive queue, the one being processed included.
    pub fn rx_queue_len(&self) -> usize {
        self.rx_occupancy()
    }

    /// Returns true when nothing is buffered, in flight, queued or being processed and every
    /// event was polled.
    pub fn is_idle(&self) -> bool {
        self.c_queue.is_empty()
            && self.c_current.is_none()
            && self.c_awaiting_ack.is_none()
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
    /// one ATT PDU.
    pub fn central_submit(&mut self, op: CentralOp) -> Result<PduId, SubmitError> {
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
    /// [`SubmitError::ValueTooLong`] when the value does not fit one ATT PDU.
    pub fn peripheral_submit(&mut self, op: PeripheralOp) -> Result<PduId, SubmitError> {
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
    /// whole µs), counted from `start`, the `at` of its [`LinkEvent::DeliveredToPeripheral`].
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
    /// the PDU (a value for a write, [`Outcome::Accept`] for a read).
    pub fn peripheral_complete(
        &mut self,
        id: PduId,
        took: Duration,
        outcome: Outcome,
    ) -> Result<(), CompleteError> {
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
        let finish = p.start.saturating_add(ceil_us(took)).max(now);
        p.finish = Some(finish);
        let read = p.kind == Kind::Read;
        self.device_free_at = finish;
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
        self.c_current.as_ref().is_some_and(|c| c.sent == 0)
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
        best
    }

    /// Returns the earliest internal step; at equal times a finishing peripheral frees its
    /// slot before a packet arrives.
    fn next_step(&self) -> Option<(u64, Step)> {
        let mut best: Option<(u64, u8, Step)> = None;
        let mut consider = |t: u64, rank: u8, step: Step| {
            if best.is_none_or(|(bt, br, _)| (t, rank) < (bt, br)) {
                best = Some((t, rank, step));
            }
        };
        if let Some(Processing {
            finish: Some(f), ..
        }) = self.processing
        {
            consider(f, 0, Step::Finish);
        }
        match self.phase {
            Phase::Idle => {
                if let Some(a) = self.next_anchor() {
                    consider(a, 3, Step::Anchor(a));
                }
            }
            Phase::CentralRx { at, .. } => consider(at, 1, Step::Phase),
            Phase::PeripheralRx { at, .. } => consider(at, 2, Step::Phase),
            Phase::PairStart { at, .. } => consider(at, 3, Step::Phase),
        }
        best.map(|(t, _, step)| (t, step))
    }

    fn run(&mut self, step: Step) {
        match step {
            Step::Finish => {
                self.processing = None;
                self.try_deliver();
            }
            Step::Anchor(anchor) => {
                self.last_anchor = Some(anchor);
                self.pair_start(anchor, 0, anchor);
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
                } => self.central_rx(anchor, pairs, at, c_len, p_len),
                Phase::PeripheralRx {
                    anchor,
                    pairs,
                    at,
                    p_len,
                } => self.peripheral_rx(anchor, pairs, at, p_len),
            },
        }
    }

    /// Starts the next packet pair at `at`, or closes the event: when neither side has more
    /// data (MD), when the central sent its packets-per-event limit, or when the pair and the
    /// `T_IFS` after it would not end by the next anchor point.
    fn pair_start(&mut self, anchor: u64, pairs: u32, at: u64) {
        let max_ll = self.params.max_ll_payload as u32;
        let c_pick = if self.c_current.is_none() {
            self.central_pick(anchor)
        } else {
            None
        };
        let c_len = match (&self.c_current, c_pick) {
            (Some(c), _) => (c.wire_len - c.sent).min(max_ll),
            (None, Some(i)) => self.c_queue[i].wire_len.min(max_ll),
            (None, None) => 0,
        };
        let p_pick = self.peripheral_pick(anchor);
        let p_len = match &self.p_current {
            Some(p) => (p.wire_len - p.sent).min(max_ll),
            None if p_pick => self.p_queue[0].wire_len.min(max_ll),
            None => 0,
        };
        let more_data =
            self.c_current.is_some() || c_pick.is_some() || self.p_current.is_some() || p_pick;
        let capped = self
            .params
            .max_packets_per_event
            .is_some_and(|m| pairs >= u32::from(m));
        let pair = u64::from(pair_us(self.params.phy, c_len as u16, p_len as u16));
        let fits = at + pair <= anchor + self.interval;
        if !more_data || capped || !fits {
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
        let c_air = u64::from(airtime_us(self.params.phy, c_len as u16));
        let p_air = u64::from(airtime_us(self.params.phy, p_len as u16));
        self.stats.central_packets += 1;
        self.stats.peripheral_packets += 1;
        self.stats.central_data_packets += u64::from(c_len > 0);
        self.stats.peripheral_data_packets += u64::from(p_len > 0);
        self.stats.airtime += Duration::from_micros(c_air + p_air);
        self.phase = Phase::CentralRx {
            anchor,
            pairs: pairs + 1,
            at: at + c_air,
            c_len,
            p_len,
        };
    }

    /// The peripheral received the central's packet: it acknowledges it, or, first fragment at
    /// a full queue under [`QueuePolicy::Stall`], does not (the central sends it again).
    fn central_rx(&mut self, anchor: u64, pairs: u32, at: u64, c_len: u32, p_len: u32) {
        if c_len > 0 {
            let stall = self.params.full_queue == QueuePolicy::Stall && self.rx_full();
            let c = self
                .c_current
                .as_mut()
                .expect("a data packet belongs to the current PDU");
            if c.sent == 0 && stall {
                self.stats.retransmissions += 1;
            } else {
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
        };
    }

    /// The central received the peripheral's packet: the acknowledgement of its own packet and
    /// maybe the last fragment of a notification or answer.
    fn peripheral_rx(&mut self, anchor: u64, pairs: u32, at: u64, p_len: u32) {
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
