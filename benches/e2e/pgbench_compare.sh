#!/usr/bin/env bash
# End-to-end pgbench comparison: direct Postgres vs PgBouncer vs sluice, in one run.
#
# Sets up a throw-away PostgreSQL 15 cluster, a PgBouncer and (if built) one sluice
# per config variant in a temp dir, runs each workload (`pgbench -S`, or a custom
# permission-lookup join) against each target for every protocol mode and client
# count, measures throughput, latency and the CPU consumed by the proxy and by
# Postgres, writes a markdown report, and tears everything down on exit.
#
# See benches/e2e/README.md for usage. All knobs are environment variables:
#   SLUICE_BIN  sluice binary            (default: <repo>/target/release/sluice; skipped if missing)
#   CLIENTS     pgbench client counts    (default: "1 16 64 256")
#   DURATION    seconds per measured run (default: 15)
#   WARMUP      seconds of warm-up before each measured run (default: 3)
#   POOL_SIZE   server pool size for both proxies (default: 16)
#   SCALE       pgbench scale factor     (default: 10)
#   MODES       pgbench -M protocol(s)   (default: "simple"; also "extended", "prepared")
#   WORKLOADS   workloads to run         (default: "select-only"; also "permission-join")
#   SLUICE_VARIANTS  sluice configs, one process each (default: "default"; also "noprepare")
#   OUT         markdown report          (default: <repo>/benches/e2e/results.md)
#   PGBENCH_THREADS  max pgbench -j      (default: 2; -j is min(clients, this))
#   PG_BIN      Postgres binaries        (default: /usr/lib/postgresql/15/bin)
#   PG_OS_USER  unprivileged OS user for servers when run as root (default: postgres)
#   SLUICE_RUST_LOG  RUST_LOG for sluice (default: warn)
#   KEEP_TMP    1 = keep the temp dir (logs, configs) instead of deleting it
set -euo pipefail

# ---------------------------------------------------------------------------
# Configuration
# ---------------------------------------------------------------------------
SCRIPT_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO_ROOT=$(cd "$SCRIPT_DIR/../.." && pwd)

