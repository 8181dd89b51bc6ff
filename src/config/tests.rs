//! The flags as an operator types them.
use super::parse::parse_positive_duration;
use super::*;
use crate::otel::{OtlpProtocol, SamplerName, TraceSettings};
use std::time::Duration;

#[test]
fn tracing_flags_take_the_opentelemetry_specifications_names() {
    let cli = Cli::try_parse_from([
        "token-sidecar",
        "--otel-exporter-otlp-endpoint",
        "http://collector:4317",
        "--otel-exporter-otlp-protocol",
        "grpc",
        "--otel-traces-sampler",
        "parentbased_traceidratio",
        "--otel-traces-sampler-arg",
        "0.1",
        "--trace-user-ids",
    ])
    .expect("parses");
    let traces = TraceSettings::from(&cli.config);
    assert_eq!(traces.protocol, OtlpProtocol::Grpc);
    assert_eq!(traces.sampler, SamplerName::parentbased_traceidratio);
    assert_eq!(traces.sampler_arg, Some(0.1));
    assert!(traces.user_ids);
    let defaults = Cli::try_parse_from(["token-sidecar"]).expect("parses");
    let traces = TraceSettings::from(&defaults.config);
    assert_eq!(traces.protocol, OtlpProtocol::HttpProtobuf);
    assert_eq!(traces.sampler, SamplerName::parentbased_always_on);
    assert!(!traces.user_ids);
    assert!(
        Cli::try_parse_from([
            "token-sidecar",
            "--otel-exporter-otlp-protocol",
            "http/protobuf"
        ])
        .is_ok()
    );
}

#[test]
fn parses_durations() {
    assert_eq!(parse_duration("30s"), Ok(Duration::from_secs(30)));
    assert_eq!(parse_duration("5m"), Ok(Duration::from_secs(300)));
    assert_eq!(parse_duration("7d"), Ok(Duration::from_secs(7 * 86_400)));
    assert_eq!(parse_duration("1h30m"), Ok(Duration::from_secs(5_400)));
    assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
    assert_eq!(parse_duration("0s"), Ok(Duration::ZERO));
    assert_eq!(parse_duration("0"), Ok(Duration::ZERO));
    for bad in ["", "5", "m", "5x", "-5s", "1.5h", "99999999999999999999d"] {
        assert!(parse_duration(bad).is_err(), "{bad}");
    }
    assert!(parse_positive_duration("0s").is_err());
}

#[test]
fn defaults_match_the_spec() {
    let c = Config::parse_from(["token-sidecar"]);
    assert_eq!(c.api.listen.to_string(), "127.0.0.1:50051");
    assert_eq!(c.api.metrics_listen.to_string(), "127.0.0.1:9464");
    assert_eq!(c.api.health_listen, None);
    assert_eq!(c.tokens.issuer, "token-sidecar");
    assert_eq!(c.tokens.audience, None);
    assert_eq!(c.tokens.token_ttl, Duration::from_secs(300));
    assert_eq!(c.tokens.refresh_window, Duration::from_secs(7 * 86_400));
    assert_eq!(c.tokens.leeway, Duration::ZERO);
    assert!(c.is_sqlite());
    assert_eq!(
        c.dev_key_path(),
        Some(PathBuf::from("token-sidecar.db.dev-key"))
    );
}

#[test]
fn keys_repeat_and_the_dev_key_sits_beside_the_database() {
    let c = Config::parse_from([
        "token-sidecar",
        "--key",
        "a=HS256:/k/a",
        "--key",
        "b=HS512:/k/b",
        "--database-url",
        "sqlite:///var/lib/ts/state.db?mode=rwc",
    ]);
    assert_eq!(c.tokens.keys.len(), 2);
    assert_eq!(
        c.dev_key_path(),
        Some(PathBuf::from("/var/lib/ts/state.db.dev-key"))
    );
}

#[test]
fn trusted_issuers_are_checked_with_the_other_identity_providers() {
    let settings = |args: &[&str]| {
        let mut argv = vec!["token-sidecar"];
        argv.extend_from_slice(args);
        Config::parse_from(argv).idp_settings()
    };
    let ok = settings(&[
        "--trusted-issuer",
        "https://kc=/jwks.json,audience=api,subject-prefix=kc:",
        "--oidc-issuer",
        "https://kc=/jwks.json,subject-prefix=kc:",
        "--oidc-client-id",
        "app",
    ])
    .expect("one provider, one prefix");
    assert_eq!(ok.token_issuers.len(), 1);
    for bad in [
        // The same provider under two prefixes.
        &[
            "--trusted-issuer",
            "https://kc=/jwks.json,audience=api,subject-prefix=kc:",
            "--oidc-issuer",
            "https://kc=/jwks.json,subject-prefix=other:",
            "--oidc-client-id",
            "app",
        ][..],
        // Two providers, one without a prefix.
        &[
            "--trusted-issuer",
            "https://kc=/jwks.json,audience=api",
            "--trusted-issuer",
            "https://b=/b.json,audience=api,subject-prefix=b:",
        ],
        // Our own issuer.
        &["--trusted-issuer", "token-sidecar=/jwks.json,audience=*"],
        // No audience.
        &["--trusted-issuer", "https://kc=/jwks.json"],
    ] {
        assert!(settings(bad).is_err(), "{bad:?}");
    }
}
