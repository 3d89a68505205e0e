#!/usr/bin/env bash
# sluice quickstart: the "run the demo" command.
#
#   sudo bash deploy/quickstart.sh
#
# On a fresh Debian 12 machine this
#   1. installs the dependencies (scripts/install-deps.sh),
#   2. builds sluice in release mode (skipped when SLUICE_BIN is set),
#   3. starts a throwaway PostgreSQL 15 cluster in a temp dir and loads pgbench
#      data into database "app" owned by role "app",
#   4. starts sluice in front of it (transaction pooling, pool size 10),
#   5. runs pgbench through sluice with 20 clients and shows that Postgres saw
#      no more than 10 server connections,
#   6. prints the DATABASE_URL to use and keeps everything running until
#      Ctrl-C / SIGTERM, then stops sluice and Postgres and deletes the temp dir.
#
# Environment:
#   SLUICE_BIN=/path/to/sluice  use this binary instead of `cargo build --release`
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

# Filled in as the steps run; cleanup() looks at whatever is set.
WORKDIR=""
PGDATA_DIR=""
PG_PORT=""
PG_SUPERUSER=""
SLUICE_PORT=""
HTTP_PORT=""
SLUICE_PID=""
SLUICE_LOG=""
SLUICE_CONFIG=""

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

# Poll (no fixed sleep) until 127.0.0.1:$1 answers pg_isready, failing early if
# process $2 dies and giving up after $3 seconds.
wait_for_postgres_protocol() {
    local port=$1 pid=$2 timeout=$3
    local deadline=$((SECONDS + timeout))
    while ! "$PG_BIN/pg_isready" -q -h 127.0.0.1 -p "$port" -t 1; do
        if ! kill -0 "$pid" 2>/dev/null; then
            return 1
        fi
        if [ "$SECONDS" -ge "$deadline" ]; then
            return 1
        fi
        sleep 0.1
    done
}

# --- cleanup --------------------------------------------------------------------

# Runs on every exit (success, error, Ctrl-C, SIGTERM): stop sluice first so no
# client is mid-transaction when Postgres goes away, then Postgres, then delete
# the temp dir. On failure, show the log tails first, since the logs are about
# to be deleted with the temp dir.
cleanup() {
    local status=$?
    set +e
    trap - EXIT INT TERM

    if [ "$status" -ne 0 ] && [ "$status" -ne 130 ] && [ "$status" -ne 143 ]; then
        if [ -n "$SLUICE_LOG" ] && [ -s "$SLUICE_LOG" ]; then
            printf '\n--- last lines of the sluice log (%s) ---\n' "$SLUICE_LOG" >&2
            tail -n 30 "$SLUICE_LOG" >&2
        fi
        if [ -n "$WORKDIR" ] && [ -s "$WORKDIR/postgres.log" ]; then
            printf '\n--- last lines of the postgres log ---\n' >&2
            tail -n 30 "$WORKDIR/postgres.log" >&2
        fi
    fi

    if [ -z "$WORKDIR" ]; then
        exit "$status"
    fi
    step "Stopping everything"

    if [ -n "$SLUICE_PID" ] && kill -0 "$SLUICE_PID" 2>/dev/null; then
        # SIGTERM makes sluice drain its clients and exit; don't wait forever.
        kill -TERM "$SLUICE_PID" 2>/dev/null
        local deadline=$((SECONDS + 15))
        while kill -0 "$SLUICE_PID" 2>/dev/null && [ "$SECONDS" -lt "$deadline" ]; do
            sleep 0.1
        done
        if kill -0 "$SLUICE_PID" 2>/dev/null; then
            info "sluice did not exit within 15s; killing it"
            kill -KILL "$SLUICE_PID" 2>/dev/null
        fi
        wait "$SLUICE_PID" 2>/dev/null
        info "sluice stopped"
    fi

    # postmaster.pid exists whenever a postmaster may be running, including
    # when `pg_ctl start` itself failed or timed out.
    if [ -n "$PGDATA_DIR" ] && [ -f "$PGDATA_DIR/postmaster.pid" ]; then
        if ! as_pg "$PG_BIN/pg_ctl" -D "$PGDATA_DIR" -m fast -w -t 30 stop >/dev/null 2>&1; then
            as_pg "$PG_BIN/pg_ctl" -D "$PGDATA_DIR" -m immediate -w -t 30 stop >/dev/null 2>&1
        fi
        info "postgres stopped"
    fi

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
    step "Creating a throwaway PostgreSQL 15 cluster in $PGDATA_DIR"
    PG_PORT="$(pick_port)"
    # - Unix-socket logins use peer auth: only the OS user owning the cluster
    #   can log in as the superuser, and only through the private socket dir.
    # - TCP logins (the app and sluice) must present a SCRAM password.
    # - C.UTF-8 always exists on Debian 12, unlike e.g. en_US.UTF-8 on minimal
    #   images, where initdb would fail on an ungenerated locale.
    as_pg "$PG_BIN/initdb" -D "$PGDATA_DIR" -U "$PG_SUPERUSER" \
        --auth-local=peer --auth-host=scram-sha-256 \
        --encoding=UTF8 --locale=C.UTF-8 >"$WORKDIR/initdb.log" 2>&1 \
        || { cat "$WORKDIR/initdb.log" >&2; die "initdb failed"; }
    # TCP on loopback only; the socket goes into our private temp dir rather
    # than /var/run/postgresql, so it cannot clash with another cluster.
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
    info "postgres is up on 127.0.0.1:$PG_PORT (log: $WORKDIR/postgres.log)"
}

