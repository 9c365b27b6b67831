//! An update over a modelled BLE link: the client's [`Sender`] and the device's
//! [`UpdateEngine`] exchange their GATT operations through [`ble_link_model::Link`]. The device
//! is charged, for each write it handles, the CPU time of hashing what it read or received
//! ([`DeviceCpu`], the radio keeps running) and then the flash time of the erases and page
//! programs the engine issued ([`FlashTiming::ops_time`]), during which the radio stops, as
//! esp-storage masks interrupts around every flash operation on the ESP32-C3/C6. A flash
//! outage that reaches the supervision timeout drops the link; the client reconnects and
//! resumes as after any drop. The result is the modelled transfer time, the figure the demo
//! and the benchmarks report.

use std::time::Duration;

use ble_link_model::{
    CentralOp, FlashTiming, Link, LinkEvent, LinkParams, LinkStats, Outcome, PeripheralOp,
    SubmitError,
};
use ota_core::client::{ClientError, ClientEvent, Sender};
use ota_core::device::{ClientId, CpuWork, DeviceConfig, Event, Input, Shell, UpdateEngine};
use ota_core::esp::flash::FlashWork;
use ota_core::protocol::{Characteristic, DEVICE_ATT_MTU, Reason};
use ota_core::time::Instant;

use crate::VirtualEsp32;

/// ATT handles the model carries (any two distinct values).
const CONTROL_HANDLE: u16 = 0x0010;
const DATA_HANDLE: u16 = 0x0012;
/// The one client of a modelled session.
const CLIENT: ClientId = ClientId(1);

/// How the modelled link and device behave.
#[derive(Debug, Clone)]
pub struct AirConfig {
    /// The link's parameters (a profile such as `LinkParams::desktop()`).
    pub link: LinkParams,
    /// The flash chip's timing.
    pub flash: FlashTiming,
    /// Drop the link just before the client's n-th data write (1-based), once per entry.
    pub disconnect_at: Vec<u32>,
    /// Modelled time to find and reconnect the device after a drop.
    pub reconnect_delay: Duration,
    /// Give up when the modelled time passes this.
    pub time_limit: Duration,
    /// The device's CPU.
    pub cpu: DeviceCpu,
    /// The BLE controller keeps running while the flash erases and programs (ESP-IDF with
    /// IRAM-safe interrupt handlers; not esp-storage, which masks interrupts): flash time
    /// then delays the device's queue like CPU time instead of stopping the radio.
    pub radio_during_flash: bool,
}

/// What the device's CPU costs: per write it handles, per byte it hashes (SHA-256 of the
/// image as it arrives, of the slot read back), per byte it inflates. The radio runs while the
/// CPU works: this delays the device's queue, not the link.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DeviceCpu {
    /// Host processing of each received write before its bytes are handled (the controller
    /// hands the PDU up, the GATT layer queues it), in µs.
    pub per_write_us: u32,
    /// SHA-256 cost per byte, in ns.
    pub hash_ns_per_byte: u32,
    /// Inflate cost per image byte of a compressed stream, in ns.
    pub inflate_ns_per_byte: u32,
    /// One Ed25519 signature check (a signed manifest at BEGIN), in µs.
    pub signature_check_us: u32,
}

impl DeviceCpu {
    /// A 160 MHz RISC-V core (ESP32-C3) hashing in software (the `sha2` crate, as the
    /// firmware does when its SHA accelerator fails the boot self-test) and inflating with
    /// miniz_oxide.
    ///
    /// Counted, then scaled: `cargo run --example cpu_cost -p ota-core` under callgrind (a
    /// deterministic instruction counter) on the firmware image, 411,184 bytes, counts 54.2
    /// x86-64 instructions per byte for `sha2`'s portable SHA-256 and 27.5 per output byte for
    /// the inflater. RV32IMC has no rotate instruction (SHA-256 rotates 6 times per byte,
    /// 3 instructions each instead of 1: +12) and 32-bit registers for the inflater's 64-bit
    /// bit buffer and its address arithmetic (taken as +30%): about 66 and 36 instructions per
    /// byte. At one instruction per cycle, 160 MHz, that is 413 and 225 ns per byte. These are
    /// scaled counts, not measurements on silicon. The per-write cost (50 µs) is an estimate
    /// of the HCI, L2CAP and GATT handling of one write.
    ///
    /// A signature check (ed25519-dalek's `verify_strict` of a manifest, its 32-bit backend,
    /// built at opt-level "s") ran 4.16 million RV32 instructions, counted exactly with the
    /// `minstret` counter under QEMU: 26 ms at one instruction per cycle, taken as 35 ms for
    /// the multiplier's latency and flash cache misses (an estimate, not a measurement on
    /// silicon).
    pub const ESP32C3_SOFTWARE_SHA: DeviceCpu = DeviceCpu {
        per_write_us: 50,
        hash_ns_per_byte: 413,
        inflate_ns_per_byte: 225,
        signature_check_us: 35_000,
    };

