//! Part 1: modelled update time of every column under one link profile.

use std::time::Duration;

use ble_link_model::{FlashTiming, LinkParams, LinkStats, Profile, ceilings};
use ota_core::client::{FastSender, LegacySender, Sender, SenderConfig};
use ota_core::device::PreErase;
use serde::Serialize;
use virtual_esp32::FlashStats;
use virtual_esp32::air::{AirConfig, AirOutcome, update_over_air};

use crate::device::{device_for, engine, image_chip};
use crate::reference::{self, espressif, nordic, smp};

/// The protocols compared, in the report's column order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Column {
    /// The seed's protocol (`Sender::Legacy`) against our device engine.
    Seed,
    /// Ours (`Sender::Fast`) against our device engine.
    Ours,
    /// [`reference::espressif`].
    Espressif,
    /// [`reference::smp`].
    McumgrSmp,
    /// [`reference::nordic`].
    NordicDfu,
}

impl Column {
    /// Every column.
    pub const ALL: [Column; 5] = [
        Column::Seed,
        Column::Ours,
        Column::Espressif,
        Column::McumgrSmp,
        Column::NordicDfu,
    ];

    /// The column's heading.
    pub const fn title(self) -> &'static str {
        match self {
            Column::Seed => "seed (legacy)",
            Column::Ours => "ours (fast)",
            Column::Espressif => "Espressif BLE OTA",
            Column::McumgrSmp => "MCUmgr SMP",
            Column::NordicDfu => "Nordic DFU",
        }
    }
}

/// One protocol's modelled update.
#[derive(Debug, Clone, Serialize)]
pub struct Cell {
    /// Which protocol.
    pub column: Column,
    /// Modelled seconds from the first write to the last awaited answer.
    pub seconds: f64,
    /// Image bytes per modelled second.
    pub bytes_per_s: f64,
    /// Flash busy time charged to the device, seconds.
    pub flash_s: f64,
    /// Connection events that carried packets.
    pub connection_events: u64,
    /// Connection events missed while the device's flash worked.
    pub missed_events: u64,
    /// The link dropped (a flash outage reached the supervision timeout): the update failed.
    pub link_lost: bool,
    /// Central data packets (LL).
    pub central_data_packets: u64,
}

/// Everything about our protocol that explains where its time goes.
#[derive(Debug, Clone, Serialize)]
pub struct OursDetail {
    /// Sector-erase commands.
    pub sector_erases: u64,
    /// 64 KiB block-erase commands ours issued.
    pub block_erases: u64,
    /// Page-program commands.
    pub page_programs: u64,
    /// Page programs a writer of whole aligned pages would need (image length / 256).
    pub ideal_page_programs: u64,
    /// Seconds of flash time the partial pages add over whole pages.
    pub partial_page_s: f64,
    /// Flash busy time / modelled time.
    pub flash_utilisation: f64,
    /// Mean central data packets per connection event.
    pub packets_per_event: f64,
    /// Write commands the link carried.
    pub pdus: u64,
}

/// One profile × one image.
#[derive(Debug, Clone, Serialize)]
pub struct ProfileRun {
    /// The profile's short name.
    pub profile: String,
    /// A one-line description of the link.
    pub link: String,
    /// Image bytes.
    pub image_len: usize,
    /// Every column.
    pub cells: Vec<Cell>,
    /// The link ceiling (B/s): write commands filling every connection event, the best value
    /// length (see `link_ceiling_value_len`).
    pub link_ceiling: f64,
    /// The value length that gives the link ceiling.
    pub link_ceiling_value_len: usize,
    /// The airtime-only bound (B/s) for that value length, ignoring event boundaries.
    pub airtime_ceiling: f64,
    /// The flash ceiling (B/s): erase + program of the image and nothing else.
    pub flash_ceiling: f64,
    /// The honest ceiling (B/s) any protocol could reach on this device: the link time at the
    /// best value length plus every page program, which stops the radio
    /// (`ceilings::honest`).
    pub honest_ceiling: f64,
    /// Ours / the honest ceiling, throughput.
    pub ours_vs_ceiling: f64,
    /// Ours / seed, throughput.
    pub ours_vs_seed: f64,
    /// Ours is faster than every reference column.
    pub ahead_of_references: bool,
    /// Ours under the worst-case (datasheet maximum) flash timing.
    pub worst_case: WorstCase,
    /// Where our time goes.
    pub ours: OursDetail,
    /// Ours with the image compressed.
    pub compressed: Compressed,
}

