//! Inflating a compressed image as it arrives: raw deflate (RFC 1951) through miniz_oxide's
//! core inflater, with no allocator. The inflater's state (10 KiB) lives in the engine,
//! allocated once; its 32 KiB window is the transfer's ring of image bytes, which holds the
//! last 32 KiB of output anyway (what is not programmed yet, and before it what was). A
//! session keeps both across a dropped link, so a resume continues the stream where the device
//! acknowledged it.

// Without the `inflate` feature the engine holds no inflater; the type stays for the transfer's
// signature, which a compressed session (refused at BEGIN then) never reaches.
#![cfg_attr(not(feature = "inflate"), allow(dead_code))]

use miniz_oxide::inflate::TINFLStatus;
use miniz_oxide::inflate::core::{DecompressorOxide, decompress_with_limit, inflate_flags};

use crate::protocol::Reason;

/// Deflate's window: the output ring wraps at this size (a power of two).
pub const WINDOW: usize = miniz_oxide::inflate::core::TINFL_LZ_DICT_SIZE;

/// RAM the inflater's state takes in the engine (its window is the transfer's ring), for
/// `cargo xtask firmware`'s report: the layout of the target it is compiled for.
pub const INFLATER_RAM: usize = core::mem::size_of::<Inflater>();

/// The inflater of the engine's one compressed session.
pub struct Inflater {
    state: DecompressorOxide,
    /// The stream's final block ended.
    done: bool,
}

/// Where one [`Inflater::step`] left the stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Progress {
    /// All input taken; more is needed.
    NeedsInput,
    /// The output stopped at the ring's end or at the room allowed: call again.
    MoreOutput,
    /// The stream's final block ended.
    Done,
}

/// What one [`Inflater::step`] did.
#[derive(Debug, Clone, Copy)]
pub struct Step {
    /// Input bytes taken.
    pub read: usize,
    /// Output bytes written at the position given, without wrapping.
    pub written: usize,
    /// Where the stream stands.
    pub progress: Progress,
}

impl core::fmt::Debug for Inflater {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Inflater")
            .field("done", &self.done)
            .finish_non_exhaustive()
    }
}

impl Default for Inflater {
    fn default() -> Self {
        Inflater {
            state: DecompressorOxide::new(),
            done: false,
        }
    }
}

impl Inflater {
    /// Starts a new stream.
    pub fn reset(&mut self) {
        self.state.init();
        self.done = false;
    }

    /// Returns true once the stream's final block ended.
    pub fn is_done(&self) -> bool {
        self.done
    }

    /// Inflates from `input` (the stream's next bytes; `last` when they end it) into `ring`
    /// at `at`, at most `room` bytes and not past the ring's end; earlier output in the ring
    /// is the window back-references read. A corrupt stream, or one that stops short when
    /// `last`, is [`Reason::BadStream`].
    pub fn step(
        &mut self,
        input: &[u8],
        ring: &mut [u8; WINDOW],
        at: usize,
        room: usize,
        last: bool,
    ) -> Result<Step, Reason> {
        if self.done {
            return Ok(Step {
                read: 0,
                written: 0,
                progress: Progress::Done,
            });
        }
        let flags = if last {
            0
        } else {
            inflate_flags::TINFL_FLAG_HAS_MORE_INPUT
        };
        let (status, read, written) =
            decompress_with_limit(&mut self.state, input, ring, at, room, flags);
        let progress = match status {
            TINFLStatus::Done => {
                self.done = true;
                Progress::Done
            }
            TINFLStatus::HasMoreOutput => Progress::MoreOutput,
            TINFLStatus::NeedsMoreInput => Progress::NeedsInput,
            _ => return Err(Reason::BadStream),
        };
        Ok(Step {
            read,
            written,
            progress,
        })
    }
}