    /// The ESP32-C3 as the firmware runs it: SHA-256 on the chip's accelerator (esp-hal's
    /// `Sha256Context`), inflating in software as [`ESP32C3_SOFTWARE_SHA`](Self::ESP32C3_SOFTWARE_SHA)
    /// says. The hash rate is ESP-IDF's performance floor for the C3's accelerator, 90 MB/s
    /// at 160 MHz (`IDF_PERFORMANCE_MIN_SHA256_THROUGHPUT_MBSEC` in
    /// `components/idf_test/include/esp32c3/idf_performance_target.h`, set below the worst
    /// case measured): 11.1 ns per byte, taken as 12.
    pub const ESP32C3: DeviceCpu = DeviceCpu {
        hash_ns_per_byte: 12,
        ..DeviceCpu::ESP32C3_SOFTWARE_SHA
    };

    /// Returns the CPU time of one write whose handling did `work` and made the device read
    /// `read` bytes of flash (each hashed once).
    pub fn write_time(&self, work: CpuWork, read: u64) -> Duration {
        Duration::from_micros(u64::from(self.per_write_us))
            + Duration::from_nanos((work.hashed + read) * u64::from(self.hash_ns_per_byte))
            + Duration::from_nanos(work.inflated * u64::from(self.inflate_ns_per_byte))
            + Duration::from_micros(u64::from(work.signatures) * u64::from(self.signature_check_us))
    }
}

impl AirConfig {
    /// A session over `link` with typical flash timing and no faults. The ATT MTU is what the
    /// central asks for capped at what the device grants ([`DEVICE_ATT_MTU`]).
    pub fn new(mut link: LinkParams) -> Self {
        link.att_mtu = link.att_mtu.min(DEVICE_ATT_MTU);
        AirConfig {
            link,
            flash: FlashTiming::TYPICAL_4MB_SPI_NOR,
            disconnect_at: Vec::new(),
            reconnect_delay: Duration::from_millis(1000),
            time_limit: Duration::from_secs(3600),
            cpu: DeviceCpu::ESP32C3,
            radio_during_flash: false,
        }
    }

    /// Returns the device configuration that matches this link: the announced window is the
    /// modelled receive queue, so a compliant client never overruns it.
    ///
    /// A device whose radio runs through flash work programs a page per batch: the programs
    /// then overlap with the link, where big batches (which keep a stopped radio's outages
    /// few) would fill the receive queue while they program.
    pub fn device_config(&self, chip: ota_core::esp::Chip) -> DeviceConfig {
        let base = DeviceConfig::new(chip);
        DeviceConfig {
            rx_queue_chunks: self.link.rx_queue_depth,
            program_batch_pages: if self.radio_during_flash {
                1
            } else {
                base.program_batch_pages
            },
            ..base
        }
    }
}

/// How a modelled update ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AirOutcome {
    /// The device verified the image and selected it (the slot, when the protocol says).
    Activated {
        /// The selected slot.
        slot: Option<u8>,
    },
    /// The client gave up or the device refused.
    Failed(ClientError),
    /// The device lost power (a fault plan cut it).
    PowerLost,
    /// Nothing moved any more, or the time limit passed.
    Stalled,
}

/// What a modelled update measured.
#[derive(Debug, Clone)]
pub struct AirReport {
    /// How it ended.
    pub outcome: AirOutcome,
    /// Modelled time from the first write to the last answer.
    pub modelled: Duration,
    /// Bytes of the image.
    pub image_len: u32,
    /// Link statistics, summed over every connection.
    pub link: LinkStats,
    /// Links dropped on purpose.
    pub disconnects: u32,
    /// Links lost because a flash outage reached the supervision timeout.
    pub supervision_drops: u32,
    /// Data writes the client made (a write the link dropped before counts).
    pub data_writes: u32,
    /// What the device engine asked its shell to do.
    pub device_events: Vec<Event>,
}

