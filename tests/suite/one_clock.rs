//! SPEC §4 rule 9, with real processes whose clocks differ (libfaketime): what is compared across
//! instances is stamped on the database's clock, and an instance whose own clock is off beyond
//! `--max-clock-skew` refuses to mint, saying so in its answer, log, metrics and health.
use std::time::Duration;

use crate::common::{SidecarProcess, free_port, http_get, metric_value};
use token_sidecar::api::pb::{self, revoke_request::Target};
use tonic::Code;
use tonic::transport::Channel;
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::{HealthCheckRequest, health_check_response::ServingStatus};

type Api = pb::token_service_client::TokenServiceClient<Channel>;

/// libfaketime's preload library (Debian's `faketime` package).
fn libfaketime() -> String {
    let lib = std::fs::read_dir("/usr/lib")
        .expect("/usr/lib")
        .filter_map(Result::ok)
        .map(|arch| arch.path().join("faketime/libfaketimeMT.so.1"))
        .find(|path| path.exists())
        .expect("libfaketime (scripts/test installs Debian's faketime)");
    lib.display().to_string()
}

/// One sidecar on `database_url` whose wall clock is `offset` off (libfaketime syntax, e.g.
/// `+8s`, `-0.4`; empty for a correct clock), with its metrics on a known port.
struct Instance {
    process: SidecarProcess,
    api: Api,
    metrics: std::net::SocketAddr,
    _dir: tempfile::TempDir,
}

impl Instance {
    async fn start(database_url: &str, offset: &str) -> Self {
        let dir = tempfile::tempdir().expect("dir");
        let key_spec = crate::common::write_test_key(dir.path());
        let metrics = std::net::SocketAddr::from(([127, 0, 0, 1], free_port()));
        let metrics_listen = metrics.to_string();
        let preload = libfaketime();
        let mut env = vec![
            ("DATABASE_URL", database_url),
            ("TOKEN_SIDECAR_KEYS", key_spec.as_str()),
            ("TOKEN_SIDECAR_METRICS_LISTEN", metrics_listen.as_str()),
        ];
        if !offset.is_empty() {
            env.extend([
                ("LD_PRELOAD", preload.as_str()),
                ("FAKETIME", offset),
                // Only the wall clock is wrong, as on a host whose NTP is broken.
                ("FAKETIME_DONT_FAKE_MONOTONIC", "1"),
            ]);
        }
        let process = SidecarProcess::start(dir.path(), &env).await;
        let api = Api::new(process.connect().await);
        Self {
            process,
            api,
            metrics,
            _dir: dir,
        }
    }

    async fn metric(&self, name: &str) -> f64 {
        let (_, body) = http_get(self.metrics, "/metrics").await;
        metric_value(&body, name).unwrap_or_else(|| panic!("no {name} in\n{body}"))
    }

    async fn health(&self, service: &str) -> i32 {
        let channel = Channel::from_shared(format!("http://127.0.0.1:{}", self.process.port))
            .expect("uri")
            .connect()
            .await
            .expect("connect");
        HealthClient::new(channel)
            .check(HealthCheckRequest {
                service: service.into(),
            })
            .await
            .expect("health")
            .into_inner()
            .status
    }

    async fn issue(&self, user_id: &str) -> Result<pb::IssueResponse, tonic::Status> {
        self.api
            .clone()
            .issue(pb::IssueRequest {
                user_id: user_id.into(),
                ..Default::default()
            })
            .await
            .map(tonic::Response::into_inner)
    }

    async fn reason(&self, token: &str) -> pb::Reason {
        let verdict = self
            .api
            .clone()
            .verify(pb::VerifyRequest {
                token: token.into(),
                ..Default::default()
            })
            .await
            .expect("verify")
            .into_inner();
        verdict.reason()
    }

    async fn revoke_all(&self, user_id: &str) {
        self.api
            .clone()
            .revoke(pb::RevokeRequest {
                target: Some(Target::User(pb::UserRevocation {
                    user_id: user_id.into(),
                    until: None,
                })),
                ..Default::default()
            })
            .await
            .expect("revoke all");
    }

    async fn status(&self, user_id: &str) -> pb::GetUserStatusResponse {
        self.api
            .clone()
            .get_user_status(pb::GetUserStatusRequest {
                user_id: user_id.into(),
            })
            .await
            .expect("status")
            .into_inner()
    }
}

