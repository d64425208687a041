//! Leases on the observer's clock: expiry, renewal, grace and takeover.

use super::*;

const TTL: u64 = 10_000;

#[test]
fn a_lease_expires_after_ttl_without_renewal_on_the_observers_clock() {
    let mut obs = LeaseObserver::new();
    obs.observe_claim("a-1", 1_000);
    assert!(!obs.expired("a-1", TTL, 1_000, false));
    assert!(!obs.expired("a-1", TTL, 10_999, false));
    assert!(obs.expired("a-1", TTL, 11_000, false));
}

#[test]
fn a_late_joiner_counts_a_claim_as_fresh_from_first_sight() {
    let mut obs = LeaseObserver::new();
    // Written long ago by the holder's clock; this node only sees it at 500_000.
    assert!(!obs.expired("a-1", TTL, 500_000, false), "unseen is fresh");
    obs.observe_claim("a-1", 500_000);
    assert!(!obs.expired("a-1", TTL, 509_999, false));
    assert!(obs.expired("a-1", TTL, 510_000, false));
    // Observing again does not restart the lease.
    obs.observe_claim("a-1", 509_000);
    assert_eq!(obs.first_seen_ms("a-1"), Some(500_000));
    assert!(obs.expired("a-1", TTL, 510_000, false));
}

#[test]
fn renewals_push_expiry_out() {
    let mut obs = LeaseObserver::new();
    obs.observe_claim("a-1", 0);
    obs.renew("a-1", 8_000);
    assert!(!obs.expired("a-1", TTL, 17_999, false));
    assert!(obs.expired("a-1", TTL, 18_000, false));
    assert_eq!(obs.last_renewed_ms("a-1"), Some(8_000));
}

#[test]
fn a_renewal_never_moves_time_backwards() {
    let mut obs = LeaseObserver::new();
    obs.observe_claim("a-1", 0);
    obs.renew("a-1", 8_000);
    obs.renew("a-1", 3_000);
    assert_eq!(obs.last_renewed_ms("a-1"), Some(8_000));
}

#[test]
fn a_clock_that_goes_backwards_counts_as_no_time_passed_and_never_panics() {
    let mut obs = LeaseObserver::new();
    obs.observe_claim("a-1", 50_000);
    assert!(!obs.expired("a-1", TTL, 0, false));
    assert!(!obs.expired("a-1", 0, 0, false) || obs.expired("a-1", 0, 0, false));
    assert!(!obs.takeover_allowed("a-1", &LeaseConfig::default(), 0, false));
    obs.renew("a-1", u64::MAX);
    assert!(!obs.expired("a-1", u64::MAX, u64::MAX, false));
    assert!(!obs.takeover_allowed("a-1", &LeaseConfig::default(), u64::MAX, false));
}

#[test]
fn a_dead_holders_lease_is_expired_at_once() {
    let mut obs = LeaseObserver::new();
    obs.observe_claim("a-1", 0);
    assert!(obs.expired("a-1", TTL, 1, true));
}

#[test]
fn takeover_waits_a_further_grace_after_expiry() {
    let cfg = LeaseConfig::default();
    let mut obs = LeaseObserver::new();
    obs.observe_claim("a-1", 0);
    assert!(
        !obs.takeover_allowed("a-1", &cfg, 10_000, false),
        "expired, in grace"
    );
    assert!(!obs.takeover_allowed("a-1", &cfg, 11_999, false));
    assert!(obs.takeover_allowed("a-1", &cfg, 12_000, false));
}

#[test]
fn a_dead_holders_grace_counts_from_when_this_observer_was_told_it_died() {
    let cfg = LeaseConfig::default();
    let mut obs = LeaseObserver::new();
    obs.observe_claim("a-1", 0);
    obs.renew("a-1", 1_000);
    assert!(
        !obs.takeover_allowed("a-1", &cfg, 6_000, true),
        "just judged dead"
    );
    assert!(!obs.takeover_allowed("a-1", &cfg, 7_999, true));
    assert!(obs.takeover_allowed("a-1", &cfg, 8_000, true));
    // Never later than a silent holder's takeover.
    let mut obs = LeaseObserver::new();
    obs.observe_claim("b-1", 0);
    assert!(obs.takeover_allowed("b-1", &cfg, 12_000, true));
}

#[test]
fn a_holder_that_comes_back_to_life_restarts_its_grace() {
    let cfg = LeaseConfig::default();
    let mut obs = LeaseObserver::new();
    obs.observe_claim("a-1", 0);
    assert!(!obs.takeover_allowed("a-1", &cfg, 5_000, true));
    obs.renew("a-1", 6_000);
    assert!(!obs.takeover_allowed("a-1", &cfg, 7_000, false));
    // Judged dead again later: grace counts from the new death.
    assert!(!obs.takeover_allowed("a-1", &cfg, 9_000, true));
    assert!(!obs.takeover_allowed("a-1", &cfg, 10_999, true));
    assert!(obs.takeover_allowed("a-1", &cfg, 11_000, true));
}

#[test]
fn forgetting_and_pruning_drop_released_claims() {
    let r = file("a.rs");
    let c = fold(
        &[
            ("a-1", claim("a", &[(r.clone(), 1)])),
            ("b-1", claim("b", &[(r.clone(), 2)])),
        ],
        &[("a-1", ReleaseReason::Lost)],
    );
    let mut obs = LeaseObserver::new();
    obs.observe_claim("a-1", 0);
    obs.observe_claim("b-1", 0);
    obs.observe_claim("gone-1", 0);
    obs.prune(&c);
    assert_eq!(obs.len(), 1);
    obs.forget("b-1");
    assert!(obs.is_empty());
}

#[test]
fn a_resource_frees_only_after_its_winners_lease_expires_and_grace_passes() {
    let cfg = LeaseConfig::default();
    let r = story("S-1@a", Phase::Implement);
    let c = fold(&[("a-1", claim("a", &[(r.clone(), 1)]))], &[]);
    let mut obs = LeaseObserver::new();
    assert!(
        !resource_free(&c, &mut obs, &r, 100, &cfg, |_| false),
        "first sight"
    );
    obs.renew("a-1", 5_000);
    assert!(!resource_free(&c, &mut obs, &r, 16_999, &cfg, |_| false));
    assert!(resource_free(&c, &mut obs, &r, 17_000, &cfg, |_| false));
    assert!(resource_free(
        &c,
        &mut obs,
        &file("never.rs"),
        0,
        &cfg,
        |_| false
    ));
}

#[test]
fn a_resource_held_by_a_dead_peer_frees_a_grace_after_the_death_is_seen() {
    let cfg = LeaseConfig::default();
    let r = story("S-1@a", Phase::Implement);
    let c = fold(&[("a-1", claim("a", &[(r.clone(), 1)]))], &[]);
    let mut obs = LeaseObserver::new();
    obs.observe_claim("a-1", 0);
    let dead = |p: &str| p == "a";
    assert!(!resource_free(&c, &mut obs, &r, 3_000, &cfg, dead));
    assert!(resource_free(&c, &mut obs, &r, 5_000, &cfg, dead));
    assert!(
        !resource_free(&c, &mut obs, &r, 5_000, &cfg, |_| false),
        "alive again"
    );
}
