//! The settings each part of the sidecar takes, built from the flags.
use std::time::Duration;

use super::{Config, DatabasePooler, Toggle};
use crate::otel::TraceSettings;
use crate::policy::RevocationPolicy;
use crate::revocations::CacheSettings;
use crate::store::PoolSettings;
use crate::sync::{SyncMode, SyncSettings};

/// The rules' parameters the flags ask for.
impl From<&Config> for RevocationPolicy {
    fn from(config: &Config) -> Self {
        let ms = |d: Duration| i64::try_from(d.as_millis()).unwrap_or(i64::MAX / 4);
        RevocationPolicy {
            token_ttl_ms: ms(config.tokens.token_ttl),
            refresh_window_ms: ms(config.tokens.refresh_window),
            leeway_ms: ms(config.tokens.leeway),
            refresh_reuse_interval_ms: (config.tokens.refresh_reuse_detection == Toggle::On)
                .then(|| ms(config.tokens.refresh_reuse_interval)),
            max_clock_skew_ms: ms(config.tokens.max_clock_skew),
            audit_retention_ms: ms(config.idp.audit_retention),
        }
    }
}

/// The rules a proof of possession is held to (SPEC §15).
impl From<&Config> for crate::sender::SenderRules {
    fn from(config: &Config) -> Self {
        let ms = |d: Duration| i64::try_from(d.as_millis()).unwrap_or(i64::MAX / 4);
        crate::sender::SenderRules {
            max_age_ms: ms(config.tokens.dpop_max_age),
            leeway_ms: ms(config.tokens.leeway),
        }
    }
}

/// How the flags ask this instance to keep in step with the others.
impl From<&Config> for SyncSettings {
    fn from(config: &Config) -> Self {
        SyncSettings {
            mode: config.store.sync_mode,
            poll_interval: config.store.sync_poll_interval,
            // A safety net slower than half the staleness bound would let the caches go stale
            // while nothing is wrong.
            safety_poll_interval: config
                .store
                .sync_safety_poll_interval
                .min(config.store.max_staleness / 2)
                .max(Duration::from_millis(10)),
            nats_url: config
                .store
                .nats_url
                .as_ref()
                .map(|url| url.expose().to_owned()),
            nats_subject: config.store.nats_subject.clone(),
            nats_auth: crate::sync::NatsAuth {
                creds_file: config.store.nats_creds_file.clone(),
                nkey_file: config.store.nats_nkey_file.clone(),
                token_file: config.store.nats_token_file.clone(),
                tls_ca: config.store.nats_tls_ca.clone(),
                tls_client: config
                    .store
                    .nats_tls_cert
                    .clone()
                    .zip(config.store.nats_tls_key.clone()),
            },
        }
    }
}

/// The tracing the flags ask for.
impl From<&Config> for TraceSettings {
    fn from(config: &Config) -> Self {
        TraceSettings {
            endpoint: config.telemetry.otel_exporter_otlp_endpoint.clone(),
            traces_endpoint: config.telemetry.otel_exporter_otlp_traces_endpoint.clone(),
            protocol: config.telemetry.otel_exporter_otlp_protocol,
            timeout: Duration::from_millis(config.telemetry.otel_exporter_otlp_timeout),
            service_name: config.telemetry.otel_service_name.clone(),
            resource_attributes: config.telemetry.otel_resource_attributes.clone(),
            sampler: config.telemetry.otel_traces_sampler,
            sampler_arg: config.telemetry.otel_traces_sampler_arg,
            disabled: config.telemetry.otel_sdk_disabled,
            user_ids: config.telemetry.trace_user_ids,
        }
    }
}

/// The PostgreSQL pool the flags ask for.
impl From<&Config> for PoolSettings {
    fn from(config: &Config) -> Self {
        PoolSettings {
            max_connections: config.store.database_max_connections,
            idle_timeout: config.store.database_idle_timeout,
            store_timeout: config.store.store_timeout,
            sync_key_file: config.store.sync_key_file.clone(),
            listen: config.store.sync_mode == SyncMode::Notify,
            migrate: config.store.migrate,
            transaction_pooler: config.store.database_pooler == DatabasePooler::Transaction,
        }
    }
}

/// The caches' sizes and trust the flags ask for.
impl From<&Config> for CacheSettings {
    fn from(config: &Config) -> Self {
        CacheSettings {
            cutoff_ttl: config.caches.cutoff_cache_ttl,
            cutoff_capacity: config.caches.cutoff_cache_capacity,
            denylist_filter: config.caches.denylist_filter == Toggle::On,
            filter_expected_items: config.caches.denylist_expected_items,
            filter_fp_rate: config.caches.denylist_fp_rate,
            max_staleness: config.store.max_staleness,
            on_outage: config.store.on_store_outage.into(),
        }
    }
}
