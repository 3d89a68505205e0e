#!/usr/bin/env bash
# End-to-end read routing benchmark: a read-heavy mix (90% permission lookups, 10%
# writes) against a primary alone and through sluice with one streaming replica.
#
# Sets up, in a temp dir, a throw-away PostgreSQL 15 primary loaded with the
# permission tables of pgbench_compare.sh's permission-join workload, a streaming
# replica of it (pg_basebackup), and two sluice processes: one with the primary only
# and one with the primary and the replica. Then it runs the same weighted pgbench
# mix (`-f read.sql@9 -f write.sql@1`) against three targets:
#   direct-primary       pgbench straight at the primary
#   sluice-primary-only  sluice, database with no replicas (no routing)
#   sluice-replica       sluice, one replica, [routing] consistency = "session" (CONSISTENCY)
# and reports TPS, latency, the share of reads the replica served (from sluice's
# /metrics), and the CPU used by the primary, the replica and sluice (from /proc).
# Writes a markdown report and tears everything down on exit, even on error/Ctrl-C.
#
# See benches/e2e/README.md for usage. All knobs are environment variables:
#   SLUICE_BIN  sluice binary            (default: <repo>/target/release/sluice; required)
#   CLIENTS     pgbench clients (-c)     (default: 64)
#   DURATION    seconds per measured run (default: 20)
#   WARMUP      seconds of warm-up before each measured run (default: 3)
#   MODE        pgbench -M protocol      (default: extended; also simple, prepared)
#   POOL_SIZE   sluice [pool] size       (default: 16; per upstream server)
#   CONSISTENCY sluice-replica's [routing] consistency (default: session; also eventual, global)
#   OUT         markdown report          (default: <repo>/benches/e2e/results/routing-mix.md)
#   PGBENCH_THREADS  pgbench -j          (default: 2; capped at CLIENTS)
#   PG_BIN      Postgres binaries        (default: /usr/lib/postgresql/15/bin)
#   PG_OS_USER  unprivileged OS user for the servers when run as root (default: postgres)
#   SLUICE_RUST_LOG  RUST_LOG and SLUICE_LOG for sluice (default: warn)
#   KEEP_TMP    1 = keep the temp dir (logs, configs) instead of deleting it
set -euo pipefail

# ---------------------------------------------------------------------------
# Configuration
# ---------------------------------------------------------------------------
SCRIPT_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO_ROOT=$(cd "$SCRIPT_DIR/../.." && pwd)