abspath() { case $1 in /*) printf '%s\n' "$1" ;; *) printf '%s\n' "$PWD/$1" ;; esac; }

SLUICE_BIN=$(abspath "${SLUICE_BIN:-$REPO_ROOT/target/release/sluice}")
OUT=$(abspath "${OUT:-$REPO_ROOT/benches/e2e/results.md}")
CLIENTS=${CLIENTS:-"1 16 64 256"}
DURATION=${DURATION:-15}
WARMUP=${WARMUP:-3}
POOL_SIZE=${POOL_SIZE:-16}
SCALE=${SCALE:-10}
MODES=${MODES:-simple}
WORKLOADS=${WORKLOADS:-select-only}
SLUICE_VARIANTS=${SLUICE_VARIANTS:-default}
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

# permission-join data set (see setup_permission_join)
PERM_TENANTS=1000         # 50 users and 5 roles per tenant
PERM_USERS=50000          # 1 to 3 roles each (2 on average)
PERM_ROLES_PER_TENANT=5   # 10 to 30 permissions each (20 on average)
PERM_PERMISSIONS=200      # 50 resources x 4 actions

# ---------------------------------------------------------------------------
# Global state (all initialised so the EXIT trap is safe at any point)
# ---------------------------------------------------------------------------
WORK=""                 # temp dir
PG_PID=""               # postmaster pid (session leader)
PGBOUNCER_PID=""        # pgbouncer pid (session leader)
declare -A SLUICE_PIDS=()   # sluice variant -> pid (session leader)
declare -A SLUICE_PORTS=()  # sluice variant -> listen port
VARIANTS=()             # SLUICE_VARIANTS as an array; empty when sluice is skipped
PGBENCH_PID=""          # currently running pgbench (via timeout), if any
WRAPPER_PIDS=()         # background helpers (runuser/setsid wrappers) we spawned
PG_PORT="" PGBOUNCER_PORT=""
PG_VERSION="" PGBOUNCER_VERSION="" SLUICE_VERSION=""   # as reported by the running servers
RUN_SLUICE=1
CLK_TCK=$(getconf CLK_TCK)
declare -A RESULT       # "workload|mode|clients|target" -> "OK tps lat proxy_us proxy_s10k pg_us txns" or "FAILED"
declare -A FAILNOTE     # "workload|mode|clients|target" -> why the run failed

# ---------------------------------------------------------------------------
# Helpers
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
    # bash raises its fd limit to the hard limit (pgbouncer wants ~max_client_conn
    # fds), writes its own pid, then execs the server in place (same pid).
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

# has_word LIST WORD: true if WORD is one of the whitespace-separated LIST.
has_word() { local w; for w in $1; do [[ $w == "$2" ]] && return 0; done; return 1; }

tcp_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

# psql_bench PORT SQL: run SQL as the bench user over TCP (password auth).
psql_bench() {
    PGPASSWORD=$DB_PASSWORD PGCONNECT_TIMEOUT=5 timeout 15 \
        psql -X -h 127.0.0.1 -p "$1" -U "$DB_USER" -d "$DB" -Atq -v ON_ERROR_STOP=1 -c "$2"
}

# sluice_target VARIANT: the target name in logs and the report: "sluice" for the
# default variant, "sluice-VARIANT" otherwise.
sluice_target() { if [[ $1 == default ]]; then echo sluice; else echo "sluice-$1"; fi; }

# sluice_conf VARIANT: path of the variant's generated config.
sluice_conf() { if [[ $1 == default ]]; then echo "$WORK/proxy.toml"; else echo "$WORK/proxy-$1.toml"; fi; }

# variant_toml VARIANT: what the variant appends to the generated proxy.toml.
# Fails for an unknown variant. Add new variants here and in variant_desc.
variant_toml() {
    case $1 in
        default) ;;
        noprepare) printf '\n[prepare]\nauto = false\n' ;;
        *) return 1 ;;
    esac
}

variant_desc() {
    case $1 in
        default) echo 'generated proxy.toml as is (the binary'\''s defaults)' ;;
        noprepare) echo "plus \`[prepare] auto = false\`" ;;
    esac
}

workload_desc() {
    case $1 in
        select-only) echo "\`pgbench -S\` (built-in select-only), scale $SCALE" ;;
        permission-join) echo "\`pgbench -f permission-join.sql\`: one 6-table permission lookup per transaction for a random user ($PERM_TENANTS tenants, $PERM_USERS users; query below)" ;;
    esac
}

# tree_cpu_ticks PID: CPU clock ticks (utime+stime+cutime+cstime) of PID and all
# its live descendants. cutime/cstime include children already reaped, so the sum
# keeps counting backends that exited. Tolerates processes vanishing mid-scan.
tree_cpu_ticks() {
    local root=$1
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

ticks_to_seconds() { awk -v t="$1" -v hz="$CLK_TCK" 'BEGIN { printf "%.4f", t / hz }'; }

# Pids of the live Postgres backends serving the bench user (this includes the
# proxies' pooled server connections), space-separated.
bench_backend_pids() { pgrep -d ' ' -P "$PG_PID" -f "^postgres: $DB_USER " 2>/dev/null || true; }

# wait_new_backends_gone "BASELINE PIDS": after a direct run its backends exit on
# their own; wait until every backend not in BASELINE (the proxies' pooled
# connections) has been reaped, so its CPU has moved into the postmaster's
# cutime/cstime before we read it.
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

# ---------------------------------------------------------------------------
# Steps
# ---------------------------------------------------------------------------
check_prerequisites() {
    local p
    for p in initdb postgres pg_isready; do
        [[ -x $PG_BIN/$p ]] || die "$PG_BIN/$p not found (PostgreSQL 15 server binaries; set PG_BIN or apt-get install postgresql-15)"
    done
    for p in pgbench psql setsid awk pgrep getconf timeout; do
        command -v "$p" >/dev/null || die "'$p' not found in PATH"
    done
    if ! command -v pgbouncer >/dev/null; then
        if [[ $EUID -eq 0 ]] && command -v apt-get >/dev/null; then
            log "pgbouncer not found; installing it with apt-get"
            # Never let the package start a system-wide pgbouncer service.
            local policy=/usr/sbin/policy-rc.d created_policy=0
            if [[ ! -e $policy ]]; then
                printf '#!/bin/sh\nexit 101\n' >"$policy" && chmod +x "$policy" && created_policy=1
            fi
            { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq pgbouncer; } >&2 \
                || { if ((created_policy)); then rm -f "$policy"; fi; die "apt-get install pgbouncer failed"; }
            if ((created_policy)); then rm -f "$policy"; fi
        fi
        command -v pgbouncer >/dev/null || die "pgbouncer not found (apt-get install pgbouncer)"
    fi
    if [[ $EUID -eq 0 ]]; then
        command -v runuser >/dev/null || die "running as root needs runuser (util-linux)"
        if ! id -u "$PG_OS_USER" >/dev/null 2>&1; then
            log "creating unprivileged system user '$PG_OS_USER' for the servers"
            useradd --system --no-create-home --shell /usr/sbin/nologin "$PG_OS_USER" \
                || die "could not create user $PG_OS_USER"
        fi
    fi
    if [[ ! -x $SLUICE_BIN ]]; then
        warn "sluice binary not found at $SLUICE_BIN: skipping sluice (build with 'cargo build --release' or set SLUICE_BIN)"
        RUN_SLUICE=0
    fi
    local m c w v
    for m in $MODES; do
        [[ $m == simple || $m == extended || $m == prepared ]] || die "unknown pgbench mode '$m' in MODES"
    done
    for w in $WORKLOADS; do
        [[ $w == select-only || $w == permission-join ]] || die "unknown workload '$w' in WORKLOADS (select-only, permission-join)"
    done
    [[ -n ${MODES// /} && -n ${CLIENTS// /} && -n ${WORKLOADS// /} ]] || die "MODES, CLIENTS and WORKLOADS must not be empty"
    read -ra VARIANTS <<<"$SLUICE_VARIANTS"
    ((${#VARIANTS[@]} > 0)) || die "SLUICE_VARIANTS must not be empty"
    local seen=" "
    for v in "${VARIANTS[@]}"; do
        variant_toml "$v" >/dev/null || die "unknown sluice variant '$v' in SLUICE_VARIANTS (default, noprepare)"
        [[ $seen != *" $v "* ]] || die "sluice variant '$v' appears twice in SLUICE_VARIANTS"
        seen+="$v "
    done
    if ((!RUN_SLUICE)); then VARIANTS=(); fi
    for c in $CLIENTS; do [[ $c =~ ^[1-9][0-9]*$ ]] || die "bad client count '$c' in CLIENTS"; done
    for c in "$DURATION" "$WARMUP" "$POOL_SIZE" "$SCALE" "$PGBENCH_THREADS"; do
        [[ $c =~ ^[0-9]+$ ]] || die "DURATION, WARMUP, POOL_SIZE, SCALE, PGBENCH_THREADS must be integers"
    done
}

make_workdir() {
    WORK=$(mktemp -d "${TMPDIR:-/tmp}/sluice-e2e.XXXXXX")
    chmod 755 "$WORK"
    if [[ $EUID -eq 0 ]]; then chown "$PG_OS_USER" "$WORK"; fi
    local -a ports; read -ra ports <<<"$(pick_free_ports $((2 + ${#VARIANTS[@]})))"
    PG_PORT=${ports[0]} PGBOUNCER_PORT=${ports[1]}
    local i=2 v desc="postgres=$PG_PORT pgbouncer=$PGBOUNCER_PORT"
    for v in "${VARIANTS[@]}"; do
        SLUICE_PORTS[$v]=${ports[i]}; i=$((i + 1))
        desc+=" $(sluice_target "$v")=${SLUICE_PORTS[$v]}"
    done
    log "work dir $WORK; ports: $desc"
}

start_postgres() {
    local data=$WORK/pgdata logfile=$WORK/postgres.log
    log "initdb (PostgreSQL: $("$PG_BIN/postgres" --version))"
    as_pg "$PG_BIN/initdb" -D "$data" -U "$PG_SUPERUSER" -E UTF8 --locale=C --no-sync \
        --auth-local=trust --auth-host=scram-sha-256 >"$WORK/initdb.log" 2>&1 \
        || die "initdb failed" "$WORK/initdb.log"
    cat >>"$data/postgresql.conf" <<EOF

# --- sluice e2e benchmark ---
listen_addresses = '127.0.0.1'
port = $PG_PORT
unix_socket_directories = '$WORK'
max_connections = 400
shared_buffers = 256MB
fsync = off
synchronous_commit = off
full_page_writes = off
password_encryption = 'scram-sha-256'
logging_collector = off
log_min_messages = warning
EOF
    spawn_daemon PG_PID postgres "$logfile" 1 "$PG_BIN/postgres" -D "$data"
    wait_until "$STARTUP_DEADLINE" "$PG_PID" "$logfile" "postgres" \
        "$PG_BIN/pg_isready" -q -t 1 -h 127.0.0.1 -p "$PG_PORT"
    PG_VERSION=$(psql -X -Atq -h "$WORK" -p "$PG_PORT" -U "$PG_SUPERUSER" -d postgres -c 'SELECT version()' \
        | sed 's/, compiled by.*//')
    log "postgres up (pid $PG_PID): $PG_VERSION"

    psql -X -q -h "$WORK" -p "$PG_PORT" -U "$PG_SUPERUSER" -d postgres -v ON_ERROR_STOP=1 \
        -c "CREATE ROLE $DB_USER LOGIN PASSWORD '$DB_PASSWORD'" \
        -c "CREATE DATABASE $DB OWNER $DB_USER" >>"$WORK/setup.log" 2>&1 \
        || die "creating role/database failed" "$WORK/setup.log"
}

