//! The one device driver every shell runs: the firmware's GATT server, the virtual ESP32's
//! modelled air link, the CLI's direct link and the benchmarks.
//!
//! A shell turns what happened on its link into an [`Input`] and calls
//! [`UpdateEngine::serve`], which hands everything the engine did back to the shell's
//! [`Shell`] in the order a device must act on it:
//!
//! 1. [`Shell::flash_work`]: the erase and program commands the input cost, as the engine
//!    issued them. The chip has already spent that time; a model charges it (the flash-time
//!    rule is `ble_link_model::FlashTiming::ops_time`), a paced simulator sleeps it.
//! 2. [`Shell::cpu_work`]: the bytes it hashed and inflated, which a model charges too.
//! 3. [`Shell::notify`]: each notification of OTA Control, for the client it names.
//! 4. [`Shell::event`]: what the engine asks of the shell (reboot, trial over, busy, drop an
//!    idle client).
//!
//! So no shell drains the engine, meters its flash or decides what an input costs on its own.

use embedded_storage::nor_flash::NorFlash;

use super::{ClientId, CpuWork, Event, Sha256Hasher, UpdateEngine};
use crate::esp::flash::FlashWork;
use crate::protocol::air::Phy;
use crate::protocol::fast::Response;
use crate::protocol::{Characteristic, Reason};
use crate::time::Instant;

/// What the engine hands its shell while serving an input.
pub trait Shell {
    /// Flash commands the engine issued since the last call: the input's, and any done
    /// between inputs ([`UpdateEngine::pre_erase_step`], [`UpdateEngine::confirm`]) that
    /// were not taken with [`UpdateEngine::take_flash_work`]. Called once per input, also
    /// with no work.
    fn flash_work(&mut self, work: FlashWork) {
        let _ = work;
    }
    /// CPU work the engine did since the last call (hashing, inflating): a model charges it
    /// (the radio runs meanwhile). Called once per input, also with no work.
    fn cpu_work(&mut self, work: CpuWork) {
        let _ = work;
    }
    /// Sends `value` as a notification of OTA Control to `client`.
    fn notify(&mut self, client: ClientId, value: &[u8]);
    /// Acts on an engine event.
    fn event(&mut self, event: Event);
}

/// What happened on a shell's link.
#[derive(Debug, Clone, Copy)]
pub enum Input<'a> {
    /// A client connected (ATT MTU 23 and data length 27 until a [`Input::Link`]).
    Connected(ClientId),
    /// What the shell knows of a client's link now: its ATT MTU, the data length it sends
    /// with, and once known its PHY and connection interval (µs).
    Link {
        /// The client.
        client: ClientId,
        /// ATT MTU.
        mtu: u16,
        /// Link-layer data length from the client, in octets.
        data_length: u16,
        /// PHY and connection interval in µs.
        timing: Option<(Phy, u32)>,
    },
    /// The client wrote a characteristic (with or without response).
    Write {
        /// The client.
        client: ClientId,
        /// OTA Control or OTA Data.
        characteristic: Characteristic,
        /// The value written.
        data: &'a [u8],
    },
    /// Time passed ([`UpdateEngine::poll_timeout`] came).
    Tick,
    /// The client disconnected.
    Disconnected(ClientId),
}

impl<H: Sha256Hasher> UpdateEngine<H> {
    /// Serves one input and hands the shell what the engine did (see the
    /// [module docs](self)). An `Err` is the reason a write request is refused with
    /// ([`Reason::att_error`]); a write command gets no answer.
    pub fn serve<F: NorFlash, S: Shell + ?Sized>(
        &mut self,
        flash: &mut F,
        input: Input<'_>,
        now: Instant,
        shell: &mut S,
    ) -> Result<(), Reason> {
        let verdict = match input {
            Input::Connected(client) => {
                self.handle_connected(client);
                Ok(())
            }
            Input::Link {
                client,
                mtu,
                data_length,
                timing,
            } => {
                self.handle_mtu(client, mtu);
                self.handle_data_length(client, data_length);
                if let Some((phy, interval_us)) = timing {
                    self.handle_link_timing(client, phy, interval_us);
                }
                Ok(())
            }
            Input::Write {
                client,
                characteristic,
                data,
            } => self.handle_write(flash, client, characteristic, data, now),
            Input::Tick => {
                self.handle_tick(now);
                Ok(())
            }
            Input::Disconnected(client) => {
                self.handle_disconnected(client);
                Ok(())
            }
        };
        self.hand_over(shell);
        verdict
    }

    /// Hands the shell the flash work, notifications and events waiting in the engine.
    pub fn hand_over<S: Shell + ?Sized>(&mut self, shell: &mut S) {
        shell.flash_work(self.take_flash_work());
        shell.cpu_work(self.take_cpu_work());
        let mut buf = [0u8; Response::MAX_LEN + 8];
        while let Some((client, n)) = self.poll_notification(&mut buf) {
            shell.notify(client, &buf[..n]);
        }
        while let Some(event) = self.poll_event() {
            shell.event(event);
        }
    }
}