impl AirReport {
    /// Image bytes per modelled second.
    pub fn throughput(&self) -> f64 {
        self.image_len as f64 / self.modelled.as_secs_f64().max(1e-9)
    }
}

/// Runs `sender` against `engine` (which runs on `device`) over the modelled link, calling
/// `progress` with each client event and the modelled time.
pub fn update_over_air(
    device: &mut VirtualEsp32,
    engine: &mut UpdateEngine,
    sender: &mut Sender<'_>,
    config: &AirConfig,
    progress: &mut dyn FnMut(&ClientEvent, Duration),
) -> AirReport {
    let image_len = sender.progress().1;
    if matches!(sender, Sender::Fast(_))
        && config.link.att_mtu < ota_core::protocol::fast::MIN_ATT_MTU
    {
        return AirReport {
            outcome: AirOutcome::Failed(ClientError::MtuTooSmall {
                mtu: config.link.att_mtu,
            }),
            modelled: Duration::ZERO,
            image_len,
            link: LinkStats::default(),
            disconnects: 0,
            supervision_drops: 0,
            data_writes: 0,
            device_events: Vec::new(),
        };
    }
    let mut run = Run {
        link: Link::new(config.link).expect("link parameters must be valid"),
        base_us: 0,
        device_events: Vec::new(),
        notes: std::collections::VecDeque::new(),
        waiting: None,
        data_writes: 0,
        disconnects: 0,
        supervision_drops: 0,
        stats: Vec::new(),
    };
    // What the device did before this session (the pre-erase while it sat idle) is not part
    // of it.
    let _ = engine.take_flash_work();
    run.connect(device, engine, config);
    let mut buf = vec![0u8; 600];
    let mut final_outcome = AirOutcome::Stalled;
    let outcome = loop {
        // 1. React to what the link delivered.
        let mut lost = false;
        while let Some(ev) = run.link.poll_event() {
            match ev {
                LinkEvent::DeliveredToPeripheral { at, id, op } => {
                    let now = run.ms(at.as_micros());
                    let (outcome, (work, cpu)) = match &op {
                        CentralOp::WriteRequest { handle, value }
                        | CentralOp::WriteCommand { handle, value } => {
                            let input = Input::Write {
                                client: CLIENT,
                                characteristic: characteristic(*handle),
                                data: value,
                            };
                            let (verdict, work) = run.serve(device, engine, input, now);
                            let outcome = match (verdict, &op) {
                                (Err(r), CentralOp::WriteRequest { .. }) => {
                                    Outcome::Reject(r.att_error())
                                }
                                _ => Outcome::Accept,
                            };
                            (outcome, work)
                        }
                        CentralOp::Read { .. } => (
                            Outcome::Value(engine.control_value().to_vec()),
                            (FlashWork::default(), CpuWork::default()),
                        ),
                    };
                    // The engine's own account of its flash commands, charged by the one rule.
                    let flash = config
                        .flash
                        .ops_time(work.sector_erases, 0, work.page_programs);
                    let mut cpu = config.cpu.write_time(cpu, work.bytes_read);
                    let flash = if config.radio_during_flash {
                        cpu += flash;
                        Duration::ZERO
                    } else {
                        flash
                    };
                    run.link
                        .peripheral_complete_work(id, cpu, flash, outcome)
                        .expect("one completion per delivery");
                }
                LinkEvent::DeliveredToCentral {
                    at,
                    op: PeripheralOp::Notification { value, .. },
                    ..
                } => {
                    sender.handle_notification(run.ms(at.as_micros()), &value);
                }
                LinkEvent::WriteResponse { at, result, .. } => {
                    sender.handle_write_result(run.ms(at.as_micros()), result);
                }
                LinkEvent::SupervisionTimeout { .. } => lost = true,
                _ => {}
            }
            let t = run.elapsed();
            while let Some(e) = sender.poll_event() {
                match e {
                    ClientEvent::Activated { slot } => {
                        final_outcome = AirOutcome::Activated { slot }
                    }
                    ClientEvent::Failed(err) => final_outcome = AirOutcome::Failed(err),
                    _ => {}
                }
                progress(&e, t);
            }
        }
        if !device.flash().is_powered() {
            break AirOutcome::PowerLost;
        }
        if lost {
            // The device went silent past the supervision timeout: both sides see the link
            // drop; the client finds the device again and resumes.
            run.supervision_drops += 1;
            run.reconnect(device, engine, sender, config);
            if run.supervision_drops > MAX_SUPERVISION_DROPS {
                break AirOutcome::Stalled;
            }
            continue;
        }
        run.flush_notes();
        if sender.is_finished() && run.link.is_idle() {
            break final_outcome;
        }
        // 2. Let the client submit what it may.
        let now = run.ms(run.link.now().as_micros());
        let mut reconnected = false;
        loop {
            let op = match run.waiting.take() {
                Some(op) => op,
                None => match sender.poll_transmit(now, &mut buf) {
                    None => break,
                    Some(tx) => {
                        let handle = match tx.characteristic {
                            Characteristic::Control => CONTROL_HANDLE,
                            Characteristic::Data => DATA_HANDLE,
                        };
                        let value = buf[..tx.len].to_vec();
                        if tx.with_response {
                            CentralOp::WriteRequest { handle, value }
                        } else {
                            run.data_writes += 1;
                            if config.disconnect_at.contains(&run.data_writes) {
                                run.disconnects += 1;
                                run.reconnect(device, engine, sender, config);
                                reconnected = true;
                                break;
                            }
                            CentralOp::WriteCommand { handle, value }
                        }
                    }
                },
            };
            match run.link.central_submit(op.clone()) {
                Ok(_) => {}
                Err(SubmitError::Full { .. }) => {
                    run.waiting = Some(op);
                    break;
                }
                Err(e) => panic!("the sender produced an operation the link refuses: {e}"),
            }
        }
        if reconnected {
            continue;
        }
        // 3. Move time to the next thing that happens.
        let link_next = run.link.next_event_time().map(|t| t.as_micros());
        let timer_next = [engine.poll_timeout(), sender.poll_timeout()]
            .into_iter()
            .flatten()
            .min()
            .map(|t| (t.0 * 1000).saturating_sub(run.base_us));
        match (link_next, timer_next) {
            (None, None) => break AirOutcome::Stalled,
            (Some(l), Some(t)) if t < l => run.fire_timers(device, engine, sender, t),
            (None, Some(t)) => run.fire_timers(device, engine, sender, t),
            _ => {
                run.link.advance_to_next();
            }
        }
        if run.elapsed() > config.time_limit {
            break AirOutcome::Stalled;
        }
    };
    let modelled = run.elapsed();
    run.stats.push(run.link.stats());
    AirReport {
        outcome,
        modelled,
        image_len,
        link: sum_stats(&run.stats),
        disconnects: run.disconnects,
        supervision_drops: run.supervision_drops,
        data_writes: run.data_writes,
        device_events: run.device_events,
    }
}

