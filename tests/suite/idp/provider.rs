//! A real OpenID Provider, panva's `oidc-provider` (npm, OpenID Certified; `scripts/lib.sh`
//! installs it under `target/oidc`), run by `tests/idp/provider.mjs`: a user logs in with the
//! authorization-code flow, the service issues our token with the ID token's `sid`, the user
//! logs out at the provider (`/session/end` with `id_token_hint`), and the provider's
//! back-channel logout token (fetched keys: its `/jwks` URL) revokes our token on every
//! instance within the propagation bound. With resource indicators the provider mints its own
//! JWT access tokens, which a sidecar trusting it (keys by discovery) verifies — and refuses
//! once the provider logs their session out (SPEC §16).
use std::time::{Duration, Instant};

use token_sidecar::api::pb;
use token_sidecar::clock::{ManualClock, wall_ms};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader, Lines};
use tokio::process::{Child, ChildStdin, ChildStdout};

use super::issue_for;
use crate::common::{Backend, Settings, eventually, free_port};

const CLIENT: &str = "token-app";

/// The provider script, driven through its stdin and stdout.
struct Provider {
    node: Child,
    stdin: ChildStdin,
    lines: Lines<BufReader<ChildStdout>>,
    issuer: String,
}

impl Provider {
    fn start(backchannel: &str, resource: Option<&str>) -> Self {
        let module = format!(
            "{}/target/oidc/node_modules/oidc-provider/lib/index.js",
            env!("CARGO_MANIFEST_DIR")
        );
        assert!(
            std::path::Path::new(&module).exists(),
            "oidc-provider is not installed: npm install --prefix target/oidc oidc-provider \
             (scripts/test does it)"
        );
        let port = free_port();
        let mut command = tokio::process::Command::new("node");
        command
            .arg(format!(
                "{}/tests/idp/provider.mjs",
                env!("CARGO_MANIFEST_DIR")
            ))
            .env("OIDC_PROVIDER_MODULE", format!("file://{module}"))
            .env("PORT", port.to_string())
            .env("BACKCHANNEL_URI", backchannel)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .kill_on_drop(true);
        if let Some(resource) = resource {
            command.env("RESOURCE", resource);
        }
        let mut node = command.spawn().expect("node runs tests/idp/provider.mjs");
        let stdin = node.stdin.take().expect("stdin");
        let lines = BufReader::new(node.stdout.take().expect("stdout")).lines();
        Self {
            node,
            stdin,
            lines,
            issuer: format!("http://127.0.0.1:{port}"),
        }
    }

    /// The script's next line starting with `prefix` (its own lines start with a word of ours;
    /// the provider's warnings are skipped).
    async fn next_line(&mut self, prefix: &str) -> String {
        let wanted = async {
            loop {
                let line = self.lines.next_line().await.expect("read").expect("a line");
                if let Some(rest) = line.strip_prefix(prefix) {
                    return rest.trim().to_owned();
                }
            }
        };
        tokio::time::timeout(Duration::from_secs(30), wanted)
            .await
            .expect("the provider script answers within 30 s")
    }

    /// The next login's ID-token `sub` and `sid`, and the access token when one was minted.
    async fn login(&mut self) -> serde_json::Value {
        serde_json::from_str(&self.next_line("login").await).expect("the login line")
    }

    async fn send(&mut self, command: &str) {
        self.stdin
            .write_all(format!("{command}\n").as_bytes())
            .await
            .expect("write to the script");
    }

    async fn stop(mut self) {
        drop(self.stdin);
        let _ = self.node.kill().await;
    }
}

#[tokio::test]
async fn logging_out_at_a_real_openid_provider_revokes_our_token_on_every_instance() {
    crate::require!(Postgres, OidcProvider);
    let http = free_port();
    let mut provider = Provider::start(
        &format!("http://127.0.0.1:{http}/oidc/backchannel-logout"),
        None,
    );
    let issuer = provider.issuer.clone();
    // The provider stamps logout tokens with the real time: the sidecars' clock starts there.
    let clock = ManualClock::new(wall_ms());
    let receiving = |listen: &str| {
        Settings::new(Backend::Postgres)
            .clock(clock.clone())
            .arg("--http-listen", listen)
            .arg("--oidc-issuer", &format!("{issuer}={issuer}/jwks"))
            .arg("--oidc-client-id", CLIENT)
    };
    let a = receiving(&format!("127.0.0.1:{http}")).spawn().await;
    let b = receiving("127.0.0.1:0").sharing(&a).spawn().await;

    let login = provider.login().await;
    let (sub, sid) = (
        login["sub"].as_str().expect("sub"),
        login["sid"]
            .as_str()
            .expect("a sid (backchannel_logout_session_required)"),
    );
    let token = issue_for(&a, sub, sid)
        .await
        .expect("issue for the IdP session");
    let other = issue_for(&a, sub, "another-idp-session")
        .await
        .expect("issue");
    assert_eq!(b.verdict(&token).await, pb::Reason::Unspecified);

    provider.send("logout").await;
    assert_eq!(provider.next_line("logout").await, "done");
    for app in [&a, &b] {
        eventually(
            Duration::from_secs(5),
            "the logout reaches every instance",
            || async { app.verdict(&token).await == pb::Reason::TokenRevoked },
        )
        .await;
        assert_eq!(app.verdict(&other).await, pb::Reason::Unspecified);
    }
    let trail = super::changes(&a, sub, 0, "").await.changes;
    assert_eq!(trail.len(), 1, "{trail:?}");
    assert_eq!(trail[0].who, format!("backchannel:{issuer}"));
    assert_eq!(trail[0].target, sid);
    provider.stop().await;
}

