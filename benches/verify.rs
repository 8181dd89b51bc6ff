//! The in-process verify path (decode + policy + caches, warm) against a bare
//! `jsonwebtoken::decode` of the same token, per algorithm; a trusted issuer's RS256 token
//! against one of ours (SPEC §16); and what one change announcement costs an instance: sealing
//! it (the writer) and opening it (every receiver), MAC included; and Verify of a DPoP-bound
//! token with its proof against an unbound one (SPEC §15).
//!
//!   cargo bench --bench verify
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;
use token_sidecar::ids::UserId;

use criterion::{Criterion, criterion_group, criterion_main};
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use token_sidecar::authority::{IssueRequest, TokenAuthority};
use token_sidecar::clock::SystemClock;
use token_sidecar::metrics::CoreMetrics;
use token_sidecar::policy::RevocationPolicy;
use token_sidecar::revocations::{CacheSettings, OutageMode, Revocations};
use token_sidecar::store::{self, RevocationStore};
use token_sidecar::token::{Audience, IssuerTrust, KeySet, KeySpec, TokenCodec, TrustedIssuers};

struct Case {
    alg: &'static str,
    private: &'static str,
    public: &'static str,
    algorithm: Algorithm,
}

const CASES: &[Case] = &[
    Case {
        alg: "HS256",
        private: "",
        public: "",
        algorithm: Algorithm::HS256,
    },
    Case {
        alg: "RS256",
        private: "rsa.pem",
        public: "rsa.pub.pem",
        algorithm: Algorithm::RS256,
    },
    Case {
        alg: "ES256",
        private: "p256.pem",
        public: "p256.pub.pem",
        algorithm: Algorithm::ES256,
    },
    Case {
        alg: "EdDSA",
        private: "ed25519.pem",
        public: "ed25519.pub.pem",
        algorithm: Algorithm::EdDSA,
    },
];

const SECRET: [u8; 32] = [7u8; 32];

fn fixture(name: &str) -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/keys")
        .join(name)
}

async fn authority(case: &Case, dir: &Path) -> Arc<TokenAuthority> {
    authority_trusting(case, dir, TrustedIssuers::default()).await
}

async fn authority_trusting(
    case: &Case,
    dir: &Path,
    trusted: TrustedIssuers,
) -> Arc<TokenAuthority> {
    let path = if case.private.is_empty() {
        let p = dir.join("hs.key");
        std::fs::write(&p, SECRET).unwrap_or_else(|e| panic!("write key: {e}"));
        p
    } else {
        fixture(case.private)
    };
    let keys = KeySet::load(
        &[KeySpec {
            kid: "k".into(),
            alg: case.alg.into(),
            path,
        }],
        None,
    )
    .unwrap_or_else(|e| panic!("keys: {e}"));
    let url = format!("sqlite:{}", dir.join(format!("{}.db", case.alg)).display());
    let store: Arc<dyn RevocationStore> = store::open(&url)
        .await
        .unwrap_or_else(|e| panic!("store: {e}"));
    store
        .migrate()
        .await
        .unwrap_or_else(|e| panic!("migrate: {e}"));
    let settings = CacheSettings {
        cutoff_ttl: Duration::from_secs(300),
        cutoff_capacity: 100_000,
        denylist_filter: true,
        filter_expected_items: 1_000_000,
        filter_fp_rate: 0.01,
        max_staleness: Duration::from_secs(10),
        on_outage: OutageMode::FailClosed,
    };
    let clock = Arc::new(SystemClock);
    let revocations = Arc::new(Revocations::new(
        store,
        clock.clone(),
        Arc::new(CoreMetrics::new()),
        settings,
    ));
    revocations
        .load()
        .await
        .unwrap_or_else(|e| panic!("load: {e}"));
    let policy = RevocationPolicy {
        token_ttl_ms: 3_600_000,
        refresh_window_ms: 7 * 86_400_000,
        leeway_ms: 0,
        refresh_reuse_interval_ms: None,
        max_clock_skew_ms: 500,
        audit_retention_ms: 90 * 86_400_000,
    };
    let codec =
        TokenCodec::new(keys, "token-sidecar".into(), None).with_trusted_issuers(Arc::new(trusted));
    Arc::new(TokenAuthority::new(codec, policy, revocations, clock))
}

/// A token of ours for `bench-user`.
fn issue(rt: &tokio::runtime::Runtime, authority: &TokenAuthority) -> String {
    rt.block_on(authority.issue(IssueRequest {
        user_id: UserId::parse("bench-user").unwrap_or_else(|e| panic!("user id: {e}")),
        claims: Default::default(),
        ttl_ms: None,
        idp_session_id: None,
        dpop_jkt: None,
        x5t_s256: None,
    }))
    .unwrap_or_else(|e| panic!("issue: {e}"))
    .token
}