# load_data: create and fill the tables the selected workloads need.
load_data() {
    if has_word "$WORKLOADS" select-only; then
        log "pgbench -i -s $SCALE"
        PGPASSWORD=$DB_PASSWORD pgbench -i -s "$SCALE" -h 127.0.0.1 -p "$PG_PORT" -U "$DB_USER" "$DB" \
            >>"$WORK/setup.log" 2>&1 || die "pgbench -i failed" "$WORK/setup.log"
    fi
    if has_word "$WORKLOADS" permission-join; then setup_permission_join; fi
    psql -X -q -h "$WORK" -p "$PG_PORT" -U "$PG_SUPERUSER" -d "$DB" -c CHECKPOINT >>"$WORK/setup.log" 2>&1 || true
}

# setup_permission_join: the schema of a multi-tenant app's role-based access
# control, filled deterministically with generate_series (a few seconds), and the
# pgbench script: the permission lookup such an app runs on every request.
setup_permission_join() {
    local sql=$WORK/permission-join-setup.sql
    log "permission-join: creating and filling the permission tables"
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
VACUUM (ANALYZE) tenants, users, roles, user_roles, permissions, role_permissions;
EOF
    PGPASSWORD=$DB_PASSWORD PGCONNECT_TIMEOUT=5 timeout 300 \
        psql -X -q -h 127.0.0.1 -p "$PG_PORT" -U "$DB_USER" -d "$DB" -v ON_ERROR_STOP=1 -f "$sql" \
        >>"$WORK/setup.log" 2>&1 || die "permission-join setup failed" "$WORK/setup.log"
    cat >"$WORK/permission-join.sql" <<EOF
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
    local rows
    rows=$(psql_bench "$PG_PORT" "SELECT (SELECT count(*) FROM user_roles) || ' user_roles, '
        || (SELECT count(*) FROM role_permissions) || ' role_permissions, a lookup returns '
        || (SELECT round(avg(n)) FROM (SELECT count(DISTINCT rp.permission_id) AS n FROM user_roles ur
            JOIN role_permissions rp USING (role_id) WHERE ur.user_id <= 1000 GROUP BY ur.user_id) s)
        || ' rows on average'") || die "permission-join: counting rows failed"
    log "permission-join: $rows"
}

start_pgbouncer() {
    local dir=$WORK/pgbouncer logfile=$WORK/pgbouncer.log
    mkdir -p "$dir"
    printf '"%s" "%s"\n' "$DB_USER" "$DB_PASSWORD" >"$dir/userlist.txt"
    cat >"$dir/pgbouncer.ini" <<EOF
[databases]
$DB = host=127.0.0.1 port=$PG_PORT dbname=$DB

[pgbouncer]
listen_addr = 127.0.0.1
listen_port = $PGBOUNCER_PORT
unix_socket_dir =
auth_type = scram-sha-256
auth_file = $dir/userlist.txt
pool_mode = transaction
default_pool_size = $POOL_SIZE
min_pool_size = 0
reserve_pool_size = 0
max_client_conn = 1000
ignore_startup_parameters = extra_float_digits
log_connections = 0
log_disconnections = 0
log_pooler_errors = 1
EOF
    chmod 600 "$dir/userlist.txt"
    if [[ $EUID -eq 0 ]]; then chown -R "$PG_OS_USER" "$dir"; fi
    spawn_daemon PGBOUNCER_PID pgbouncer "$logfile" 1 "$(command -v pgbouncer)" "$dir/pgbouncer.ini"
    wait_until "$STARTUP_DEADLINE" "$PGBOUNCER_PID" "$logfile" "pgbouncer" tcp_open "$PGBOUNCER_PORT"
    wait_until "$STARTUP_DEADLINE" "$PGBOUNCER_PID" "$logfile" "pgbouncer (SELECT 1 through it)" \
        psql_bench "$PGBOUNCER_PORT" "SELECT 1"
    PGBOUNCER_VERSION=$(sed -n 's/.*LOG process up: \([^,]*\),.*/\1/p' "$logfile" | head -n 1)
    PGBOUNCER_VERSION=${PGBOUNCER_VERSION:-$(pgbouncer --version | head -n 1)}
    log "pgbouncer up (pid $PGBOUNCER_PID): $PGBOUNCER_VERSION"
}

# write_sluice_configs: generate every variant's config and validate it with
# `sluice check`, so a config this binary rejects fails the run before the slow setup.
write_sluice_configs() {
    local v target conf
    for v in "${VARIANTS[@]}"; do
        target=$(sluice_target "$v"); conf=$(sluice_conf "$v")
        write_sluice_config "$v" "$conf"
        if ! timeout 15 "$SLUICE_BIN" check --config "$conf" >"$WORK/$target-check.log" 2>&1; then
            printf -- '--- variant %s appends to proxy.toml: ---%s\n' "$v" "$(variant_toml "$v")" >>"$WORK/$target-check.log"
            die "$target: 'sluice check' rejects the generated $(basename "$conf"); this sluice binary does not support SLUICE_VARIANTS variant '$v'" \
                "$WORK/$target-check.log"
        fi
    done
}

# write_sluice_config VARIANT FILE
write_sluice_config() {
    local v=$1 conf=$2
    {
        cat <<EOF
[listen]
postgres = "127.0.0.1:${SLUICE_PORTS[$v]}"
http = "127.0.0.1:0"

[pool]
mode = "transaction"
size = $POOL_SIZE

[[databases]]
name = "$DB"
primary = "127.0.0.1:$PG_PORT"
user = "$DB_USER"
password = "$DB_PASSWORD"

[[users]]
name = "$DB_USER"
password = "$DB_PASSWORD"
EOF
        variant_toml "$v"
    } >"$conf"
}

# start_sluice VARIANT: start the variant's sluice from its generated config.
start_sluice() {
    local v=$1 target port conf logfile
    target=$(sluice_target "$v"); port=${SLUICE_PORTS[$v]}; conf=$(sluice_conf "$v")
    logfile=$WORK/$target.log
    spawn_daemon "SLUICE_PIDS[$v]" "$target" "$logfile" 0 \
        env RUST_LOG="$SLUICE_RUST_LOG" "$SLUICE_BIN" --config "$conf"
    local pid=${SLUICE_PIDS[$v]}
    wait_until "$STARTUP_DEADLINE" "$pid" "$logfile" "$target" tcp_open "$port"
    wait_until "$STARTUP_DEADLINE" "$pid" "$logfile" "$target (SELECT 1 through it)" \
        psql_bench "$port" "SELECT 1"
    if [[ -z $SLUICE_VERSION ]]; then
        SLUICE_VERSION=$(timeout 5 "$SLUICE_BIN" --version 2>/dev/null | head -n 1 || true)
        SLUICE_VERSION="${SLUICE_VERSION:-unknown version} ($SLUICE_BIN, repo $(git -C "$REPO_ROOT" rev-parse --short HEAD 2>/dev/null || echo "without commits"))"
    fi
    log "$target up (pid $pid, port $port, $(basename "$conf")): $SLUICE_VERSION"
}

# run_pgbench LOGFILE WORKLOAD MODE CLIENTS SECONDS PORT: returns pgbench's exit
# status. Runs in the background and waits, so INT/TERM reach our trap promptly.
run_pgbench() {
    local logfile=$1 workload=$2 mode=$3 clients=$4 secs=$5 port=$6
    local jobs=$((clients < PGBENCH_THREADS ? clients : PGBENCH_THREADS))
    ((jobs >= 1)) || jobs=1
    local -a wl
    case $workload in
        select-only) wl=(-S) ;;
        permission-join) wl=(-f "$WORK/permission-join.sql") ;;
    esac
    PGPASSWORD=$DB_PASSWORD timeout --kill-after=10 $((secs + 60)) \
        pgbench "${wl[@]}" -M "$mode" -c "$clients" -j "$jobs" -T "$secs" -n \
        -h 127.0.0.1 -p "$port" -U "$DB_USER" "$DB" >"$logfile" 2>&1 &
    PGBENCH_PID=$!
    local rc=0
    wait "$PGBENCH_PID" || rc=$?
    PGBENCH_PID=""
    return "$rc"
}

