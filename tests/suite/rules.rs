//! SPEC §4 rules and the §2 worked example, end to end through gRPC, on PostgreSQL, on
//! SQLite and on the memory store, with the manual clock moved instead of sleeping.
use crate::common::{Backend, DAY, MIN, SEC, Settings, T0_MS, TestApp, assert_status};
use futures::{StreamExt, stream};
use token_sidecar::api::pb::{self, Reason, revoke_request::Target};
use tonic::Code;

fn ms(t: &Option<prost_types::Timestamp>) -> i64 {
    let t = t.as_ref().expect("timestamp present");
    t.seconds * 1000 + i64::from(t.nanos) / 1_000_000
}

fn claims_of(v: &pb::VerifyResponse) -> &pb::TokenClaims {
    v.claims.as_ref().expect("claims of a valid token")
}

on_every_store!(
    issue_then_verify_returns_the_claims,
    orig_iat_keeps_millisecond_precision,
    refresh_keeps_session_orig_iat_and_custom_claims,
    refresh_chain_never_outlives_the_refresh_window,
    refresh_keeps_the_lifetime_the_session_was_issued_with,
    refresh_is_refused_after_the_window_even_within_leeway,
    revoking_a_token_revokes_its_session_and_refreshed_copies,
    revoking_by_jti_kills_only_that_token,
    revoking_by_session_id_kills_the_session,
    refresh_is_refused_with_the_reason,
    issue_right_after_revoke_all_works_in_the_same_millisecond,
    a_running_ban_is_never_shortened_by_revoke_all,
    a_ban_refuses_issue_and_lifting_it_keeps_old_tokens_revoked,
    a_ban_ends_by_itself_and_old_tokens_stay_revoked,
    revoking_what_is_dead_already_stores_nothing,
    leeway_applies_to_exp_but_not_to_the_cutoff,
    a_token_issued_in_the_future_is_not_yet_valid,
    a_cached_decode_never_skips_a_rule,
    worked_example_from_spec_section_2,
);

async fn issue_then_verify_returns_the_claims(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let mut claims = prost_types::Struct::default();
    claims.fields.insert(
        "role".into(),
        prost_types::Value {
            kind: Some(prost_types::value::Kind::StringValue("admin".into())),
        },
    );
    let issued = app
        .issue_with(pb::IssueRequest {
            user_id: "alice".into(),
            claims: Some(claims.clone()),
            ttl: None,
            ..Default::default()
        })
        .await
        .expect("issue");
    assert_eq!(ms(&issued.issued_at), T0_MS);
    assert_eq!(ms(&issued.expires_at), T0_MS + 5 * MIN);
    assert_eq!(ms(&issued.refresh_expires_at), T0_MS + 7 * DAY);
    assert_eq!(issued.jti.len(), 22, "jti carries 128 random bits");
    assert_eq!(issued.session_id.len(), 22, "sid carries 128 random bits");

    let verified = app.verify(&issued.token).await;
    assert!(verified.valid);
    assert_eq!(verified.reason, Reason::Unspecified as i32);
    let c = claims_of(&verified);
    assert_eq!(c.user_id, "alice");
    assert_eq!(c.jti, issued.jti);
    assert_eq!(c.session_id, issued.session_id);
    assert_eq!(ms(&c.issued_at), T0_MS);
    assert_eq!(ms(&c.original_issued_at), T0_MS);
    assert_eq!(ms(&c.expires_at), T0_MS + 5 * MIN);
    assert_eq!(c.extra.as_ref(), Some(&claims));
}

async fn orig_iat_keeps_millisecond_precision(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    app.clock.advance_ms(1_237);
    let issued = app.issue("alice").await;
    let verified = app.verify(&issued.token).await;
    assert_eq!(ms(&claims_of(&verified).original_issued_at), T0_MS + 1_237);
    // iat and exp are whole seconds, for interoperability.
    assert_eq!(ms(&claims_of(&verified).issued_at), T0_MS + 1_000);
    assert_eq!(ms(&issued.refresh_expires_at), T0_MS + 1_237 + 7 * DAY);
}