fn bare_key(case: &Case) -> DecodingKey {
    if case.public.is_empty() {
        return DecodingKey::from_secret(&SECRET).unwrap_or_else(|e| panic!("{e}"));
    }
    let pem = std::fs::read(fixture(case.public)).unwrap_or_else(|e| panic!("{e}"));
    match case.algorithm {
        Algorithm::RS256 => DecodingKey::from_rsa_pem(&pem),
        Algorithm::ES256 => DecodingKey::from_ec_pem(&pem),
        _ => DecodingKey::from_ed_pem(&pem),
    }
    .unwrap_or_else(|e| panic!("{e}"))
}

fn verify(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap_or_else(|e| panic!("runtime: {e}"));
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("dir: {e}"));
    for case in CASES {
        let authority = rt.block_on(authority(case, dir.path()));
        let token = issue(&rt, &authority);
        // Warm: the user's cutoff is cached.
        let warm = rt.block_on(authority.verify(&token));
        assert!(matches!(warm, Ok(Ok(_))), "{}: {warm:?}", case.alg);

        let key = bare_key(case);
        let mut validation = Validation::new(case.algorithm);
        validation.set_issuer(&["token-sidecar"]);
        assert!(jsonwebtoken::decode::<serde_json::Value>(&token, &key, &validation).is_ok());

        let mut group = c.benchmark_group(case.alg);
        group.bench_function("bare_jsonwebtoken_decode", |b| {
            b.iter(|| jsonwebtoken::decode::<serde_json::Value>(&token, &key, &validation))
        });
        group.bench_function("full_verify", |b| {
            b.to_async(&rt).iter(|| authority.verify(&token))
        });
        group.finish();
    }
}

/// A trusted issuer's RS256 access token (an identity provider's, its keys from a JWKS) against
/// one of ours with the same key and algorithm, through the same warm verify path.
fn trusted_issuer(c: &mut Criterion) {
    const IDP: &str = "https://sso.example.com/realms/app";
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap_or_else(|e| panic!("runtime: {e}"));
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("dir: {e}"));
    let private = std::fs::read(fixture("rsa.pem")).unwrap_or_else(|e| panic!("{e}"));
    let signing =
        jsonwebtoken::EncodingKey::from_rsa_pem(&private).unwrap_or_else(|e| panic!("{e}"));
    let mut jwk = serde_json::to_value(
        jsonwebtoken::jwk::Jwk::from_encoding_key(&signing, Algorithm::RS256)
            .unwrap_or_else(|e| panic!("{e}")),
    )
    .unwrap_or_else(|e| panic!("{e}"));
    jwk["kid"] = serde_json::json!("idp-1");
    let jwks = serde_json::json!({ "keys": [jwk] }).to_string();
    let trust = IssuerTrust::new(IDP, Audience::parse("api"), "kc:", 7 * 86_400_000);
    trust
        .publish_keys(jwks.as_bytes())
        .unwrap_or_else(|e| panic!("jwks: {e}"));
    let case = &CASES[1];
    let authority = rt.block_on(authority_trusting(
        case,
        dir.path(),
        TrustedIssuers::new([Arc::new(trust)]),
    ));
    let ours = issue(&rt, &authority);
    let now = chrono::Utc::now().timestamp();
    let mut header = jsonwebtoken::Header::new(Algorithm::RS256);
    header.kid = Some("idp-1".into());
    let theirs = jsonwebtoken::encode(
        &header,
        &serde_json::json!({"iss": IDP, "sub": "f3a1", "aud": ["account", "api"],
            "iat": now, "exp": now + 3_600, "jti": "8c0f", "sid": "s1", "azp": "web",
            "realm_access": {"roles": ["user"]}}),
        &signing,
    )
    .unwrap_or_else(|e| panic!("sign: {e}"));
    for token in [&ours, &theirs] {
        let warm = rt.block_on(authority.verify(token));
        assert!(matches!(warm, Ok(Ok(_))), "{warm:?}");
    }
    let mut group = c.benchmark_group("RS256_trusted_issuer");
    group.bench_function("ours_full_verify", |b| {
        b.to_async(&rt).iter(|| authority.verify(&ours))
    });
    group.bench_function("theirs_full_verify", |b| {
        b.to_async(&rt).iter(|| authority.verify(&theirs))
    });
    group.finish();
}

