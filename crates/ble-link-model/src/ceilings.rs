//! Upper bounds on update throughput: the radio's, the flash's, and both together.
//!
//! All return application bytes (attribute values, or image bytes) per second.

use crate::flash::FlashTiming;
use crate::params::{LinkParams, Phy, pair_us};

/// Returns the LL payload sizes a write command or notification carrying `value_len` bytes is
/// cut into: L2CAP header (4) + ATT header (3) + value, in pieces of `max_ll_payload` bytes.
pub fn fragments(value_len: usize, max_ll_payload: u16) -> Vec<u16> {
    use ota_core::protocol::air::fragment;
    let (n, _) = fragment(value_len, max_ll_payload, 0);
    (0..n)
        .map(|i| fragment(value_len, max_ll_payload, i).1)
        .collect()
}

/// Returns the airtime ceiling: value bytes per second when write commands of `value_len`
/// bytes follow each other back to back with no gap but `T_IFS`, each data packet answered by
/// an empty one, ignoring connection event boundaries.
///
/// For 244-byte values in 251-byte packets this is 244 B / 2468 µs ≈ 98.9 kB/s on LE 1M and
/// 244 B / 1392 µs ≈ 175.3 kB/s on LE 2M.
pub fn airtime(phy: Phy, max_ll_payload: u16, value_len: usize) -> f64 {
    let us: u64 = fragments(value_len, max_ll_payload)
        .into_iter()
        .map(|f| u64::from(pair_us(phy, f, 0)))
        .sum();
    value_len as f64 * 1e6 / us as f64
}

/// Returns the link ceiling: value bytes per second when every connection event is filled
/// with write commands of `value_len` bytes, under the same rules as [`Link`](crate::Link):
/// packet pairs while the pair and the `T_IFS` after it end by the next anchor point minus
/// [`LinkParams::event_end_margin_us`], at most `max_packets_per_event` of them, fragments
/// continuing into the next event. The device is taken as infinitely fast and its radio as
/// always on.
///
/// The result is exact: the fragment the events start with repeats after at most as many
/// events as a PDU has fragments, and the throughput of that cycle is the long-run one.
pub fn link(params: &LinkParams, value_len: usize) -> f64 {
    ota_core::protocol::air::link_rate(&params.event_timing(), value_len)
}

/// Returns the best value length for the link ceiling and that ceiling: the length among
/// `1..=params.max_value_len()` with the highest [`link`] ceiling, the shortest of equals.
pub fn best_link(params: &LinkParams) -> (usize, f64) {
    (1..=params.max_value_len())
        .map(|len| (len, link(params, len)))
        .fold((0, 0.0), |best, c| if c.1 > best.1 { c } else { best })
}

/// Returns the honest ceiling: image bytes per second for `image_len` bytes written to a
/// pre-erased slot on a device whose radio stops during every flash command (esp-storage
/// masks interrupts around each ROM erase and program call on the ESP32-C3/C6).
///
/// The time is the sum of
///
/// - the link time: `image_len` bytes at the best link ceiling for the MTU, data length and
///   event end margin ([`best_link`]), as write commands filling every event; and
/// - the flash time that cannot overlap with the radio: one page program per page,
///   `ceil(image_len / page_size) * page_program_us` ([`FlashTiming::ops_time`]). Erases are
///   not counted: the slot was erased before the update, while the device was idle.
///
/// It is an upper bound: a real update also pays for the acknowledgements, the connection
/// events a flash span skips beyond its own length, and any erase left to do.
pub fn honest(params: &LinkParams, flash: &FlashTiming, image_len: u64) -> f64 {
    honest_compressed(params, flash, image_len, image_len)
}

/// Returns the honest ceiling of a compressed update: image bytes per second when the link
/// carries `wire_len` bytes of the compressed stream (at the best link ceiling, as in
/// [`honest`], which is this with `wire_len == image_len`) and the device programs the
/// `image_len` bytes they inflate to, one page program per page, each stopping the radio.
pub fn honest_compressed(
    params: &LinkParams,
    flash: &FlashTiming,
    image_len: u64,
    wire_len: u64,
) -> f64 {
    if image_len == 0 {
        return 0.0;
    }
    let (_, link_rate) = best_link(params);
    let link_s = wire_len as f64 / link_rate;
    let pages = image_len.div_ceil(u64::from(flash.page_size.max(1)));
    let flash_s = flash.ops_time(0, 0, pages).as_secs_f64();
    image_len as f64 / (link_s + flash_s)
}

/// Returns the flash ceiling: image bytes per second when `bytes` bytes are erased and
/// programmed with `timing` and nothing else ([`FlashTiming::write_time`]).
pub fn flash(timing: &FlashTiming, bytes: u64) -> f64 {
    bytes as f64 / timing.write_time(bytes).as_secs_f64()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fragmentation() {
        assert_eq!(fragments(244, 251), vec![251]);
        assert_eq!(fragments(245, 251), vec![251, 1]);
        let mut small = vec![27; 9];
        small.push(8);
        assert_eq!(fragments(244, 27), small);
    }

    #[test]
    fn the_margin_can_cost_a_pair() {
        // LE 1M, 7.5 ms: 244-byte values are 2468 µs pairs; 3 end at 7404 µs, past 7350.
        let p = LinkParams::esp32_classic();
        let close = |a: f64, b: f64| (a - b).abs() <= b * 1e-12;
        assert!(close(link(&p, 244), 2.0 * 244.0 / 0.0075));
        let no_margin = LinkParams {
            event_end_margin_us: 0,
            ..p
        };
        assert!(close(link(&no_margin, 244), 3.0 * 244.0 / 0.0075));
    }
}
