//! SPEC §11, refresh reuse detection, end to end on PostgreSQL and SQLite with the manual clock:
//! the rotation chain, a replay after the interval revoking the whole session, a retry within it
//! answered with the same new token, concurrent Refreshes of one token giving one branch (on one
//! instance and on two), detection off, and the session's row purged with the session.
use crate::common::{Backend, DAY, SEC, Settings, TestApp, assert_status};
use token_sidecar::api::pb::Reason;
use tonic::Code;

on_every_backend!(
    a_rotation_chain_moves_forward,
    a_replay_after_the_interval_revokes_the_session,
    a_retry_within_the_interval_gets_the_same_new_token,
    an_old_token_replayed_just_after_a_refresh_is_still_reuse,
    concurrent_refreshes_of_one_token_give_one_branch,
    detection_off_lets_an_old_token_refresh,
    the_session_row_is_purged_with_the_session,
);

fn seconds(t: &Option<prost_types::Timestamp>) -> i64 {
    t.as_ref().map_or(0, |t| t.seconds)
}

async fn a_rotation_chain_moves_forward(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let mut token = app.issue("alice").await.token;
    let mut seen = std::collections::HashSet::new();
    for _ in 0..5 {
        app.clock.advance_ms(30 * SEC);
        let next = app
            .refresh(&token)
            .await
            .expect("the newest token refreshes");
        assert!(seen.insert(next.jti.clone()), "a new jti each time");
        token = next.token;
    }
    assert!(app.verify(&token).await.valid);
    assert_eq!(
        app.count_rows("session_heads").await,
        1,
        "one row per session"
    );
}

async fn a_replay_after_the_interval_revokes_the_session(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let stolen = app.issue("alice").await;
    app.clock.advance_ms(SEC);
    let client = app
        .refresh(&stolen.token)
        .await
        .expect("the client refreshes");
    app.clock.advance_ms(10 * SEC + 1);
    // The thief refreshes the old copy: two parties hold the session.
    let refused = app.refresh(&stolen.token).await.expect_err("reuse");
    assert_status(&refused, Code::Unauthenticated, "REASON_REFRESH_REUSED");
    assert_eq!(app.metrics.security.refresh_reuse_detected.get(), 1);
    // The whole session is revoked: the client's newest token and the stolen one.
    assert_eq!(app.verdict(&client.token).await, Reason::TokenRevoked);
    assert_eq!(app.verdict(&stolen.token).await, Reason::TokenRevoked);
    let again = app.refresh(&client.token).await.expect_err("revoked");
    assert_status(&again, Code::Unauthenticated, "REASON_TOKEN_REVOKED");
    // Other sessions of the user are untouched.
    let other = app.issue("alice").await;
    assert!(app.verify(&other.token).await.valid);
}

async fn a_retry_within_the_interval_gets_the_same_new_token(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let first = app.issue("alice").await;
    app.clock.advance_ms(2 * SEC);
    let answer = app.refresh(&first.token).await.expect("refresh");
    // The answer was lost; the client retries 10 s after it was minted (the interval's edge).
    app.clock.advance_ms(10 * SEC);
    let retry = app.refresh(&first.token).await.expect("a retry, not reuse");
    assert_eq!(retry.jti, answer.jti);
    assert_eq!(retry.session_id, answer.session_id);
    assert_eq!(seconds(&retry.issued_at), seconds(&answer.issued_at));
    assert_eq!(seconds(&retry.expires_at), seconds(&answer.expires_at));
    assert_eq!(app.metrics.security.refresh_reuse_detected.get(), 0);
    let claims = app.verify(&retry.token).await.claims.expect("valid");
    assert_eq!(claims.jti, answer.jti);
    // The newest token keeps rotating the session forward.
    let next = app.refresh(&answer.token).await.expect("newest refreshes");
    assert_ne!(next.jti, answer.jti);
}