# run_failed KEY TAG WHAT [LOGFILE]: record a failed run (the matrix goes on).
run_failed() {
    local key=$1 tag=$2 what=$3 logfile=${4:-} detail=""
    if [[ -n $logfile && -f $logfile ]]; then
        detail=$(grep -m 1 -E 'error|ERROR|FATAL' "$logfile" || tail -n 1 "$logfile")
    fi
    warn "$tag: $what${detail:+: $detail}"
    RESULT[$key]="FAILED"
    FAILNOTE[$key]="$what${detail:+: $detail}"
}

# measure WORKLOAD MODE CLIENTS TARGET PORT PROXY_PID: warm-up + measured run;
# fills RESULT.
measure() {
    local workload=$1 mode=$2 clients=$3 target=$4 port=$5 proxy_pid=$6
    local key="$workload|$mode|$clients|$target" tag="$workload $mode c=$clients $target"
    local wlog="$WORK/pgbench-$workload-$mode-$clients-$target-warmup.log"
    local mlog="$WORK/pgbench-$workload-$mode-$clients-$target.log"
    local baseline; baseline=$(bench_backend_pids)

    if ((WARMUP > 0)); then
        if ! run_pgbench "$wlog" "$workload" "$mode" "$clients" "$WARMUP" "$port"; then
            run_failed "$key" "$tag" "warm-up pgbench failed" "$wlog"; return 0
        fi
        if [[ $target == direct ]]; then wait_new_backends_gone "$baseline"; fi
    fi
    alive "$PG_PID" || die "postgres died" "$WORK/postgres.log"

    local pg0 px0=0 pg1 px1=0
    pg0=$(tree_cpu_ticks "$PG_PID")
    if [[ -n $proxy_pid ]]; then px0=$(tree_cpu_ticks "$proxy_pid"); fi
    if ! run_pgbench "$mlog" "$workload" "$mode" "$clients" "$DURATION" "$port"; then
        run_failed "$key" "$tag" "pgbench failed" "$mlog"; return 0
    fi
    if [[ $target == direct ]]; then wait_new_backends_gone "$baseline"; fi
    pg1=$(tree_cpu_ticks "$PG_PID")
    if [[ -n $proxy_pid ]]; then px1=$(tree_cpu_ticks "$proxy_pid"); fi
    if [[ -n $proxy_pid ]] && ! alive "$proxy_pid"; then
        run_failed "$key" "$tag" "proxy process $proxy_pid died"; return 0
    fi

    local txns tps lat
    txns=$(sed -n 's/^number of transactions actually processed: \([0-9]*\).*/\1/p' "$mlog")
    tps=$(sed -n 's/^tps = \([0-9.]*\) (without initial connection time).*/\1/p' "$mlog")
    lat=$(sed -n 's/^latency average = \([0-9.]*\) ms.*/\1/p' "$mlog")
    if [[ -z $txns || -z $tps || -z $lat || $txns -eq 0 ]]; then
        run_failed "$key" "$tag" "could not parse pgbench output" "$mlog"; return 0
    fi

    RESULT[$key]=$(awk -v txns="$txns" -v tps="$tps" -v lat="$lat" -v hz="$CLK_TCK" \
        -v pg=$((pg1 - pg0)) -v px=$((px1 - px0)) -v isproxy="${proxy_pid:+1}" 'BEGIN {
            pxs = px / hz; pgs = pg / hz
            if (isproxy == "1") { pxus = sprintf("%.1f", pxs * 1e6 / txns); px10k = sprintf("%.3f", pxs * 1e4 / txns) }
            else { pxus = "-"; px10k = "-" }
            printf "OK %.0f %.3f %s %s %.1f %d", tps, lat, pxus, px10k, pgs * 1e6 / txns, txns
        }')
    local -a r; read -ra r <<<"${RESULT[$key]}"
    log "$tag: tps=${r[1]} lat=${r[2]}ms proxy_cpu=${r[3]}us/txn pg_cpu=${r[5]}us/txn txns=${r[6]}"
}