/// Ours with the image sent as a compressed stream (`client::compress`), on the same link
/// and device, against ours uncompressed.
#[derive(Debug, Clone, Serialize)]
pub struct Compressed {
    /// Bytes of the compressed stream.
    pub wire_len: usize,
    /// Stream / image.
    pub ratio: f64,
    /// Image bytes per modelled second.
    pub bytes_per_s: f64,
    /// Compressed / ours uncompressed, throughput.
    pub vs_uncompressed: f64,
    /// The compressed ceiling (B/s of image): the link carrying the stream plus every page
    /// program of the image (`ceilings::honest_compressed`).
    pub ceiling: f64,
    /// Compressed / its ceiling.
    pub vs_ceiling: f64,
    /// Image bytes per modelled second on a device whose radio keeps running during flash
    /// work (`AirConfig::radio_during_flash`).
    pub radio_runs_bytes_per_s: f64,
    /// The raw link ceiling (B/s): the link carrying the image itself, nothing else.
    pub raw_link_ceiling: f64,
    /// `radio_runs_bytes_per_s` / the raw link ceiling.
    pub radio_runs_vs_raw_link: f64,
}

impl ProfileRun {
    /// Returns the cell of `column`.
    pub fn cell(&self, column: Column) -> &Cell {
        self.cells
            .iter()
            .find(|c| c.column == column)
            .expect("every column is measured")
    }
}

/// Describes a link in one line.
pub fn describe(p: &LinkParams) -> String {
    format!(
        "{:?}, {} ms interval, ATT MTU {}, LL payload {}, {} packets/event, rx queue {}",
        p.phy,
        p.conn_interval_us() as f64 / 1000.0,
        p.att_mtu,
        p.max_ll_payload,
        p.max_packets_per_event
            .map_or("unlimited".to_string(), |n| n.to_string()),
        p.rx_queue_depth,
    )
    .replace("Le1M", "LE 1M")
    .replace("Le2M", "LE 2M")
}

/// Returns the link ceiling for the best value length and that length.
pub fn link_ceiling(p: &LinkParams) -> (f64, usize) {
    (20..=p.max_value_len())
        .map(|len| (ceilings::link(p, len), len))
        .fold((0.0, 0), |best, c| if c.0 > best.0 { c } else { best })
}

fn flash_time(t: &FlashTiming, s: &FlashStats) -> Duration {
    t.ops_time(s.sector_erase_cmds, s.block_erase_cmds, s.page_programs)
}

fn diff(after: FlashStats, before: FlashStats) -> FlashStats {
    FlashStats {
        sector_erase_cmds: after.sector_erase_cmds - before.sector_erase_cmds,
        page_programs: after.page_programs - before.page_programs,
        block_erase_cmds: after.block_erase_cmds - before.block_erase_cmds,
        ..FlashStats::default()
    }
}

fn cell(column: Column, modelled: Duration, len: usize, flash: Duration, link: &LinkStats) -> Cell {
    Cell {
        column,
        seconds: modelled.as_secs_f64(),
        bytes_per_s: len as f64 / modelled.as_secs_f64(),
        flash_s: flash.as_secs_f64(),
        connection_events: link.connection_events,
        missed_events: link.missed_events,
        link_lost: false,
        central_data_packets: link.central_data_packets,
    }
}

/// What the worst-case flash timing does to ours.
#[derive(Debug, Clone, Serialize)]
pub struct WorstCase {
    /// Image bytes per modelled second with every erase and program at its datasheet maximum.
    pub bytes_per_s: f64,
    /// Links lost because a flash outage reached the supervision timeout.
    pub supervision_drops: u32,
    /// Connection events the device missed while its flash worked.
    pub missed_events: u64,
}

