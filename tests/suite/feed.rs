//! `GET /revocations/changes`: the change feed the Envoy filter keeps its revocation state from
//! — who may read it, pages from the start (the snapshot) onwards, bad parameters, and a reader
//! on another history told to start again.
use crate::common::{Backend, Settings, TestApp, http_request};
use token_sidecar::api::pb::revoke_request::Target;
use token_sidecar::feed::{FeedChange, FeedPage};

const FEED: &str = "a-proxy-filter-feed-credential";

async fn app(backend: Backend, credential: bool) -> (TestApp, tempfile::TempDir) {
    let dir = tempfile::tempdir().expect("dir");
    let mut settings = Settings::new(backend).arg("--http-listen", "127.0.0.1:0");
    if credential {
        let list = dir.path().join("feed");
        std::fs::write(&list, format!("{FEED}\n")).expect("write");
        std::fs::set_permissions(&list, std::os::unix::fs::PermissionsExt::from_mode(0o600))
            .expect("chmod");
        settings = settings.arg("--feed-token-file", &list.display().to_string());
    }
    (settings.spawn().await, dir)
}

pub(crate) async fn read(
    app: &TestApp,
    query: &str,
    credential: Option<&str>,
) -> crate::common::HttpResponse {
    let bearer = credential.map(|c| format!("Bearer {c}"));
    let headers: Vec<(&str, &str)> = bearer
        .as_deref()
        .map(|b| vec![("authorization", b)])
        .unwrap_or_default();
    http_request(
        app.http_addr.expect("--http-listen"),
        "GET",
        &format!("/revocations/changes{query}"),
        &headers,
        None,
    )
    .await
    .expect("answer")
}

pub(crate) fn page(r: &crate::common::HttpResponse) -> FeedPage {
    assert_eq!(r.status, 200, "{r:?}");
    serde_json::from_str(&r.body).expect("a feed page")
}

#[tokio::test]
async fn the_feed_pages_from_the_start_for_its_credential_only() {
    let (app, _dir) = app(Backend::Sqlite, true).await;
    let tokens = [
        app.issue("a").await,
        app.issue("b").await,
        app.issue("c").await,
    ];
    for t in &tokens {
        app.revoke(Target::Jti(t.jti.clone()))
            .await
            .expect("revoke");
    }
    app.revoke(Target::User(token_sidecar::api::pb::UserRevocation {
        user_id: "d".into(),
        until: None,
    }))
    .await
    .expect("revoke all");

    // Only the feed credential (or the admin's) reads it: this listener is loopback, but a
    // credential is configured.
    for credential in [None, Some("wrong-credential-of-enough-length")] {
        let r = read(&app, "", credential).await;
        assert_eq!(r.status, 401, "{credential:?}: {r:?}");
        assert_eq!(r.header("www-authenticate").as_deref(), Some("Bearer"));
    }

    let first = page(&read(&app, "?after=0&limit=3", Some(FEED)).await);
    assert_eq!(first.changes.len(), 3);
    assert!(first.more);
    let denied: Vec<&str> = first
        .changes
        .iter()
        .filter_map(|c| match c {
            FeedChange::Denied { kind, id, .. } if kind == "jti" => Some(id.as_str()),
            _ => None,
        })
        .collect();
    assert_eq!(
        denied,
        vec![
            tokens[0].jti.as_str(),
            tokens[1].jti.as_str(),
            tokens[2].jti.as_str()
        ]
    );
    let rest = page(&read(&app, &format!("?after={}", first.next), Some(FEED)).await);
    assert!(!rest.more);
    assert!(
        matches!(&rest.changes[..], [FeedChange::Cutoff { user_id, .. }] if user_id == "d"),
        "{rest:?}"
    );
    {
        use token_sidecar::clock::Clock;
        assert_eq!(
            rest.now_ms,
            app.clock.now_ms(),
            "stamped on the fleet's clock"
        );
    }
    let empty = page(&read(&app, &format!("?after={}", rest.next), Some(FEED)).await);
    assert!(empty.changes.is_empty() && !empty.more && empty.next == rest.next);

    for bad in [
        "?after=-1",
        "?after=x",
        "?limit=0",
        "?limit=10001",
        "?after=1&after=2",
        "?anchor=zz",
    ] {
        let r = read(&app, bad, Some(FEED)).await;
        assert_eq!(r.status, 400, "{bad}: {r:?}");
    }
}

/// A rotated feed credential takes effect on the reload (SIGHUP or the periodic one), like the
/// admin and introspection files.
#[tokio::test]
async fn a_rotated_feed_credential_is_reloaded() {
    let (app, dir) = app(Backend::Sqlite, true).await;
    const NEXT: &str = "the-next-feed-credential-000";
    std::fs::write(dir.path().join("feed"), format!("{NEXT}\n")).expect("rotate");
    assert_eq!(app.reload_secrets(), Vec::<String>::new());
    assert_eq!(read(&app, "", Some(NEXT)).await.status, 200);
    assert_eq!(
        read(&app, "", Some(FEED)).await.status,
        401,
        "the old one is gone"
    );
}

#[tokio::test]
async fn on_a_loopback_listener_with_no_credential_configured_the_feed_is_open() {
    let (app, _dir) = app(Backend::Sqlite, false).await;
    assert_eq!(read(&app, "", None).await.status, 200);
}

#[tokio::test]
async fn a_reader_on_another_history_is_told_to_start_again() {
    crate::require!(Postgres);
    let (app, _dir) = app(Backend::Postgres, true).await;
    let t = app.issue("a").await;
    app.revoke(Target::Jti(t.jti.clone()))
        .await
        .expect("revoke");
    let first = page(&read(&app, "", Some(FEED)).await);
    let anchor = first
        .anchor
        .clone()
        .expect("PostgreSQL keeps a history chain");
    let next = format!("?after={}&anchor={anchor}", first.next);
    assert_eq!(read(&app, &next, Some(FEED)).await.status, 200);
    let other = format!("?after={}&anchor={}", first.next, "00".repeat(16));
    let r = read(&app, &other, Some(FEED)).await;
    assert_eq!(r.status, 409, "{r:?}");
    assert!(r.body.contains("history_changed"), "{r:?}");
    let ahead = format!("?after={}&anchor={anchor}", first.next + 1_000);
    assert_eq!(
        read(&app, &ahead, Some(FEED)).await.status,
        409,
        "a head below the reader"
    );
}
