//! Nothing a stranger sends spends what an identity provider needs (SPEC §13, issue 39): made-up
//! `kid`s cannot freeze a key rotation, junk cannot rate-limit real logouts away, a ban has an
//! owner, and subjects belong to their issuer. Real events are signed by PyJWT
//! (`tests/idp/sign.py`); the strangers' requests are built by hand, as a stranger would.
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde_json::{Value, json};
use token_sidecar::api::pb;
use token_sidecar::clock::Clock;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::{
    AUDIENCE, CLIENT_ID, ISSUER, RISC, SEC, issue_for, keycloak_logout, logout, now_s, push, rs256,
    set, sign, two_receivers, write_jwks,
};
use crate::common::{Backend, HttpResponse, Settings, TestApp, assert_status};

/// A compact JWS with a made-up header and no valid signature: what anyone can send.
fn forged(header: Value, claims: &Value) -> String {
    let part = |v: &Value| URL_SAFE_NO_PAD.encode(v.to_string());
    format!(
        "{}.{}.{}",
        part(&header),
        part(claims),
        URL_SAFE_NO_PAD.encode(b"not a signature")
    )
}

/// POSTs a logout form from the source address `from` (a loopback alias); the status only.
async fn post_from(
    from: IpAddr,
    to: SocketAddr,
    path: &str,
    content_type: &str,
    body: &str,
) -> u16 {
    let socket = tokio::net::TcpSocket::new_v4().expect("a socket");
    socket
        .bind(SocketAddr::new(from, 0))
        .expect("bind a loopback alias");
    let Ok(mut stream) = socket.connect(to).await else {
        return 0;
    };
    let request = format!(
        "POST {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\nContent-Type: \
         {content_type}\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    if stream.write_all(request.as_bytes()).await.is_err() {
        return 0;
    }
    let mut head = [0u8; 12];
    match tokio::time::timeout(
        std::time::Duration::from_secs(10),
        stream.read_exact(&mut head),
    )
    .await
    {
        Ok(Ok(_)) => std::str::from_utf8(&head[9..12])
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(0),
        _ => 0,
    }
}

/// Sends `requests` from `sources` in a loop until stopped; counts answers by status.
struct Flood {
    stop: Arc<AtomicBool>,
    sent: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl Flood {
    fn start(
        to: SocketAddr,
        sources: Vec<IpAddr>,
        make: impl Fn(usize) -> String + Send + 'static,
    ) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let sent = Arc::new(AtomicUsize::new(0));
        let task = tokio::spawn({
            let (stop, sent) = (stop.clone(), sent.clone());
            async move {
                let mut n = 0usize;
                // Bounded: at most 20,000 requests, whatever the test does.
                while !stop.load(Ordering::Relaxed) && n < 20_000 {
                    let from = sources[n % sources.len()];
                    let body = format!("logout_token={}", make(n));
                    post_from(
                        from,
                        to,
                        "/oidc/backchannel-logout",
                        "application/x-www-form-urlencoded",
                        &body,
                    )
                    .await;
                    sent.fetch_add(1, Ordering::Relaxed);
                    n += 1;
                }
            }
        });
        Self { stop, sent, task }
    }

    /// Waits (bounded) until the flood has sent `more` requests beyond what it had.
    async fn sends(&self, more: usize) {
        let target = self.sent.load(Ordering::Relaxed) + more;
        crate::common::eventually(
            std::time::Duration::from_secs(10),
            "the flood sends",
            || {
                let sent = self.sent.clone();
                async move { sent.load(Ordering::Relaxed) >= target }
            },
        )
        .await;
    }

    async fn stop(self) -> usize {
        self.stop.store(true, Ordering::Relaxed);
        let _ = self.task.await;
        self.sent.load(Ordering::Relaxed)
    }
}

/// Sends a real event until it is decided: a 503 is retried after its `Retry-After` (the
/// provider's own behaviour), moving the test clock by as much. Never 400, never 429.
async fn deliver(app: &TestApp, send: impl AsyncFn() -> HttpResponse) -> u16 {
    for _ in 0..5 {
        let answer = send().await;
        match answer.status {
            503 => {
                let wait: i64 = answer
                    .header("retry-after")
                    .and_then(|v| v.parse().ok())
                    .expect("a 503 says when to retry");
                assert!((1..=5).contains(&wait), "{answer:?}");
                app.clock.advance_ms(wait * SEC);
            }
            status => return status,
        }
    }
    panic!("still 503 after five retries");
}