#[tokio::test]
async fn an_instance_whose_clock_is_8s_fast_refuses_to_mint_and_says_why_everywhere() {
    crate::require!(Postgres, Faketime);
    let database_url = crate::common::fresh_postgres_database().await;
    let fast = Instance::start(&database_url, "+8s").await;

    // SERVING does not wait for the first reading of the database's clock (Issue is refused
    // until it lands); wait for it here.
    crate::common::eventually(
        Duration::from_secs(15),
        "a reading of the database's clock",
        || async { fast.metric("token_sidecar_clock_uncertainty_us").await >= 0.0 },
    )
    .await;
    // The skew measured against the database is the one libfaketime gave the process: the
    // preload reached the binary's clock.
    let skew = fast.metric("token_sidecar_clock_skew_ms").await;
    assert!((7_500.0..8_500.0).contains(&skew), "skew {skew} ms");
    assert_eq!(fast.metric("token_sidecar_clock_in_step").await, 0.0);

    let refused = fast
        .issue("alice")
        .await
        .expect_err("a skewed instance mints nothing");
    assert_eq!(refused.code(), Code::Unavailable);
    assert!(
        refused.message().contains("off the database's"),
        "{}",
        refused.message()
    );
    assert_eq!(fast.metric("token_sidecar_clock_refusals_total").await, 1.0);
    assert_eq!(
        fast.health(token_sidecar::clock_upkeep::HEALTH_NAME).await,
        ServingStatus::NotServing as i32
    );
    // Verifying is still safe (it reads the database's time), so the service stays SERVING.
    assert_eq!(
        fast.health("tokensidecar.v1.TokenService").await,
        ServingStatus::Serving as i32
    );

    // A token a correct instance minted verifies on the skewed one as it does everywhere.
    let correct = Instance::start(&database_url, "").await;
    // The clock's health name follows the first reading, which can queue behind the first
    // load on the instance's one connection: waited for, bounded.
    crate::common::eventually(
        std::time::Duration::from_secs(10),
        "the correct instance's clock reads in step",
        || async {
            correct
                .health(token_sidecar::clock_upkeep::HEALTH_NAME)
                .await
                == ServingStatus::Serving as i32
        },
    )
    .await;
    let token = correct.issue("alice").await.expect("issue").token;
    assert_eq!(fast.reason(&token).await, pb::Reason::Unspecified);
    let slow = Instance::start(&database_url, "-6s").await;
    correct.revoke_all("alice").await;
    crate::common::eventually(Duration::from_secs(5), "the logout reaches it", || async {
        fast.reason(&token).await == pb::Reason::UserRevoked
    })
    .await;
    // 6 s slow: the logout's cutoff is not in its future, because it reads the database's time.
    let status = slow.status("alice").await;
    assert!(
        !status.banned,
        "a logout is no ban on a slow instance: {status:?}"
    );
    let refused = slow
        .issue("alice")
        .await
        .expect_err("a slow instance mints nothing");
    assert_eq!(
        refused.code(),
        Code::Unavailable,
        "not USER_BANNED: {refused:?}"
    );

    fast.process.signal("-TERM");
    let (_, log) = fast.process.wait().await;
    assert!(log.contains("beyond --max-clock-skew"), "{log}");
}