abspath() { case $1 in /*) printf '%s\n' "$1" ;; *) printf '%s\n' "$PWD/$1" ;; esac; }

SLUICE_BIN=$(abspath "${SLUICE_BIN:-$REPO_ROOT/target/release/sluice}")
OUT=$(abspath "${OUT:-$REPO_ROOT/benches/e2e/results/routing-mix.md}")
CLIENTS=${CLIENTS:-64}
DURATION=${DURATION:-20}
WARMUP=${WARMUP:-3}
MODE=${MODE:-extended}
POOL_SIZE=${POOL_SIZE:-16}
CONSISTENCY=${CONSISTENCY:-session}
PGBENCH_THREADS=${PGBENCH_THREADS:-2}
PG_BIN=${PG_BIN:-/usr/lib/postgresql/15/bin}
PG_OS_USER=${PG_OS_USER:-postgres}
SLUICE_RUST_LOG=${SLUICE_RUST_LOG:-warn}
KEEP_TMP=${KEEP_TMP:-0}

DB=bench
DB_USER=bench
DB_PASSWORD=bench
PG_SUPERUSER=postgres
STARTUP_DEADLINE=60   # seconds to wait for any server to come up
STOP_DEADLINE=20      # seconds to wait for any server to stop before SIGKILL
READ_WEIGHT=9         # pgbench -f read.sql@9 -f write.sql@1
WRITE_WEIGHT=1

# Permission tables, as in pgbench_compare.sh's permission-join workload.
PERM_TENANTS=1000         # 50 users and 5 roles per tenant
PERM_USERS=50000          # 1 to 3 roles each (2 on average)
PERM_ROLES_PER_TENANT=5   # 10 to 30 permissions each (20 on average)
PERM_PERMISSIONS=200      # 50 resources x 4 actions

# The targets, in the order they run and appear in the report.
TARGETS=(direct-primary sluice-primary-only sluice-replica)
# Routing reasons that mark a read (see src/router/route.rs): a read that went to
# the primary carries lag, consistency or unavailable instead of read.
READ_REASONS="read lag consistency unavailable"

# ---------------------------------------------------------------------------
# Global state (all initialised so the EXIT trap is safe at any point)
# ---------------------------------------------------------------------------
WORK=""                 # temp dir
PG_PID=""               # primary postmaster pid (session leader)
REPLICA_PID=""          # replica postmaster pid (session leader)
declare -A SLUICE_PIDS=()        # target -> pid (session leader)
declare -A SLUICE_PORTS=()       # target -> listen.postgres port
declare -A SLUICE_HTTP_PORTS=()  # target -> listen.http port
PGBENCH_PID=""          # currently running pgbench (via timeout), if any
WRAPPER_PIDS=()         # background helpers (runuser/setsid wrappers) we spawned
PRIMARY_PORT="" REPLICA_PORT=""
PG_VERSION="" SLUICE_VERSION=""
CLK_TCK=$(getconf CLK_TCK)
STARTED_AT=$SECONDS
declare -A RESULT       # target -> "OK tps lat txns failed pg_ticks rep_ticks sl_ticks elapsed_us" or "FAILED"
declare -A ROUTING      # target -> "reads writes replica p_read p_consistency p_lag p_unavailable other"
declare -A FAILNOTE     # target -> why the run failed

# ---------------------------------------------------------------------------
# Helpers (log .. wait_until as in pgbench_compare.sh)
# ---------------------------------------------------------------------------
log()  { printf '[%(%H:%M:%S)T] %s\n' -1 "$*" >&2; }
warn() { printf '[%(%H:%M:%S)T] WARNING: %s\n' -1 "$*" >&2; }

# die MESSAGE [LOGFILE]: print an error (and the tail of LOGFILE) and exit.
die() {
    printf '[%(%H:%M:%S)T] ERROR: %s\n' -1 "$1" >&2
    if [[ -n ${2:-} && -f ${2:-} ]]; then
        printf -- '--- last lines of %s ---\n' "$2" >&2
        tail -n 30 "$2" >&2 || true
        printf -- '---\n' >&2
    fi
    exit 1
}

# Run a command as the unprivileged server user when we are root.
as_pg() {
    if [[ $EUID -eq 0 ]]; then runuser -u "$PG_OS_USER" -- "$@"; else "$@"; fi
}

# alive PID: true if PID exists and is not a zombie.
alive() {
    local st
    [[ -n ${1:-} ]] || return 1
    st=$(cat "/proc/$1/stat" 2>/dev/null) || return 1
    st=${st##*) }
    [[ ${st:0:1} != Z ]]
}

# pick_free_ports N: print N distinct free TCP ports on 127.0.0.1, chosen below
# the kernel's ephemeral range so client connections cannot grab them.
pick_free_ports() {
    local n=$1
    if command -v python3 >/dev/null 2>&1; then
        python3 - "$n" <<'EOF'
import random, socket, sys
n, held = int(sys.argv[1]), []
while len(held) < n:
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        s.bind(("127.0.0.1", random.randrange(20000, 32000)))
        held.append(s)
    except OSError:
        s.close()
print(" ".join(str(s.getsockname()[1]) for s in held))
EOF
    else
        # Fallback: a port nobody answers on is considered free.
        local -a ports=() p
        while ((${#ports[@]} < n)); do
            p=$((20000 + RANDOM % 12000))
            [[ " ${ports[*]} " == *" $p "* ]] && continue
            if ! (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null; then ports+=("$p"); fi
        done
        echo "${ports[*]}"
    fi
}

# spawn_daemon PIDVAR NAME LOGFILE AS_SERVER_USER(0|1) CMD...
# Starts CMD in a new session (setsid), so it is a session and process-group
# leader, like a daemon, and gets its own scheduler autogroup instead of sharing
# the benchmark's session with pgbench. Stores the daemon's pid in PIDVAR.
spawn_daemon() {
    local pidvar=$1 name=$2 logfile=$3 as_user=$4; shift 4
    local pidfile="$WORK/$name.pid"
    local -a prefix=()
    if [[ $as_user == 1 && $EUID -eq 0 ]]; then prefix=(runuser -u "$PG_OS_USER" --); fi
    rm -f "$pidfile"
    # bash raises its fd limit to the hard limit, writes its own pid, then execs the
    # server in place (same pid).
    # shellcheck disable=SC2016  # $$ and $@ expand in the inner bash, on purpose
    "${prefix[@]}" setsid bash -c 'ulimit -n "$(ulimit -Hn)" 2>/dev/null
        echo $$ >"$0.tmp" && mv "$0.tmp" "$0" && exec "$@"' \
        "$pidfile" "$@" </dev/null >>"$logfile" 2>&1 &
    WRAPPER_PIDS+=($!)
    local deadline=$((SECONDS + 10))
    until [[ -s $pidfile ]]; do
        ((SECONDS < deadline)) || die "$name: did not start (no pid file)" "$logfile"
        sleep 0.05
    done
    printf -v "$pidvar" '%s' "$(<"$pidfile")"
}

# wait_until DEADLINE_SECONDS PID LOGFILE WHAT CMD...: poll CMD until it succeeds,
# failing early if PID dies and late if the deadline passes.
wait_until() {
    local secs=$1 pid=$2 logfile=$3 what=$4; shift 4
    local deadline=$((SECONDS + secs))
    until "$@" >/dev/null 2>&1; do
        alive "$pid" || die "$what: process $pid exited during startup" "$logfile"
        ((SECONDS < deadline)) || die "$what: not ready after ${secs}s" "$logfile"
        sleep 0.1
    done
}

tcp_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

# psql_bench PORT SQL: run SQL as the bench user over TCP (password auth).
psql_bench() {
    PGPASSWORD=$DB_PASSWORD PGCONNECT_TIMEOUT=5 timeout 15 \
        psql -X -h 127.0.0.1 -p "$1" -U "$DB_USER" -d "$DB" -Atq -v ON_ERROR_STOP=1 -c "$2"
}

# psql_su PORT DATABASE SQL: run SQL as the superuser over the Unix socket (trust).
psql_su() {
    PGCONNECT_TIMEOUT=5 timeout 15 \
        psql -X -h "$WORK" -p "$1" -U "$PG_SUPERUSER" -d "$2" -Atq -v ON_ERROR_STOP=1 -c "$3"
}

# now_us: wall clock in microseconds (EPOCHREALTIME without its decimal point).
now_us() { local t=$EPOCHREALTIME; echo "${t/[.,]/}"; }

# tree_cpu_ticks PID: CPU clock ticks (utime+stime+cutime+cstime) of PID and all
# its live descendants. cutime/cstime include children already reaped, so the sum
# keeps counting backends that exited. Tolerates processes vanishing mid-scan.
tree_cpu_ticks() {
    local root=$1
    [[ -n $root ]] || { echo 0; return 0; }
    { cat /proc/[0-9]*/stat 2>/dev/null || true; } | awk -v root="$root" '
        {
            # comm (field 2) may contain spaces and parens: split after the last ")".
            p = 0; for (i = length($0); i > 0; i--) if (substr($0, i, 1) == ")") { p = i; break }
            if (p == 0) next
            pid = $1 + 0
            n = split(substr($0, p + 2), f, " ")
            if (n < 15) next
            ppid[pid] = f[2] + 0
            ticks[pid] = f[12] + f[13] + f[14] + f[15]
        }
        END {
            if (!(root in ticks)) { print 0; exit }
            # Breadth-first walk of descendants.
            total = 0; q[1] = root; head = 1; tail = 1
            while (head <= tail) {
                cur = q[head++]; total += ticks[cur]
                for (c in ppid) if (ppid[c] == cur && c != cur) q[++tail] = c
            }
            print total
        }'
}

# Pids of the primary's live backends serving the bench user (this includes
# sluice's pooled server connections and its lag monitor), space-separated.
bench_backend_pids() { pgrep -d ' ' -P "$PG_PID" -f "^postgres: $DB_USER " 2>/dev/null || true; }

