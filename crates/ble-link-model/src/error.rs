//! Errors of the model's API.

use crate::att::PduId;

/// A [`LinkParams`](crate::LinkParams) field out of range.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ParamError {
    /// `att_mtu` is not in 23..=517.
    #[error("ATT MTU {0} is outside 23..=517")]
    AttMtu(u16),
    /// `conn_interval_units` is not in 6..=3200 (7.5 ms to 4 s).
    #[error("connection interval {0} x 1.25 ms is outside 7.5 ms..=4 s")]
    ConnInterval(u16),
    /// `max_ll_payload` is not in 27..=251.
    #[error("LL payload {0} is outside 27..=251")]
    LlPayload(u16),
    /// `max_packets_per_event` is `Some(0)`.
    #[error("packets per connection event must be at least 1")]
    PacketsPerEvent,
    /// `rx_queue_depth` is 0.
    #[error("the receive queue must hold at least one PDU")]
    RxQueueDepth,
    /// A TX buffer size is 0.
    #[error("TX buffers must hold at least one PDU")]
    TxBuffer,
    /// `supervision_timeout` is not in 100 ms..=32 s, or not longer than two connection
    /// intervals.
    #[error("supervision timeout {0:?} is outside 100 ms..=32 s or not above two intervals")]
    SupervisionTimeout(std::time::Duration),
    /// `event_end_margin_us` leaves no room for the longest packet pair in an interval.
    #[error("event end margin {0} µs leaves no room for a packet pair")]
    EventEndMargin(u32),
}

/// Why [`Link::central_submit`](crate::Link::central_submit) or
/// [`Link::peripheral_submit`](crate::Link::peripheral_submit) refused an operation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SubmitError {
    /// The submitting side's TX buffer is full: wait for a
    /// [`LinkEvent::Transmitted`](crate::LinkEvent::Transmitted) and try again, as a client
    /// blocks on a real stack.
    #[error("TX buffer full ({capacity} PDUs)")]
    Full {
        /// The buffer's size.
        capacity: u16,
    },
    /// The link was lost ([`LinkEvent::SupervisionTimeout`](crate::LinkEvent::SupervisionTimeout)):
    /// it carries nothing more.
    #[error("the link was lost (supervision timeout)")]
    Disconnected,
    /// The value does not fit one ATT PDU: at most `att_mtu - 3` and 512 bytes.
    #[error("value of {len} bytes exceeds the {max}-byte maximum")]
    ValueTooLong {
        /// The value's length.
        len: usize,
        /// The largest value the link takes.
        max: usize,
    },
}

/// Why [`Link::peripheral_complete`](crate::Link::peripheral_complete) refused a completion.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum CompleteError {
    /// `id` is not the PDU the peripheral is processing, or it was completed already.
    #[error("{0} is not being processed")]
    NotProcessing(PduId),
    /// The outcome does not fit the PDU: [`Outcome::Value`](crate::Outcome::Value) answers
    /// only a read, [`Outcome::Accept`](crate::Outcome::Accept) does not answer a read.
    #[error("the outcome does not answer {0}")]
    OutcomeMismatch(PduId),
    /// The link was lost before the completion
    /// ([`LinkEvent::SupervisionTimeout`](crate::LinkEvent::SupervisionTimeout)).
    #[error("the link was lost (supervision timeout)")]
    Disconnected,
}