async fn refresh_keeps_session_orig_iat_and_custom_claims(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    app.clock.advance_ms(250);
    let mut claims = prost_types::Struct::default();
    claims.fields.insert(
        "tenant".into(),
        prost_types::Value {
            kind: Some(prost_types::value::Kind::NumberValue(7.0)),
        },
    );
    let first = app
        .issue_with(pb::IssueRequest {
            user_id: "bob".into(),
            claims: Some(claims.clone()),
            ttl: None,
            ..Default::default()
        })
        .await
        .expect("issue");
    app.clock.advance_ms(2 * MIN);
    let second = app.refresh(&first.token).await.expect("refresh");
    assert_ne!(second.jti, first.jti, "a refresh mints a new jti");
    assert_eq!(second.session_id, first.session_id, "the session is kept");
    assert_eq!(ms(&second.issued_at), T0_MS + 2 * MIN);
    assert_eq!(ms(&second.expires_at), T0_MS + 7 * MIN);
    assert_eq!(second.refresh_expires_at, first.refresh_expires_at);

    let v = app.verify(&second.token).await;
    let c = claims_of(&v);
    assert_eq!(c.user_id, "bob");
    assert_eq!(ms(&c.original_issued_at), T0_MS + 250);
    assert_eq!(c.extra.as_ref(), Some(&claims));
    // The old token is still valid until it expires: refresh does not revoke it.
    assert!(app.verify(&first.token).await.valid);
}

/// SPEC §8: a token answered from the verified-token cache still meets every rule on every call.
async fn a_cached_decode_never_skips_a_rule(backend: Backend) {
    let p256 = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/keys/p256.pem");
    let app = Settings::new(backend)
        .arg("--key", &format!("es=ES256:{p256}"))
        .spawn()
        .await;
    let hits = app.metrics.caches.verified().hits;
    let cached = |user: &'static str| {
        let app = &app;
        async move {
            let issued = app.issue(user).await;
            assert!(app.verify(&issued.token).await.valid);
            assert!(app.verify(&issued.token).await.valid);
            issued
        }
    };
    let by_jti = cached("alice").await;
    let by_session = cached("alice").await;
    let by_cutoff = cached("bob").await;
    let by_ban = cached("carol").await;
    let by_expiry = cached("dave").await;
    let neighbour = cached("erin").await;
    assert!(
        hits.get() >= 6,
        "every second Verify was a hit: {}",
        hits.get()
    );

    app.revoke(Target::Jti(by_jti.jti.clone()))
        .await
        .expect("revoke");
    assert_eq!(app.verdict(&by_jti.token).await, Reason::TokenRevoked);
    app.revoke(Target::SessionId(by_session.session_id.clone()))
        .await
        .expect("revoke");
    assert_eq!(app.verdict(&by_session.token).await, Reason::TokenRevoked);
    app.revoke_user("bob", None).await;
    assert_eq!(app.verdict(&by_cutoff.token).await, Reason::UserRevoked);
    app.revoke_user("carol", Some(T0_MS + 60 * MIN)).await;
    assert_eq!(app.verdict(&by_ban.token).await, Reason::UserBanned);

    // One byte apart from a cached token: decoded afresh, and refused.
    let mut bytes = neighbour.token.clone().into_bytes();
    let last = bytes.len() - 1;
    bytes[last] = if bytes[last] == b'A' { b'B' } else { b'A' };
    let tampered = String::from_utf8(bytes).expect("ascii");
    assert_ne!(app.verdict(&tampered).await, Reason::Unspecified);
    assert!(app.verify(&neighbour.token).await.valid);

    app.clock.advance_ms(5 * MIN);
    assert_eq!(app.verdict(&by_expiry.token).await, Reason::Expired);
    assert_eq!(app.verdict(&neighbour.token).await, Reason::Expired);

    // With HMAC secrets only, the check is as cheap as the cache: it is not asked.
    let hmac = TestApp::spawn(backend).await;
    let token = hmac.issue("alice").await.token;
    for _ in 0..3 {
        assert!(hmac.verify(&token).await.valid);
    }
    let lookups = hmac.metrics.caches.verified();
    assert_eq!((lookups.hits.get(), lookups.misses.get()), (0, 0));
}

