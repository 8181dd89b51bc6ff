//! Operator subcommands of the built binary: `check-config` fails with a clear reason for each
//! bad setting, `migrate` applies the schema and exits.
use std::path::Path;
use std::process::{Command, Output};

fn sidecar(args: &[&str], cwd: &Path) -> Output {
    Command::new(env!("CARGO_BIN_EXE_token-sidecar"))
        .args(args)
        .current_dir(cwd)
        .env_remove("DATABASE_URL")
        .env_remove("TOKEN_SIDECAR_KEYS")
        .env("RUST_LOG", "warn")
        .output()
        .expect("binary runs")
}

fn key_file(dir: &Path, len: usize) -> String {
    let path = dir.join(format!("k{len}.key"));
    std::fs::write(&path, vec![5u8; len]).expect("write key");
    format!("main=HS256:{}", path.display())
}

#[tokio::test]
async fn check_config_names_what_is_wrong() {
    crate::require!(Postgres);
    let dir = tempfile::tempdir().expect("dir");
    let good_key = key_file(dir.path(), 32);
    let short_key = key_file(dir.path(), 8);
    let pg = crate::common::fresh_postgres_database().await;
    let sqlite = format!("sqlite:{}", dir.path().join("c.db").display());
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (
            vec!["check-config", "--database-url", &pg],
            "no signing key configured",
        ),
        (
            vec![
                "check-config",
                "--database-url",
                &sqlite,
                "--key",
                "main=HS256:/no/such/file",
            ],
            "cannot use /no/such/file",
        ),
        (
            vec![
                "check-config",
                "--database-url",
                &sqlite,
                "--key",
                &short_key,
            ],
            "at least 32",
        ),
        (
            vec![
                "check-config",
                "--database-url",
                &sqlite,
                "--key",
                "nonsense",
            ],
            "KID=ALG:PATH",
        ),
        (
            vec![
                "check-config",
                "--database-url",
                &sqlite,
                "--key",
                &good_key,
                "--token-ttl",
                "5 minutes",
            ],
            "is not a duration",
        ),
        (
            vec![
                "check-config",
                "--database-url",
                "postgres://postgres@127.0.0.1:1/none",
                "--key",
                &good_key,
            ],
            "store is unavailable",
        ),
        (
            vec![
                "check-config",
                "--database-url",
                "mysql://x",
                "--key",
                &good_key,
            ],
            "unsupported database URL",
        ),
        (
            vec![
                "check-config",
                "--database-url",
                &sqlite,
                "--key",
                &good_key,
                "--otel-exporter-otlp-endpoint",
                "http://127.0.0.1:4318",
                "--otel-resource-attributes",
                "no-equals-sign",
            ],
            "OTEL_RESOURCE_ATTRIBUTES",
        ),
        (
            vec![
                "check-config",
                "--database-url",
                &sqlite,
                "--key",
                &good_key,
                "--otel-traces-sampler",
                "traceidratio",
                "--otel-traces-sampler-arg",
                "2",
            ],
            "OTEL_TRACES_SAMPLER_ARG",
        ),
    ];
    for (args, expected) in cases {
        let out = sidecar(&args, dir.path());
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{args:?} passed");
        assert!(stderr.contains(expected), "{args:?}: {stderr}");
        assert!(!stderr.contains("backtrace"), "{args:?}: {stderr}");
    }
    let ok = sidecar(
        &["check-config", "--database-url", &pg, "--key", &good_key],
        dir.path(),
    );
    let stdout = String::from_utf8_lossy(&ok.stdout);
    assert!(
        ok.status.success(),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );
    assert!(stdout.contains("configuration OK"), "{stdout}");
    assert!(stdout.contains("postgres reachable"), "{stdout}");
    assert!(stdout.contains("traces: off"), "{stdout}");
    // It creates nothing: no development key appears for a keyless SQLite check.
    let dev = sidecar(&["check-config", "--database-url", &sqlite], dir.path());
    assert!(
        dev.status.success(),
        "{}",
        String::from_utf8_lossy(&dev.stderr)
    );
    assert!(!dir.path().join("c.db.dev-key").exists());
}

#[tokio::test]
async fn migrate_applies_the_schema_and_exits() {
    crate::require!(Postgres);
    let dir = tempfile::tempdir().expect("dir");
    let pg = crate::common::fresh_postgres_database().await;
    let out = sidecar(&["migrate", "--database-url", &pg], dir.path());
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("migrations applied (postgres)"));
    let pool = sqlx::PgPool::connect(&pg).await.expect("connect");
    let (n,): (i64,) = sqlx::query_as(
        "SELECT COUNT(*) FROM information_schema.tables WHERE table_name IN ('user_cutoffs', 'denylist')",
    )
    .fetch_one(&pool)
    .await
    .expect("query");
    assert_eq!(n, 2);
    // Running it again is a no-op, not an error.
    let again = sidecar(&["migrate", "--database-url", &pg], dir.path());
    assert!(again.status.success());
}

#[tokio::test]
async fn check_config_creates_nothing_and_refuses_contradictions() {
    // With default flags in an empty folder: the report, and the folder stays empty (no
    // database file, lock file or development key).
    let dir = tempfile::tempdir().expect("dir");
    let out = sidecar(&["check-config"], dir.path());
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("does not exist yet"), "{stdout}");
    let left: Vec<_> = std::fs::read_dir(dir.path())
        .expect("read dir")
        .map(|entry| entry.map(|e| e.file_name()))
        .collect();
    assert!(left.is_empty(), "check-config created {left:?}");

    let good_key = key_file(dir.path(), 32);
    for (args, expected) in [
        (
            vec!["--token-ttl", "30d", "--refresh-window", "1h"],
            "--token-ttl 30d is longer than --refresh-window 1h",
        ),
        (
            vec!["--leeway", "10m", "--token-ttl", "5m"],
            "--leeway 10m is not shorter than --token-ttl 5m",
        ),
    ] {
        let mut argv = vec!["check-config", "--key", &good_key];
        argv.extend(args);
        let out = sidecar(&argv, dir.path());
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{argv:?} passed");
        assert!(stderr.contains("contradict"), "{stderr}");
        assert!(stderr.contains(expected), "{stderr}");
    }

    // A refused connection is said in the server's words, not as a pool timeout.
    let out = sidecar(
        &[
            "check-config",
            "--database-url",
            "postgres://postgres@127.0.0.1:1/none",
            "--key",
            &good_key,
        ],
        dir.path(),
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(stderr.contains("Connection refused"), "{stderr}");
    assert!(!stderr.contains("pool timed out"), "{stderr}");
}