#[tokio::test]
async fn within_the_tolerance_instances_agree_on_logout_everywhere_and_on_bans() {
    crate::require!(Postgres, Faketime);
    let database_url = crate::common::fresh_postgres_database().await;
    let fast = Instance::start(&database_url, "+0.4").await;
    let correct = Instance::start(&database_url, "").await;
    let slow = Instance::start(&database_url, "-0.4").await;

    // Minted on the fast instance, then "logout everywhere" on the correct one: the token was
    // minted before the logout returned, so it is refused everywhere.
    for round in 0..3 {
        let token = fast
            .issue("alice")
            .await
            .expect("issue within the tolerance")
            .token;
        correct.revoke_all("alice").await;
        for (name, instance) in [("fast", &fast), ("correct", &correct), ("slow", &slow)] {
            let last = std::sync::Mutex::new(pb::Reason::Unspecified);
            let what = format!("round {round}: the logout is seen on the {name} instance");
            let seen = tokio::time::timeout(Duration::from_secs(5), async {
                loop {
                    let reason = instance.reason(&token).await;
                    *last.lock().expect("lock") = reason;
                    if reason == pb::Reason::UserRevoked {
                        return;
                    }
                    tokio::time::sleep(Duration::from_millis(2)).await;
                }
            })
            .await;
            assert!(
                seen.is_ok(),
                "{what}: still {:?}",
                last.lock().expect("lock")
            );
        }
        // A logout without `until` never reads as a ban, not even on the slow instance: a
        // login right after it works there.
        let status = slow.status("alice").await;
        assert!(!status.banned, "round {round}: {status:?}");
        let again = slow.issue("alice").await.expect("login after the logout");
        assert_eq!(correct.reason(&again.token).await, pb::Reason::Unspecified);
    }

    // A ban lifted on one instance is over on the slow one at once.
    correct
        .api
        .clone()
        .revoke(pb::RevokeRequest {
            target: Some(Target::User(pb::UserRevocation {
                user_id: "mallory".into(),
                until: Some(prost_types::Timestamp {
                    seconds: chrono::Utc::now().timestamp() + 3600,
                    nanos: 0,
                }),
            })),
            ..Default::default()
        })
        .await
        .expect("ban");
    let banned = fast.issue("mallory").await.expect_err("banned");
    assert_eq!(banned.code(), Code::PermissionDenied);
    correct
        .api
        .clone()
        .lift_ban(pb::LiftBanRequest {
            user_id: "mallory".into(),
            ..Default::default()
        })
        .await
        .expect("lift");
    crate::common::eventually(Duration::from_secs(5), "the lift is seen", || async {
        !slow.status("mallory").await.banned
    })
    .await;
    slow.issue("mallory").await.expect("issue after the lift");
}

/// The issue's row: a clock step back of 15 s on an instance cut off from PostgreSQL must not
/// stretch `--max-staleness` (4 s). libfaketime here shifts the monotonic clock too (its
/// default), the harder case: the sidecar carries its monotonic time past the step.
#[tokio::test]
async fn a_clock_step_back_does_not_stretch_the_staleness_bound() {
    crate::require!(Postgres, Faketime);
    let direct = crate::common::fresh_postgres_database().await;
    let proxy = crate::common::StoreProxy::start(crate::common::postgres_addr()).await;
    let through_proxy = proxy.url_for(&direct);
    let writer = Instance::start(&direct, "").await;

    let dir = tempfile::tempdir().expect("dir");
    let key_spec = crate::common::write_test_key(dir.path());
    let offset = dir.path().join("faketime");
    std::fs::write(&offset, "+0\n").expect("offset");
    let preload = libfaketime();
    let offset_file = offset.display().to_string();
    let cut_off = SidecarProcess::start(
        dir.path(),
        &[
            ("DATABASE_URL", through_proxy.as_str()),
            ("TOKEN_SIDECAR_KEYS", key_spec.as_str()),
            ("TOKEN_SIDECAR_MAX_STALENESS", "4s"),
            ("LD_PRELOAD", preload.as_str()),
            ("FAKETIME_TIMESTAMP_FILE", offset_file.as_str()),
            ("FAKETIME_NO_CACHE", "1"),
        ],
    )
    .await;
    let api = Api::new(cut_off.connect().await);
    let token = writer.issue("alice").await.expect("issue").token;
    let verdict = |api: Api, token: String| async move {
        api.clone()
            .verify(pb::VerifyRequest {
                token,
                ..Default::default()
            })
            .await
            .map(|answer| answer.into_inner().reason())
    };
    assert_eq!(
        verdict(api.clone(), token.clone()).await.expect("verify"),
        pb::Reason::Unspecified
    );

    // Cut off, the token revoked elsewhere, and the clock stepped back 15 s.
    proxy.cut();
    let cut_at = std::time::Instant::now();
    writer
        .api
        .clone()
        .revoke(pb::RevokeRequest {
            target: Some(Target::Token(token.clone())),
            ..Default::default()
        })
        .await
        .expect("revoke");
    std::fs::write(&offset, "-15s\n").expect("step back");

    // Within the bound it may still answer from memory; past it, never VALID.
    let refused_after = loop {
        let answer = verdict(api.clone(), token.clone()).await;
        if !matches!(answer, Ok(pb::Reason::Unspecified)) {
            break cut_at.elapsed();
        }
        assert!(
            cut_at.elapsed() < Duration::from_secs(12),
            "still VALID {:?} after the cut with --max-staleness 4s",
            cut_at.elapsed()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert!(
        refused_after < Duration::from_secs(8),
        "stale answers stopped only {refused_after:?} after the cut"
    );
    proxy.restore();
}
