//! The benchmark's model against cases computed by hand, so its figures cannot drift
//! silently: airtime per PHY, back-to-back write requests, and one reference pattern on a
//! tiny image, each worked out from the Core Specification's numbers and the flash timing;
//! then every reference pattern on a 1 MB image on every profile, whose flash work must add
//! up and whose throughput `--nocapture` prints.

use std::time::Duration;

use ble_link_model::{FlashTiming, LinkParams, Phy, Profile, T_IFS_US, airtime_us};
use ota_bench::reference::{self, Client, Device, RefReport, Work, Write, espressif, nordic, smp};

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
    fn handle_write(&mut self, _: Duration, _: u16, _: &[u8]) -> Work {
        Work::ZERO
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

    // The request: SMP header 8 + CBOR map head 1 + "data" 5 + bstr head 2 + 100 + "off" 4
    // + 0 1 + "len" 4 + 100 2 + "sha" 4 + bstr head 2 + 32 = 165 bytes, one write and one
    // 172-byte LL packet (L2CAP 4 + ATT 3 + 165), sent in the first event (7.5 ms) and
    // complete 732 µs later ((2 + 4 + 2 + 172 + 3) × 4 µs on LE 2M).
    let arrival = 7_500 + u64::from(airtime_us(Phy::Le2M, 172));
    assert_eq!(arrival, 8_232);
    // The device erases the image's sector and the MCUboot trailer's (2 × 45 ms), then
    // programs one page (0.7 ms): ready at 98 932 µs, so the response goes in the event at
    // 105 000 µs (14 × 7.5 ms). The radio stopped as the flash work began, right as the write
    // arrived: its link-layer acknowledgement never went out, so that event starts with the
    // central sending the 172-byte packet again (732 µs), T_IFS, then the response:
    // header 8 + map 1 + "rc" 3 + 0 1 + "off" 4 + 100 2 = 19 bytes, a 26-byte LL packet of
    // (2 + 4 + 2 + 26 + 3) × 4 = 148 µs.
    let ready = arrival + 2 * 45_000 + 700;
    assert!((97_500..105_000).contains(&ready));
    let expected = 105_000
        + u64::from(airtime_us(Phy::Le2M, 172))
        + 150
        + u64::from(airtime_us(Phy::Le2M, 26));
    assert_eq!(expected, 106_030);
    assert_eq!(r.modelled.as_micros() as u64, expected);
    assert_eq!(device.flash_time(), Duration::from_micros(90_700));
    assert_eq!(r.link.bytes_to_peripheral, 165);
}

/// A device that adds up the flash work its inner device reports.
struct Metered<D> {
    inner: D,
    flash: Duration,
}

impl<D: Device> Device for Metered<D> {
    fn handle_write(&mut self, now: Duration, handle: u16, value: &[u8]) -> Work {
        let work = self.inner.handle_write(now, handle, value);
        assert_eq!(work.cpu, Duration::ZERO, "the patterns model no CPU time");
        self.flash += work.flash;
        work
    }
    fn poll_notification(&mut self) -> Option<(u16, Vec<u8>)> {
        self.inner.poll_notification()
    }
}

/// Runs `client` against `device`; checks that the flash work reported per write adds up to
/// the device's flash time; returns the report and that flash time.
fn metered<D: Device>(
    p: LinkParams,
    client: &mut dyn Client,
    device: D,
    flash_time: impl Fn(&D) -> Duration,
) -> (RefReport, Duration) {
    let mut m = Metered {
        inner: device,
        flash: Duration::ZERO,
    };
    let r = reference::run(p, client, &mut m);
    assert_eq!(m.flash, flash_time(&m.inner));
    assert_eq!(
        r.link.dropped_pdus, 0,
        "the device's receive queue never overflows"
    );
    (r, m.flash)
}

#[test]
fn every_pattern_on_every_profile_reports_its_flash_work() {
    let image: Vec<u8> = (0..1_000_000u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    let t = FlashTiming::TYPICAL_4MB_SPI_NOR;
    // The image's range erased once (15 blocks and 5 sectors), one program per page.
    let image_erase = reference::erase_region_time(&t, image.len() as u64);
    let pages = Duration::from_micros(image.len().div_ceil(256) as u64 * 700);
    let kbs = |r: &RefReport| image.len() as f64 / r.modelled.as_secs_f64() / 1000.0;
    println!("1 000 000-byte image, modelled kB/s (flash s)");
    for profile in Profile::ALL {
        let p = profile.params();
        let v = p.max_value_len();

        let mut c = espressif::EspClient::new(&image, v);
        let (esp, esp_flash) = metered(p, &mut c, espressif::EspDevice::new(t), |d| d.flash_time());
        if esp.link_lost {
            // `esp_ota_begin` erases the image's range at START in one go: on a device whose
            // radio stops meanwhile, that outlasts short supervision timeouts.
            assert!(image_erase >= p.supervision_timeout, "{profile:?}");
        } else {
            assert_eq!(esp_flash, image_erase + pages);
        }

        let mut c = smp::SmpClient::new(&image, v);
        let (smp, smp_flash) = metered(p, &mut c, smp::SmpDevice::new(t), |d| d.flash_time());
        if smp.link_lost {
            // The first request erases the image's range before its answer.
            assert!(image_erase >= p.supervision_timeout, "{profile:?}");
        } else {
            // 512-byte blocks are page aligned: the same pages, plus the trailer sector.
            assert_eq!(smp_flash, image_erase + t.erase_time(1) + pages);
        }
        let again = reference::run(
            p,
            &mut smp::SmpClient::new(&image, v),
            &mut smp::SmpDevice::new(t),
        );
        assert_eq!(again.modelled, smp.modelled, "deterministic");

        let mut c = nordic::DfuClient::new(&image, v);
        let prn = {
            c.connected(&p);
            c.prn()
        };
        let (dfu, dfu_flash) = metered(p, &mut c, nordic::DfuDevice::new(t), |d| d.flash_time());
        // A sector erase per 4 KiB object; packets are programmed as they come.
        assert!(
            dfu.link_lost || dfu_flash >= t.erase_time(image.len().div_ceil(4096) as u64) + pages
        );

        println!(
            "{:14} Espressif {:6.1} ({:4.2})  SMP {:6.1} ({:4.2})  Nordic PRN {:2} {:6.1} ({:4.2})",
            profile.name(),
            kbs(&esp),
            esp_flash.as_secs_f64(),
            kbs(&smp),
            smp_flash.as_secs_f64(),
            prn,
            kbs(&dfu),
            dfu_flash.as_secs_f64(),
        );
        let expected_prn = if profile == Profile::Ios { 12 } else { 0 };
        assert_eq!(prn, expected_prn, "{profile:?}");
    }
}
