//! SPEC §14: the Envoy filter answers exactly what Check answers. One sidecar on PostgreSQL,
//! one Envoy running the filter (its own copy, from the feed) and one Envoy with gRPC ext_authz
//! (Check): every kind of revocation is judged alike by Verify, Check, `/auth` and the filter —
//! and as the fleet clock moves past each entry's moot instant, the filter's copy drops what the
//! sidecar's purge deletes at the same moment: at every step the entries the filter holds are the
//! rows the store keeps.
use std::time::Duration;

use token_sidecar::api::pb;
use token_sidecar::api::pb::revoke_request::Target;

use crate::common::{Backend, Settings, TestApp, eventually, http_request};
use crate::proxies::{Proxy, Running, WasmOptions, get, start, start_with, upstream, wait_ready};

/// What a surface answered: "allow", a refusal's reason name, or what else came back.
async fn verdicts(app: &TestApp, check: &Running, filter: &Running, token: &str) -> [String; 4] {
    let auth = format!("Bearer {token}");
    let verify = match app.try_verdict(token).await {
        Ok(pb::Reason::Unspecified) => "allow".to_string(),
        Ok(reason) => reason.as_str_name().to_string(),
        Err(code) => format!("{code:?}"),
    };
    let http = app.http_addr.expect("--http-listen");
    let forward = http_request(http, "GET", "/auth", &[("authorization", &auth)], None)
        .await
        .expect("/auth answers");
    let check = get(check, &[("authorization", &auth)]).await;
    let filter = get(filter, &[("authorization", &auth)]).await;
    let word = |status: u16, challenge: Option<String>| match status {
        200 => "allow".to_string(),
        401 => challenge
            .and_then(|c| {
                c.split(|ch: char| !(ch.is_ascii_uppercase() || ch == '_'))
                    .find(|w| w.starts_with("REASON_"))
                    .map(str::to_string)
            })
            .unwrap_or_else(|| "401 without a reason".into()),
        other => format!("status {other}"),
    };
    [
        verify,
        word(forward.status, forward.header("www-authenticate")),
        word(check.status, check.header("www-authenticate")),
        word(filter.status, filter.header("www-authenticate")),
    ]
}

/// The entries the filter's copy holds, as Envoy's `/stats/prometheus` shows them.
async fn filter_entries(filter: &Running) -> Option<u64> {
    let admin = ([127, 0, 0, 1], filter.admin).into();
    let stats = http_request(admin, "GET", "/stats/prometheus", &[], None)
        .await
        .ok()?
        .body;
    stats
        .lines()
        .find(|l| l.starts_with("token_sidecar_filter_entries"))?
        .rsplit(' ')
        .next()?
        .parse::<f64>()
        .ok()
        .map(|v| v as u64)
}

/// Every moot instant the feed states (cutoffs and denied ids), in order.
async fn feed_moots(app: &TestApp) -> Vec<i64> {
    let http = app.http_addr.expect("--http-listen");
    let page = http_request(
        http,
        "GET",
        "/revocations/changes?after=0&limit=10000",
        &[],
        None,
    )
    .await
    .expect("the feed answers");
    assert_eq!(page.status, 200, "{page:?}");
    let page: serde_json::Value = serde_json::from_str(&page.body).expect("json");
    let mut moots: Vec<i64> = page["changes"]
        .as_array()
        .expect("changes")
        .iter()
        .filter_map(|c| c["moot_after_ms"].as_i64())
        .collect();
    moots.sort_unstable();
    moots.dedup();
    moots
}

/// The rows the store keeps: cutoffs and denied ids, what a copy holds.
async fn store_rows(app: &TestApp) -> u64 {
    let rows = app.count_rows("user_cutoffs").await + app.count_rows("denylist").await;
    u64::try_from(rows).unwrap_or_default()
}

