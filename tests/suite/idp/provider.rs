//! A real OpenID Provider, panva's `oidc-provider` (npm, OpenID Certified; `scripts/lib.sh`
//! installs it under `target/oidc`), run by `tests/idp/provider.mjs`: a user logs in with the
//! authorization-code flow, the service issues our token with the ID token's `sid`, the user
//! logs out at the provider (`/session/end` with `id_token_hint`), and the provider's
//! back-channel logout token (fetched keys: its `/jwks` URL) revokes our token on every
//! instance within the propagation bound.
use std::time::Duration;

use token_sidecar::api::pb;
use token_sidecar::clock::{ManualClock, wall_ms};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

use super::issue_for;
use crate::common::{Backend, Settings, eventually, free_port};

const CLIENT: &str = "token-app";

#[tokio::test]
async fn logging_out_at_a_real_openid_provider_revokes_our_token_on_every_instance() {
    crate::require!(Postgres, OidcProvider);
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
    let issuer = format!("http://127.0.0.1:{port}");
    // The provider stamps logout tokens with the real time: the sidecars' clock starts there.
    let clock = ManualClock::new(wall_ms());
    let receiving = || {
        Settings::new(Backend::Postgres)
            .clock(clock.clone())
            .arg("--http-listen", "127.0.0.1:0")
            .arg("--oidc-issuer", &format!("{issuer}={issuer}/jwks"))
            .arg("--oidc-client-id", CLIENT)
    };
    let a = receiving().spawn().await;
    let b = receiving().sharing(&a).spawn().await;
    let backchannel = format!(
        "http://{}/oidc/backchannel-logout",
        a.http_addr.expect("http listener")
    );

    let mut node = tokio::process::Command::new("node")
        .arg(format!(
            "{}/tests/idp/provider.mjs",
            env!("CARGO_MANIFEST_DIR")
        ))
        .env("OIDC_PROVIDER_MODULE", format!("file://{module}"))
        .env("PORT", port.to_string())
        .env("BACKCHANNEL_URI", &backchannel)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("node runs tests/idp/provider.mjs");
    let mut stdin = node.stdin.take().expect("stdin");
    let mut lines = BufReader::new(node.stdout.take().expect("stdout")).lines();
    // The script's own lines start with a word of ours; the provider's warnings are skipped.
    let mut next_line = async |prefix: &str| {
        let wanted = async {
            loop {
                let line = lines.next_line().await.expect("read").expect("a line");
                if let Some(rest) = line.strip_prefix(prefix) {
                    return rest.trim().to_owned();
                }
            }
        };
        tokio::time::timeout(Duration::from_secs(30), wanted)
            .await
            .expect("the provider script answers within 30 s")
    };
    let login: serde_json::Value =
        serde_json::from_str(&next_line("login").await).expect("the ID token's sub and sid");
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

    stdin.write_all(b"logout\n").await.expect("ask for logout");
    assert_eq!(next_line("logout").await, "done");
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
    drop(stdin);
    let _ = node.kill().await;
}