/// Verify of a DPoP-bound ES256 token with a fresh ES256 proof each time (SPEC §15: parse, the
/// proof's signature, `htm`/`htu`/`iat`/`ath`/`jkt`, the replay cache) against Verify of an unbound
/// token of the same key. Proofs are made in the untimed setup; each is new (a proof is single-use,
/// so no cache of checked proofs can be sound).
fn dpop(c: &mut Criterion) {
    use token_sidecar::sender::{Presentation, Scheme};
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap_or_else(|e| panic!("runtime: {e}"));
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("dir: {e}"));
    let case = &CASES[2];
    let authority = rt.block_on(authority(case, dir.path()));
    let private = std::fs::read(fixture("p256.pem")).unwrap_or_else(|e| panic!("{e}"));
    let client = jsonwebtoken::EncodingKey::from_ec_pem(&private).unwrap_or_else(|e| panic!("{e}"));
    let jwk = jsonwebtoken::jwk::Jwk::from_encoding_key(&client, Algorithm::ES256)
        .unwrap_or_else(|e| panic!("{e}"));
    let jwk_json = serde_json::to_value(&jwk).unwrap_or_else(|e| panic!("{e}"));
    let jkt = token_sidecar::sender::jwk_thumbprint(
        jwk_json.as_object().unwrap_or_else(|| panic!("jwk")),
    )
    .unwrap_or_else(|| panic!("thumbprint"));
    let bound = rt
        .block_on(authority.issue(IssueRequest {
            user_id: UserId::parse("bench-user").unwrap_or_else(|e| panic!("user id: {e}")),
            claims: Default::default(),
            ttl_ms: None,
            idp_session_id: None,
            dpop_jkt: Some(jkt),
            x5t_s256: None,
        }))
        .unwrap_or_else(|e| panic!("issue: {e}"))
        .token;
    let unbound = issue(&rt, &authority);
    let ath = token_sidecar::sender::access_token_hash(&bound);
    let htu = "https://api.example.com/orders";
    let mut header = jsonwebtoken::Header::new(Algorithm::ES256);
    header.typ = Some("dpop+jwt".into());
    header.jwk = Some(jwk);
    let counter = std::cell::Cell::new(0u64);
    let proof = || {
        counter.set(counter.get() + 1);
        let claims = serde_json::json!({"jti": format!("bench-{}", counter.get()), "htm": "GET",
            "htu": htu, "iat": chrono::Utc::now().timestamp(), "ath": ath});
        jsonwebtoken::encode(&header, &claims, &client).unwrap_or_else(|e| panic!("proof: {e}"))
    };
    let verify_bound = |proof: String| {
        let authority = authority.clone();
        let bound = bound.clone();
        async move {
            let proofs = [proof.as_str()];
            let presentation = Presentation {
                scheme: Scheme::Dpop,
                proofs: &proofs,
                method: "GET",
                uri: htu,
                certificate_sha256: None,
            };
            let verdict = authority.verify_presented(&bound, &presentation).await;
            assert!(
                matches!(&verdict, Ok(v) if v.outcome.is_ok()),
                "{verdict:?}"
            );
        }
    };
    rt.block_on(verify_bound(proof()));
    let mut group = c.benchmark_group("ES256_dpop");
    group.bench_function("unbound_full_verify", |b| {
        b.to_async(&rt).iter(|| authority.verify(&unbound))
    });
    group.bench_function("bound_full_verify_with_proof", |b| {
        b.to_async(&rt)
            .iter_batched(proof, verify_bound, criterion::BatchSize::SmallInput)
    });
    group.finish();
}

/// One announcement sealed and opened (HMAC-SHA256 over ~150 bytes), against the parse alone.
fn announcement(c: &mut Criterion) {
    use token_sidecar::store::Change;
    use token_sidecar::store::announcement::{Announcement, FleetKey};
    let fleet = FleetKey::new("2b7e151628aed2a6:7713792612630993017:16384", &[7; 32]);
    let sent = Announcement {
        change: Change::Cutoff {
            seq: 123_456,
            committed_ms: 1_767_225_600_000,
            user_id: "user-0042@example.com".into(),
            cutoff_ms: 1_767_225_600_000,
        },
        prev: [1; 16],
        link: [2; 16],
    };
    let payload = fleet.seal(&sent);
    assert_eq!(fleet.open(payload.as_bytes()), Ok(sent.clone()));
    let mut forged = payload.clone().into_bytes();
    let last = forged.len() - 1;
    forged[last] ^= 1;
    let mut group = c.benchmark_group("announcement");
    group.bench_function("seal", |b| b.iter(|| fleet.seal(&sent)));
    group.bench_function("open", |b| b.iter(|| fleet.open(payload.as_bytes())));
    group.bench_function("reject_forged", |b| b.iter(|| fleet.open(&forged)));
    group.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3));
    targets = verify, trusted_issuer, dpop, announcement
}
criterion_main!(benches);
