//! The confirm policy of a trial image, shared by the firmware and `ble-ota device`.

use ota_core::device::trial::{
    ConfirmPolicy, TrialAction, TrialConfig, TrialFailure, TrialPolicy, TrialState,
};
use ota_core::time::Instant;

fn config(policy: ConfirmPolicy) -> TrialConfig {
    TrialConfig {
        policy,
        ble_deadline_ms: 1_000,
        confirm_deadline_ms: 5_000,
    }
}

#[test]
fn auto_confirms_only_after_advertising_and_a_passed_self_test() {
    let mut t = TrialPolicy::new(config(ConfirmPolicy::Auto), true, Instant(0));
    assert_eq!(t.poll_action(), None, "nothing before BLE is up");
    t.handle_tick(Instant(999));
    assert_eq!(t.poll_action(), None);
    t.handle_advertising(Instant(500));
    assert_eq!(t.poll_action(), Some(TrialAction::RunSelfTest));
    t.handle_self_test(true, Instant(600));
    assert_eq!(t.poll_action(), Some(TrialAction::Confirm));
    t.handle_confirmed();
    assert_eq!(t.state(), TrialState::Confirmed);
    assert_eq!(t.poll_timeout(), None, "no deadline once confirmed");
    t.handle_tick(Instant(1_000_000));
    assert_eq!(t.poll_action(), None);
}

#[test]
fn no_confirm_when_advertising_never_starts() {
    for policy in [ConfirmPolicy::Auto, ConfirmPolicy::Strict] {
        let mut t = TrialPolicy::new(config(policy), true, Instant(100));
        assert_eq!(t.poll_timeout(), Some(Instant(1_100)));
        t.handle_tick(Instant(1_099));
        assert_eq!(t.poll_action(), None);
        t.handle_tick(Instant(1_100));
        assert_eq!(
            t.poll_action(),
            Some(TrialAction::RollBack(TrialFailure::BleNotUp))
        );
        // Advertising that starts too late changes nothing.
        t.handle_advertising(Instant(1_200));
        assert_eq!(t.poll_action(), None);
        assert_eq!(t.state(), TrialState::Failed(TrialFailure::BleNotUp));
    }
}

#[test]
fn a_failed_self_test_rolls_back() {
    let mut t = TrialPolicy::new(config(ConfirmPolicy::Auto), true, Instant(0));
    t.handle_advertising(Instant(10));
    assert_eq!(t.poll_action(), Some(TrialAction::RunSelfTest));
    t.handle_self_test(false, Instant(20));
    assert_eq!(
        t.poll_action(),
        Some(TrialAction::RollBack(TrialFailure::SelfTestFailed))
    );
}

#[test]
fn a_self_test_that_hangs_rolls_back_at_the_deadline() {
    let mut t = TrialPolicy::new(config(ConfirmPolicy::Auto), true, Instant(0));
    t.handle_advertising(Instant(10));
    t.poll_action();
    assert_eq!(t.poll_timeout(), Some(Instant(5_010)));
    t.handle_tick(Instant(5_010));
    assert_eq!(
        t.poll_action(),
        Some(TrialAction::RollBack(TrialFailure::SelfTestTimedOut))
    );
}

#[test]
fn strict_waits_for_a_client_confirm() {
    let mut t = TrialPolicy::new(config(ConfirmPolicy::Strict), true, Instant(0));
    t.handle_advertising(Instant(10));
    assert_eq!(t.poll_action(), None, "strict never confirms by itself");
    t.handle_tick(Instant(5_009));
    assert_eq!(t.poll_action(), None);
    t.handle_confirmed();
    assert_eq!(t.state(), TrialState::Confirmed);
    t.handle_tick(Instant(6_000));
    assert_eq!(t.poll_action(), None);
}

#[test]
fn a_strict_trial_that_never_confirms_rolls_back() {
    let mut t = TrialPolicy::new(config(ConfirmPolicy::Strict), true, Instant(0));
    t.handle_advertising(Instant(10));
    t.handle_tick(Instant(5_010));
    assert_eq!(
        t.poll_action(),
        Some(TrialAction::RollBack(TrialFailure::NoConfirm))
    );
}

#[test]
fn a_failed_otadata_write_rolls_back() {
    let mut t = TrialPolicy::new(config(ConfirmPolicy::Auto), true, Instant(0));
    t.handle_advertising(Instant(10));
    t.poll_action();
    t.handle_self_test(true, Instant(20));
    assert_eq!(t.poll_action(), Some(TrialAction::Confirm));
    t.handle_confirm_failed();
    assert_eq!(
        t.poll_action(),
        Some(TrialAction::RollBack(TrialFailure::ConfirmFailed))
    );
}

#[test]
fn an_image_not_on_trial_has_nothing_to_decide() {
    let mut t = TrialPolicy::new(config(ConfirmPolicy::Strict), false, Instant(0));
    assert_eq!(t.state(), TrialState::NotOnTrial);
    assert_eq!(t.poll_timeout(), None);
    t.handle_tick(Instant(1_000_000));
    t.handle_advertising(Instant(1));
    assert_eq!(t.poll_action(), None);
}

#[test]
fn the_firmware_defaults() {
    let auto = TrialConfig::new(ConfirmPolicy::Auto);
    assert_eq!(
        (auto.ble_deadline_ms, auto.confirm_deadline_ms),
        (60_000, 60_000)
    );
    let strict = TrialConfig::new(ConfirmPolicy::Strict);
    assert_eq!(strict.confirm_deadline_ms, 120_000);
}
