//! The benchmark's model against cases computed by hand, so its figures cannot drift
//! silently: airtime per PHY, back-to-back write requests, and one reference pattern on a
//! tiny image, each worked out from the Core Specification's numbers and the flash timing.

use std::time::Duration;

use ble_link_model::{FlashTiming, LinkParams, Phy, Profile, T_IFS_US, airtime_us};
use ota_bench::reference::{self, Client, Device, Write, smp};

#[test]
fn airtime_of_a_251_byte_packet_on_each_phy() {
    // Preamble + access address 4 + header 2 + payload 251 + CRC 3 octets.
    // LE 1M: 1-octet preamble, 8 µs per octet: 261 × 8 = 2088 µs.
    assert_eq!(airtime_us(Phy::Le1M, 251), 2088);
    // LE 2M: 2-octet preamble, 4 µs per octet: 262 × 4 = 1048 µs.
    assert_eq!(airtime_us(Phy::Le2M, 251), 1048);
}

/// Sends `left` write requests of `len` bytes, each after the previous one was answered.
struct Requests {
    left: usize,
    len: usize,
    waiting: bool,
}

impl Client for Requests {
    fn poll_transmit(&mut self) -> Option<Write> {
        if self.waiting || self.left == 0 {
            return None;
        }
        self.left -= 1;
        self.waiting = true;
        Some(Write {
            handle: 1,
            value: vec![0; self.len],
            with_response: true,
        })
    }
    fn handle_notification(&mut self, _: u16, _: &[u8]) {}
    fn handle_write_response(&mut self) {
        self.waiting = false;
    }
    fn is_finished(&self) -> bool {
        self.left == 0 && !self.waiting
    }
}

/// Accepts every write at once.
struct Instant0;

impl Device for Instant0 {
    fn handle_write(&mut self, _: Duration, _: u16, _: &[u8]) -> Duration {
        Duration::ZERO
    }
    fn poll_notification(&mut self) -> Option<(u16, Vec<u8>)> {
        None
    }
}

#[test]
fn one_write_request_per_two_connection_intervals() {
    for profile in Profile::ALL {
        let p = profile.params();
        let i = u64::from(p.conn_interval_us());
        for n in [1u64, 10] {
            let mut client = Requests {
                left: n as usize,
                len: p.max_value_len(),
                waiting: false,
            };
            let r = reference::run(p, &mut client, &mut Instant0);
            // Request k goes in the event at (2k - 1) intervals, its answer comes in the event
            // at 2k intervals: the central's empty packet, T_IFS, then the 5-byte write
            // response (L2CAP 4 + opcode 1).
            let last = 2 * n * i
                + u64::from(airtime_us(p.phy, 0))
                + u64::from(T_IFS_US)
                + u64::from(airtime_us(p.phy, 5));
            assert_eq!(
                r.modelled.as_micros() as u64,
                last,
                "{profile:?}, {n} requests"
            );
            assert_eq!(r.link.connection_events, 2 * n, "{profile:?}");
        }
    }
}

#[test]
fn mcumgr_smp_uploads_a_100_byte_image_in_one_round_trip() {
    let p = LinkParams::desktop();
    let image: Vec<u8> = (0..100u8).collect();
    let timing = FlashTiming::TYPICAL_4MB_SPI_NOR;
    let mut client = smp::SmpClient::new(&image, p.max_value_len());
    let mut device = smp::SmpDevice::new(timing);
    let r = reference::run(p, &mut client, &mut device);

    // The request: SMP header 8 + CBOR map head 1 + "image" 6 + 0 1 + "len" 4 + 100 2
    // + "sha" 4 + bstr head 2 + 32 + "off" 4 + 0 1 + "data" 5 + bstr head 2 + 100 = 172
    // bytes, one 179-byte LL packet (L2CAP 4 + ATT 3 + 172), sent in the first event (7.5 ms)
    // and complete 760 µs later ((2 + 4 + 2 + 179 + 3) × 4 µs on LE 2M).
    let arrival = 7_500 + u64::from(airtime_us(Phy::Le2M, 179));
    assert_eq!(arrival, 8_260);
    // The device erases one sector (45 ms) and programs one page (0.7 ms): ready at 53 960 µs,
    // so the response goes in the event at 60 000 µs: the central's empty packet (44 µs),
    // T_IFS, then the response: header 8 + map 1 + "rc" 3 + 0 1 + "off" 4 + 100 2 = 19
    // bytes, a 26-byte LL packet of (2 + 4 + 2 + 26 + 3) × 4 = 148 µs.
    let ready = arrival + 45_000 + 700;
    assert!(ready < 60_000);
    let expected = 60_000 + 44 + 150 + u64::from(airtime_us(Phy::Le2M, 26));
    assert_eq!(expected, 60_342);
    assert_eq!(r.modelled.as_micros() as u64, expected);
    assert_eq!(device.flash_time(), Duration::from_micros(45_700));
    assert_eq!(r.link.bytes_to_peripheral, 172);
}