run_matrix() {
    local workload mode clients v
    for workload in $WORKLOADS; do
        for mode in $MODES; do
            for clients in $CLIENTS; do
                measure "$workload" "$mode" "$clients" direct "$PG_PORT" ""
                measure "$workload" "$mode" "$clients" pgbouncer "$PGBOUNCER_PORT" "$PGBOUNCER_PID"
                for v in "${VARIANTS[@]}"; do
                    measure "$workload" "$mode" "$clients" "$(sluice_target "$v")" "${SLUICE_PORTS[$v]}" "${SLUICE_PIDS[$v]}"
                done
            done
        done
    done
}

# ratio_row LABEL CLIENTS KEY_A KEY_B: a ratios-table row, A / B of TPS, of proxy
# CPU per txn and of Postgres CPU per txn ("-" where either side has no number).
ratio_row() {
    local label=$1 clients=$2
    local -a a b; read -ra a <<<"${RESULT[$3]:-FAILED}"; read -ra b <<<"${RESULT[$4]:-FAILED}"
    if [[ ${a[0]} == OK && ${b[0]} == OK ]]; then
        awk -v l="$label" -v c="$clients" -v at="${a[1]}" -v bt="${b[1]}" -v ax="${a[3]}" -v bx="${b[3]}" \
            -v ap="${a[5]}" -v bp="${b[5]}" '
            function r(x, y) { return (x != "-" && y != "-" && y + 0 > 0) ? sprintf("%.2f", x / y) : "-" }
            BEGIN { printf "| %s | %s | %s | %s | %s |\n", l, c, r(at, bt), r(ax, bx), r(ap, bp) }'
    else
        echo "| $label | $clients | - | - | - |"
    fi
}

