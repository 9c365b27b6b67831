//! The link layer's arithmetic: how long packets take on air and how many fit a connection
//! event. The device uses it to choose the value length it announces; the timing model
//! (`ble-link-model`) is built on the same functions.

use super::{ATT_WRITE_HEADER, L2CAP_HEADER, LL_DEFAULT_DATA_LEN, LL_MAX_DATA_LEN, max_value_len};

/// Inter frame space between two packets of a connection event, in µs.
///
/// Source: Core Spec 5.x Vol 6 Part B §4.1.1 (`T_IFS` = 150 µs).
pub const T_IFS_US: u32 = 150;
/// Access address length in octets.
///
/// Source: Core Spec 5.x Vol 6 Part B §2.1.2.
const ACCESS_ADDRESS_LEN: u32 = 4;
/// Data channel PDU header length in octets (no CTEInfo: no CTE is sent).
///
/// Source: Core Spec 5.x Vol 6 Part B §2.4 (16-bit header; the optional CTEInfo octet is
/// present only when the CP bit is set).
const DATA_HEADER_LEN: u32 = 2;
/// CRC length in octets.
///
/// Source: Core Spec 5.x Vol 6 Part B §2.1.4.
const CRC_LEN: u32 = 3;
/// Time a connection event keeps free before the next anchor point, in µs, by default: a
/// packet pair (and its trailing `T_IFS`) is only started if it ends this long before it.
///
/// The next connection event starts at the next anchor point (Core Spec 5.x Vol 6 Part B
/// §4.5.1), so an event must close before it, but the specification names no margin; real
/// controllers keep one for window widening (Vol 6 Part B §4.2.4: the peripheral listens
/// early by the widening, 16 µs and more), for radio ramp-up and for scheduling the next
/// event. Zephyr's controller for Nordic SoCs, for example, reserves `EVENT_OVERHEAD_END_US`
/// (40 µs) after an event's last packet and `EVENT_OVERHEAD_START_US` (200 to 350 µs by
/// version) before the next event starts, plus `EVENT_JITTER_US` (16 µs)
/// (`subsys/bluetooth/controller/ll_sw/nordic/lll/lll_vendor.h`). 150 µs, one `T_IFS`, is an
/// **assumption** for such a guard; no controller documents exactly this value.
pub const DEFAULT_EVENT_END_MARGIN_US: u32 = 150;

/// The LE uncoded PHY of the connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum Phy {
    /// LE 1M: 1 Msym/s, 1-octet preamble.
    Le1M,
    /// LE 2M: 2 Msym/s, 2-octet preamble.
    Le2M,
}

impl Phy {
    /// Returns the preamble length in octets.
    ///
    /// Source: Core Spec 5.x Vol 6 Part B §2.1.1 (8 bits on LE 1M, 16 bits on LE 2M).
    pub const fn preamble_len(self) -> u32 {
        match self {
            Phy::Le1M => 1,
            Phy::Le2M => 2,
        }
    }

    /// Returns the time one octet takes on air, in µs.
    ///
    /// Source: Core Spec 5.x Vol 6 Part A §3.1 (1 Msym/s on LE 1M, 2 Msym/s on LE 2M, one bit
    /// per symbol on the uncoded PHYs), so 8 µs and 4 µs per octet.
    pub const fn us_per_octet(self) -> u32 {
        match self {
            Phy::Le1M => 8,
            Phy::Le2M => 4,
        }
    }
}

/// Returns the airtime in µs of one LL data packet carrying `payload_len` octets of payload:
/// preamble + access address (4) + header (2) + payload + CRC (3) octets (Core Spec 5.x Vol 6
/// Part B §2.1 and §2.4), unencrypted (no MIC) and without CTE. An empty packet takes 80 µs on
/// LE 1M and 44 µs on LE 2M.
pub const fn airtime_us(phy: Phy, payload_len: u16) -> u32 {
    (phy.preamble_len() + ACCESS_ADDRESS_LEN + DATA_HEADER_LEN + payload_len as u32 + CRC_LEN)
        * phy.us_per_octet()
}

/// Returns the time one packet pair takes: the central's packet, `T_IFS`, the peripheral's
/// packet and the `T_IFS` before the next pair, in µs.
pub const fn pair_us(phy: Phy, central_payload: u16, peripheral_payload: u16) -> u32 {
    airtime_us(phy, central_payload) + T_IFS_US + airtime_us(phy, peripheral_payload) + T_IFS_US
}