/// An old token is judged by its own successor's age: replaying it right after the client's
/// latest refresh does not pass for a retry.
async fn an_old_token_replayed_just_after_a_refresh_is_still_reuse(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let stolen = app.issue("alice").await;
    app.clock.advance_ms(SEC);
    let second = app.refresh(&stolen.token).await.expect("refresh");
    app.clock.advance_ms(30 * SEC);
    let third = app.refresh(&second.token).await.expect("refresh");
    app.clock.advance_ms(SEC);
    // `second`, the parent of the newest, within the interval: a retry.
    let retry = app.refresh(&second.token).await.expect("retry");
    assert_eq!(retry.jti, third.jti);
    // `stolen`, older: its successor (`second`) is 31 s old, so this is reuse.
    let refused = app.refresh(&stolen.token).await.expect_err("reuse");
    assert_status(&refused, Code::Unauthenticated, "REASON_REFRESH_REUSED");
    assert_eq!(app.verdict(&third.token).await, Reason::TokenRevoked);
}

async fn concurrent_refreshes_of_one_token_give_one_branch(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    for round in 0..5 {
        let token = app.issue(&format!("tabs-{round}")).await.token;
        app.clock.advance_ms(SEC);
        let answers = futures::future::join_all((0..8).map(|_| app.refresh(&token))).await;
        let jtis: std::collections::HashSet<String> = answers
            .into_iter()
            .map(|a| a.expect("every tab gets an answer").jti)
            .collect();
        assert_eq!(jtis.len(), 1, "round {round}: one branch, got {jtis:?}");
    }
}

async fn detection_off_lets_an_old_token_refresh(backend: Backend) {
    let app = Settings::new(backend)
        .arg("--refresh-reuse-detection", "off")
        .spawn()
        .await;
    let first = app.issue("alice").await;
    app.clock.advance_ms(SEC);
    let a = app.refresh(&first.token).await.expect("refresh");
    app.clock.advance_ms(60 * SEC);
    let b = app.refresh(&first.token).await.expect("no detection");
    assert_ne!(a.jti, b.jti, "two branches, as asked");
    assert!(app.verify(&a.token).await.valid);
    assert_eq!(app.count_rows("session_heads").await, 0);
}

async fn the_session_row_is_purged_with_the_session(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let first = app.issue("alice").await;
    app.clock.advance_ms(SEC);
    app.refresh(&first.token).await.expect("refresh");
    assert_eq!(app.count_rows("session_heads").await, 1);
    app.clock.advance_ms(6 * DAY);
    app.purge_now().await;
    assert_eq!(
        app.count_rows("session_heads").await,
        1,
        "the session lives"
    );
    // Past the refresh window, and past the purge's margin for clock skew (twice
    // --max-clock-skew: SPEC §4 rule 9).
    app.clock.advance_ms(DAY + 2 * SEC);
    app.purge_now().await;
    assert_eq!(app.count_rows("session_heads").await, 0);
}

/// Two instances on one PostgreSQL: concurrent Refreshes of one token, half on each, give one
/// branch; a replay on the other instance after the interval is detected there.
#[tokio::test]
async fn it_works_across_instances() {
    crate::require!(Postgres);
    let a = TestApp::spawn(Backend::Postgres).await;
    let b = Settings::new(Backend::Postgres)
        .sharing(&a)
        .clock(a.clock.clone())
        .spawn()
        .await;
    for round in 0..5 {
        let token = a.issue(&format!("two-{round}")).await.token;
        a.clock.advance_ms(SEC);
        let answers = futures::future::join_all((0..8).map(|i| {
            let app = if i % 2 == 0 { &a } else { &b };
            app.refresh(&token)
        }))
        .await;
        let jtis: std::collections::HashSet<String> = answers
            .into_iter()
            .map(|r| r.expect("answer").jti)
            .collect();
        assert_eq!(jtis.len(), 1, "round {round}: one branch across instances");
    }
    let stolen = a.issue("mallory-target").await;
    a.clock.advance_ms(SEC);
    let fresh = a.refresh(&stolen.token).await.expect("refresh on a");
    a.clock.advance_ms(11 * SEC);
    let refused = b.refresh(&stolen.token).await.expect_err("reuse seen on b");
    assert_status(&refused, Code::Unauthenticated, "REASON_REFRESH_REUSED");
    assert_eq!(b.verdict(&fresh.token).await, Reason::TokenRevoked);
}
