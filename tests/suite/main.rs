//! The end-to-end suite, as one test binary (one link instead of fourteen on two cores), one
//! module per area. Every test talks to a real PostgreSQL or SQLite, a real server on an
//! ephemeral port and real clients and proxies; time-dependent rules move the injected clock.
//! Fixtures live beside it: `tests/keys` (keys and TLS material), `tests/proxies` (proxy
//! configurations, the ones the README shows).
#[macro_use]
mod common;

mod api;
mod attacks;
mod auth;
mod binary;
mod client;
mod commands;
mod conformance;
mod connections;
mod db_roles;
mod docs;
mod dpop;
mod dpop_proxies;
mod edge_differential;
mod edge_load;
mod edge_million;
mod embedded;
mod fair;
mod faults;
mod feed;
mod feed_tail;
mod feed_trust;
mod fleet;
mod http_api;
mod idp;
mod keys;
mod one_clock;
mod proxies;
mod readme;
mod reference;
mod reuse;
mod rolling;
mod rules;
mod start_cost;
mod sync;
mod tls;
mod traces;
mod verify_only;