/// Rule 8: another instance whose clock runs ahead mints a token; it is refused until its `iat`
/// is within the leeway of this instance's clock.
async fn a_token_issued_in_the_future_is_not_yet_valid(backend: Backend) {
    let ahead = Settings::new(backend)
        .clock(token_sidecar::clock::ManualClock::new(T0_MS + 10 * SEC))
        .arg("--leeway", "2s")
        .spawn()
        .await;
    let app = Settings::new(backend)
        .sharing(&ahead)
        .arg("--leeway", "2s")
        .spawn()
        .await;
    let token = ahead.issue("alice").await.token;
    assert!(ahead.verify(&token).await.valid);
    assert_eq!(app.verdict(&token).await, Reason::NotYetValid);
    let refused = app.refresh(&token).await.expect_err("not yet valid");
    assert_status(&refused, Code::Unauthenticated, "REASON_NOT_YET_VALID");
    app.clock.advance_ms(8 * SEC - 1);
    assert_eq!(app.verdict(&token).await, Reason::NotYetValid);
    app.clock.advance_ms(1);
    assert!(app.verify(&token).await.valid, "within the leeway");
}

async fn refresh_keeps_the_lifetime_the_session_was_issued_with(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let issued = app
        .issue_with(pb::IssueRequest {
            user_id: "alice".into(),
            ttl: Some(prost_types::Duration {
                seconds: 2,
                nanos: 0,
            }),
            ..Default::default()
        })
        .await
        .expect("issue");
    let lifetime = |t: &pb::RefreshResponse| ms(&t.expires_at) - ms(&t.issued_at);
    app.clock.advance_ms(1_500);
    let first = app.refresh(&issued.token).await.expect("refresh");
    assert_eq!(lifetime(&first), 2 * SEC, "not the configured 5m");
    app.clock.advance_ms(1_000);
    let second = app.refresh(&first.token).await.expect("refresh again");
    assert_eq!(lifetime(&second), 2 * SEC, "the chain keeps it");
}

async fn refresh_chain_never_outlives_the_refresh_window(backend: Backend) {
    let app = Settings::new(backend)
        .arg("--refresh-window", "1h")
        .arg("--token-ttl", "5m")
        .spawn()
        .await;
    app.clock.advance_ms(500);
    let window_end = T0_MS + 500 + 60 * MIN;
    let mut token = app.issue("carol").await.token;
    let mut last_exp = 0;
    for _ in 0..14 {
        app.clock.advance_ms(4 * MIN);
        let next = app
            .refresh(&token)
            .await
            .expect("refresh inside the window");
        last_exp = ms(&next.expires_at);
        assert!(
            last_exp <= window_end,
            "exp {last_exp} beyond window {window_end}"
        );
        assert_eq!(ms(&next.refresh_expires_at), window_end);
        token = next.token;
    }
    // The last refresh (at 56m) was clamped to the window, rounded down to the second.
    assert_eq!(last_exp, T0_MS + 60 * MIN);
    app.clock.advance_ms(4 * MIN);
    let refused = app.refresh(&token).await.expect_err("chain ends");
    assert_status(&refused, Code::Unauthenticated, "REASON_EXPIRED");
}

async fn refresh_is_refused_after_the_window_even_within_leeway(backend: Backend) {
    let app = Settings::new(backend)
        .arg("--refresh-window", "1h")
        .arg("--token-ttl", "2h")
        .arg("--leeway", "1m")
        .spawn()
        .await;
    let issued = app.issue("dave").await;
    assert_eq!(
        ms(&issued.expires_at),
        T0_MS + 60 * MIN,
        "exp capped by the window"
    );
    let token = issued.token;
    app.clock.advance_ms(60 * MIN + 10 * SEC);
    // exp (= the window's end) has passed, but within leeway the token still verifies...
    assert!(app.verify(&token).await.valid);
    // ...while the refresh window gets no leeway.
    let refused = app.refresh(&token).await.expect_err("window over");
    assert_status(&refused, Code::Unauthenticated, "REASON_REFRESH_EXPIRED");
}