/// The mutable state of one modelled session.
struct Run {
    link: Link,
    /// Modelled µs before the current connection (the link's clock restarts on reconnect).
    base_us: u64,
    device_events: Vec<Event>,
    /// Notifications waiting for room in the device's TX buffer.
    notes: std::collections::VecDeque<Vec<u8>>,
    /// A client operation waiting for room in the client's TX buffer.
    waiting: Option<CentralOp>,
    data_writes: u32,
    disconnects: u32,
    supervision_drops: u32,
    stats: Vec<LinkStats>,
}

impl Run {
    fn ms(&self, link_us: u64) -> Instant {
        Instant((self.base_us + link_us) / 1000)
    }

    fn elapsed(&self) -> Duration {
        Duration::from_micros(self.base_us + self.link.now().as_micros())
    }

    fn flush_notes(&mut self) {
        while let Some(value) = self.notes.pop_front() {
            let op = PeripheralOp::Notification {
                handle: CONTROL_HANDLE,
                value: value.clone(),
            };
            if let Err(SubmitError::Full { .. }) = self.link.peripheral_submit(op) {
                self.notes.push_front(value);
                break;
            }
        }
    }

    /// Serves one input through the device driver; returns the verdict and the flash work it
    /// cost. Notifications queue for the device's TX buffer, events are recorded.
    fn serve(
        &mut self,
        device: &mut VirtualEsp32,
        engine: &mut UpdateEngine,
        input: Input<'_>,
        now: Instant,
    ) -> (Result<(), Reason>, (FlashWork, CpuWork)) {
        let mut shell = AirShell {
            work: FlashWork::default(),
            cpu: CpuWork::default(),
            notes: &mut self.notes,
            events: &mut self.device_events,
        };
        let verdict = engine.serve(device.flash_mut(), input, now, &mut shell);
        (verdict, (shell.work, shell.cpu))
    }

