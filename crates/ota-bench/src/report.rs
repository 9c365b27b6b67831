//! The report: BENCHMARKS.md, the JSON file and the SVG chart.

use std::fmt::Write as _;
use std::path::Path;

use anyhow::{Context, Result};
use ble_link_model::{FlashTiming, Profile};
use plotters::prelude::*;
use serde::Serialize;

use crate::model::{Column, ProfileRun};

/// Target: ours at least this share of the honest ceiling in every profile.
pub const CEILING_TARGET: f64 = 0.95;
/// Target: ours at least this many times the seed's throughput in every profile.
pub const SEED_TARGET: f64 = 5.0;

/// Target: compressed at least this many times ours uncompressed (the firmware image).
pub const COMPRESSED_TARGET: f64 = 1.25;
/// Target: compressed at least this share of the compressed ceiling (the firmware image).
pub const COMPRESSED_CEILING_TARGET: f64 = 0.95;
/// Target: with the radio running through flash work, compressed at least this many times
/// the raw link ceiling (the firmware image).
pub const RAW_LINK_TARGET: f64 = 1.5;

/// One image's runs under every profile.
#[derive(Debug, Clone, Serialize)]
pub struct ImageRuns {
    /// What the image is ("1 MiB synthetic app image", or the firmware's path).
    pub name: String,
    /// Image bytes.
    pub len: usize,
    /// One run per profile.
    pub runs: Vec<ProfileRun>,
}

/// Part 2: the host CPU cost of the device engine.
#[derive(Debug, Clone, Serialize)]
pub struct Cpu {
    /// Image bytes.
    pub image_len: usize,
    /// Median ns of SHA-256 over the image (criterion).
    pub sha256_ns: f64,
    /// Median ns of the device engine's whole update (criterion).
    pub engine_ns: f64,
    /// engine / sha256.
    pub ratio: f64,
    /// Where the figures came from.
    pub source: String,
}

/// Part 3: the real-stack run, or why it did not run.
#[derive(Debug, Clone, Serialize)]
#[serde(tag = "status", rename_all = "kebab-case")]
pub enum RealStack {
    /// Not measured; `reason` says why.
    NotMeasured {
        /// Why.
        reason: String,
    },
    /// Measured.
    Measured(crate::realstack::RealStackRun),
}

/// Everything the report shows.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// Part 1, one entry per image.
    pub modelled: Vec<ImageRuns>,
    /// Why the firmware image is not in part 1, when it is not.
    pub firmware_note: Option<String>,
    /// Part 2 (absent when criterion's results were not found).
    pub cpu: Option<Cpu>,
    /// Why part 2 is absent.
    pub cpu_note: Option<String>,
    /// Part 3.
    pub real_stack: RealStack,
    /// The flash timing of every column.
    pub flash_timing: FlashTimingJson,
}

/// [`FlashTiming`] for the JSON.
#[derive(Debug, Clone, Serialize)]
pub struct FlashTimingJson {
    /// µs per 4 KiB sector erase.
    pub sector_erase_us: u32,
    /// µs per page program.
    pub page_program_us: u32,
    /// Page size.
    pub page_size: u32,
    /// Sector size.
    pub sector_size: u32,
    /// µs per 64 KiB block erase.
    pub block_erase_us: u32,
    /// Block size.
    pub block_size: u32,
}

impl From<FlashTiming> for FlashTimingJson {
    fn from(t: FlashTiming) -> Self {
        FlashTimingJson {
            sector_erase_us: t.sector_erase_us,
            page_program_us: t.page_program_us,
            page_size: t.page_size,
            sector_size: t.sector_size,
            block_erase_us: t.block_erase_us,
            block_size: t.block_size,
        }
    }
}

fn kbs(bytes_per_s: f64) -> String {
    format!("{:.1}", bytes_per_s / 1000.0)
}

fn verdict(ok: bool) -> &'static str {
    if ok { "met" } else { "**missed**" }
}