async fn revoking_a_token_revokes_its_session_and_refreshed_copies(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let a = app.issue("erin").await;
    app.clock.advance_ms(MIN);
    let b = app.refresh(&a.token).await.expect("refresh a");
    app.clock.advance_ms(MIN);
    let c = app.refresh(&b.token).await.expect("refresh b");
    let other = app.issue("erin").await;

    let done = app
        .revoke(Target::Token(a.token.clone()))
        .await
        .expect("revoke");
    assert!(done.stored);
    assert_eq!(done.session_id, a.session_id);
    for t in [&a.token, &b.token, &c.token] {
        assert_eq!(app.verdict(t).await, Reason::TokenRevoked);
    }
    let refused = app.refresh(&c.token).await.expect_err("revoked session");
    assert_status(&refused, Code::Unauthenticated, "REASON_TOKEN_REVOKED");
    assert!(
        app.verify(&other.token).await.valid,
        "other sessions live on"
    );
    // Revoking again, by any token of the session, stores nothing.
    for t in [&a.token, &c.token] {
        let again = app.revoke(Target::Token(t.clone())).await.expect("revoke");
        assert!(!again.stored);
    }
    assert_eq!(app.count_rows("denylist").await, 1);
}

async fn revoking_by_jti_kills_only_that_token(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let a = app.issue("frank").await;
    let b = app.refresh(&a.token).await.expect("refresh");
    let done = app
        .revoke(Target::Jti(a.jti.clone()))
        .await
        .expect("revoke");
    assert!(done.stored);
    assert_eq!(app.verdict(&a.token).await, Reason::TokenRevoked);
    assert!(app.verify(&b.token).await.valid, "same session, other jti");
    let again = app
        .revoke(Target::Jti(a.jti.clone()))
        .await
        .expect("revoke");
    assert!(!again.stored);
    // Revoking the jti-revoked token itself still revokes its session.
    let session = app
        .revoke(Target::Token(a.token.clone()))
        .await
        .expect("revoke");
    assert!(session.stored);
    assert_eq!(app.verdict(&b.token).await, Reason::TokenRevoked);
}

async fn revoking_by_session_id_kills_the_session(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let a = app.issue("gina").await;
    let b = app.refresh(&a.token).await.expect("refresh");
    let other = app.issue("gina").await;
    let done = app
        .revoke(Target::SessionId(a.session_id.clone()))
        .await
        .expect("revoke");
    assert!(done.stored);
    assert_eq!(app.verdict(&a.token).await, Reason::TokenRevoked);
    assert_eq!(app.verdict(&b.token).await, Reason::TokenRevoked);
    assert!(app.verify(&other.token).await.valid);
}

async fn refresh_is_refused_with_the_reason(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let revoked = app.issue("hank").await;
    app.revoke(Target::Jti(revoked.jti.clone()))
        .await
        .expect("revoke");
    let status = app.refresh(&revoked.token).await.expect_err("revoked");
    assert_status(&status, Code::Unauthenticated, "REASON_TOKEN_REVOKED");

    let expiring = app.issue("ivy").await;
    app.clock.advance_ms(5 * MIN);
    let status = app.refresh(&expiring.token).await.expect_err("expired");
    assert_status(&status, Code::Unauthenticated, "REASON_EXPIRED");

    let user_revoked = app.issue("jack").await;
    app.revoke_user("jack", None).await;
    let status = app
        .refresh(&user_revoked.token)
        .await
        .expect_err("user revoked");
    assert_status(&status, Code::Unauthenticated, "REASON_USER_REVOKED");

    let banned = app.issue("kate").await;
    app.revoke_user("kate", Some(app.clock_ms() + DAY)).await;
    let status = app.refresh(&banned.token).await.expect_err("banned");
    assert_status(&status, Code::Unauthenticated, "REASON_USER_BANNED");

    let status = app.refresh("not-a-token").await.expect_err("garbage");
    assert_status(&status, Code::Unauthenticated, "REASON_MALFORMED");
}

trait ClockMs {
    fn clock_ms(&self) -> i64;
}

impl ClockMs for TestApp {
    fn clock_ms(&self) -> i64 {
        use token_sidecar::clock::Clock;
        self.clock.now_ms()
    }
}