/// How one of our-engine columns ended.
struct EngineRun {
    modelled: Duration,
    link: LinkStats,
    flash: FlashStats,
    supervision_drops: u32,
    activated: bool,
}

/// A reference column's cell: no throughput when its link was lost.
fn reference_cell(column: Column, r: &reference::RefReport, len: usize, flash: Duration) -> Cell {
    let mut c = cell(column, r.modelled, len, flash, &r.link);
    if r.link_lost {
        c.bytes_per_s = 0.0;
        c.link_lost = true;
    }
    c
}

/// Runs our device engine against the seed's client (`legacy`) or ours over `config`.
///
/// The seed's column stands for the seed's firmware on the same device: it erases sector by
/// sector as it writes (`esp_ota_begin(.., OTA_WITH_SEQUENTIAL_WRITES, ..)` in its
/// `gatt_svr.c`) and writes each packet as it comes (`esp_ota_write`), so the engine runs with
/// no pre-erase and one page per program batch. Ours runs as the firmware does: the slot
/// erased while the device was idle (`UpdateEngine::pre_erase_step`), pages programmed by
/// batches.
fn run_engine(image: &[u8], legacy: bool, config: &AirConfig) -> EngineRun {
    run_engine_with(image, legacy, None, config)
}

/// [`run_engine`], the fast protocol sending `stream` (the image compressed) when given.
fn run_engine_with(
    image: &[u8],
    legacy: bool,
    stream: Option<&[u8]>,
    config: &AirConfig,
) -> EngineRun {
    let chip = image_chip(image).expect("an ESP app image");
    let mut dev = device_for(chip);
    let mut device_config = config.device_config(chip);
    if legacy {
        device_config.program_batch_pages = 1;
    }
    let mut eng = engine(&mut dev, device_config);
    let mut sender = if legacy {
        Sender::Legacy(LegacySender::new(image, config.link.att_mtu).expect("image fits"))
    } else {
        let sender = FastSender::new(image, SenderConfig::default()).expect("image fits");
        Sender::Fast(match stream {
            Some(s) => sender.with_stream(s).expect("stream fits"),
            None => sender,
        })
    };
    if !legacy {
        while let Ok(PreErase::Erased { .. } | PreErase::Blank { .. }) =
            eng.pre_erase_step(dev.flash_mut())
        {}
    }
    let before = dev.flash().stats();
    let report = update_over_air(&mut dev, &mut eng, &mut sender, config, &mut |_, _| {});
    EngineRun {
        modelled: report.modelled,
        link: report.link,
        flash: diff(dev.flash().stats(), before),
        supervision_drops: report.supervision_drops,
        activated: matches!(report.outcome, AirOutcome::Activated { .. }),
    }
}

/// [`run_engine`] that must activate the image.
fn ours_or_seed(
    image: &[u8],
    legacy: bool,
    config: &AirConfig,
) -> (Duration, LinkStats, FlashStats) {
    let r = run_engine(image, legacy, config);
    assert!(
        r.activated,
        "{} update failed",
        if legacy { "seed" } else { "our" }
    );
    (r.modelled, r.link, r.flash)
}