# psql as the cluster superuser over the private Unix socket.
pg_admin_psql() {
    as_pg "$PG_BIN/psql" -X -q -v ON_ERROR_STOP=1 -h "$WORKDIR" -p "$PG_PORT" \
        -U "$PG_SUPERUSER" -d postgres "$@"
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

write_config() {
    # 6432 is the conventional pooler port; use it if it is free.
    SLUICE_PORT="$(pick_port 6432 6433 6434 6435 6436)"
    HTTP_PORT="$(pick_port 9930 9931 9932 9933 9934)"
    cat >"$SLUICE_CONFIG" <<EOF
# Written by deploy/quickstart.sh; see the README for all options.
[listen]
postgres = "127.0.0.1:$SLUICE_PORT"
http = "127.0.0.1:$HTTP_PORT"

[pool]
mode = "transaction"
size = $POOL_SIZE

[[databases]]
name = "$APP_DB"
primary = "127.0.0.1:$PG_PORT"
user = "$APP_USER"
password = "$APP_PASSWORD"

[[users]]
name = "$APP_USER"
password = "$APP_PASSWORD"
EOF
}

start_sluice() {
    write_config
    step "Starting sluice on 127.0.0.1:$SLUICE_PORT (pool: $POOL_SIZE server connections)"
    # Fail fast with sluice's own error message on a bad config.
    "$SLUICE_BIN" --config "$SLUICE_CONFIG" check >/dev/null
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
    info "sluice is up (pid $SLUICE_PID, log: $SLUICE_LOG)"
}

# pgbench through sluice, as the app user.
pgbench_via_sluice() {
    PGPASSWORD="$APP_PASSWORD" "$PG_BIN/pgbench" \
        -h 127.0.0.1 -p "$SLUICE_PORT" -U "$APP_USER" "$@" "$APP_DB"
}

# Backends Postgres currently has for the app user, asked over the superuser's
# Unix socket so that this query's own connection is not counted.
server_connections() {
    pg_admin_psql -A -t -c "SELECT count(*) FROM pg_stat_activity WHERE usename = '$APP_USER'"
}

run_workload() {
    step "Read-only workload through sluice: 20 clients, 2 threads, 10s (pgbench -S)"
    pgbench_via_sluice -c 20 -j 2 -T 10 -S

    step "TPC-B-like read/write workload through sluice: 20 clients, 5s, extended protocol"
    pgbench_via_sluice -c 20 -T 5 -M extended

    step "Server connections while 20 clients are connected through sluice"
    # Run another 20-client load in the background and watch pg_stat_activity
    # on Postgres directly: transaction pooling keeps it at <= the pool size.
    local bench_log="$WORKDIR/pgbench-concurrent.log"
    pgbench_via_sluice -c 20 -T 6 -S >"$bench_log" 2>&1 &
    local bench_pid=$! max=0 n deadline=$((SECONDS + 5))
    while [ "$SECONDS" -lt "$deadline" ] && kill -0 "$bench_pid" 2>/dev/null; do
        n="$(server_connections)"
        [ "$n" -gt "$max" ] && max=$n
        sleep 0.2
    done
    info "pgbench clients connected to sluice: 20"
    info "most 'app' backends seen on Postgres (measured directly): $max  (pool size $POOL_SIZE)"
    info "psql through sluice (DATABASE_URL), counting 'app' backends on the server:"
    "$PG_BIN/psql" -X "postgresql://$APP_USER:$APP_PASSWORD@127.0.0.1:$SLUICE_PORT/$APP_DB" \
        -c "SELECT count(*) AS app_server_connections FROM pg_stat_activity WHERE usename = '$APP_USER'"
    wait "$bench_pid" || { cat "$bench_log" >&2; die "concurrent pgbench failed"; }
    info "(the concurrent pgbench run: $(grep -E '^tps' "$bench_log" || echo 'no tps line'))"
}

summary() {
    step "sluice is running"
    cat <<EOF

    DATABASE_URL=postgresql://$APP_USER:$APP_PASSWORD@127.0.0.1:$SLUICE_PORT/$APP_DB

    Try:      psql "postgresql://$APP_USER:$APP_PASSWORD@127.0.0.1:$SLUICE_PORT/$APP_DB"
    Metrics:  http://127.0.0.1:$HTTP_PORT/metrics   (also /health, /ready, /pools)
    Config:   $SLUICE_CONFIG
    Logs:     $SLUICE_LOG   (sluice)
              $WORKDIR/postgres.log   (postgres)
    Postgres: 127.0.0.1:$PG_PORT (direct, bypassing sluice)
    Stop:     press Ctrl-C here, or run: kill -TERM $$
              (stops sluice, then Postgres, and deletes $WORKDIR)

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
