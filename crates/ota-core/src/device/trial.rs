//! The confirm policy of a trial image: when a freshly updated image becomes permanent, and when
//! it is rolled back. The firmware and the virtual ESP32 (`ble-ota device`) run this same state
//! machine, so the emulator's tests cover the device's decision.
//!
//! A trial image is the first boot of an update ([`GuardOutcome::Trial`]: otadata
//! PENDING_VERIFY). It must prove it can be updated again before it stays:
//!
//! 1. **BLE up**: the controller accepted advertising enable
//!    ([`TrialPolicy::handle_advertising`]) within [`TrialConfig::ble_deadline_ms`] of boot.
//!    An image whose BLE stack fails never confirms itself, so OTA is never lost.
//! 2. Then, by [`ConfirmPolicy`]:
//!    - [`ConfirmPolicy::Auto`]: the app's self-test runs ([`TrialAction::RunSelfTest`]) and
//!      must pass within [`TrialConfig::confirm_deadline_ms`]; then the shell confirms
//!      ([`TrialAction::Confirm`], `UpdateEngine::confirm`). The seed's clients, which know no
//!      CONFIRM, end on the new firmware.
//!    - [`ConfirmPolicy::Strict`]: a client's CONFIRM must arrive within
//!      [`TrialConfig::confirm_deadline_ms`] of BLE up.
//!
//! Any failure is [`TrialAction::RollBack`]: the shell resets while the image is still
//! PENDING_VERIFY, and the rollback guard (or a rollback-enabled bootloader) marks it ABORTED
//! at the next boot, so the previous image starts. No flash write is needed to roll back.
//!
//! Like the engine, this is sans-I/O: the shell feeds what happened and the time, drains
//! [`TrialPolicy::poll_action`], and calls [`TrialPolicy::handle_tick`] by
//! [`TrialPolicy::poll_timeout`].
//!
//! [`GuardOutcome::Trial`]: crate::esp::boot::GuardOutcome::Trial

use crate::time::Instant;

/// How a trial image gets confirmed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum ConfirmPolicy {
    /// Confirm once BLE is up and the app's self-test passed (the default).
    Auto,
    /// Wait for a client's CONFIRM after BLE is up; roll back when none comes in time.
    Strict,
}

/// The policy and its deadlines.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct TrialConfig {
    /// How the image gets confirmed.
    pub policy: ConfirmPolicy,
    /// From boot until advertising has started.
    pub ble_deadline_ms: u32,
    /// From advertising until the image is confirmed (self-test passed, or a client's CONFIRM).
    pub confirm_deadline_ms: u32,
}

impl TrialConfig {
    /// The firmware's defaults: 60 s for BLE to come up, then 60 s for the self-test (auto) or
    /// 120 s for a client's CONFIRM (strict).
    pub const fn new(policy: ConfirmPolicy) -> Self {
        TrialConfig {
            policy,
            ble_deadline_ms: 60_000,
            confirm_deadline_ms: match policy {
                ConfirmPolicy::Auto => 60_000,
                ConfirmPolicy::Strict => 120_000,
            },
        }
    }
}

/// Why a trial image is rolled back.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum TrialFailure {
    /// Advertising did not start before the BLE deadline.
    BleNotUp,
    /// The app's self-test reported failure.
    SelfTestFailed,
    /// The self-test did not finish before the confirm deadline.
    SelfTestTimedOut,
    /// No client sent CONFIRM before the confirm deadline (strict policy).
    NoConfirm,
    /// Writing otadata VALID failed.
    ConfirmFailed,
}

impl TrialFailure {
    /// Returns a log line's worth of explanation.
    pub fn describe(self) -> &'static str {
        match self {
            TrialFailure::BleNotUp => "BLE did not start advertising in time",
            TrialFailure::SelfTestFailed => "the self-test failed",
            TrialFailure::SelfTestTimedOut => "the self-test did not finish in time",
            TrialFailure::NoConfirm => "no client sent CONFIRM in time",
            TrialFailure::ConfirmFailed => "otadata could not be marked VALID",
        }
    }
}

/// What the shell must do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum TrialAction {
    /// Run the app's self-test and report with [`TrialPolicy::handle_self_test`].
    RunSelfTest,
    /// Confirm the running image (`UpdateEngine::confirm`), then report with
    /// [`TrialPolicy::handle_confirmed`] or [`TrialPolicy::handle_confirm_failed`].
    Confirm,
    /// Reset now, while the image is still PENDING_VERIFY: the previous image boots.
    RollBack(TrialFailure),
}