/// Runs every column for `profile` on `image`.
pub fn run_profile(profile: Profile, image: &[u8]) -> ProfileRun {
    let timing = FlashTiming::TYPICAL_4MB_SPI_NOR;
    // Every column on the same link to the same device (which grants an ATT MTU of 498).
    let config = AirConfig::new(profile.params());
    let params = config.link;
    let len = image.len();
    let mut cells = Vec::new();

    let (t, link, flash) = ours_or_seed(image, true, &config);
    cells.push(cell(
        Column::Seed,
        t,
        len,
        flash_time(&timing, &flash),
        &link,
    ));
    let (t, link, flash) = ours_or_seed(image, false, &config);
    let ours_flash = flash_time(&timing, &flash);
    cells.push(cell(Column::Ours, t, len, ours_flash, &link));
    let ours_stats = (t, link, flash);

    let value = params.max_value_len();
    let mut c = espressif::EspClient::new(image, value);
    let mut d = espressif::EspDevice::new(timing);
    let r = reference::run(params, &mut c, &mut d);
    cells.push(reference_cell(Column::Espressif, &r, len, d.flash_time()));
    let mut c = smp::SmpClient::new(image, value);
    let mut d = smp::SmpDevice::new(timing);
    let r = reference::run(params, &mut c, &mut d);
    cells.push(reference_cell(Column::McumgrSmp, &r, len, d.flash_time()));
    let mut c = nordic::DfuClient::new(image, value);
    let mut d = nordic::DfuDevice::new(timing);
    let r = reference::run(params, &mut c, &mut d);
    cells.push(reference_cell(Column::NordicDfu, &r, len, d.flash_time()));

    let (link_ceiling, link_ceiling_value_len) = link_ceiling(&params);
    let airtime_ceiling =
        ceilings::airtime(params.phy, params.max_ll_payload, link_ceiling_value_len);
    let flash_ceiling = ceilings::flash(&timing, len as u64);
    let honest_ceiling = ceilings::honest(&params, &timing, len as u64);
    let ours = cells[1].bytes_per_s;
    let seed = cells[0].bytes_per_s;
    let ahead_of_references = [Column::Espressif, Column::McumgrSmp, Column::NordicDfu]
        .iter()
        .all(|c| cells.iter().any(|x| x.column == *c && x.bytes_per_s < ours));
    let worst = {
        let mut worst_config = config.clone();
        worst_config.flash = FlashTiming::WORST_CASE_4MB_SPI_NOR;
        let r = run_engine(image, false, &worst_config);
        WorstCase {
            bytes_per_s: if r.activated {
                len as f64 / r.modelled.as_secs_f64()
            } else {
                0.0
            },
            supervision_drops: r.supervision_drops,
            missed_events: r.link.missed_events,
        }
    };

    let (t, link, flash) = ours_stats;
    let ideal_pages = (len as u64).div_ceil(u64::from(timing.page_size));
    let ours_detail = OursDetail {
        sector_erases: flash.sector_erase_cmds,
        block_erases: flash.block_erase_cmds,
        page_programs: flash.page_programs,
        ideal_page_programs: ideal_pages,
        partial_page_s: flash.page_programs.saturating_sub(ideal_pages) as f64
            * f64::from(timing.page_program_us)
            / 1e6,
        flash_utilisation: ours_flash.as_secs_f64() / t.as_secs_f64(),
        packets_per_event: link.central_data_packets as f64 / link.connection_events.max(1) as f64,
        pdus: link.pdus_to_peripheral,
    };
    let compressed = {
        let stream = ota_core::client::compress(image);
        let run = |config: &AirConfig| {
            let r = run_engine_with(image, false, Some(&stream), config);
            assert!(r.activated, "the compressed update failed");
            len as f64 / r.modelled.as_secs_f64()
        };
        let bytes_per_s = run(&config);
        let radio_runs = run(&AirConfig {
            radio_during_flash: true,
            ..config.clone()
        });
        let ceiling =
            ceilings::honest_compressed(&params, &timing, len as u64, stream.len() as u64);
        let (_, raw_link_ceiling) = ceilings::best_link(&params);
        Compressed {
            wire_len: stream.len(),
            ratio: stream.len() as f64 / len as f64,
            bytes_per_s,
            vs_uncompressed: bytes_per_s / ours,
            ceiling,
            vs_ceiling: bytes_per_s / ceiling,
            radio_runs_bytes_per_s: radio_runs,
            raw_link_ceiling,
            radio_runs_vs_raw_link: radio_runs / raw_link_ceiling,
        }
    };
    ProfileRun {
        profile: profile.name().to_string(),
        link: describe(&params),
        image_len: len,
        cells,
        link_ceiling,
        link_ceiling_value_len,
        airtime_ceiling,
        flash_ceiling,
        honest_ceiling,
        ours_vs_ceiling: ours / honest_ceiling,
        ours_vs_seed: ours / seed,
        ahead_of_references,
        worst_case: worst,
        ours: ours_detail,
        compressed,
    }
}