/// Explains, from the run's own counters, where ours loses time against the honest ceiling.
pub fn bottleneck(run: &ProfileRun) -> String {
    let p = Profile::from_name(&run.profile).expect("a known profile");
    let params = p.params();
    let t = FlashTiming::TYPICAL_4MB_SPI_NOR;
    let o = &run.ours;
    let ours = run.cell(Column::Ours);
    let interval_ms = f64::from(params.conn_interval_us()) / 1000.0;
    let link_s = run.image_len as f64 / run.link_ceiling;
    let program_s = o.page_programs as f64 * f64::from(t.page_program_us) / 1e6;
    let missed_s = ours.missed_events as f64 * interval_ms / 1000.0;
    format!(
        "the ceiling is {link_s:.2} s of link ({} kB/s at {}-byte values) plus {program_s:.2} s \
         of page programs, during which the radio stops; ours takes {:.2} s. It misses {} \
         connection events ({missed_s:.2} s) while the flash works: each stop of the radio \
         ends the event under way and leaves the link idle until the next anchor point, so \
         the pages go to flash by 32 KiB batches, one stop per batch. Its connection events \
         carry {:.2} packets on average. The rest is BEGIN, the last batch's program and \
         read-back, and the END round trip.",
        kbs(run.link_ceiling),
        run.link_ceiling_value_len,
        ours.seconds,
        ours.missed_events,
        o.packets_per_event,
    )
}

/// Returns part 1's table row of `run`: every column's modelled time and throughput, the
/// ceilings and the ratios. Deterministic: CI compares it with BENCHMARKS.md.
pub fn part1_row(run: &ProfileRun) -> String {
    let mut row = format!("| **{}** |", run.profile);
    for c in Column::ALL {
        let cell = run.cell(c);
        if cell.link_lost {
            let _ = write!(row, " link lost at {:.1} s |", cell.seconds);
        } else {
            let _ = write!(
                row,
                " {:.1} s · {} kB/s |",
                cell.seconds,
                kbs(cell.bytes_per_s)
            );
        }
    }
    let _ = write!(
        row,
        " {} kB/s ({} B values) | {} kB/s | {} kB/s | {:.3} | {:.2}x |",
        kbs(run.link_ceiling),
        run.link_ceiling_value_len,
        kbs(run.flash_ceiling),
        kbs(run.honest_ceiling),
        run.ours_vs_ceiling,
        run.ours_vs_seed
    );
    row
}