/// Where the trial stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum TrialState {
    /// Not a trial image (factory, confirmed, or no OTA data): nothing to decide.
    NotOnTrial,
    /// Waiting for advertising to start.
    WaitingForBle,
    /// Auto: the self-test runs.
    SelfTest,
    /// Auto: the shell was told to confirm.
    Confirming,
    /// Strict: waiting for a client's CONFIRM.
    WaitingForConfirm,
    /// The image was confirmed: it stays.
    Confirmed,
    /// The trial failed: the shell was told to roll back.
    Failed(TrialFailure),
}

/// The trial state machine. See the [module docs](self).
#[derive(Debug, Clone)]
pub struct TrialPolicy {
    config: TrialConfig,
    state: TrialState,
    /// Start of the current deadline.
    since: Instant,
    action: Option<TrialAction>,
}

impl TrialPolicy {
    /// Starts the policy at boot (`now`); `on_trial` is true for a trial image.
    pub fn new(config: TrialConfig, on_trial: bool, now: Instant) -> Self {
        TrialPolicy {
            config,
            state: if on_trial {
                TrialState::WaitingForBle
            } else {
                TrialState::NotOnTrial
            },
            since: now,
            action: None,
        }
    }

    /// Returns where the trial stands.
    pub fn state(&self) -> TrialState {
        self.state
    }

    /// Returns the configuration.
    pub fn config(&self) -> TrialConfig {
        self.config
    }

    /// Advertising started: the controller accepted advertising enable. Only the first call
    /// counts.
    pub fn handle_advertising(&mut self, now: Instant) {
        if self.state != TrialState::WaitingForBle {
            return;
        }
        self.since = now;
        match self.config.policy {
            ConfirmPolicy::Auto => {
                self.state = TrialState::SelfTest;
                self.action = Some(TrialAction::RunSelfTest);
            }
            ConfirmPolicy::Strict => self.state = TrialState::WaitingForConfirm,
        }
    }

    /// The self-test finished.
    pub fn handle_self_test(&mut self, passed: bool, _now: Instant) {
        if self.state != TrialState::SelfTest {
            return;
        }
        if passed {
            self.state = TrialState::Confirming;
            self.action = Some(TrialAction::Confirm);
        } else {
            self.fail(TrialFailure::SelfTestFailed);
        }
    }

    /// The running image was confirmed: by the shell after [`TrialAction::Confirm`], or by a
    /// client's CONFIRM (the engine's `Event::Confirmed`), in either policy.
    pub fn handle_confirmed(&mut self) {
        if matches!(self.state, TrialState::NotOnTrial | TrialState::Failed(_)) {
            return;
        }
        self.state = TrialState::Confirmed;
        // A pending self-test or confirm is moot now (a roll-back cannot be pending: the
        // state was not Failed).
        self.action = None;
    }

    /// Writing otadata VALID failed.
    pub fn handle_confirm_failed(&mut self) {
        if self.state == TrialState::Confirming {
            self.fail(TrialFailure::ConfirmFailed);
        }
    }

    /// Time passed: a missed deadline rolls the image back.
    pub fn handle_tick(&mut self, now: Instant) {
        let Some(at) = self.deadline() else {
            return;
        };
        if now < at {
            return;
        }
        match self.state {
            TrialState::WaitingForBle => self.fail(TrialFailure::BleNotUp),
            TrialState::SelfTest => self.fail(TrialFailure::SelfTestTimedOut),
            TrialState::WaitingForConfirm => self.fail(TrialFailure::NoConfirm),
            _ => {}
        }
    }

    /// Returns when [`handle_tick`](Self::handle_tick) must run next, if a deadline runs.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.deadline()
    }

    /// Returns the next thing the shell must do.
    pub fn poll_action(&mut self) -> Option<TrialAction> {
        self.action.take()
    }

    fn deadline(&self) -> Option<Instant> {
        match self.state {
            TrialState::WaitingForBle => Some(self.since.after_ms(self.config.ble_deadline_ms)),
            TrialState::SelfTest | TrialState::WaitingForConfirm => {
                Some(self.since.after_ms(self.config.confirm_deadline_ms))
            }
            _ => None,
        }
    }

    fn fail(&mut self, why: TrialFailure) {
        self.state = TrialState::Failed(why);
        self.action = Some(TrialAction::RollBack(why));
    }
}