async fn issue_right_after_revoke_all_works_in_the_same_millisecond(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let before = app.issue("liam").await;
    // Same millisecond: the token issued just before the revoke-all is revoked...
    let done = app.revoke_user("liam", None).await;
    assert!(done.stored);
    assert!(!done.banned);
    assert_eq!(ms(&done.revoked_until), T0_MS);
    assert_eq!(app.verdict(&before.token).await, Reason::UserRevoked);
    // ...and a login right after works, still in the same millisecond.
    let after = app.issue("liam").await;
    let v = app.verify(&after.token).await;
    assert!(v.valid, "{v:?}");
    assert!(ms(&claims_of(&v).original_issued_at) > T0_MS);
    let status = app.user_status("liam").await;
    assert_eq!(ms(&status.cutoff), T0_MS);
    assert!(!status.banned);
    assert!(status.banned_until.is_none());
}

async fn a_running_ban_is_never_shortened_by_revoke_all(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let ban = app.revoke_user("mia", Some(T0_MS + DAY)).await;
    assert!(ban.stored && ban.banned);
    let now = app.revoke_user("mia", None).await;
    assert!(!now.stored, "revoke-all during a ban changes nothing");
    assert_eq!(ms(&now.revoked_until), T0_MS + DAY);
    assert!(now.banned);
    let shorter = app.revoke_user("mia", Some(T0_MS + MIN)).await;
    assert!(!shorter.stored);
    assert_eq!(ms(&shorter.revoked_until), T0_MS + DAY);
    let longer = app.revoke_user("mia", Some(T0_MS + 2 * DAY)).await;
    assert!(longer.stored);
    assert_eq!(ms(&longer.revoked_until), T0_MS + 2 * DAY);
    assert_eq!(
        ms(&app.user_status("mia").await.banned_until),
        T0_MS + 2 * DAY
    );
}

async fn a_ban_refuses_issue_and_lifting_it_keeps_old_tokens_revoked(backend: Backend) {
    let app = Settings::new(backend)
        .arg("--token-ttl", "2h")
        .spawn()
        .await;
    let old = app.issue("noah").await;
    app.revoke_user("noah", Some(T0_MS + 60 * MIN)).await;
    assert_eq!(app.verdict(&old.token).await, Reason::UserBanned);
    let refused = app
        .issue_with(pb::IssueRequest {
            user_id: "noah".into(),
            ..Default::default()
        })
        .await
        .expect_err("banned");
    assert_status(&refused, Code::PermissionDenied, "REASON_USER_BANNED");
    let status = app.user_status("noah").await;
    assert!(status.banned);
    assert_eq!(ms(&status.banned_until), T0_MS + 60 * MIN);

    app.clock.advance_ms(30 * MIN);
    assert!(app.lift_ban("noah").await);
    assert!(!app.lift_ban("noah").await, "no running ban any more");
    assert!(!app.lift_ban("nobody").await);
    assert_eq!(app.verdict(&old.token).await, Reason::UserRevoked);
    let status = app.user_status("noah").await;
    assert!(!status.banned);
    assert_eq!(ms(&status.cutoff), T0_MS + 30 * MIN);
    // Same millisecond as the lift: a new login works.
    let fresh = app.issue("noah").await;
    assert!(app.verify(&fresh.token).await.valid);
}

async fn a_ban_ends_by_itself_and_old_tokens_stay_revoked(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let old = app.issue("olga").await;
    app.revoke_user("olga", Some(T0_MS + 90 * SEC)).await;
    app.clock.advance_ms(90 * SEC);
    assert_eq!(app.verdict(&old.token).await, Reason::UserRevoked);
    let fresh = app.issue("olga").await;
    assert!(app.verify(&fresh.token).await.valid);
    assert!(!app.lift_ban("olga").await);
}