#[tokio::test]
async fn made_up_kids_cannot_freeze_a_key_rotation() {
    crate::require!(Postgres, PythonJwt);
    let (a, b, jwks) = two_receivers(Backend::Postgres).await;
    let to = a.http_addr.expect("http");
    let token = issue_for(&a, "alice", "kc-rotated").await.expect("issue");
    // A stranger sends made-up kids with a fresh (future) iat, as fast as it can, for the
    // whole test: each one asks for a read of the provider's key set.
    let clock = a.clock.clone();
    let flood = Flood::start(to, vec![IpAddr::from([127, 0, 0, 1])], move |n| {
        let now = clock.now_ms() / 1000;
        forged(
            json!({"alg": "RS256", "kid": format!("made-up-{n}"), "typ": "logout+jwt"}),
            &keycloak_logout(now + 30, Some("x"), None),
        )
    });
    for _ in 0..5 {
        flood.sends(5).await;
        a.clock.advance_ms(SEC);
    }
    // The provider rotates to a new key and signs its real logout with it.
    write_jwks(&jwks, &[("k1", "rsa.pem"), ("k2", "p256.pem")]);
    a.clock.advance_ms(SEC);
    let real = sign(
        "ES256",
        Some("p256.pem"),
        json!({"kid": "k2", "typ": "logout+jwt"}),
        &keycloak_logout(now_s(&a), Some("kc-rotated"), Some("alice")),
    );
    let status = deliver(&a, async || logout(&a, &real).await).await;
    let sent = flood.stop().await;
    assert_eq!(status, 200, "the rotated provider's logout is acted on");
    assert!(sent > 20, "the stranger kept sending ({sent})");
    b.sync_now().await;
    for app in [&a, &b] {
        assert_eq!(app.verdict(&token).await, pb::Reason::TokenRevoked);
    }
    // A made-up kid issued before a read is final.
    let old = forged(
        json!({"alg": "RS256", "kid": "never", "typ": "logout+jwt"}),
        &keycloak_logout(now_s(&a) - 10, Some("x"), None),
    );
    assert_eq!(logout(&a, &old).await.status, 400);
}

#[tokio::test]
async fn junk_from_one_or_many_addresses_never_rate_limits_a_real_logout() {
    crate::require!(Postgres, PythonJwt);
    let (a, _b, _) = two_receivers(Backend::Postgres).await;
    let to = a.http_addr.expect("http");
    let now = now_s(&a);
    // Junk of every kind: not a token, a made-up kid, and a known kid with a forged signature
    // (what passes the cheap checks and is charged to its source).
    let junk = move |n: usize| match n % 3 {
        0 => "x".to_owned(),
        1 => forged(
            json!({"alg": "RS256", "kid": format!("junk-{n}")}),
            &keycloak_logout(now + 30, Some("j"), None),
        ),
        _ => forged(
            json!({"alg": "RS256", "kid": "k1"}),
            &keycloak_logout(now, Some("j"), None),
        ),
    };
    let one = vec![IpAddr::from([127, 0, 0, 1])];
    let many: Vec<IpAddr> = (2..22).map(|i| IpAddr::from([127, 0, 0, i])).collect();
    for (round, sources) in [one, many].into_iter().enumerate() {
        let flood = Flood::start(to, sources, junk);
        flood.sends(30).await;
        let mut tokens = Vec::new();
        for i in 0..10 {
            let sid = format!("kc-junk-{round}-{i}");
            let ours = issue_for(&a, "junk-victim", &sid).await.expect("issue");
            let real = rs256(
                "logout+jwt",
                &keycloak_logout(now_s(&a), Some(&sid), Some("junk-victim")),
            );
            // The real provider sends from the same address as the junk.
            let form = format!("logout_token={real}");
            let status = post_from(
                IpAddr::from([127, 0, 0, 1]),
                to,
                "/oidc/backchannel-logout",
                "application/x-www-form-urlencoded",
                &form,
            )
            .await;
            assert_eq!(status, 200, "real logout {i}");
            tokens.push(ours);
        }
        let sent = flood.stop().await;
        assert!(sent > 30, "the junk kept coming ({sent})");
        for token in &tokens {
            assert_eq!(a.verdict(token).await, pb::Reason::TokenRevoked);
        }
    }
    // Forged signatures from one source beyond its budget are answered 429; cheap refusals
    // never are (they cost nothing to refuse). The budgets refill on the (test) clock.
    a.clock.advance_ms(10 * SEC);
    let mut statuses = std::collections::BTreeMap::new();
    for n in 0..60 {
        let forgery = forged(
            json!({"alg": "RS256", "kid": "k1"}),
            &keycloak_logout(now_s(&a), Some("f"), None),
        );
        let status = post_from(
            IpAddr::from([127, 0, 0, 77]),
            to,
            "/oidc/backchannel-logout",
            "application/x-www-form-urlencoded",
            &format!("logout_token={forgery}"),
        )
        .await;
        *statuses.entry(status).or_insert(0) += 1;
        let junk = post_from(
            IpAddr::from([127, 0, 0, 77]),
            to,
            "/oidc/backchannel-logout",
            "application/x-www-form-urlencoded",
            &format!("logout_token=x{n}"),
        )
        .await;
        assert_eq!(junk, 400);
    }
    assert!(statuses.get(&429).is_some_and(|n| *n > 0), "{statuses:?}");
    assert!(statuses.get(&400).is_some_and(|n| *n > 0), "{statuses:?}");
}