    fn fire_timers(
        &mut self,
        device: &mut VirtualEsp32,
        engine: &mut UpdateEngine,
        sender: &mut Sender<'_>,
        at_link_us: u64,
    ) {
        self.link
            .advance_to(ble_link_model::Instant::from_micros(at_link_us));
        let now = self.ms(self.link.now().as_micros());
        let (_, (work, _)) = self.serve(device, engine, Input::Tick, now);
        debug_assert_eq!(work, FlashWork::default(), "a tick touches no flash");
        sender.handle_timeout(now);
    }

    /// The client connects: the link's parameters, as the device's controller reports them.
    fn connect(
        &mut self,
        device: &mut VirtualEsp32,
        engine: &mut UpdateEngine,
        config: &AirConfig,
    ) {
        let now = self.ms(self.link.now().as_micros());
        let link = Input::Link {
            client: CLIENT,
            mtu: config.link.att_mtu,
            data_length: config.link.max_ll_payload,
            timing: Some((config.link.phy, config.link.conn_interval_us())),
        };
        let _ = self.serve(device, engine, Input::Connected(CLIENT), now);
        let _ = self.serve(device, engine, link, now);
    }

    fn reconnect(
        &mut self,
        device: &mut VirtualEsp32,
        engine: &mut UpdateEngine,
        sender: &mut Sender<'_>,
        config: &AirConfig,
    ) {
        let now = self.ms(self.link.now().as_micros());
        let _ = self.serve(device, engine, Input::Disconnected(CLIENT), now);
        self.stats.push(self.link.stats());
        self.base_us += self.link.now().as_micros() + config.reconnect_delay.as_micros() as u64;
        self.link = Link::new(config.link).expect("link parameters must be valid");
        self.notes.clear();
        self.waiting = None;
        sender.handle_disconnected();
        self.connect(device, engine, config);
    }
}

/// The modelled device's side of the driver: flash work summed for the link model to charge,
/// notifications queued for the TX buffer, events recorded.
struct AirShell<'a> {
    work: FlashWork,
    cpu: CpuWork,
    notes: &'a mut std::collections::VecDeque<Vec<u8>>,
    events: &'a mut Vec<Event>,
}

impl Shell for AirShell<'_> {
    fn flash_work(&mut self, work: FlashWork) {
        self.work += work;
    }
    fn cpu_work(&mut self, work: CpuWork) {
        self.cpu += work;
    }
    fn notify(&mut self, _client: ClientId, value: &[u8]) {
        self.notes.push_back(value.to_vec());
    }
    fn event(&mut self, event: Event) {
        self.events.push(event);
    }
}

/// The characteristic a modelled handle stands for.
fn characteristic(handle: u16) -> Characteristic {
    if handle == CONTROL_HANDLE {
        Characteristic::Control
    } else {
        Characteristic::Data
    }
}

/// Supervision drops after which a modelled update gives up: a device whose flash outages
/// outlast the link's timeout every time cannot be updated over that link.
const MAX_SUPERVISION_DROPS: u32 = 5;

fn sum_stats(all: &[LinkStats]) -> LinkStats {
    let mut total = all.first().cloned().unwrap_or_default();
    for s in all.iter().skip(1) {
        total.elapsed += s.elapsed;
        total.connection_events += s.connection_events;
        total.central_packets += s.central_packets;
        total.peripheral_packets += s.peripheral_packets;
        total.central_data_packets += s.central_data_packets;
        total.peripheral_data_packets += s.peripheral_data_packets;
        total.retransmissions += s.retransmissions;
        total.airtime += s.airtime;
        total.pdus_to_peripheral += s.pdus_to_peripheral;
        total.bytes_to_peripheral += s.bytes_to_peripheral;
        total.pdus_to_central += s.pdus_to_central;
        total.bytes_to_central += s.bytes_to_central;
        total.dropped_pdus += s.dropped_pdus;
        total.dropped_bytes += s.dropped_bytes;
        total.missed_events += s.missed_events;
    }
    total
}
