//! The progress bar: bytes, bytes/s and ETA, fed by the sender's events.

use std::time::Duration;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use ota_core::client::ClientEvent;

use crate::transport::Progress;

/// Draws a bar on stderr (hidden with `--json` or when stderr is not a terminal and `quiet`).
pub struct Bar {
    bar: ProgressBar,
    /// Resumed at a non-zero offset at least once.
    pub resumed: bool,
    /// Where this run started on the wire: rates count bytes from there.
    started_at: Option<u32>,
    /// The image's size, when the wire carries it compressed: shown beside the wire bytes.
    compressed_image: Option<u64>,
    image_len: u64,
}

impl Bar {
    /// A bar for a real link: bytes, wall-clock rate and ETA.
    pub fn new(label: &str, hidden: bool) -> Self {
        Self::with_template(
            label,
            hidden,
            "{prefix:>8} [{bar:32.cyan/blue}] {bytes}/{total_bytes} {bytes_per_sec} ETA {eta} {msg}",
        )
    }

    /// A bar for the modelled link: the rate and time shown are the modelled ones (set through
    /// [`note`](Self::note)), not the wall clock's, which the pacing makes meaningless.
    pub fn modelled(label: &str, hidden: bool) -> Self {
        Self::with_template(
            label,
            hidden,
            "{prefix:>8} [{bar:32.cyan/blue}] {bytes}/{total_bytes} {msg}",
        )
    }

    fn with_template(label: &str, hidden: bool, template: &str) -> Self {
        let target = if hidden {
            ProgressDrawTarget::hidden()
        } else {
            ProgressDrawTarget::stderr()
        };
        let bar = ProgressBar::with_draw_target(Some(0), target);
        bar.set_style(
            ProgressStyle::with_template(template)
                .expect("static template")
                .progress_chars("=> "),
        );
        bar.set_prefix(label.to_string());
        Bar {
            bar,
            resumed: false,
            started_at: None,
            compressed_image: None,
            image_len: 0,
        }
    }

    /// Tells the bar the image's size, so that a compressed transfer shows its image bytes
    /// beside the wire bytes the bar counts.
    pub fn image_len(mut self, len: usize) -> Self {
        self.image_len = len as u64;
        self
    }

    /// Sets a note after the figures (e.g. the modelled time), after the image bytes of a
    /// compressed transfer.
    pub fn note(&self, msg: String) {
        let image = self.compressed_image.map(|total| {
            let wire = self.bar.length().unwrap_or(1).max(1);
            let done = self.bar.position() * total / wire;
            format!("image {done}/{total} (compressed) ")
        });
        self.bar
            .set_message(format!("{}{msg}", image.unwrap_or_default()));
    }

    pub fn finish(&self, msg: String) {
        self.bar.finish_with_message(msg);
    }

    pub fn abandon(&self) {
        self.bar.abandon();
    }

    /// An event of a modelled update at modelled time `t`: the bar moves and shows the
    /// modelled rate of the bytes this run carried.
    pub fn modelled_event(&mut self, event: &ClientEvent, t: Duration) {
        self.event(event);
        if let ClientEvent::Progress { acked, .. } = *event {
            let sent = acked.saturating_sub(self.started_at.unwrap_or(0));
            self.note(format!(
                "{} (modelled, {:.1} s)",
                rate(sent as u64, t),
                t.as_secs_f64()
            ));
        }
    }
}

impl Progress for Bar {
    fn event(&mut self, event: &ClientEvent) {
        match *event {
            ClientEvent::Started {
                offset,
                total,
                compressed,
                ..
            } => {
                self.started_at.get_or_insert(offset);
                self.compressed_image =
                    (compressed && self.image_len > 0).then_some(self.image_len);
                self.bar.set_length(total as u64);
                if offset > 0 {
                    self.resumed = true;
                    self.bar
                        .println(format!("resuming at byte {offset} of {total}"));
                }
                self.bar.set_position(offset as u64);
            }
            ClientEvent::Progress { acked, .. } => {
                self.bar.set_position(acked as u64);
                if self.compressed_image.is_some() {
                    self.note(String::new());
                }
            }
            _ => {}
        }
    }
}

/// Formats a byte rate.
pub fn rate(bytes: u64, t: Duration) -> String {
    format!(
        "{:.1} kB/s",
        bytes as f64 / t.as_secs_f64().max(1e-9) / 1000.0
    )
}
