//! The tests of `policy`.
use super::*;
use serde_json::Map;

const SEC: i64 = 1000;
const MIN: i64 = 60 * SEC;
const DAY: i64 = 24 * 60 * MIN;

fn policy() -> RevocationPolicy {
    RevocationPolicy {
        token_ttl_ms: 5 * MIN,
        refresh_window_ms: 7 * DAY,
        leeway_ms: 0,
        refresh_reuse_interval_ms: Some(10 * SEC),
        max_clock_skew_ms: 500,
        audit_retention_ms: 90 * 86_400_000,
    }
}

fn claims(orig_iat_ms: i64, exp_s: i64) -> Claims {
    Claims {
        user_id: "u".into(),
        jti: "j".into(),
        session_id: "s".into(),
        issued_at: UnixSeconds::floor_of(orig_iat_ms),
        expires_at: UnixSeconds(exp_s),
        not_before: None,
        orig_iat_ms,
        idp_session_id: None,
        extra: Map::new(),
        issuer: None,
        binding: Default::default(),
    }
}

#[test]
fn rule1_banned_before_revoked_and_cutoff_is_inclusive() {
    let now = 10 * SEC;
    assert_eq!(RevocationPolicy::check_cutoff(None, 5, now), Ok(()));
    assert_eq!(
        RevocationPolicy::check_cutoff(Some(now + 1), 5, now),
        Err(Reason::UserBanned)
    );
    // A ban also applies to tokens issued after... nothing can be issued during a ban,
    // but a token from before the ban is reported as banned while it runs.
    assert_eq!(
        RevocationPolicy::check_cutoff(Some(now + 1), now + 2, now),
        Err(Reason::UserBanned)
    );
    assert_eq!(
        RevocationPolicy::check_cutoff(Some(now), now, now),
        Err(Reason::UserRevoked)
    );
    assert_eq!(
        RevocationPolicy::check_cutoff(Some(now - 1), now, now),
        Ok(())
    );
}

#[test]
fn rule2_revoke_all_asks_for_until_or_now() {
    let now = 100 * SEC;
    assert_eq!(RevocationPolicy::revoke_all_cutoff(None, now), now);
    assert_eq!(
        RevocationPolicy::revoke_all_cutoff(Some(now + DAY), now),
        now + DAY
    );
    assert!(RevocationPolicy::is_banned(Some(now + 1), now));
    assert!(!RevocationPolicy::is_banned(Some(now), now));
    assert!(!RevocationPolicy::is_banned(None, now));
}

#[test]
fn rule3_issue_refused_while_banned_and_never_at_or_before_the_cutoff() {
    let now = 50 * SEC;
    assert_eq!(
        RevocationPolicy::new_session_start(Some(now + 1), now, now),
        Err(Reason::UserBanned)
    );
    assert_eq!(RevocationPolicy::new_session_start(None, now, now), Ok(now));
    assert_eq!(
        RevocationPolicy::new_session_start(Some(now), now, now),
        Ok(now + 1)
    );
    assert_eq!(
        RevocationPolicy::new_session_start(Some(now - 5), now, now),
        Ok(now)
    );
    // Rule 9: stamped at the earliest the fleet's time can be, still after the cutoff; a
    // cutoff just written elsewhere never reads as a ban here.
    assert_eq!(
        RevocationPolicy::new_session_start(Some(now - 5), now, now - 3),
        Ok(now - 3)
    );
    assert_eq!(
        RevocationPolicy::new_session_start(Some(now), now, now - 3),
        Ok(now + 1)
    );
}

#[test]
fn rule4_refresh_window_and_capped_expiry() {
    let p = policy();
    let orig = 1_000 * SEC + 250;
    let c = claims(orig, 0);
    assert_eq!(p.check_refresh(&c, orig + 7 * DAY - 1), Ok(()));
    assert_eq!(
        p.check_refresh(&c, orig + 7 * DAY),
        Err(Reason::RefreshExpired)
    );
    // Far from the window's end, exp = now + ttl.
    let t = p.token_times(orig, orig + DAY, None).expect("times");
    assert_eq!(t.expires_at, UnixSeconds::floor_of(orig + DAY + 5 * MIN));
    assert_eq!(t.refresh_expires_ms, orig + 7 * DAY);
    // Near it, exp is clamped to the window (rounded down to the second).
    let near = orig + 7 * DAY - 2 * MIN;
    let t = p.token_times(orig, near, None).expect("times");
    assert_eq!(t.expires_at, UnixSeconds::floor_of(orig + 7 * DAY));
    assert!(t.expires_at.as_millis() <= orig + 7 * DAY);
    // Less than a second left: nothing worth minting.
    assert_eq!(
        p.token_times(orig, orig + 7 * DAY - 100, None),
        Err(Reason::RefreshExpired)
    );
}

#[test]
fn requested_ttl_is_capped_by_configuration() {
    let p = policy();
    let t = p.token_times(0, 0, Some(DAY)).expect("times");
    assert_eq!(t.expires_at, UnixSeconds(300));
    let t = p.token_times(0, 0, Some(30 * SEC)).expect("times");
    assert_eq!(t.expires_at, UnixSeconds(30));
}