async fn risc(app: &TestApp, event: &str, user: &str) -> u16 {
    let claims = set(
        now_s(app),
        &format!("{RISC}{event}"),
        json!({"format": "iss_sub", "iss": ISSUER, "sub": user}),
    );
    push(app, &rs256("secevent+jwt", &claims)).await.status
}

#[tokio::test]
async fn a_ban_is_lifted_only_by_its_owner_or_the_operator() {
    crate::require!(Postgres, PythonJwt);
    let (a, b, _) = two_receivers(Backend::Postgres).await;
    let ignored = |app: &TestApp| app.counter("idp_events_ignored_total{why=\"not_owner\"}");

    // The operator's ban: a transmitter's account-enabled leaves it, counted as not_owner.
    let until = a.clock.now_ms() + 3600 * SEC;
    a.revoke_user("fraudster", Some(until)).await;
    let status = a.user_status("fraudster").await;
    assert!(status.banned);
    assert!(
        !status.banned_by.is_empty() && !status.banned_by.starts_with("ssf:"),
        "{status:?}"
    );
    assert_eq!(risc(&a, "account-enabled", "fraudster").await, 202);
    b.sync_now().await;
    assert!(
        a.user_status("fraudster").await.banned,
        "the operator's ban stays"
    );
    assert_eq!(ignored(&a), 1);
    let refused = a
        .client
        .clone()
        .issue(pb::IssueRequest {
            user_id: "fraudster".into(),
            ..Default::default()
        })
        .await
        .expect_err("still banned");
    assert_status(
        &refused,
        tonic::Code::PermissionDenied,
        "REASON_USER_BANNED",
    );

    // The transmitter's own ban: its account-enabled lifts it.
    assert_eq!(risc(&a, "account-disabled", "mallory").await, 202);
    let status = b.user_status("mallory").await;
    assert!(status.banned);
    assert_eq!(status.banned_by, format!("ssf:{ISSUER}"));
    a.clock.advance_ms(SEC);
    assert_eq!(risc(&b, "account-enabled", "mallory").await, 202);
    // The other instance answers once the change reached it (the feed, not a race).
    a.sync_now().await;
    assert!(
        !a.user_status("mallory").await.banned,
        "lifted by its owner"
    );
    assert_eq!(ignored(&b), 0);

    // Another party's ban (the same provider's back-channel identity is another owner), then
    // the operator's LiftBan lifts the transmitter's ban.
    a.clock.advance_ms(SEC);
    assert_eq!(risc(&a, "account-disabled", "trudy").await, 202);
    assert!(a.lift_ban("trudy").await, "the operator lifts any ban");
    b.sync_now().await;
    assert!(!b.user_status("trudy").await.banned);
}