# wait_new_backends_gone "BASELINE PIDS": after a direct run its backends exit on
# their own; wait until every backend not in BASELINE has been reaped, so its CPU
# has moved into the postmaster's cutime/cstime before we read it.
wait_new_backends_gone() {
    local baseline=" $1 " deadline=$((SECONDS + 30)) pid left
    while :; do
        left=0
        for pid in $(bench_backend_pids); do
            if [[ $baseline != *" $pid "* ]]; then left=$((left + 1)); fi
        done
        ((left > 0)) || return 0
        if ((SECONDS >= deadline)); then
            warn "$left direct-connection backend(s) still alive after 30s; CPU figures may be off"
            return 0
        fi
        sleep 0.05
    done
}

# fetch_metrics HTTP_PORT: sluice's Prometheus text on stdout.
fetch_metrics() {
    local url="http://127.0.0.1:$1/metrics"
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

# route_counts HTTP_PORT: "target reason count" lines of
# sluice_route_decisions_total for the bench database (whatever the label order).
route_counts() {
    local text
    text=$(fetch_metrics "$1") || return 1
    awk -v db="$DB" '
        /^sluice_route_decisions_total\{/ {
            lbl = $0; sub(/^[^{]*\{/, "", lbl); sub(/\}.*$/, "", lbl)
            n = split(lbl, kv, ","); d = ""; t = ""; r = ""
            for (i = 1; i <= n; i++) {
                eq = index(kv[i], "="); k = substr(kv[i], 1, eq - 1); v = substr(kv[i], eq + 1)
                gsub(/"/, "", v)
                if (k == "database") d = v; else if (k == "target") t = v; else if (k == "reason") r = v
            }
            if (d == db) print t, r, $NF
        }' <<<"$text"
}

# route_delta BEFORE_FILE AFTER_FILE: "reads writes replica p_read p_consistency
# p_lag p_unavailable other" decided between the two route_counts snapshots.
# reads = decisions with a read reason (either target), replica = those served by
# a replica, p_* = reads kept on the primary by reason, writes = reason write or
# transaction, other = everything else.
route_delta() {
    awk -v readreasons="$READ_REASONS" '
        BEGIN { n = split(readreasons, rr, " "); for (i = 1; i <= n; i++) isread[rr[i]] = 1 }
        FILENAME == ARGV[1] { before[$1 " " $2] = $3; next }
        {
            d = $3 - before[$1 " " $2]
            if (isread[$2]) {
                reads += d
                if ($1 == "replica") replica += d; else prim[$2] += d
            } else if ($2 == "write" || $2 == "transaction") writes += d
            else other += d
        }
        END {
            printf "%d %d %d %d %d %d %d %d\n", reads, writes, replica, prim["read"], \
                prim["consistency"], prim["lag"], prim["unavailable"], other
        }' "$1" "$2"
}

# replica_available HTTP_PORT: true when sluice reports the replica usable.
replica_available() {
    fetch_metrics "$1" | grep -Eq "^sluice_replica_available\{[^}]*database=\"$DB\"[^}]*\} 1\$"
}

# replica_streaming: true when the replica's WAL receiver is streaming.
replica_streaming() {
    [[ $(psql_su "$REPLICA_PORT" postgres "SELECT status FROM pg_stat_wal_receiver") == streaming ]]
}

# ---------------------------------------------------------------------------
# Steps
# ---------------------------------------------------------------------------
check_prerequisites() {
    local p
    for p in initdb postgres pg_isready pg_basebackup pg_ctl; do
        [[ -x $PG_BIN/$p ]] || die "$PG_BIN/$p not found (PostgreSQL 15 server binaries; set PG_BIN or apt-get install postgresql-15)"
    done
    for p in pgbench psql setsid awk pgrep getconf timeout; do
        command -v "$p" >/dev/null || die "'$p' not found in PATH"
    done
    command -v curl >/dev/null || command -v python3 >/dev/null \
        || die "need curl or python3 to read sluice's /metrics"
    [[ -x $SLUICE_BIN ]] || die "sluice binary not found at $SLUICE_BIN (build with 'cargo build --release' or set SLUICE_BIN)"
    if [[ $EUID -eq 0 ]]; then
        command -v runuser >/dev/null || die "running as root needs runuser (util-linux)"
        if ! id -u "$PG_OS_USER" >/dev/null 2>&1; then
            log "creating unprivileged system user '$PG_OS_USER' for the servers"
            useradd --system --no-create-home --shell /usr/sbin/nologin "$PG_OS_USER" \
                || die "could not create user $PG_OS_USER"
        fi
    fi
    [[ $MODE == simple || $MODE == extended || $MODE == prepared ]] \
        || die "unknown pgbench mode '$MODE' in MODE (simple, extended, prepared)"
    [[ $CONSISTENCY == session || $CONSISTENCY == eventual || $CONSISTENCY == global ]] \
        || die "unknown CONSISTENCY '$CONSISTENCY' (session, eventual, global)"
    [[ $CLIENTS =~ ^[1-9][0-9]*$ ]] || die "CLIENTS must be a positive integer"
    [[ $DURATION =~ ^[1-9][0-9]*$ ]] || die "DURATION must be a positive integer"
    local c
    for c in "$WARMUP" "$POOL_SIZE" "$PGBENCH_THREADS"; do
        [[ $c =~ ^[0-9]+$ ]] || die "WARMUP, POOL_SIZE, PGBENCH_THREADS must be integers"
    done
    ((POOL_SIZE >= 1 && PGBENCH_THREADS >= 1)) || die "POOL_SIZE and PGBENCH_THREADS must be at least 1"
    # Direct runs open CLIENTS connections; each sluice keeps up to POOL_SIZE, plus
    # superuser_reserved_connections (3) and the lag monitor.
    ((CLIENTS + 2 * POOL_SIZE + 8 <= 400)) || die "CLIENTS + 2*POOL_SIZE must stay below max_connections=400"
}

make_workdir() {
    WORK=$(mktemp -d "${TMPDIR:-/tmp}/sluice-routing.XXXXXX")
    chmod 755 "$WORK"
    if [[ $EUID -eq 0 ]]; then chown "$PG_OS_USER" "$WORK"; fi
    local -a ports; read -ra ports <<<"$(pick_free_ports 6)"
    PRIMARY_PORT=${ports[0]} REPLICA_PORT=${ports[1]}
    SLUICE_PORTS[sluice-primary-only]=${ports[2]} SLUICE_HTTP_PORTS[sluice-primary-only]=${ports[3]}
    SLUICE_PORTS[sluice-replica]=${ports[4]} SLUICE_HTTP_PORTS[sluice-replica]=${ports[5]}
    log "work dir $WORK; ports: primary=$PRIMARY_PORT replica=$REPLICA_PORT" \
        "sluice-primary-only=${ports[2]} (http ${ports[3]}) sluice-replica=${ports[4]} (http ${ports[5]})"
}

# write_sluice_config TARGET FILE
write_sluice_config() {
    local target=$1 conf=$2 replicas="[]"
    if [[ $target == sluice-replica ]]; then replicas="[\"127.0.0.1:$REPLICA_PORT\"]"; fi
    {
        cat <<EOF
[listen]
postgres = "127.0.0.1:${SLUICE_PORTS[$target]}"
http = "127.0.0.1:${SLUICE_HTTP_PORTS[$target]}"

[pool]
size = $POOL_SIZE

[[databases]]
name = "$DB"
primary = "127.0.0.1:$PRIMARY_PORT"
replicas = $replicas
user = "$DB_USER"
password = "$DB_PASSWORD"

[[users]]
name = "$DB_USER"
password = "$DB_PASSWORD"
EOF
        if [[ $target == sluice-replica ]]; then printf '\n[routing]\nconsistency = "%s"\n' "$CONSISTENCY"; fi
    } >"$conf"
}

# write_sluice_configs: generate both configs and validate them with `sluice
# check`, so a binary without routing support fails the run before the slow setup.
write_sluice_configs() {
    local target conf
    for target in sluice-primary-only sluice-replica; do
        conf=$WORK/$target.toml
        write_sluice_config "$target" "$conf"
        timeout 15 "$SLUICE_BIN" check --config "$conf" >"$WORK/$target-check.log" 2>&1 \
            || die "$target: 'sluice check' rejects the generated $(basename "$conf") (a build without read routing?)" \
                "$WORK/$target-check.log"
    done
}

start_primary() {
    local data=$WORK/primary logfile=$WORK/primary.log
    log "initdb (PostgreSQL: $("$PG_BIN/postgres" --version))"
    as_pg "$PG_BIN/initdb" -D "$data" -U "$PG_SUPERUSER" -E UTF8 --locale=C --no-sync \
        --auth-local=trust --auth-host=scram-sha-256 >"$WORK/initdb.log" 2>&1 \
        || die "initdb failed" "$WORK/initdb.log"
    cat >>"$data/postgresql.conf" <<EOF

# --- sluice routing benchmark ---
listen_addresses = '127.0.0.1'
port = $PRIMARY_PORT
unix_socket_directories = '$WORK'
max_connections = 400
shared_buffers = 256MB
fsync = off
synchronous_commit = on
password_encryption = 'scram-sha-256'
wal_level = replica
max_wal_senders = 5
wal_keep_size = 256MB
hot_standby = on
logging_collector = off
log_min_messages = warning
EOF
    # First match wins: replication for the superuser without a password (for
    # pg_basebackup and the replica's walreceiver), SCRAM for everything else.
    cat >"$data/pg_hba.conf" <<EOF
local all all trust
local replication all trust
host replication $PG_SUPERUSER 127.0.0.1/32 trust
host all all 127.0.0.1/32 scram-sha-256
EOF
    spawn_daemon PG_PID primary "$logfile" 1 "$PG_BIN/postgres" -D "$data"
    wait_until "$STARTUP_DEADLINE" "$PG_PID" "$logfile" "primary" \
        "$PG_BIN/pg_isready" -q -t 1 -h 127.0.0.1 -p "$PRIMARY_PORT"
    PG_VERSION=$(psql_su "$PRIMARY_PORT" postgres 'SELECT version()' | sed 's/, compiled by.*//')
    log "primary up (pid $PG_PID, port $PRIMARY_PORT): $PG_VERSION"

    psql -X -q -h "$WORK" -p "$PRIMARY_PORT" -U "$PG_SUPERUSER" -d postgres -v ON_ERROR_STOP=1 \
        -c "CREATE ROLE $DB_USER LOGIN PASSWORD '$DB_PASSWORD'" \
        -c "CREATE DATABASE $DB OWNER $DB_USER" >>"$WORK/setup.log" 2>&1 \
        || die "creating role/database failed" "$WORK/setup.log"
}

# load_data: the permission tables exactly as pgbench_compare.sh's
# setup_permission_join, plus the write target audit_log; then the two pgbench scripts.
load_data() {
    local sql=$WORK/setup.sql
    log "creating and filling the permission tables and audit_log"
    cat >"$sql" <<EOF
CREATE TABLE tenants (id int NOT NULL, name text NOT NULL, active boolean NOT NULL);
CREATE TABLE users (id int NOT NULL, tenant_id int NOT NULL, email text NOT NULL);
CREATE TABLE roles (id int NOT NULL, tenant_id int NOT NULL, name text NOT NULL);
CREATE TABLE user_roles (user_id int NOT NULL, role_id int NOT NULL);
CREATE TABLE permissions (id int NOT NULL, name text NOT NULL);
CREATE TABLE role_permissions (role_id int NOT NULL, permission_id int NOT NULL);

-- Every 50th tenant is inactive: its users get no permissions.
INSERT INTO tenants SELECT t, 'tenant-' || t, t % 50 <> 0 FROM generate_series(1, $PERM_TENANTS) t;
INSERT INTO users SELECT u, (u - 1) % $PERM_TENANTS + 1, 'user' || u || '@example.com'
    FROM generate_series(1, $PERM_USERS) u;
INSERT INTO roles SELECT (t - 1) * $PERM_ROLES_PER_TENANT + k + 1, t,
        (ARRAY['admin', 'editor', 'viewer', 'billing', 'support'])[k % 5 + 1] || CASE WHEN k >= 5 THEN '-' || k ELSE '' END
    FROM generate_series(1, $PERM_TENANTS) t, generate_series(0, $PERM_ROLES_PER_TENANT - 1) k;
-- 1, 2 or 3 distinct roles of the user's own tenant (2 on average).
INSERT INTO user_roles SELECT u.id, (u.tenant_id - 1) * $PERM_ROLES_PER_TENANT + (u.id + k) % $PERM_ROLES_PER_TENANT + 1
    FROM users u, generate_series(0, 2) k WHERE k <= u.id % 3 AND k < $PERM_ROLES_PER_TENANT;
INSERT INTO permissions SELECT (r - 1) * 4 + a + 1, 'resource' || r || ':' || (ARRAY['read', 'write', 'delete', 'admin'])[a + 1]
    FROM generate_series(1, $PERM_PERMISSIONS / 4) r, generate_series(0, 3) a;
-- 10 to 30 distinct permissions per role (20 on average); 11 is coprime to 200.
INSERT INTO role_permissions SELECT r.id, (r.id * 37 + k * 11) % $PERM_PERMISSIONS + 1
    FROM roles r, generate_series(0, 29) k WHERE k < 10 + r.id % 21;

ALTER TABLE tenants ADD PRIMARY KEY (id);
ALTER TABLE users ADD PRIMARY KEY (id);
ALTER TABLE roles ADD PRIMARY KEY (id);
ALTER TABLE user_roles ADD PRIMARY KEY (user_id, role_id);
ALTER TABLE permissions ADD PRIMARY KEY (id);
ALTER TABLE role_permissions ADD PRIMARY KEY (role_id, permission_id);
CREATE UNIQUE INDEX ON permissions (name);
CREATE INDEX ON users (tenant_id);
CREATE INDEX ON roles (tenant_id);
CREATE INDEX ON user_roles (role_id);
CREATE INDEX ON role_permissions (permission_id);
ALTER TABLE users ADD FOREIGN KEY (tenant_id) REFERENCES tenants;
ALTER TABLE roles ADD FOREIGN KEY (tenant_id) REFERENCES tenants;
ALTER TABLE user_roles ADD FOREIGN KEY (user_id) REFERENCES users;
ALTER TABLE user_roles ADD FOREIGN KEY (role_id) REFERENCES roles;
ALTER TABLE role_permissions ADD FOREIGN KEY (role_id) REFERENCES roles;
ALTER TABLE role_permissions ADD FOREIGN KEY (permission_id) REFERENCES permissions;

-- The write side of the mix: an append-only audit trail.
CREATE TABLE audit_log (id bigserial PRIMARY KEY, user_id int NOT NULL, at timestamptz NOT NULL DEFAULT now());

VACUUM (ANALYZE) tenants, users, roles, user_roles, permissions, role_permissions, audit_log;
EOF
    PGPASSWORD=$DB_PASSWORD PGCONNECT_TIMEOUT=5 timeout 300 \
        psql -X -q -h 127.0.0.1 -p "$PRIMARY_PORT" -U "$DB_USER" -d "$DB" -v ON_ERROR_STOP=1 -f "$sql" \
        >>"$WORK/setup.log" 2>&1 || die "loading the permission tables failed" "$WORK/setup.log"
    psql_su "$PRIMARY_PORT" "$DB" CHECKPOINT >>"$WORK/setup.log" 2>&1 || true

    cat >"$WORK/read.sql" <<EOF
\set uid random(1, $PERM_USERS)
SELECT DISTINCT p.name
  FROM users u
  JOIN tenants t ON t.id = u.tenant_id
  JOIN user_roles ur ON ur.user_id = u.id
  JOIN roles r ON r.id = ur.role_id AND r.tenant_id = u.tenant_id
  JOIN role_permissions rp ON rp.role_id = r.id
  JOIN permissions p ON p.id = rp.permission_id
 WHERE u.id = :uid AND t.active
 ORDER BY p.name;
EOF
    cat >"$WORK/write.sql" <<EOF
\set uid random(1, $PERM_USERS)
INSERT INTO audit_log (user_id) VALUES (:uid);
EOF
    local rows
    rows=$(psql_bench "$PRIMARY_PORT" "SELECT (SELECT count(*) FROM user_roles) || ' user_roles, '
        || (SELECT count(*) FROM role_permissions) || ' role_permissions'") \
        || die "counting rows failed"
    log "loaded: $rows"
}

# start_replica: pg_basebackup of the primary, started on its own port; waits
# until its WAL receiver is streaming.
start_replica() {
    local data=$WORK/replica logfile=$WORK/replica.log
    log "pg_basebackup -> replica"
    as_pg timeout 300 "$PG_BIN/pg_basebackup" -h 127.0.0.1 -p "$PRIMARY_PORT" -U "$PG_SUPERUSER" \
        -D "$data" -R -X stream --checkpoint=fast >"$WORK/basebackup.log" 2>&1 \
        || die "pg_basebackup failed" "$WORK/basebackup.log"
    # The copied postgresql.conf has the primary's port: later lines win.
    cat >>"$data/postgresql.conf" <<EOF

# --- replica ---
port = $REPLICA_PORT
hot_standby = on
EOF
    spawn_daemon REPLICA_PID replica "$logfile" 1 "$PG_BIN/postgres" -D "$data"
    wait_until "$STARTUP_DEADLINE" "$REPLICA_PID" "$logfile" "replica" \
        "$PG_BIN/pg_isready" -q -t 1 -h 127.0.0.1 -p "$REPLICA_PORT"
    wait_until "$STARTUP_DEADLINE" "$REPLICA_PID" "$logfile" "replica (pg_stat_wal_receiver streaming)" \
        replica_streaming
    log "replica up (pid $REPLICA_PID, port $REPLICA_PORT): streaming from the primary"
}

# start_sluice TARGET
start_sluice() {
    local target=$1 port=${SLUICE_PORTS[$1]} http=${SLUICE_HTTP_PORTS[$1]}
    local conf=$WORK/$1.toml logfile=$WORK/$1.log
    spawn_daemon "SLUICE_PIDS[$target]" "$target" "$logfile" 0 \
        env RUST_LOG="$SLUICE_RUST_LOG" SLUICE_LOG="$SLUICE_RUST_LOG" "$SLUICE_BIN" --config "$conf"
    local pid=${SLUICE_PIDS[$target]}
    wait_until "$STARTUP_DEADLINE" "$pid" "$logfile" "$target" tcp_open "$port"
    wait_until "$STARTUP_DEADLINE" "$pid" "$logfile" "$target (SELECT 1 through it)" \
        psql_bench "$port" "SELECT 1"
    wait_until "$STARTUP_DEADLINE" "$pid" "$logfile" "$target (/metrics)" fetch_metrics "$http"
    if [[ $target == sluice-replica ]]; then
        wait_until "$STARTUP_DEADLINE" "$pid" "$logfile" "$target (replica available in /metrics)" \
            replica_available "$http"
    fi
    if [[ -z $SLUICE_VERSION ]]; then
        SLUICE_VERSION=$(timeout 5 "$SLUICE_BIN" --version 2>/dev/null | head -n 1 || true)
        SLUICE_VERSION="${SLUICE_VERSION:-unknown version} ($SLUICE_BIN, repo $(git -C "$REPO_ROOT" rev-parse --short HEAD 2>/dev/null || echo "without commits"))"
    fi
    log "$target up (pid $pid, port $port, http $http): $SLUICE_VERSION"
}

# run_pgbench LOGFILE SECONDS PORT: returns pgbench's exit status. Runs in the
# background and waits, so INT/TERM reach our trap promptly.
run_pgbench() {
    local logfile=$1 secs=$2 port=$3
    local jobs=$((CLIENTS < PGBENCH_THREADS ? CLIENTS : PGBENCH_THREADS))
    PGPASSWORD=$DB_PASSWORD timeout --kill-after=10 $((secs + 60)) \
        pgbench --no-vacuum -f "$WORK/read.sql@$READ_WEIGHT" -f "$WORK/write.sql@$WRITE_WEIGHT" \
        -M "$MODE" -c "$CLIENTS" -j "$jobs" -T "$secs" \
        -h 127.0.0.1 -p "$port" -U "$DB_USER" "$DB" >"$logfile" 2>&1 &
    PGBENCH_PID=$!
    local rc=0
    wait "$PGBENCH_PID" || rc=$?
    PGBENCH_PID=""
    return "$rc"
}

# run_failed TARGET WHAT [LOGFILE]: record a failed run (the other targets still run).
run_failed() {
    local target=$1 what=$2 logfile=${3:-} detail=""
    if [[ -n $logfile && -f $logfile ]]; then
        detail=$(grep -m 1 -E 'error|ERROR|FATAL' "$logfile" || tail -n 1 "$logfile")
    fi
    warn "$target: $what${detail:+: $detail}"
    RESULT[$target]="FAILED"
    FAILNOTE[$target]="$what${detail:+: $detail}"
}

# measure TARGET: warm-up + measured run; fills RESULT (and ROUTING for sluice).
measure() {
    local target=$1 port sluice_pid="" http=""
    if [[ $target == direct-primary ]]; then
        port=$PRIMARY_PORT
    else
        port=${SLUICE_PORTS[$target]} sluice_pid=${SLUICE_PIDS[$target]} http=${SLUICE_HTTP_PORTS[$target]}
    fi
    local wlog=$WORK/pgbench-$target-warmup.log mlog=$WORK/pgbench-$target.log
    local baseline; baseline=$(bench_backend_pids)

    log "$target: ${WARMUP}s warm-up + ${DURATION}s measured run (-M $MODE -c $CLIENTS)"
    if ((WARMUP > 0)); then
        if ! run_pgbench "$wlog" "$WARMUP" "$port"; then
            run_failed "$target" "warm-up pgbench failed" "$wlog"; return 0
        fi
        if [[ $target == direct-primary ]]; then wait_new_backends_gone "$baseline"; fi
    fi
    alive "$PG_PID" || die "the primary died" "$WORK/primary.log"
    alive "$REPLICA_PID" || die "the replica died" "$WORK/replica.log"

    local before=$WORK/routes-$target-before.txt after=$WORK/routes-$target-after.txt
    if [[ -n $http ]]; then route_counts "$http" >"$before" || die "$target: reading /metrics failed"; fi
    local pg0 rep0 sl0 t0 pg1 rep1 sl1 t1
    pg0=$(tree_cpu_ticks "$PG_PID"); rep0=$(tree_cpu_ticks "$REPLICA_PID"); sl0=$(tree_cpu_ticks "$sluice_pid")
    t0=$(now_us)
    if ! run_pgbench "$mlog" "$DURATION" "$port"; then
        run_failed "$target" "pgbench failed" "$mlog"; return 0
    fi
    if [[ $target == direct-primary ]]; then wait_new_backends_gone "$baseline"; fi
    t1=$(now_us)
    pg1=$(tree_cpu_ticks "$PG_PID"); rep1=$(tree_cpu_ticks "$REPLICA_PID"); sl1=$(tree_cpu_ticks "$sluice_pid")
    if [[ -n $sluice_pid ]] && ! alive "$sluice_pid"; then
        run_failed "$target" "sluice process $sluice_pid died" "$WORK/$target.log"; return 0
    fi
    if [[ -n $http ]]; then
        route_counts "$http" >"$after" || die "$target: reading /metrics failed"
        # No counters at all: a database without replicas has no router.
        if [[ -s $after ]]; then ROUTING[$target]=$(route_delta "$before" "$after"); fi
    fi

    local txns tps lat failed
    txns=$(sed -n 's/^number of transactions actually processed: \([0-9]*\).*/\1/p' "$mlog")
    tps=$(sed -n 's/^tps = \([0-9.]*\) (without initial connection time).*/\1/p' "$mlog")
    lat=$(sed -n 's/^latency average = \([0-9.]*\) ms.*/\1/p' "$mlog")
    failed=$(sed -n 's/^number of failed transactions: \([0-9]*\).*/\1/p' "$mlog")
    if [[ -z $txns || -z $tps || -z $lat || $txns -eq 0 ]]; then
        run_failed "$target" "could not parse pgbench output" "$mlog"; return 0
    fi
    RESULT[$target]="OK $tps $lat $txns ${failed:-0} $((pg1 - pg0)) $((rep1 - rep0)) $((sl1 - sl0)) $((t1 - t0))"
    local -a c; IFS='|' read -ra c <<<"$(row_cells "$target")"
    log "$target: tps=${c[1]// /} lat=${c[2]// /}ms reads-on-replica=${c[3]// /}%" \
        "primary-cpu=${c[4]// /}% (${c[5]// /}us/txn) replica-cpu=${c[6]// /}% sluice-cpu=${c[7]// /}us/txn txns=$txns"
}

# row_cells TARGET: the report's table row for TARGET (without the leading "| target ").
row_cells() {
    local target=$1
    local -a r rt
    read -ra r <<<"${RESULT[$target]:-FAILED}"
    if [[ ${r[0]} != OK ]]; then echo "| FAILED | - | - | - | - | - | - |"; return 0; fi
    read -ra rt <<<"${ROUTING[$target]:-}"
    awk -v tps="${r[1]}" -v lat="${r[2]}" -v txns="${r[3]}" -v pg="${r[5]}" -v rep="${r[6]}" \
        -v sl="${r[7]}" -v us="${r[8]}" -v hz="$CLK_TCK" -v reads="${rt[0]:-}" -v replica="${rt[2]:-}" \
        -v issluice="$([[ $target == sluice-* ]] && echo 1 || echo 0)" 'BEGIN {
            secs = us / 1e6
            share = (reads != "" && reads + 0 > 0) ? sprintf("%.1f", 100 * replica / reads) : "-"
            slus = issluice == "1" ? sprintf("%.1f", sl / hz * 1e6 / txns) : "-"
            printf "| %.0f | %.3f | %s | %.0f | %.1f | %.0f | %s |\n", tps, lat, share,
                100 * pg / hz / secs, pg / hz * 1e6 / txns, 100 * rep / hz / secs, slus
        }'
}

# routing_row TARGET: the routing table's row for a sluice target.
routing_row() {
    local target=$1
    local -a rt
    read -ra rt <<<"${ROUTING[$target]:-}"
    if ((${#rt[@]} < 8)); then
        # No router: sluice keeps no routing counters for a database without replicas.
        echo "| $target | - | - | - | - | - | - | - | - |"
        return 0
    fi
    awk -v t="$target" -v reads="${rt[0]}" -v writes="${rt[1]}" -v replica="${rt[2]}" -v pread="${rt[3]}" \
        -v pcons="${rt[4]}" -v plag="${rt[5]}" -v punav="${rt[6]}" -v other="${rt[7]}" '
        function pct(x) { return reads > 0 ? sprintf("%d (%.1f%%)", x, 100 * x / reads) : x }
        BEGIN {
            printf "| %s | %d | %d | %s | %s | %s | %s | %s | %d |\n", t, reads, writes,
                pct(replica), pct(pcons), pct(plag), pct(punav), pct(pread), other
        }'
}

# sluice_log_lines TARGET: WARN/ERROR lines of its log, without ANSI colours.
sluice_log_lines() {
    local f=$WORK/$1.log
    [[ -f $f ]] || return 0
    sed 's/\x1b\[[0-9;]*m//g' "$f" | grep -E '(^|[[:space:]])(WARN|ERROR)[[:space:]]' || true
}

write_report() {
    local cpu_model target n
    cpu_model=$(awk -F': ' '/^model name/ { print $2; exit }' /proc/cpuinfo)
    mkdir -p "$(dirname "$OUT")"
    {
        echo "# sluice read routing: 90% permission lookups, 10% writes"
        echo
        echo "- date: $(date -u '+%Y-%m-%d %H:%M:%S UTC')"
        echo "- machine: $(nproc) CPUs, ${cpu_model:-unknown CPU}, kernel $(uname -r)"
        echo "- postgres: $PG_VERSION; primary + one streaming replica (pg_basebackup -X stream), both on this machine"
        echo "  (fsync=off, synchronous_commit=on, shared_buffers=256MB, max_connections=400, wal_level=replica)"
        echo "- sluice: $SLUICE_VERSION, transaction pooling, pool size $POOL_SIZE per upstream server"
        echo "  - \`sluice-primary-only\`: database \`$DB\` with \`replicas = []\` (no routing)"
        echo "  - \`sluice-replica\`: \`replicas = [<replica>]\`, \`[routing] consistency = \"$CONSISTENCY\"\` (other routing/lag settings: the binary's defaults)"
        echo "- pgbench: \`-f read.sql@$READ_WEIGHT -f write.sql@$WRITE_WEIGHT -M $MODE -c $CLIENTS" \
            "-j $((CLIENTS < PGBENCH_THREADS ? CLIENTS : PGBENCH_THREADS)) -T $DURATION --no-vacuum\`" \
            "after a ${WARMUP}s warm-up of the same mix, per target"
        echo "- data: the permission-join tables of pgbench_compare.sh ($PERM_TENANTS tenants, $PERM_USERS users)" \
            "plus \`audit_log\` (bigserial PK), appended to by the writes"
        echo
        echo "| target | TPS | avg latency ms | reads on replica % | primary CPU % of one core | primary CPU µs/txn | replica CPU % | sluice CPU µs/txn |"
        echo "|---|---:|---:|---:|---:|---:|---:|---:|"
        for target in "${TARGETS[@]}"; do
            echo "| $target $(row_cells "$target")"
        done
        for target in "${TARGETS[@]}"; do
            if [[ -n ${FAILNOTE[$target]:-} ]]; then
                echo
                echo "- FAILED $target: \`${FAILNOTE[$target]//\`/\'}\`"
            fi
        done
        echo
        echo "## Routing decisions during the measured run (sluice /metrics)"
        echo
        echo "Reads are decisions with reason \`read\` (served by the replica) or \`consistency\`, \`lag\`," \
            "\`unavailable\` (kept on the primary); % of reads. Writes: reason \`write\`/\`transaction\`."
        echo
        echo "| target | reads | writes | on replica | primary: consistency | primary: lag | primary: unavailable | primary: read | other |"
        echo "|---|---:|---:|---:|---:|---:|---:|---:|---:|"
        for target in sluice-primary-only sluice-replica; do routing_row "$target"; done
        echo
        echo "## How it was measured"
        echo
        echo "- TPS: pgbench's \`tps = … (without initial connection time)\`; latency: its \`latency average\`."
        echo "- CPU: utime+stime+cutime+cstime from \`/proc/<pid>/stat\` (${CLK_TCK} ticks/s), read just before" \
            "and just after the measured run. Primary and replica = the postmaster and all its descendants" \
            "(backends, walsender/walreceiver, startup/recovery, checkpointer …; reaped backends count via cutime/cstime)." \
            "sluice = the sluice process (all threads). \"% of one core\" = CPU seconds / wall seconds between the" \
            "two readings; \"µs/txn\" = CPU / pgbench's processed transactions."
        echo "- \`direct-primary\` vs the sluice targets is not a routing comparison: sluice auto-prepares the" \
            "unnamed statements of \`-M extended\` (\`[prepare] auto\`, on by default), which saves Postgres the planning" \
            "of the 6-table join on every read (see pgbench_compare.sh's permission-join results). Routing's effect is" \
            "\`sluice-replica\` vs \`sluice-primary-only\`."
        echo "- For \`direct-primary\` the primary's CPU includes starting and stopping $CLIENTS backends; the after-reading" \
            "waits until they have been reaped. The replica's CPU in the runs without routing is WAL replay only."
        echo "- reads on replica % = replica decisions / all read decisions (\`sluice_route_decisions_total\`" \
            "deltas of the measured run). Both sluice processes, the primary and the replica run all the time," \
            "each in its own session (setsid); sluice-replica's lag monitor probes both servers (every 100 ms by default)" \
            "during every run."
        echo "- Everything (pgbench, sluice, both Postgres servers) shares the same $(nproc) CPUs, so TPS is capped by total CPU;" \
            "the CPU columns show where the work went. sluice-replica may hold up to $POOL_SIZE server connections" \
            "to each server, sluice-primary-only up to $POOL_SIZE to the primary."
        echo
        echo "## sluice logs"
        echo
        for target in sluice-primary-only sluice-replica; do
            n=$(sluice_log_lines "$target" | wc -l)
            echo "- \`$target\`: $n WARN/ERROR line(s) (RUST_LOG=$SLUICE_RUST_LOG)"
            if ((n > 0)); then
                echo
                echo '```'
                sluice_log_lines "$target" | head -n 20
                if ((n > 20)); then echo "… $((n - 20)) more"; fi
                echo '```'
            fi
        done
        echo
        echo "## pgbench scripts"
        echo
        echo "read.sql (weight $READ_WEIGHT):"
        echo
        echo '```sql'
        cat "$WORK/read.sql"
        echo '```'
        echo
        echo "write.sql (weight $WRITE_WEIGHT, autocommit):"
        echo
        echo '```sql'
        cat "$WORK/write.sql"
        echo '```'
    } >"$OUT"
    log "report written to $OUT"
    cat "$OUT"
}

# ---------------------------------------------------------------------------
# Teardown
# ---------------------------------------------------------------------------
# stop_daemon NAME PID SIGNAL: signal the daemon's process group, wait with a
# deadline, then SIGKILL the group.
stop_daemon() {
    local name=$1 pid=$2 sig=$3
    alive "$pid" || return 0
    kill "-$sig" -- "-$pid" 2>/dev/null || kill "-$sig" "$pid" 2>/dev/null || true
    local deadline=$((SECONDS + STOP_DEADLINE))
    while alive "$pid" && ((SECONDS < deadline)); do sleep 0.1; done
    if alive "$pid"; then
        warn "$name (pid $pid) did not stop after ${STOP_DEADLINE}s; sending SIGKILL"
        kill -KILL -- "-$pid" 2>/dev/null || kill -KILL "$pid" 2>/dev/null || true
    fi
}

# stop_postgres NAME PID DATADIR: pg_ctl stop -m fast, falling back to signals.
# Backends call setsid() themselves, so they are not in the postmaster's process
# group: remember them, stop the postmaster, then make sure they are gone.
stop_postgres() {
    local name=$1 pid=$2 data=$3
    alive "$pid" || return 0
    local -a kids; mapfile -t kids < <(pgrep -P "$pid")
    as_pg timeout $((STOP_DEADLINE + 5)) "$PG_BIN/pg_ctl" stop -D "$data" -m fast -w -t "$STOP_DEADLINE" \
        >>"$WORK/$name.log" 2>&1 || warn "$name: pg_ctl stop -m fast failed; signalling it"
    stop_daemon "$name" "$pid" INT
    local k
    for k in "${kids[@]}"; do
        if [[ $(cat "/proc/$k/comm" 2>/dev/null) == postgres ]]; then kill -KILL "$k" 2>/dev/null; fi
    done
}

cleanup() {
    local rc=$?
    set +e
    trap - EXIT INT TERM
    if ((rc != 0)); then log "exiting with status $rc; stopping everything we started"; fi
    if [[ -n $PGBENCH_PID ]]; then kill -TERM "$PGBENCH_PID" 2>/dev/null; wait "$PGBENCH_PID" 2>/dev/null; fi
    local t
    for t in "${!SLUICE_PIDS[@]}"; do stop_daemon "$t" "${SLUICE_PIDS[$t]}" TERM; done
    stop_postgres replica "$REPLICA_PID" "$WORK/replica"
    stop_postgres primary "$PG_PID" "$WORK/primary"
    local w
    for w in "${WRAPPER_PIDS[@]}"; do kill "$w" 2>/dev/null; wait "$w" 2>/dev/null; done
    if [[ -n $WORK && -d $WORK ]]; then
        if [[ $KEEP_TMP == 1 ]]; then
            log "keeping $WORK"
        else
            rm -rf "$WORK"
        fi
    fi
    log "done in $((SECONDS - STARTED_AT))s"
    exit "$rc"
}

main() {
    trap cleanup EXIT
    trap 'exit 130' INT
    trap 'exit 143' TERM
    check_prerequisites
    log "plan: ${#TARGETS[@]} targets x (${WARMUP}s warm-up + ${DURATION}s), ~$((${#TARGETS[@]} * (WARMUP + DURATION + 2) + 30))s with setup"
    make_workdir
    write_sluice_configs
    start_primary
    load_data
    start_replica
    start_sluice sluice-primary-only
    start_sluice sluice-replica
    local target
    for target in "${TARGETS[@]}"; do measure "$target"; done
    write_report
}

if [[ ${BASH_SOURCE[0]} == "$0" ]]; then main "$@"; fi
