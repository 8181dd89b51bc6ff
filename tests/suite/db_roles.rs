//! Database roles by job (Issue 42): `deploy/sql/roles.sql`, run as written, gives an owner
//! role that migrates and a sidecar role with rows and LISTEN only. Sidecars under the sidecar
//! role do everything they do (issue, verify, refresh, every revocation, a ban and its lifting,
//! the fleet's sync, the purge, the audit trail); DDL is refused to them.
use sqlx::Connection;
use token_sidecar::api::pb::{self, Reason, revoke_request::Target};
use token_sidecar::clock::Clock;
use tonic_health::pb::health_check_response::ServingStatus;

use crate::common::{Backend, MIN, Settings, postgres_admin_url};

/// The roles and database of `deploy/sql/roles.sql` under names of this test's own.
struct Roles {
    owner: String,
    sidecar: String,
    database: String,
}

impl Roles {
    fn url(&self, role: &str) -> String {
        let admin = postgres_admin_url();
        let (_, host_and_db) = admin.split_once('@').expect("admin URL names a user");
        let (host, _) = host_and_db
            .split_once('/')
            .expect("admin URL names a database");
        format!("postgres://{role}@{host}/{}", self.database)
    }

    /// Runs deploy/sql/roles.sql with psql, as an operator would, under this test's names.
    fn create() -> Self {
        let suffix = token_sidecar::token::new_random_id()
            .to_ascii_lowercase()
            .replace(['-', '_'], "x");
        let roles = Roles {
            owner: format!("ts_test_owner_{suffix}"),
            sidecar: format!("ts_test_sidecar_{suffix}"),
            database: format!("ts_test_roles_{suffix}"),
        };
        let script = std::fs::read_to_string(
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/sql/roles.sql"),
        )
        .expect("deploy/sql/roles.sql")
        .replace("token_sidecar_owner", "OWNER_ROLE")
        .replace("token_sidecar", &roles.sidecar)
        .replace("OWNER_ROLE", &roles.owner)
        .replace("DATABASE tokens", &format!("DATABASE {}", roles.database))
        .replace("\\connect tokens", &format!("\\connect {}", roles.database));
        let dir = tempfile::tempdir().expect("dir");
        let file = dir.path().join("roles.sql");
        std::fs::write(&file, script).expect("write");
        let out = std::process::Command::new("psql")
            .args([
                "-q",
                "-v",
                "ON_ERROR_STOP=1",
                "-d",
                &postgres_admin_url(),
                "-f",
            ])
            .arg(&file)
            .output()
            .expect("psql runs");
        assert!(
            out.status.success(),
            "deploy/sql/roles.sql: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        roles
    }

    async fn drop(self) {
        let mut admin = sqlx::PgConnection::connect(&postgres_admin_url())
            .await
            .expect("admin");
        for statement in [
            format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.database),
            format!("DROP ROLE IF EXISTS {}", self.sidecar),
            format!("DROP ROLE IF EXISTS {}", self.owner),
        ] {
            sqlx::query(sqlx::AssertSqlSafe(statement))
                .execute(&mut admin)
                .await
                .expect("clean up");
        }
    }
}

#[tokio::test]
async fn sidecars_run_under_the_dml_only_role_and_ddl_is_refused_to_it() {
    crate::require!(Postgres);
    let roles = Roles::create();

    // The sidecar role cannot migrate: a sidecar under it on the empty database says so.
    let early = Settings::new(Backend::Postgres)
        .database_url(&roles.url(&roles.sidecar))
        .no_wait()
        .spawn()
        .await;
    early.wait_for_health(ServingStatus::NotServing).await;

    // The owner migrates (what the migrate Job runs).
    let config = <token_sidecar::config::Config as clap::Parser>::try_parse_from([
        "token-sidecar",
        "--database-url",
        &roles.url(&roles.owner),
    ])
    .expect("config");
    token_sidecar::server::migrate(&config)
        .await
        .expect("the owner role migrates");

    let one = Settings::new(Backend::Postgres)
        .database_url(&roles.url(&roles.sidecar))
        .arg("--migrate", "never")
        .spawn()
        .await;
    let two = Settings::new(Backend::Postgres)
        .sharing(&one)
        .clock(one.clock.clone())
        .arg("--migrate", "never")
        .spawn()
        .await;
    early.wait_for_health(ServingStatus::Serving).await;

    let first = one.issue("alice").await;
    assert!(two.verify(&first.token).await.valid);
    one.clock.advance_ms(MIN);
    let refreshed = one.refresh(&first.token).await.expect("refresh");
    two.revoke(Target::Token(refreshed.token.clone()))
        .await
        .expect("revoke a token");
    let other = one.issue("alice").await;
    two.revoke(Target::Jti(other.jti.clone()))
        .await
        .expect("revoke a jti");
    one.revoke_user("bob", Some(one.clock.now_ms() + 10 * MIN))
        .await;
    assert!(two.lift_ban("bob").await, "the ban is lifted");
    one.sync_now().await;
    two.sync_now().await;
    assert_eq!(one.verdict(&refreshed.token).await, Reason::TokenRevoked);
    assert_eq!(two.verdict(&other.token).await, Reason::TokenRevoked);
    assert!(two.user_status("bob").await.cutoff.is_some());
    let changes = one
        .client
        .clone()
        .list_changes(pb::ListChangesRequest {
            user_id: "bob".into(),
            ..Default::default()
        })
        .await
        .expect("the audit trail")
        .into_inner();
    assert_eq!(changes.changes.len(), 2, "the ban and its lifting");
    one.clock.advance_ms(30 * 24 * 60 * MIN);
    one.purge_now().await;

    // No DDL for the sidecar role.
    let mut sidecar = sqlx::PgConnection::connect(&roles.url(&roles.sidecar))
        .await
        .expect("the sidecar role connects");
    for ddl in [
        "CREATE TABLE intruder (id int)",
        "DROP TABLE denylist",
        "ALTER TABLE user_cutoffs ADD COLUMN intruder int",
        "TRUNCATE audit_log",
        "CREATE INDEX intruder ON denylist (id)",
    ] {
        let refused = sqlx::query(ddl).execute(&mut sidecar).await;
        let message = refused.err().map(|e| e.to_string()).unwrap_or_default();
        assert!(
            message.contains("permission denied") || message.contains("must be owner"),
            "{ddl}: {message:?}"
        );
    }
    drop(sidecar);
    for app in [early, one, two] {
        app.shutdown().await;
    }
    roles.drop().await;
}