/// Two providers, each naming its own users: `a:` + subject and `b:` + subject.
async fn two_providers() -> (TestApp, std::path::PathBuf) {
    let dir = tempfile::tempdir().expect("dir").keep();
    let jwks = dir.join("jwks.json");
    write_jwks(&jwks, &[("k1", "rsa.pem")]);
    let app = Settings::new(Backend::Postgres)
        .arg("--http-listen", "127.0.0.1:0")
        .arg(
            "--oidc-issuer",
            &format!("{ISSUER}={},subject-prefix=a:", jwks.display()),
        )
        .arg(
            "--oidc-issuer",
            &format!("{OTHER}={},subject-prefix=b:", jwks.display()),
        )
        .arg("--oidc-client-id", CLIENT_ID)
        .arg(
            "--ssf-transmitter",
            &format!("{ISSUER}={},subject-prefix=a:", jwks.display()),
        )
        .arg("--ssf-audience", AUDIENCE)
        .spawn()
        .await;
    (app, jwks)
}

const OTHER: &str = "https://other-idp.test";

#[tokio::test]
async fn several_providers_each_name_their_own_users() {
    crate::require!(Postgres, PythonJwt);
    let dir = tempfile::tempdir().expect("dir");
    let jwks = dir.path().join("jwks.json");
    write_jwks(&jwks, &[("k1", "rsa.pem")]);
    // Two providers without prefixes would name each other's users: refused at start.
    let refused = Settings::new(Backend::Postgres)
        .arg("--http-listen", "127.0.0.1:0")
        .arg("--oidc-issuer", &format!("{ISSUER}={}", jwks.display()))
        .arg("--oidc-issuer", &format!("{OTHER}={}", jwks.display()))
        .arg("--oidc-client-id", CLIENT_ID)
        .try_spawn()
        .await
        .err()
        .expect("refused");
    assert!(refused.to_string().contains("subject prefix"), "{refused}");

    let (app, _jwks) = two_providers().await;
    let of_a = issue_for(&app, "a:alice", "s1").await.expect("a's alice");
    let of_b = issue_for(&app, "b:alice", "s1").await.expect("b's alice");
    let unscoped = issue_for(&app, "carol", "s1")
        .await
        .expect_err("no provider's user");
    assert_status(
        &unscoped,
        tonic::Code::InvalidArgument,
        "INVALID_IDP_SESSION_ID",
    );
    // A's logout of its session s1 ends a:alice's session only.
    let logout_a = rs256(
        "logout+jwt",
        &keycloak_logout(now_s(&app), Some("s1"), None),
    );
    assert_eq!(logout(&app, &logout_a).await.status, 200);
    assert_eq!(app.verdict(&of_a).await, pb::Reason::TokenRevoked);
    assert_eq!(app.verdict(&of_b).await, pb::Reason::Unspecified);
    // B logs alice out everywhere: b:alice only.
    app.clock.advance_ms(SEC);
    let mut claims = keycloak_logout(now_s(&app), None, Some("alice"));
    claims["iss"] = json!(OTHER);
    assert_eq!(
        logout(&app, &rs256("logout+jwt", &claims)).await.status,
        200
    );
    assert_eq!(app.verdict(&of_b).await, pb::Reason::UserRevoked);
    let fresh_a = issue_for(&app, "a:alice", "s2")
        .await
        .expect("a's alice unaffected");
    assert_eq!(app.verdict(&fresh_a).await, pb::Reason::Unspecified);
    // A transmitter naming another issuer's subject is refused, and nothing is stored.
    let rows = app.count_rows("audit_log").await;
    let claims = set(
        now_s(&app),
        "https://schemas.openid.net/secevent/caep/event-type/credential-change",
        json!({"format": "iss_sub", "iss": OTHER, "sub": "alice"}),
    );
    let answer = push(&app, &rs256("secevent+jwt", &claims)).await;
    assert_eq!(answer.status, 400, "{answer:?}");
    assert_eq!(app.count_rows("audit_log").await, rows, "nothing stored");
    assert_eq!(app.verdict(&fresh_a).await, pb::Reason::Unspecified);
}
