//! A provider's access token through a real Envoy 1.40 (SPEC §16): with gRPC ext_authz (Check)
//! and with the Wasm filter judging from its own copy (the trusted issuers' keys read from the
//! sidecar's `/trusted-issuers`). Allowed with `x-user-id` = prefix + sub and `x-token-issuer`;
//! a back-channel logout of its session at the provider refuses it through both, another
//! session of the same user still passes. Logout-to-refusal through the filter is measured.
use std::time::{Duration, Instant};

use super::access_tokens::{access_claims, now_s, signed, trusting};
use super::{ISSUER, keycloak_logout, logout};
use crate::proxies::{Proxy, get, last_seen, refused_after, start, upstream, wait_ready};

#[tokio::test]
async fn a_providers_token_is_judged_by_ext_authz_and_the_filter_and_dies_at_its_logout() {
    crate::require!(PythonJwt, Envoy, WasmFilter);
    let dir = tempfile::tempdir().expect("dir");
    let app = trusting(dir.path()).await;
    let (app_addr, seen) = upstream().await;
    let ext_authz = start(Proxy::EnvoyGrpc, app_addr.port(), app.addr.port());
    let filter = start(
        Proxy::EnvoyWasm,
        app_addr.port(),
        app.http_addr.expect("http").port(),
    );
    wait_ready(&ext_authz, Proxy::EnvoyGrpc).await;
    wait_ready(&filter, Proxy::EnvoyWasm).await;

    const SESSIONS: usize = 21;
    let tokens: Vec<String> = (0..SESSIONS)
        .map(|i| signed(&access_claims(&app, "f3a1", &format!("s{i}"))))
        .collect();
    let bearer = |t: &str| format!("Bearer {t}");
    let first = bearer(&tokens[0]);
    // The filter has read the feed and the trusted issuers once.
    crate::common::eventually(
        Duration::from_secs(20),
        "the filter admits the provider's token",
        || async { get(&filter, &[("authorization", &first)]).await.status == 200 },
    )
    .await;
    for proxy in [&ext_authz, &filter] {
        let r = get(
            proxy,
            &[("authorization", &first), ("x-token-issuer", "forged")],
        )
        .await;
        assert_eq!(r.status, 200, "{r:?}");
        let headers = last_seen(&seen);
        assert_eq!(headers.get("x-user-id"), Some(&vec!["kc:f3a1".to_owned()]));
        assert_eq!(
            headers.get("x-token-issuer"),
            Some(&vec![ISSUER.to_owned()])
        );
    }

    // Each logout at the provider, timed until the filter refuses (ext_authz asks the sidecar
    // on every request: refused at once).
    let mut took = Vec::new();
    for (i, token) in tokens.iter().enumerate().skip(1) {
        let auth = bearer(token);
        let logout_token = super::rs256(
            "logout+jwt",
            &keycloak_logout(now_s(&app), Some(&format!("s{i}")), Some("f3a1")),
        );
        let started = Instant::now();
        assert_eq!(logout(&app, &logout_token).await.status, 200);
        took.push(refused_after(&filter, &auth, started).await);
        let r = get(&ext_authz, &[("authorization", &auth)]).await;
        assert_eq!(r.status, 401, "{r:?}");
    }
    took.sort();
    let (p50, p99) = (took[took.len() / 2], took[took.len() - 1]);
    println!(
        "back-channel logout to refusal of the provider's token through Envoy's filter: \
         p50 {p50:?}, max {p99:?} ({} logouts)",
        took.len()
    );
    assert!(p99 < Duration::from_millis(500), "max {p99:?}");
    // The first session was not logged out: still allowed through both.
    for proxy in [&ext_authz, &filter] {
        assert_eq!(get(proxy, &[("authorization", &first)]).await.status, 200);
    }
}