/// The issue's own scenario: the provider's JWT access tokens through Envoy — gRPC ext_authz to
/// Check, and the Wasm filter judging from its copy — allowed with `x-user-id` = prefix + sub;
/// each of 20 logouts at the provider (its `/session/end`, its own back-channel delivery) timed
/// until both refuse that session's token; the session not logged out still allowed.
#[tokio::test]
async fn a_real_providers_own_access_token_dies_at_its_logout_through_envoy() {
    crate::require!(OidcProvider, Envoy, WasmFilter);
    use crate::proxies::{Proxy, get, last_seen, refused_after, start, upstream, wait_ready};
    const RESOURCE: &str = "https://orders.api.test";
    const SESSIONS: usize = 21;
    let http = free_port();
    let mut provider = Provider::start(
        &format!("http://127.0.0.1:{http}/oidc/backchannel-logout"),
        Some(RESOURCE),
    );
    let issuer = provider.issuer.clone();
    let mut logins = vec![provider.login().await];
    for _ in 1..SESSIONS {
        provider.send("login").await;
        logins.push(provider.login().await);
    }
    // Keys by discovery (plain http: a loopback issuer); the provider's logouts too, under the
    // same prefix.
    let app = Settings::new(Backend::Sqlite)
        .clock(ManualClock::new(wall_ms()))
        .arg("--http-listen", &format!("127.0.0.1:{http}"))
        .arg(
            "--trusted-issuer",
            &format!("{issuer}=discovery,audience={RESOURCE},subject-prefix=op:"),
        )
        .arg(
            "--oidc-issuer",
            &format!("{issuer}={issuer}/jwks,subject-prefix=op:"),
        )
        .arg("--oidc-client-id", CLIENT)
        .spawn()
        .await;
    let bearer = |i: usize| {
        format!(
            "Bearer {}",
            logins[i]["access_token"]
                .as_str()
                .expect("a JWT access token (resource indicators)")
        )
    };
    let token = |i: usize| bearer(i)["Bearer ".len()..].to_owned();
    for (i, login) in logins.iter().enumerate() {
        let answer = app.verify(&token(i)).await;
        assert!(answer.valid, "{answer:?}");
        let claims = answer.claims.expect("claims");
        assert_eq!(claims.issuer, issuer);
        assert_eq!(
            claims.idp_session_id,
            format!("op:{}", login["sid"].as_str().expect("sid"))
        );
    }
    let user = format!("op:{}", logins[0]["sub"].as_str().expect("sub"));
    let (app_addr, seen) = upstream().await;
    let ext_authz = start(Proxy::EnvoyGrpc, app_addr.port(), app.addr.port());
    let filter = start(Proxy::EnvoyWasm, app_addr.port(), http);
    wait_ready(&ext_authz, Proxy::EnvoyGrpc).await;
    wait_ready(&filter, Proxy::EnvoyWasm).await;
    let first = bearer(0);
    eventually(
        Duration::from_secs(20),
        "the filter admits the provider's token",
        || async { get(&filter, &[("authorization", &first)]).await.status == 200 },
    )
    .await;
    for proxy in [&ext_authz, &filter] {
        assert_eq!(get(proxy, &[("authorization", &first)]).await.status, 200);
        let headers = last_seen(&seen);
        assert_eq!(headers.get("x-user-id"), Some(&vec![user.clone()]));
        assert_eq!(headers.get("x-token-issuer"), Some(&vec![issuer.clone()]));
    }
    let mut took = Vec::new();
    for i in 1..SESSIONS {
        let auth = bearer(i);
        provider.send(&format!("logout {i}")).await;
        let started = Instant::now();
        assert_eq!(provider.next_line("logout").await, "done");
        refused_after(&filter, &auth, started).await;
        let r = get(&ext_authz, &[("authorization", &auth)]).await;
        assert_eq!(r.status, 401, "{r:?}");
        took.push(started.elapsed());
    }
    took.sort();
    let (p50, p99) = (took[took.len() / 2], took[took.len() * 99 / 100]);
    println!(
        "the provider's logout to the refusal of its access token through Envoy (ext_authz and \
         the filter): p50 {p50:?}, p99 {p99:?} ({} logouts)",
        took.len()
    );
    assert!(p99 < Duration::from_millis(250), "p99 {p99:?}");
    for proxy in [&ext_authz, &filter] {
        assert_eq!(get(proxy, &[("authorization", &first)]).await.status, 200);
    }
    // The provider's token is not refreshed here.
    let refused = app
        .refresh(&token(0))
        .await
        .expect_err("not ours to refresh");
    assert_eq!(refused.code(), tonic::Code::InvalidArgument);
    provider.stop().await;
}