write_report() {
    local cpu_model autogroup workload mode clients target v a
    cpu_model=$(awk -F': ' '/^model name/ { print $2; exit }' /proc/cpuinfo)
    autogroup=$(cat /proc/sys/kernel/sched_autogroup_enabled 2>/dev/null || echo "n/a")
    ((RUN_SLUICE)) || SLUICE_VERSION="skipped (no binary at $SLUICE_BIN)"
    local -a targets=(direct pgbouncer) sluices=()
    for v in "${VARIANTS[@]}"; do sluices+=("$(sluice_target "$v")"); done
    targets+=("${sluices[@]}")

    mkdir -p "$(dirname "$OUT")"
    {
        echo "# sluice end-to-end pgbench comparison"
        echo
        echo "- date: $(date -u '+%Y-%m-%d %H:%M:%S UTC')"
        echo "- machine: $(nproc) CPUs, ${cpu_model:-unknown CPU}, kernel $(uname -r), sched_autogroup=$autogroup"
        echo "- postgres: $PG_VERSION (fsync=off, shared_buffers=256MB, max_connections=400)"
        echo "- pgbouncer: $PGBOUNCER_VERSION"
        echo "- sluice: $SLUICE_VERSION"
        for v in "${VARIANTS[@]}"; do
            echo "  - \`$(sluice_target "$v")\` (variant \`$v\`): $(variant_desc "$v")"
        done
        echo "- workloads: ${DURATION}s per run after ${WARMUP}s warm-up, -j min(clients,$PGBENCH_THREADS)"
        for workload in $WORKLOADS; do echo "  - $workload: $(workload_desc "$workload")"; done
        echo "- proxies: transaction pooling, pool size $POOL_SIZE; each proxy and Postgres run in their own session (setsid)"
        echo "- CPU: utime+stime (incl. reaped children) from /proc, ${CLK_TCK} ticks/s; proxy = proxy process, Postgres = postmaster and all backends"
        if has_word "$WORKLOADS" permission-join; then
            echo
            echo "permission-join script:"
            echo
            echo '```sql'
            cat "$WORK/permission-join.sql"
            echo '```'
        fi
        for workload in $WORKLOADS; do
            for mode in $MODES; do
                local sect="$workload, -M $mode"
                echo
                echo "## $workload, pgbench -M $mode"
                echo
                echo "| target | clients | TPS | mean latency ms | proxy CPU µs/txn | proxy CPU s/10k txn | Postgres CPU µs/txn |"
                echo "|---|---:|---:|---:|---:|---:|---:|"
                for clients in $CLIENTS; do
                    for target in "${targets[@]}"; do
                        local -a r; read -ra r <<<"${RESULT[$workload|$mode|$clients|$target]:-FAILED}"
                        if [[ ${r[0]} == OK ]]; then
                            echo "| $target | $clients | ${r[1]} | ${r[2]} | ${r[3]} | ${r[4]} | ${r[5]} |"
                        else
                            echo "| $target | $clients | FAILED | - | - | - | - |"
                        fi
                    done
                done
                for clients in $CLIENTS; do
                    for target in "${targets[@]}"; do
                        local note=${FAILNOTE[$workload|$mode|$clients|$target]:-}
                        if [[ -n $note ]]; then
                            echo
                            echo "- FAILED $target, $clients clients: \`${note//\`/\'}\`"
                        fi
                    done
                done
                echo
                echo "### ratios ($sect)"
                echo
                if ((!RUN_SLUICE)); then
                    echo "_sluice was not run (no binary at \`$SLUICE_BIN\`)._"
                    continue
                fi
                echo "| ratio | clients | TPS | proxy CPU per txn | Postgres CPU per txn |"
                echo "|---|---:|---:|---:|---:|"
                local k="$workload|$mode"
                for target in "${sluices[@]}"; do
                    for clients in $CLIENTS; do
                        ratio_row "$target / PgBouncer" "$clients" "$k|$clients|$target" "$k|$clients|pgbouncer"
                    done
                done
                # Each variant with auto-prepare (all but noprepare) against noprepare.
                if has_word "${VARIANTS[*]}" noprepare; then
                    for v in "${VARIANTS[@]}"; do
                        [[ $v != noprepare ]] || continue
                        a=$(sluice_target "$v")
                        for clients in $CLIENTS; do
                            ratio_row "$a / sluice-noprepare" "$clients" "$k|$clients|$a" "$k|$clients|sluice-noprepare"
                        done
                    done
                fi
                for target in "${sluices[@]}"; do
                    for clients in $CLIENTS; do
                        ratio_row "$target / direct" "$clients" "$k|$clients|$target" "$k|$clients|direct"
                    done
                done
            done
        done
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

cleanup() {
    local rc=$?
    set +e
    trap - EXIT INT TERM
    if ((rc != 0)); then log "exiting with status $rc; stopping everything we started"; fi
    if [[ -n $PGBENCH_PID ]]; then kill -TERM "$PGBENCH_PID" 2>/dev/null; wait "$PGBENCH_PID" 2>/dev/null; fi
    local v
    for v in "${!SLUICE_PIDS[@]}"; do stop_daemon "$(sluice_target "$v")" "${SLUICE_PIDS[$v]}" TERM; done
    stop_daemon pgbouncer "$PGBOUNCER_PID" TERM
    if alive "$PG_PID"; then
        # Backends call setsid() themselves, so they are not in the postmaster's
        # process group: remember them, fast-shutdown the postmaster, then make sure.
        local -a kids; mapfile -t kids < <(pgrep -P "$PG_PID")
        stop_daemon postgres "$PG_PID" INT
        local k
        for k in "${kids[@]}"; do
            if [[ $(cat "/proc/$k/comm" 2>/dev/null) == postgres ]]; then kill -KILL "$k" 2>/dev/null; fi
        done
    fi
    local w
    for w in "${WRAPPER_PIDS[@]}"; do kill "$w" 2>/dev/null; wait "$w" 2>/dev/null; done
    if [[ -n $WORK && -d $WORK ]]; then
        if [[ $KEEP_TMP == 1 ]]; then
            log "keeping $WORK"
        else
            rm -rf "$WORK"
        fi
    fi
    exit "$rc"
}

main() {
    trap cleanup EXIT
    trap 'exit 130' INT
    trap 'exit 143' TERM
    check_prerequisites
    local nclients nmodes nworkloads ntargets=$((2 + ${#VARIANTS[@]})) v
    nclients=$(wc -w <<<"$CLIENTS"); nmodes=$(wc -w <<<"$MODES"); nworkloads=$(wc -w <<<"$WORKLOADS")
    log "plan: workloads [$WORKLOADS] x modes [$MODES] x clients [$CLIENTS] x $ntargets targets," \
        "~$((nworkloads * nmodes * nclients * ntargets * (DURATION + WARMUP + 1) / 60 + 1)) min + setup"
    make_workdir
    write_sluice_configs
    start_postgres
    load_data
    start_pgbouncer
    for v in "${VARIANTS[@]}"; do start_sluice "$v"; done
    run_matrix
    write_report
}

if [[ ${BASH_SOURCE[0]} == "$0" ]]; then main "$@"; fi