/// Writes BENCHMARKS.md.
pub fn markdown(r: &Report, json_path: &str, svg_path: &str) -> String {
    let mut m = String::new();
    let w = &mut m;
    let _ = writeln!(w, "# Benchmarks\n");
    let _ = writeln!(
        w,
        "Generated by `cargo xtask bench` (crate `crates/ota-bench`); raw figures in \
         `{json_path}`, chart in [`{svg_path}`]({svg_path}). This machine has no radio: part 1 \
         is **modelled time** (the `ble-link-model` timing model and datasheet flash times), \
         part 2 is host CPU time, part 3 needs the real BLE stack on virtual controllers.\n"
    );
    let _ = writeln!(w, "![throughput per profile]({svg_path})\n");

    // Headline.
    let _ = writeln!(w, "## Headline\n");
    let _ = writeln!(
        w,
        "| Image | Profile | ours / honest ceiling | target ≥ {CEILING_TARGET:.2} | ours / seed | target ≥ {SEED_TARGET:.0}x | ahead of every reference | worst-case flash: ours, links dropped |"
    );
    let _ = writeln!(w, "|---|---|---|---|---|---|---|---|");
    for img in &r.modelled {
        for run in &img.runs {
            let _ = writeln!(
                w,
                "| {} | {} | {:.3} | {} | {:.2}x | {} | {} | {} kB/s, {} |",
                img.name,
                run.profile,
                run.ours_vs_ceiling,
                verdict(run.ours_vs_ceiling >= CEILING_TARGET),
                run.ours_vs_seed,
                verdict(run.ours_vs_seed >= SEED_TARGET),
                verdict(run.ahead_of_references),
                kbs(run.worst_case.bytes_per_s),
                run.worst_case.supervision_drops,
            );
        }
    }
    if let Some(fw) = r.modelled.iter().find(|i| i.name.starts_with("firmware")) {
        let _ = writeln!(
            w,
            "\n| Compressed ({}) | Profile | compressed / ours | target ≥ {COMPRESSED_TARGET}x | compressed / its ceiling | target ≥ {COMPRESSED_CEILING_TARGET} | radio running: / raw link ceiling | target ≥ {RAW_LINK_TARGET}x |",
            fw.name
        );
        let _ = writeln!(w, "|---|---|---|---|---|---|---|---|");
        for run in &fw.runs {
            let c = &run.compressed;
            let _ = writeln!(
                w,
                "| stream {:.3} of the image | {} | {:.2}x | {} | {:.3} | {} | {:.2}x | {} |",
                c.ratio,
                run.profile,
                c.vs_uncompressed,
                verdict(c.vs_uncompressed >= COMPRESSED_TARGET),
                c.vs_ceiling,
                verdict(c.vs_ceiling >= COMPRESSED_CEILING_TARGET),
                c.radio_runs_vs_raw_link,
                verdict(c.radio_runs_vs_raw_link >= RAW_LINK_TARGET),
            );
        }
    }
    let _ = writeln!(
        w,
        "\nThe honest ceiling is what any protocol could reach on this device: the link's time \
         at its best value length, with a 150 µs end-of-event margin, plus every page program \
         of the image, since esp-storage masks interrupts around each flash command and the \
         BLE controller stops meanwhile (`ble_link_model::ceilings::honest`; the slot is \
         erased before the update, while the device is idle)."
    );
    let _ = writeln!(w);
    match &r.cpu {
        Some(c) => {
            let _ = writeln!(
                w,
                "Host CPU: the device engine's whole update of a {:.1} MiB image costs **{:.2}x** \
                 SHA-256 alone over the same bytes.\n",
                c.image_len as f64 / f64::from(1u32 << 20),
                c.ratio
            );
        }
        None => {
            let _ = writeln!(
                w,
                "Host CPU: not measured in this run ({}).\n",
                r.cpu_note.as_deref().unwrap_or("no data")
            );
        }
    }
    match &r.real_stack {
        RealStack::NotMeasured { reason } => {
            let _ = writeln!(
                w,
                "Real stack (Bumble virtual controllers): **not measured in this run** ({reason}).\n"
            );
        }
        RealStack::Measured(m) => {
            let _ = writeln!(
                w,
                "Real stack (trouble-host on both sides, Bumble virtual controllers, no radio \
                 timing): a {} KiB update takes **{:.2}x** less wall time with ours than with \
                 the seed's protocol.\n",
                m.image_len / 1024,
                m.ratio
            );
        }
    }

    // Part 1.
    let _ = writeln!(w, "## 1. Modelled update time\n");
    let _ = writeln!(
        w,
        "Every column runs through the same `ble_link_model::Link` (connection events with a \
         150 µs end margin, airtime, one ATT request at a time, the device's {}-PDU receive \
         queue, the supervision timeout of the profile) on the same device, whose radio \
         stops while its flash erases or programs, and pays the same flash time: {} µs per \
         4 KiB sector erase, {} µs per 64 KiB block erase and {} µs per 256-byte page \
         program, a partial page counted as a whole one (W25Q32FV typical values, cited in \
         `FlashTiming::TYPICAL_4MB_SPI_NOR`). *ours* is the fast protocol (`Sender::Fast`) \
         against our device engine as the firmware runs it: the slot erased while the device \
         was idle, pages programmed by 32 KiB batches. *seed* is the seed's protocol \
         (`Sender::Legacy`) against the same engine set up as the seed's firmware writes: \
         erasing sector by sector and programming each packet as it comes. The three \
         reference patterns are small sans-I/O client/device pairs in \
         `crates/ota-bench/src/reference/` whose doc comments give their sources and how \
         their implementations erase; a pattern whose flash outage outlasts the supervision \
         timeout loses its link and shows no throughput. Times run from the first write to \
         the last awaited answer (ours: END_OK, after the device verified the image; it then \
         reboots by itself, as the seed's device does after DONE_ACK).\n",
        Profile::Desktop.params().rx_queue_depth,
        r.flash_timing.sector_erase_us,
        r.flash_timing.block_erase_us,
        r.flash_timing.page_program_us
    );
    let _ = writeln!(
        w,
        "Ceilings: *link* = write commands filling every connection event with the best value \
         length for the profile (`ceilings::link`, infinitely fast device; the airtime-only \
         figure ignoring event boundaries is in the JSON); *flash* = erase + program of the \
         image and nothing else (`ceilings::flash`); *honest* = the link's time plus every \
         page program (`ceilings::honest`), the one the targets are measured against.\n"
    );
    for img in &r.modelled {
        let _ = writeln!(w, "### {} ({} bytes)\n", img.name, img.len);
        let _ = write!(w, "| Profile |");
        for c in Column::ALL {
            let _ = write!(w, " {} |", c.title());
        }
        let _ = writeln!(
            w,
            " link ceiling | flash ceiling | honest ceiling | ours / honest | ours / seed |"
        );
        let _ = writeln!(w, "|---|---|---|---|---|---|---|---|---|---|---|");
        for run in &img.runs {
            let _ = writeln!(w, "{}", part1_row(run));
        }
        let _ = writeln!(w);
        let _ = writeln!(w, "Links:\n");
        for run in &img.runs {
            let _ = writeln!(w, "- {}: {}", run.profile, run.link);
        }
        let _ = writeln!(w);
    }
    if let Some(note) = &r.firmware_note {
        let _ = writeln!(w, "**Firmware image:** {note}\n");
    }

    // Compressed.
    let _ = writeln!(w, "### Compressed images\n");
    let _ = writeln!(
        w,
        "Ours with the image sent as a raw deflate stream (`ota_core::client::compress`: \
         miniz_oxide's best level, restarting every 64 KiB of image), inflated by the device as \
         it arrives, on the same link and device, in image bytes per modelled second. The \
         device pays inflating and hashing at the rates of `DeviceCpu::ESP32C3` (inflating \
         counted with callgrind and scaled to a 160 MHz RV32IMC core; SHA-256 on the \
         accelerator at ESP-IDF's 90 MB/s floor). *Compressed ceiling* = \
         the link carrying the stream at its best value length plus every page program of the \
         image (`ceilings::honest_compressed`). *Radio runs* = the same update on a device \
         whose BLE controller keeps running during flash work (ESP-IDF with IRAM-safe \
         interrupt handlers; not esp-storage), against the *raw link ceiling*: the link \
         carrying the image itself at its best. Targets, for the firmware image: compressed \
         ≥ {COMPRESSED_TARGET}x ours uncompressed and ≥ {COMPRESSED_CEILING_TARGET} of its \
         ceiling; radio runs ≥ {RAW_LINK_TARGET}x the raw link ceiling.\n"
    );
    let _ = writeln!(
        w,
        "| Image | Profile | stream / image | seed kB/s | ours kB/s | ours compressed kB/s | x uncompressed | compressed ceiling kB/s | / ceiling | radio runs kB/s | raw link ceiling kB/s | x raw link |"
    );
    let _ = writeln!(w, "|---|---|---|---|---|---|---|---|---|---|---|---|");
    for img in &r.modelled {
        for run in &img.runs {
            let c = &run.compressed;
            let _ = writeln!(
                w,
                "| {} | {} | {:.3} | {} | {} | {} | {:.2}x | {} | {:.3} | {} | {} | {:.2}x |",
                img.name,
                run.profile,
                c.ratio,
                kbs(run.cell(Column::Seed).bytes_per_s),
                kbs(run.cell(Column::Ours).bytes_per_s),
                kbs(c.bytes_per_s),
                c.vs_uncompressed,
                kbs(c.ceiling),
                c.vs_ceiling,
                kbs(c.radio_runs_bytes_per_s),
                kbs(c.raw_link_ceiling),
                c.radio_runs_vs_raw_link,
            );
        }
    }
    let _ = writeln!(w);

    // Why.
    let _ = writeln!(w, "### Where ours loses time, and why targets are missed\n");
    let first = &r.modelled[0];
    for run in &first.runs {
        let missed_ceiling = run.ours_vs_ceiling < CEILING_TARGET;
        let _ = writeln!(
            w,
            "- **{}** ({:.3} of the honest ceiling{}): {}",
            run.profile,
            run.ours_vs_ceiling,
            if missed_ceiling {
                ", target missed"
            } else {
                ", target met"
            },
            bottleneck(run)
        );
    }
    let _ = writeln!(w);
    for run in &first.runs {
        let seed = run.cell(Column::Seed);
        let _ = writeln!(
            w,
            "- **{} vs the seed** ({:.2}x, target {SEED_TARGET:.0}x {}): the seed's protocol \
             waits for each write request's answer, two connection intervals per packet, and \
             its firmware erases and programs as the packets come, missing {} connection \
             events while its flash works.",
            run.profile,
            run.ours_vs_seed,
            if run.ours_vs_seed >= SEED_TARGET {
                "met"
            } else {
                "missed"
            },
            seed.missed_events,
        );
    }
    let _ = writeln!(w);

    // Part 2.
    let _ = writeln!(w, "## 2. Host CPU cost of the device engine\n");
    match &r.cpu {
        Some(c) => {
            let _ = writeln!(
                w,
                "The device engine's whole fast-protocol update of a {}-byte image on the host \
                 (BEGIN, 240-byte chunks validated, hashed and written to the virtual flash in \
                 RAM, END with SHA-256 check, ESP-IDF image checks, read-back SHA-256 of the \
                 slot and otadata), against SHA-256 alone over the same bytes; criterion \
                 medians ({}).\n",
                c.image_len, c.source
            );
            let _ = writeln!(w, "| | median | throughput |\n|---|---|---|");
            let mbs = |ns: f64| c.image_len as f64 / ns * 1e9 / 1e6;
            let _ = writeln!(
                w,
                "| SHA-256 alone | {:.2} ms | {:.0} MB/s |",
                c.sha256_ns / 1e6,
                mbs(c.sha256_ns)
            );
            let _ = writeln!(
                w,
                "| device engine | {:.2} ms | {:.0} MB/s |",
                c.engine_ns / 1e6,
                mbs(c.engine_ns)
            );
            let _ = writeln!(
                w,
                "\n**Ratio: {:.2}x.** By design the engine hashes the image more than once (the \
                 session's streaming SHA-256, the check of the appended digest, and the \
                 read-back of the slot before it is selected) besides validating and copying \
                 it into the flash model; absolute times depend on this host, the ratio much \
                 less.\n",
                c.ratio
            );
        }
        None => {
            let _ = writeln!(
                w,
                "Not measured in this run: {}.\n",
                r.cpu_note.as_deref().unwrap_or("no criterion results")
            );
        }
    }

    // Part 3.
    let _ = writeln!(w, "## 3. Real stack over Bumble virtual controllers\n");
    match &r.real_stack {
        RealStack::NotMeasured { reason } => {
            let _ = writeln!(
                w,
                "**Not measured in this run.** Why: {reason}. No figure is given rather than an \
                 estimate. When it runs, it will report the wall time of a 1 MiB update with \
                 the seed's protocol and ours as a ratio; the virtual link has no radio timing, \
                 so that ratio measures round trips and host overhead, not airtime.\n"
            );
        }
        RealStack::Measured(m) => {
            let secs = |v: &[f64]| {
                v.iter()
                    .map(|s| format!("{s:.2} s"))
                    .collect::<Vec<_>>()
                    .join(", ")
            };
            let _ = writeln!(
                w,
                "`ble-ota device` serves a virtual ESP32 through `ota-gatt` on trouble-host over one \
                 Bumble virtual controller; `ble-ota flash --hci` runs trouble-host as central over \
                 another; each run starts fresh controllers and a fresh device, and the legacy \
                 and fast runs alternate. Wall time of `ble-ota flash` for a {}-byte image \
                 (scan, connect, MTU exchange, transfer, verification, reboot request):\n\n\
                 | Protocol | runs | median |\n|---|---|---|\n\
                 | seed (legacy, one write request per packet) | {} | {:.2} s |\n\
                 | ours (fast) | {} | {:.2} s |\n\n\
                 Ratio seed / ours: **{:.2}x**. Bumble's virtual link carries data as fast as \
                 Python runs, with no radio timing and no flow control: the ratio measures ATT \
                 round trips and host overhead (the seed waits for a write response per packet), \
                 not airtime; the modelled figures of part 1 are the ones to compare with a radio.\n",
                m.image_len,
                secs(&m.legacy_s),
                {
                    let mut v = m.legacy_s.clone();
                    v.sort_by(f64::total_cmp);
                    v[v.len() / 2]
                },
                secs(&m.fast_s),
                {
                    let mut v = m.fast_s.clone();
                    v.sort_by(f64::total_cmp);
                    v[v.len() / 2]
                },
                m.ratio
            );
        }
    }

    let _ = writeln!(w, "## Rerun\n");
    let _ = writeln!(
        w,
        "```sh\ncargo xtask bench                 # everything: model, criterion (short), report, chart\n\
         cargo xtask bench --firmware PATH # use this app image as the firmware column\n```\n\n\
         The firmware image is `firmware/target/images/esp32c3.bin` (what \
         `cargo xtask firmware` produces) or taken from `--firmware` / `OTA_BENCH_FIRMWARE`."
    );
    m
}

