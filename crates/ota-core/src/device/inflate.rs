//! Inflating a compressed image as it arrives: raw deflate (RFC 1951) through miniz_oxide's
//! core inflater, with no allocator. The inflater's state and its 32 KiB window (deflate's
//! largest match distance) live in the engine, allocated once; a session keeps them across a
//! dropped link, so a resume continues the stream where the device acknowledged it.

// Without the `inflate` feature the engine holds no inflater; the type stays for the transfer's
// signature, which a compressed session (refused at BEGIN then) never reaches.
#![cfg_attr(not(feature = "inflate"), allow(dead_code))]

use miniz_oxide::inflate::TINFLStatus;
use miniz_oxide::inflate::core::{DecompressorOxide, decompress, inflate_flags};

use crate::protocol::Reason;

/// Deflate's window: the output buffer wraps at this size (a power of two).
pub const WINDOW: usize = miniz_oxide::inflate::core::TINFL_LZ_DICT_SIZE;

/// RAM the inflater takes in the engine: its window and its state (for `cargo xtask
/// firmware`'s report; this is the layout of the target it is compiled for).
pub const INFLATER_RAM: usize = core::mem::size_of::<Inflater>();

/// The inflater of the engine's one compressed session.
pub struct Inflater {
    state: DecompressorOxide,
    /// The last `WINDOW` bytes of output, written round: back-references read from here.
    window: [u8; WINDOW],
    /// Where the next output byte goes in `window`.
    pos: usize,
    /// The stream's final block ended.
    done: bool,
}

impl core::fmt::Debug for Inflater {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Inflater")
            .field("pos", &self.pos)
            .field("done", &self.done)
            .finish_non_exhaustive()
    }
}

impl Default for Inflater {
    fn default() -> Self {
        Inflater {
            state: DecompressorOxide::new(),
            window: [0; WINDOW],
            pos: 0,
            done: false,
        }
    }
}

impl Inflater {
    /// Starts a new stream.
    pub fn reset(&mut self) {
        self.state.init();
        self.pos = 0;
        self.done = false;
    }

    /// Returns true once the stream's final block ended.
    pub fn is_done(&self) -> bool {
        self.done
    }

    /// Inflates all of `input` (the stream's next bytes; `last` when they end it), handing
    /// each run of output to `out` in order. A corrupt stream, bytes after its end, or a
    /// stream that stops short is [`Reason::BadStream`]; an error of `out` ends it as is.
    pub fn feed(
        &mut self,
        mut input: &[u8],
        last: bool,
        out: &mut dyn FnMut(&[u8]) -> Result<(), Reason>,
    ) -> Result<(), Reason> {
        let flags = if last {
            0
        } else {
            inflate_flags::TINFL_FLAG_HAS_MORE_INPUT
        };
        loop {
            if self.done {
                return if input.is_empty() {
                    Ok(())
                } else {
                    Err(Reason::BadStream)
                };
            }
            let (status, read, written) =
                decompress(&mut self.state, input, &mut self.window, self.pos, flags);
            input = &input[read..];
            if written > 0 {
                out(&self.window[self.pos..self.pos + written])?;
                self.pos = (self.pos + written) % WINDOW;
            }
            match status {
                TINFLStatus::Done => self.done = true,
                // The window wrapped: go on from its start.
                TINFLStatus::HasMoreOutput => {}
                TINFLStatus::NeedsMoreInput if input.is_empty() && !last => return Ok(()),
                _ => return Err(Reason::BadStream),
            }
        }
    }
}