#[test]
fn rule6_leeway_applies_to_exp_and_nbf_only() {
    let mut p = policy();
    let c = claims(0, 100);
    assert_eq!(p.check_lifetime(&c, 100 * SEC - 1), Ok(()));
    assert_eq!(p.check_lifetime(&c, 100 * SEC), Err(Reason::Expired));
    p.leeway_ms = 5 * SEC;
    assert_eq!(p.check_lifetime(&c, 104 * SEC), Ok(()));
    assert_eq!(p.check_lifetime(&c, 105 * SEC), Err(Reason::Expired));
    let mut early = claims(0, 100);
    early.not_before = Some(UnixSeconds(50));
    assert_eq!(p.check_lifetime(&early, 44 * SEC), Err(Reason::NotYetValid));
    assert_eq!(p.check_lifetime(&early, 45 * SEC), Ok(()));
    // Neither the cutoff nor the refresh window gets leeway.
    assert_eq!(
        RevocationPolicy::check_cutoff(Some(10), 10, 11),
        Err(Reason::UserRevoked)
    );
    let window = claims(0, 0);
    assert_eq!(
        p.check_refresh(&window, 7 * DAY),
        Err(Reason::RefreshExpired)
    );
}

#[test]
fn rule11_an_older_token_is_a_retry_within_the_interval_and_reuse_after() {
    let p = policy();
    assert_eq!(p.superseded(100 * SEC, 100 * SEC), Superseded::Retry);
    assert_eq!(p.superseded(100 * SEC, 110 * SEC), Superseded::Retry);
    assert_eq!(p.superseded(100 * SEC, 110 * SEC + 1), Superseded::Reused);
}

#[test]
fn rule8_an_iat_from_the_future_beyond_the_leeway_is_not_yet_valid() {
    let mut p = policy();
    let mut c = claims(0, 1_000);
    c.issued_at = UnixSeconds(100);
    assert_eq!(p.check_lifetime(&c, 100 * SEC), Ok(()));
    assert_eq!(
        p.check_lifetime(&c, 100 * SEC - 1),
        Err(Reason::NotYetValid)
    );
    p.leeway_ms = 5 * SEC;
    assert_eq!(p.check_lifetime(&c, 95 * SEC), Ok(()));
    assert_eq!(p.check_lifetime(&c, 95 * SEC - 1), Err(Reason::NotYetValid));
    c.issued_at = UnixSeconds(i64::MAX);
    c.expires_at = UnixSeconds(i64::MAX);
    assert_eq!(p.check_lifetime(&c, 0), Err(Reason::NotYetValid));
}

#[test]
fn denylist_rows_outlive_everything_they_refuse() {
    let mut p = policy();
    p.leeway_ms = 2 * SEC;
    assert_eq!(
        p.session_row_moot_at(10 * SEC),
        10 * SEC + 7 * DAY + 2 * SEC
    );
    assert!(p.unknown_row_moot_at(0) > p.session_row_moot_at(0));
    assert_eq!(
        RevocationPolicy::check_denylist(DenyStatus {
            denied_by: Some(DenyKind::Session),
        }),
        Err(Reason::TokenRevoked)
    );
    assert_eq!(
        RevocationPolicy::check_denylist(DenyStatus {
            denied_by: Some(DenyKind::IdpSession),
        }),
        Err(Reason::TokenRevoked)
    );
    assert_eq!(
        RevocationPolicy::check_denylist(DenyStatus::default()),
        Ok(())
    );
}

#[test]
fn rule9_an_instance_off_the_fleets_clock_beyond_the_tolerance_may_not_mint() {
    let p = policy();
    assert_eq!(p.check_clock(Some(0)), ClockCheck::InStep);
    assert_eq!(p.check_clock(Some(500)), ClockCheck::InStep);
    assert_eq!(p.check_clock(Some(-500)), ClockCheck::InStep);
    assert_eq!(
        p.check_clock(Some(501)),
        ClockCheck::Skewed { skew_ms: 501 }
    );
    assert_eq!(
        p.check_clock(Some(-6_000)),
        ClockCheck::Skewed { skew_ms: -6_000 }
    );
    assert_eq!(p.check_clock(None), ClockCheck::Unread);
}

#[test]
fn rule9_the_purge_keeps_a_margin_of_the_tolerated_skew() {
    let p = policy();
    let now = 100 * DAY;
    let horizon = p.purge_horizon(now);
    assert_eq!(horizon.moot_before, now - 1_000);
    assert_eq!(
        horizon.cutoffs_before,
        p.cutoff_purgeable_before(now - 1_000)
    );
    // The purger 500 ms ahead, another instance 500 ms behind: what that one may still take
    // for valid is kept.
    let (purger_now, laggard_now) = (now + 500, now - 500);
    assert!(p.purge_horizon(purger_now).moot_before <= laggard_now);
}