/// Returns the value length a write should carry at `att_mtu` over link-layer PDUs of
/// `data_length` octets: the largest that fills whole PDUs (value + ATT header + L2CAP header
/// a multiple of the data length), or the largest the MTU allows when not even one PDU fills.
///
/// A value one byte longer than a PDU boundary costs a whole extra PDU, and with it most of a
/// packet slot in the connection event: at data length 251, 495 bytes take two PDUs where 512
/// take three.
pub fn packed_value_len(att_mtu: u16, data_length: u16) -> usize {
    let max = max_value_len(att_mtu);
    let pdu = data_length.clamp(LL_DEFAULT_DATA_LEN, LL_MAX_DATA_LEN) as usize;
    let overhead = ATT_WRITE_HEADER + L2CAP_HEADER;
    match (max + overhead) / pdu {
        0 => max,
        whole => whole * pdu - overhead,
    }
}

/// Returns the number of LL packets a write command or notification carrying `value_len`
/// bytes is cut into at `data_length` octets per packet, and the size of the `i`-th one.
pub const fn fragment(value_len: usize, data_length: u16, i: usize) -> (usize, u16) {
    let total = value_len + L2CAP_HEADER + ATT_WRITE_HEADER;
    let dl = if data_length == 0 {
        1
    } else {
        data_length as usize
    };
    let n = total.div_ceil(dl);
    let size = if i + 1 < n { dl } else { total - (n - 1) * dl };
    (n, size as u16)
}

/// The timing of a connection, as far as the value length is concerned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct EventTiming {
    /// The PHY.
    pub phy: Phy,
    /// LL payload octets per packet (the data length).
    pub data_length: u16,
    /// Connection interval in µs.
    pub interval_us: u32,
    /// Time kept free before the next anchor point, in µs.
    pub end_margin_us: u32,
    /// Packet pairs the central sends per event at most (`None`: as many as fit).
    pub max_pairs: Option<u32>,
    /// LL payload the peripheral sends in the first pair of each event (an acknowledgement
    /// notification), 0 for empty packets only.
    pub reply_payload: u16,
}

/// Fragment indices an event can start at are at most this many (a 512-byte value in 27-octet
/// packets is 20 of them).
const MAX_FRAGMENTS: usize = 32;

/// Returns the link's throughput in value bytes per second when every connection event is
/// filled with write commands of `value_len` bytes: packet pairs while the pair and its
/// trailing `T_IFS` end by the next anchor point less the margin, at most `max_pairs` of them,
/// fragments continuing into the next event, every data packet answered by an empty one.
///
/// Exact: the fragment the events start with repeats after at most as many events as a value
/// has fragments, and that cycle's throughput is the long-run one.
pub fn link_rate(t: &EventTiming, value_len: usize) -> f64 {
    let (n, _) = fragment(value_len, t.data_length, 0);
    if n > MAX_FRAGMENTS || t.interval_us == 0 {
        return 0.0;
    }
    let budget = u64::from(t.interval_us.saturating_sub(t.end_margin_us));
    let cap = t.max_pairs.map_or(u64::MAX, u64::from);
    let mut seen: [Option<(u64, u64)>; MAX_FRAGMENTS] = [None; MAX_FRAGMENTS];
    let (mut idx, mut events, mut packets) = (0usize, 0u64, 0u64);
    loop {
        if let Some((e0, p0)) = seen[idx] {
            let values = (packets - p0) / n as u64;
            let time_us = (events - e0) * u64::from(t.interval_us);
            return (values * value_len as u64) as f64 * 1e6 / time_us as f64;
        }
        seen[idx] = Some((events, packets));
        let (mut used, mut pairs) = (0u64, 0u64);
        loop {
            let reply = if pairs == 0 { t.reply_payload } else { 0 };
            let d = u64::from(pair_us(
                t.phy,
                fragment(value_len, t.data_length, idx).1,
                reply,
            ));
            if pairs >= cap || used + d > budget {
                break;
            }
            used += d;
            pairs += 1;
            packets += 1;
            idx = (idx + 1) % n;
        }
        if pairs == 0 {
            return 0.0; // Not even one pair fits an event.
        }
        events += 1;
    }
}

/// Returns the value length a client should write at `att_mtu` over a link of timing `t`: the
/// one with the highest [`link_rate`] (the shortest of equals), so values fill whole packets
/// and whole connection events. With a 150 µs margin on LE 1M at 7.5 ms and 251-octet
/// packets that is 241 bytes (three pairs per event), where 244 fit only two; leaving room
/// for a 12-byte acknowledgement in each event, 238.
pub fn best_value_len(att_mtu: u16, t: &EventTiming) -> usize {
    let max = max_value_len(att_mtu);
    let (mut best, mut best_rate) = (max, 0.0);
    for len in 1..=max {
        let rate = link_rate(t, len);
        if rate > best_rate {
            (best, best_rate) = (len, rate);
        }
    }
    best
}