#[tokio::test]
async fn the_filter_agrees_with_verify_check_and_auth_and_drops_what_the_store_purges() {
    crate::require!(Postgres, Envoy, WasmFilter);
    let app = Settings::new(Backend::Postgres)
        .arg("--http-listen", "127.0.0.1:0")
        .spawn()
        .await;
    let (app_addr, _seen) = upstream().await;
    let http = app.http_addr.expect("http").port();
    let options = WasmOptions {
        poll_ms: 200,
        staleness_ms: 2_000,
        ..WasmOptions::default()
    };
    let filter = start_with(Proxy::EnvoyWasm, app_addr.port(), http, options);
    let check = start(Proxy::EnvoyGrpc, app_addr.port(), app.addr.port());
    wait_ready(&filter, Proxy::EnvoyWasm).await;
    wait_ready(&check, Proxy::EnvoyGrpc).await;

    // Every kind of revocation, each on its own user.
    let mut tokens: Vec<(&str, String)> = Vec::new();
    let valid = app.issue("alice").await;
    tokens.push(("valid", valid.token));
    let by_jti = app.issue("bob").await;
    app.revoke(Target::Jti(by_jti.jti.clone()))
        .await
        .expect("revoke jti");
    tokens.push(("jti", by_jti.token));
    let first = app.issue("carol").await;
    let refreshed = app.refresh(&first.token).await.expect("refresh");
    app.revoke(Target::SessionId(first.session_id.clone()))
        .await
        .expect("revoke session");
    tokens.push(("session", first.token));
    tokens.push(("session, refreshed copy", refreshed.token));
    let before_cutoff = app.issue("dave").await;
    app.revoke_user("dave", None).await;
    app.clock.advance_secs(1);
    let after_cutoff = app.issue("dave").await;
    tokens.push(("revoke-all", before_cutoff.token));
    tokens.push(("revoke-all, a later login", after_cutoff.token));
    let banned = app.issue("erin").await;
    let now = {
        use token_sidecar::clock::Clock;
        app.clock.now_ms()
    };
    app.revoke_user("erin", Some(now + 3_600_000)).await;
    tokens.push(("ban", banned.token));
    let lifted = app.issue("fay").await;
    app.revoke_user("fay", Some(now + 3_600_000)).await;
    assert!(app.lift_ban("fay").await);
    app.clock.advance_secs(1);
    let after_lift = app.issue("fay").await;
    tokens.push(("lifted ban, before", lifted.token));
    tokens.push(("lifted ban, after", after_lift.token));
    let short_ban = app.issue("gus").await;
    app.revoke_user("gus", Some(now + 10_000)).await;
    tokens.push(("ban that ends", short_ban.token));
    let short = app
        .issue_with(pb::IssueRequest {
            user_id: "hal".into(),
            ttl: Some(prost_types::Duration {
                seconds: 20,
                nanos: 0,
            }),
            ..Default::default()
        })
        .await
        .expect("issue");
    app.revoke(Target::Jti(short.jti.clone()))
        .await
        .expect("revoke jti");
    tokens.push(("jti of a short-lived token", short.token));

    // The fleet clock moves to each moot instant the feed states (the instant the sidecar's
    // purge may delete the entry): a millisecond before it, both still hold the entry; just past
    // it — past the whole second, the filter's resolution for denied ids — both have dropped it.
    // At every step the four surfaces agree on every token, and the copy holds the rows the
    // store keeps once both have purged at that instant.
    let moots = feed_moots(&app).await;
    assert!(moots.len() >= 4, "moot instants in the feed: {moots:?}");
    let mut instants = Vec::new();
    for moot in moots {
        instants.push(moot - 1);
        instants.push((moot + 999) / 1_000 * 1_000 + 1);
    }
    instants.push(instants.last().copied().unwrap_or_default() + 40 * 86_400_000);
    let mut dropped = 0;
    let mut held_before = None;
    let mut at = 0;
    for instant in instants {
        {
            use token_sidecar::clock::Clock;
            if instant <= app.clock.now_ms() {
                continue;
            }
        }
        app.clock.set_ms(instant);
        at += 1;
        app.purge_now().await;
        let rows = store_rows(&app).await;
        // The filter purges on the fleet clock each page tells it; a change wakes its long poll.
        let marker = app.issue("marker").await;
        app.revoke(Target::Jti(marker.jti.clone()))
            .await
            .expect("marker");
        let auth = format!("Bearer {}", marker.token);
        eventually(
            Duration::from_secs(10),
            "the filter read the step",
            || async { get(&filter, &[("authorization", &auth)]).await.status == 401 },
        )
        .await;
        let wanted = rows + 1;
        eventually(
            Duration::from_secs(10),
            "the filter holds what the store keeps",
            || async { filter_entries(&filter).await == Some(wanted) },
        )
        .await;
        if held_before.is_some_and(|held| held > rows) {
            dropped += 1;
        }
        held_before = Some(wanted);
        for (name, token) in &tokens {
            let [verify, auth, check, filter] = verdicts(&app, &check, &filter, token).await;
            assert!(
                verify == auth && auth == check && check == filter,
                "step {at}, {name}: Verify {verify}, /auth {auth}, Check {check}, filter {filter}"
            );
        }
    }
    println!("{at} instants on the fleet clock; entries dropped on both sides at {dropped}");
    assert!(dropped >= 3, "entries became moot at {dropped} instants");
    assert_eq!(
        filter_entries(&filter).await,
        Some(store_rows(&app).await),
        "after forty days the copy holds only what the store still keeps"
    );
}
