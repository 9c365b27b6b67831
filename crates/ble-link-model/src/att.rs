//! The ATT operations the link carries and their size on the wire.

use std::fmt;

use crate::params::{ATT_WRITE_HEADER_LEN, L2CAP_HEADER_LEN};

/// ATT opcode + handle of a read request (Core Spec 5.x Vol 3 Part F §3.4.4.3).
const READ_REQ_LEN: u32 = 3;
/// ATT write response: the opcode alone (Vol 3 Part F §3.4.5.2).
const WRITE_RSP_LEN: u32 = 1;
/// ATT read response header: the opcode (Vol 3 Part F §3.4.4.4).
const READ_RSP_HEADER_LEN: u32 = 1;
/// ATT error response: opcode, request opcode, handle, error code (Vol 3 Part F §3.4.1.1).
const ERROR_RSP_LEN: u32 = 5;

/// Identifies one submitted ATT PDU for its whole life on the link.
///
/// Ids count up from 1 in submission order, shared by both sides. A response is not
/// submitted: events name it by its request's id.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PduId(pub(crate) u64);

impl PduId {
    /// Returns the id's number.
    pub const fn get(self) -> u64 {
        self.0
    }
}

impl fmt::Display for PduId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PDU #{}", self.0)
    }
}

/// An ATT operation the central (the GATT client) starts.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum CentralOp {
    /// `ATT_WRITE_REQ` (Vol 3 Part F §3.4.5.1): answered once the peripheral processed it.
    /// Only one request is outstanding at a time (§3.3.2).
    WriteRequest {
        /// Attribute handle.
        handle: u16,
        /// Value, at most [`LinkParams::max_value_len`](crate::LinkParams::max_value_len).
        value: Vec<u8>,
    },
    /// `ATT_WRITE_CMD` (Vol 3 Part F §3.4.5.3): no answer; may flow while a request waits.
    WriteCommand {
        /// Attribute handle.
        handle: u16,
        /// Value, at most [`LinkParams::max_value_len`](crate::LinkParams::max_value_len).
        value: Vec<u8>,
    },
    /// `ATT_READ_REQ` (Vol 3 Part F §3.4.4.3): answered with the value the peripheral
    /// supplies, cut to `att_mtu - 1` bytes (§3.4.4.4).
    Read {
        /// Attribute handle.
        handle: u16,
    },
}

impl CentralOp {
    /// Returns the attribute handle.
    pub fn handle(&self) -> u16 {
        match self {
            CentralOp::WriteRequest { handle, .. }
            | CentralOp::WriteCommand { handle, .. }
            | CentralOp::Read { handle } => *handle,
        }
    }

    /// Returns the written value (empty for a read).
    pub fn value(&self) -> &[u8] {
        match self {
            CentralOp::WriteRequest { value, .. } | CentralOp::WriteCommand { value, .. } => value,
            CentralOp::Read { .. } => &[],
        }
    }

    /// Returns true for the operations the peripheral answers (write request, read).
    pub fn is_request(&self) -> bool {
        !matches!(self, CentralOp::WriteCommand { .. })
    }

    /// Returns the length of the ATT PDU.
    pub fn att_len(&self) -> u32 {
        match self {
            CentralOp::WriteRequest { value, .. } | CentralOp::WriteCommand { value, .. } => {
                ATT_WRITE_HEADER_LEN + value.len() as u32
            }
            CentralOp::Read { .. } => READ_REQ_LEN,
        }
    }

    /// Returns the length of the L2CAP PDU: 4-byte basic header + ATT PDU.
    pub fn wire_len(&self) -> u32 {
        L2CAP_HEADER_LEN + self.att_len()
    }
}

/// An ATT operation the peripheral (the GATT server) starts.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum PeripheralOp {
    /// `ATT_HANDLE_VALUE_NTF` (Vol 3 Part F §3.4.7.1): no answer.
    Notification {
        /// Attribute handle.
        handle: u16,
        /// Value, at most [`LinkParams::max_value_len`](crate::LinkParams::max_value_len).
        value: Vec<u8>,
    },
}

impl PeripheralOp {
    /// Returns the attribute handle.
    pub fn handle(&self) -> u16 {
        match self {
            PeripheralOp::Notification { handle, .. } => *handle,
        }
    }

    /// Returns the value.
    pub fn value(&self) -> &[u8] {
        match self {
            PeripheralOp::Notification { value, .. } => value,
        }
    }

    /// Returns the length of the L2CAP PDU: 4-byte basic header + ATT PDU.
    pub fn wire_len(&self) -> u32 {
        L2CAP_HEADER_LEN + ATT_WRITE_HEADER_LEN + self.value().len() as u32
    }
}

/// How the peripheral's host answers a PDU it finished processing.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Outcome {
    /// A write was accepted: a write request is answered with `ATT_WRITE_RSP`.
    Accept,
    /// Refused with this ATT error code: a request is answered with `ATT_ERROR_RSP`; a write
    /// command cannot carry an error, so nothing goes back.
    Reject(u8),
    /// A read is answered with this value (`ATT_READ_RSP`, cut to `att_mtu - 1` bytes).
    Value(Vec<u8>),
}

/// The answer to a request, as it travels back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Answer {
    Written,
    Read(Vec<u8>),
    Error(u8),
}

impl Answer {
    /// Returns the length of the L2CAP PDU carrying the answer.
    pub(crate) fn wire_len(&self) -> u32 {
        L2CAP_HEADER_LEN
            + match self {
                Answer::Written => WRITE_RSP_LEN,
                Answer::Read(v) => READ_RSP_HEADER_LEN + v.len() as u32,
                Answer::Error(_) => ERROR_RSP_LEN,
            }
    }
}
