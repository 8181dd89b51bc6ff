//! SPEC §14: the change feed from the sidecar's memory. While an instance is in step, a reader
//! that follows the feed is answered from the changes the instance applied (no query on the
//! store); a long poll (`wait_ms`) is answered the moment a change made on another instance
//! has been applied here; a reader on another history is still told to start again.
use std::time::{Duration, Instant};

use crate::common::{Backend, Settings, TestApp, eventually, http_request};
use token_sidecar::api::pb::revoke_request::Target;

async fn read(app: &TestApp, query: &str) -> crate::common::HttpResponse {
    crate::feed::read(app, query, None).await
}

use crate::feed::page;

fn query(after: i64, anchor: Option<&str>, extra: &str) -> String {
    match anchor {
        Some(anchor) => format!("?after={after}&anchor={anchor}{extra}"),
        None => format!("?after={after}{extra}"),
    }
}

/// Reads pages from `after` until the feed has nothing more: the position and anchor reached.
async fn follow(
    app: &TestApp,
    mut after: i64,
    mut anchor: Option<String>,
) -> (i64, Option<String>, usize) {
    let mut seen = 0;
    loop {
        let p = page(&read(app, &query(after, anchor.as_deref(), "")).await);
        seen += p.changes.len();
        let done = p.changes.is_empty();
        after = p.next;
        anchor = p.anchor.or(anchor);
        if done {
            return (after, anchor, seen);
        }
    }
}

fn feed_queries(app: &TestApp) -> u64 {
    app.counter(r#"store_queries_total{kind="feed"}"#)
}

/// Two sidecars on one PostgreSQL; the reader reads the first, the second revokes.
async fn pair() -> (TestApp, TestApp) {
    let reader_side = Settings::new(Backend::Postgres)
        .arg("--http-listen", "127.0.0.1:0")
        .spawn()
        .await;
    let writer = Settings::new(Backend::Postgres)
        .sharing(&reader_side)
        .clock(reader_side.clock.clone())
        .spawn()
        .await;
    (reader_side, writer)
}

#[tokio::test]
async fn a_reader_in_step_is_answered_from_memory() {
    crate::require!(Postgres);
    let (app, writer) = pair().await;
    for i in 0..3 {
        let t = writer.issue(&format!("early-{i}")).await;
        writer
            .revoke(Target::Jti(t.jti.clone()))
            .await
            .expect("revoke");
    }
    // Three changes on a fresh database: numbers 1 to 3.
    eventually(
        Duration::from_secs(5),
        "the reader's sidecar applies them",
        || async { app.running().authority.revocations().watermark() >= 3 },
    )
    .await;
    // The first read (from 0): everything applied so far.
    let (after, anchor, seen) = follow(&app, 0, None).await;
    assert!(seen >= 3, "the snapshot holds the revocations: {seen}");
    let queries = feed_queries(&app);

    // From now on the reader follows what the instance applies: no query, every change.
    let mut revoked = Vec::new();
    for i in 0..20 {
        let t = writer.issue(&format!("later-{i}")).await;
        writer
            .revoke(Target::Jti(t.jti.clone()))
            .await
            .expect("revoke");
        revoked.push(t.jti);
    }
    writer.revoke_user("someone", None).await;
    let wanted = 3 + 21;
    eventually(
        Duration::from_secs(5),
        "the reader's sidecar applies them",
        || async { app.running().authority.revocations().watermark() >= wanted },
    )
    .await;
    let (after, anchor, seen) = follow(&app, after, anchor).await;
    assert_eq!(seen, 21, "every change since, once");
    assert_eq!(after, wanted);
    assert_eq!(
        feed_queries(&app),
        queries,
        "a reader in step costs the store nothing"
    );

    // A reader on another history than the one applied here is told to start again.
    let wrong = "00".repeat(anchor.as_deref().map_or(16, |a| a.len() / 2));
    let r = read(&app, &query(after, Some(&wrong), "")).await;
    assert_eq!(r.status, 409, "{r:?}");
    assert_eq!(feed_queries(&app), queries, "decided from memory too");
}

#[tokio::test]
async fn a_long_poll_answers_when_a_change_is_applied() {
    crate::require!(Postgres);
    let (app, writer) = pair().await;
    let (after, anchor, _) = follow(&app, 0, None).await;

    // Nothing new: the poll is held for wait_ms and answers an empty page.
    let started = Instant::now();
    let held = page(&read(&app, &query(after, anchor.as_deref(), "&wait_ms=300")).await);
    assert!(held.changes.is_empty());
    assert!(
        started.elapsed() >= Duration::from_millis(250),
        "held for wait_ms"
    );

    // A change made on the other instance wakes it: answered long before wait_ms.
    let t = writer.issue("alice").await;
    let q = query(after, anchor.as_deref(), "&wait_ms=10000");
    let poll = tokio::spawn({
        let addr = app.http_addr.expect("http");
        async move {
            let started = Instant::now();
            let r = http_request(addr, "GET", &format!("/revocations/changes{q}"), &[], None)
                .await
                .expect("answer");
            (r, started.elapsed())
        }
    });
    tokio::time::sleep(Duration::from_millis(100)).await;
    writer
        .revoke(Target::Jti(t.jti.clone()))
        .await
        .expect("revoke");
    let (r, took) = poll.await.expect("joined");
    println!("long poll woke after {took:?}");
    let woke = page(&r);
    assert_eq!(woke.changes.len(), 1, "{woke:?}");
    assert!(
        took < Duration::from_secs(5),
        "answered when the change was applied, not after wait_ms: {took:?}"
    );

    for bad in [
        "&wait_ms=30001",
        "&wait_ms=-1",
        "&wait_ms=x",
        "&wait_ms=1&wait_ms=2",
    ] {
        let r = read(&app, &query(after, anchor.as_deref(), bad)).await;
        assert_eq!(r.status, 400, "{bad}: {r:?}");
    }
}

/// The binary form (`format=bin`, what the Envoy filter reads) is the same page as the JSON one.
#[tokio::test]
async fn the_binary_page_is_the_json_page() {
    crate::require!(Postgres);
    let (app, writer) = pair().await;
    for i in 0..3 {
        let t = writer.issue(&format!("b-{i}")).await;
        writer
            .revoke(Target::Jti(t.jti.clone()))
            .await
            .expect("revoke");
    }
    writer.revoke_user("carol", None).await;
    let json = page(&read(&app, "?after=0").await);
    let r = http_request(
        app.http_addr.expect("http"),
        "GET",
        "/revocations/changes?after=0&format=bin",
        &[],
        None,
    )
    .await
    .expect("answer");
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(
        r.header("content-type").as_deref(),
        Some(token_sidecar::feed::binary::CONTENT_TYPE)
    );
    // The helper reads the body as text; the page's bytes are what the server sent.
    let raw = crate::common::http_body_bytes(
        app.http_addr.expect("http"),
        "/revocations/changes?after=0&format=bin",
    )
    .await;
    let binary = token_sidecar::feed::binary::decode(&raw).expect("a binary page");
    assert_eq!(binary.changes, json.changes);
    assert_eq!(
        (binary.next, &binary.anchor, binary.more),
        (json.next, &json.anchor, json.more)
    );
    assert_eq!(read(&app, "?after=0&format=xml").await.status, 400);
}