async fn revoking_what_is_dead_already_stores_nothing(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let expired = app.issue("paul").await;
    let user_revoked = app.issue("quinn").await;
    app.revoke_user("quinn", None).await;
    app.clock.advance_ms(5 * MIN);
    let done = app
        .revoke(Target::Token(expired.token))
        .await
        .expect("revoke");
    assert!(!done.stored);
    let done = app
        .revoke(Target::Token(user_revoked.token))
        .await
        .expect("revoke");
    assert!(!done.stored);
    assert_eq!(app.count_rows("denylist").await, 0);
    // A revoke-all that asks for an older cutoff than the one in force changes nothing.
    let done = app.revoke_user("quinn", Some(T0_MS - DAY)).await;
    assert!(!done.stored);
    assert_eq!(ms(&done.revoked_until), T0_MS);
}

async fn leeway_applies_to_exp_but_not_to_the_cutoff(backend: Backend) {
    let app = Settings::new(backend).arg("--leeway", "30s").spawn().await;
    let token = app
        .issue_with(pb::IssueRequest {
            user_id: "rita".into(),
            ttl: Some(prost_types::Duration {
                seconds: 60,
                nanos: 0,
            }),
            ..Default::default()
        })
        .await
        .expect("issue")
        .token;
    app.clock.advance_ms(89 * SEC);
    assert!(app.verify(&token).await.valid, "inside exp + leeway");
    app.clock.advance_ms(SEC);
    assert_eq!(app.verdict(&token).await, Reason::Expired);

    let fresh = app.issue("rita").await;
    app.revoke_user("rita", None).await;
    assert_eq!(app.verdict(&fresh.token).await, Reason::UserRevoked);
}

async fn worked_example_from_spec_section_2(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let issue_many = |n: usize| {
        let app = &app;
        stream::iter(0..n)
            .map(move |_| async move { app.issue("walt").await })
            .buffer_unordered(16)
            .collect::<Vec<_>>()
    };
    let verdicts = |tokens: Vec<String>| {
        let app = &app;
        stream::iter(tokens)
            .map(move |t| async move { app.verdict(&t).await })
            .buffer_unordered(16)
            .collect::<Vec<_>>()
    };
    let all = |v: Vec<Reason>, r: Reason| v.iter().all(|x| *x == r);

    // t=0: 1000 valid tokens.
    let first: Vec<String> = issue_many(1000)
        .await
        .into_iter()
        .map(|i| i.token)
        .collect();
    assert!(all(verdicts(first.clone()).await, Reason::Unspecified));

    // t=2: banned until t=5 — one row changes, all 1000 are rejected, Issue is refused.
    app.clock.set_ms(T0_MS + 2 * SEC);
    let ban = app.revoke_user("walt", Some(T0_MS + 5 * SEC)).await;
    assert!(ban.banned);
    assert_eq!(app.count_rows("user_cutoffs").await, 1);
    assert_eq!(app.count_rows("denylist").await, 0);
    assert!(all(verdicts(first.clone()).await, Reason::UserBanned));
    let refused = app
        .issue_with(pb::IssueRequest {
            user_id: "walt".into(),
            ..Default::default()
        })
        .await
        .expect_err("banned");
    assert_status(&refused, Code::PermissionDenied, "REASON_USER_BANNED");

    // t=5: the ban is over, the old 1000 stay rejected as revoked.
    app.clock.set_ms(T0_MS + 5 * SEC);
    assert!(all(verdicts(first.clone()).await, Reason::UserRevoked));

    // t=8: 500 new tokens; 10 revoked one by one — 10 denylist rows; 490 valid.
    app.clock.set_ms(T0_MS + 8 * SEC);
    let second: Vec<String> = issue_many(500).await.into_iter().map(|i| i.token).collect();
    for t in &second[..10] {
        let done = app.revoke(Target::Token(t.clone())).await.expect("revoke");
        assert!(done.stored);
    }
    assert_eq!(app.count_rows("denylist").await, 10);
    assert_eq!(app.count_rows("user_cutoffs").await, 1);
    assert!(all(
        verdicts(second[..10].to_vec()).await,
        Reason::TokenRevoked
    ));
    assert!(all(
        verdicts(second[10..].to_vec()).await,
        Reason::Unspecified
    ));
    assert_eq!(second[10..].len(), 490);
    assert!(all(verdicts(first).await, Reason::UserRevoked));
}