/// Writes `report` as JSON to `path`.
pub fn json(report: &Report, path: &Path) -> Result<()> {
    let text = serde_json::to_string_pretty(report)?;
    std::fs::write(path, text + "\n").with_context(|| format!("writing {}", path.display()))
}

/// Draws the throughput of every column per profile (first image), with both ceilings, to an
/// SVG file.
pub fn chart(runs: &ImageRuns, path: &Path) -> Result<()> {
    let root = SVGBackend::new(path, (960, 540)).into_drawing_area();
    root.fill(&WHITE)?;
    let n = runs.runs.len();
    let ymax = runs
        .runs
        .iter()
        .map(|r| r.link_ceiling.max(r.flash_ceiling))
        .fold(0.0, f64::max)
        / 1000.0
        * 1.1;
    let names: Vec<String> = runs.runs.iter().map(|r| r.profile.clone()).collect();
    let mut chart = ChartBuilder::on(&root)
        .caption(
            format!(
                "Modelled update throughput, {} ({} bytes)",
                runs.name, runs.len
            ),
            ("sans-serif", 20),
        )
        .margin(15)
        .x_label_area_size(35)
        .y_label_area_size(55)
        .build_cartesian_2d(0f64..n as f64, 0f64..ymax)?;
    chart
        .configure_mesh()
        .disable_x_mesh()
        .x_labels(n * 2 + 1)
        .x_label_formatter(&|x| {
            let i = x.floor() as usize;
            if (x - x.floor() - 0.5).abs() < 1e-6 && i < names.len() {
                names[i].clone()
            } else {
                String::new()
            }
        })
        .y_desc("kB/s (image bytes per modelled second)")
        .draw()?;
    let colors = [
        RGBColor(150, 150, 150),
        RGBColor(31, 119, 180),
        RGBColor(255, 127, 14),
        RGBColor(44, 160, 44),
        RGBColor(148, 103, 189),
    ];
    let width = 0.8 / Column::ALL.len() as f64;
    for (k, column) in Column::ALL.into_iter().enumerate() {
        let color = colors[k];
        let bars: Vec<_> = runs
            .runs
            .iter()
            .enumerate()
            .map(|(i, r)| {
                let x0 = i as f64 + 0.1 + k as f64 * width;
                Rectangle::new(
                    [
                        (x0, 0.0),
                        (x0 + width * 0.9, r.cell(column).bytes_per_s / 1000.0),
                    ],
                    color.filled(),
                )
            })
            .collect();
        chart
            .draw_series(bars)?
            .label(column.title())
            .legend(move |(x, y)| Rectangle::new([(x, y - 5), (x + 10, y + 5)], color.filled()));
    }
    let link = RGBColor(214, 39, 40);
    let flash = BLACK;
    for (label, color, get) in [
        (
            "link ceiling",
            link,
            (|r: &ProfileRun| r.link_ceiling) as fn(&ProfileRun) -> f64,
        ),
        ("flash ceiling", flash, |r: &ProfileRun| r.flash_ceiling),
    ] {
        let mut first = true;
        for (i, r) in runs.runs.iter().enumerate() {
            let y = get(r) / 1000.0;
            let s = chart.draw_series(LineSeries::new(
                [(i as f64 + 0.05, y), (i as f64 + 0.95, y)],
                color.stroke_width(2),
            ))?;
            if first {
                s.label(label).legend(move |(x, y)| {
                    PathElement::new([(x, y), (x + 12, y)], color.stroke_width(2))
                });
                first = false;
            }
        }
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperRight)
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .draw()?;
    root.present()?;
    Ok(())
}
