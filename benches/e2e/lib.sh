# shellcheck shell=bash
# Shared helpers of the end-to-end benchmarks in this directory (pgbench_compare.sh,
# routing_mix.sh, cache_mix.sh). Not a script of its own: each benchmark sources it
# first thing,
#
#   SCRIPT_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
#   source "$SCRIPT_DIR/lib.sh"
#
# at the top level, after `set -euo pipefail`. It only defines variables and
# functions; it starts nothing.
#
# The globals lib.sh sets when sourced (the helpers rely on them; the scripts use them):
#   REPO_ROOT    the repository (two levels above this file)
#   knobs        SLUICE_BIN, PG_BIN, PG_OS_USER, PGBENCH_THREADS, SLUICE_RUST_LOG,
#                KEEP_TMP: the environment variables every benchmark takes, with the
#                same defaults (each script documents them in its header)
#   fixed names  DB, DB_USER, DB_PASSWORD, PG_SUPERUSER; STARTUP_DEADLINE, STOP_DEADLINE;
#                CLK_TCK; PERM_* (the size of the permission tables, permission_tables_sql)
#   shared state, empty at first so the EXIT trap is safe at any point; the script fills it:
#     WORK          the temp dir (create_work_dir): pid files, logs, the Postgres socket
#     PG_PID        the (primary) postmaster's pid; bench_backend_pids lists its backends
#     PGBENCH_PID   the pgbench running in the background (pgbench_bg), if any
#     WRAPPER_PIDS  setsid/runuser wrappers spawn_daemon started; finish_cleanup reaps them
#     RESULT        run key -> the run's figures or "FAILED" (each script documents its
#                   keys and format); run_failed writes FAILED
#     FAILNOTE      run key -> why the run failed (run_failed; report_failnotes)

REPO_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)

# ---------------------------------------------------------------------------
# Knobs every benchmark shares (documented in each script's header)
# ---------------------------------------------------------------------------
abspath() { case $1 in /*) printf '%s\n' "$1" ;; *) printf '%s\n' "$PWD/$1" ;; esac; }

SLUICE_BIN=$(abspath "${SLUICE_BIN:-$REPO_ROOT/target/release/sluice}")
PG_BIN=${PG_BIN:-/usr/lib/postgresql/15/bin}
PG_OS_USER=${PG_OS_USER:-postgres}
PGBENCH_THREADS=${PGBENCH_THREADS:-2}
SLUICE_RUST_LOG=${SLUICE_RUST_LOG:-warn}
KEEP_TMP=${KEEP_TMP:-0}

# ---------------------------------------------------------------------------
# Fixed names and limits
# ---------------------------------------------------------------------------
DB=bench
DB_USER=bench
DB_PASSWORD=bench
PG_SUPERUSER=postgres
# shellcheck disable=SC2034  # used by the scripts
STARTUP_DEADLINE=60   # seconds to wait for any server to come up
STOP_DEADLINE=20      # seconds to wait for any server to stop before SIGKILL
# shellcheck disable=SC2034  # used by the scripts
CLK_TCK=$(getconf CLK_TCK)

# Permission tables (permission_tables_sql): pgbench_compare.sh's permission-join
# workload, and the data of routing_mix.sh and cache_mix.sh.
PERM_TENANTS=1000         # 50 users and 5 roles per tenant
PERM_USERS=50000          # 1 to 3 roles each (2 on average)
PERM_ROLES_PER_TENANT=5   # 10 to 30 permissions each (20 on average)
PERM_PERMISSIONS=200      # 50 resources x 4 actions

# ---------------------------------------------------------------------------
# Shared state (see the top of this file)
# ---------------------------------------------------------------------------
WORK=""                 # temp dir
PG_PID=""               # (primary) postmaster pid (session leader)
PGBENCH_PID=""          # currently running pgbench (via timeout), if any
WRAPPER_PIDS=()         # background helpers (runuser/setsid wrappers) we spawned
declare -gA RESULT=()   # run key -> "OK …" (format: see the script) or "FAILED"
declare -gA FAILNOTE=() # run key -> why the run failed

# ---------------------------------------------------------------------------
# Output and errors
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

# has_word LIST WORD: true if WORD is one of the whitespace-separated LIST.
has_word() { local w; for w in $1; do [[ $w == "$2" ]] && return 0; done; return 1; }

# require_pg_bin NAME...: die unless every NAME is an executable in PG_BIN.
require_pg_bin() {
    local p
    for p in "$@"; do
        [[ -x $PG_BIN/$p ]] || die "$PG_BIN/$p not found (PostgreSQL 15 server binaries; set PG_BIN or apt-get install postgresql-15)"
    done
}

# require_cmd NAME...: die unless every NAME is in PATH.
require_cmd() {
    local p
    for p in "$@"; do
        command -v "$p" >/dev/null || die "'$p' not found in PATH"
    done
}

# ensure_server_user: when run as root, make sure runuser and the unprivileged
# PG_OS_USER exist (created as a system user if missing).
ensure_server_user() {
    [[ $EUID -eq 0 ]] || return 0
    command -v runuser >/dev/null || die "running as root needs runuser (util-linux)"
    if ! id -u "$PG_OS_USER" >/dev/null 2>&1; then
        log "creating unprivileged system user '$PG_OS_USER' for the servers"
        useradd --system --no-create-home --shell /usr/sbin/nologin "$PG_OS_USER" \
            || die "could not create user $PG_OS_USER"
    fi
}

# ---------------------------------------------------------------------------
# Processes
# ---------------------------------------------------------------------------
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

# create_work_dir PREFIX: WORK = a new temp dir PREFIX.XXXXXX that the server user
# can use (it holds the Postgres data directories and socket).
create_work_dir() {
    WORK=$(mktemp -d "${TMPDIR:-/tmp}/$1.XXXXXX")
    chmod 755 "$WORK"
    if [[ $EUID -eq 0 ]]; then chown "$PG_OS_USER" "$WORK"; fi
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
# the benchmark's session with pgbench. Stores the daemon's pid in PIDVAR (which
# may be an array element, e.g. "SLUICE_PIDS[x]"); the pid file is WORK/NAME.pid.
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

tcp_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

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

# stop_postgres NAME PID [DATADIR]: with DATADIR, pg_ctl stop -m fast first (its
# output goes to WORK/NAME.log); then SIGINT (fast shutdown) to the postmaster's
# group, SIGKILL after STOP_DEADLINE. Backends call setsid() themselves, so they are
# not in the postmaster's process group: remember them, stop the postmaster, then
# make sure they are gone.
stop_postgres() {
    local name=$1 pid=$2 data=${3:-}
    alive "$pid" || return 0
    local -a kids; mapfile -t kids < <(pgrep -P "$pid")
    if [[ -n $data ]]; then
        as_pg timeout $((STOP_DEADLINE + 5)) "$PG_BIN/pg_ctl" stop -D "$data" -m fast -w -t "$STOP_DEADLINE" \
            >>"$WORK/$name.log" 2>&1 || warn "$name: pg_ctl stop -m fast failed; signalling it"
    fi
    stop_daemon "$name" "$pid" INT
    local k
    for k in "${kids[@]}"; do
        if [[ $(cat "/proc/$k/comm" 2>/dev/null) == postgres ]]; then kill -KILL "$k" 2>/dev/null; fi
    done
}

# begin_cleanup RC: the start of every benchmark's EXIT trap (`local rc=$?` must be
# the trap function's first command): no more errexit or traps, say why we stop,
# and stop a running pgbench. The script then stops its servers and calls
# finish_cleanup RC.
begin_cleanup() {
    set +e
    trap - EXIT INT TERM
    if (($1 != 0)); then log "exiting with status $1; stopping everything we started"; fi
    if [[ -n $PGBENCH_PID ]]; then kill -TERM "$PGBENCH_PID" 2>/dev/null; wait "$PGBENCH_PID" 2>/dev/null; fi
}

# finish_cleanup RC [STARTED_AT]: the end of the EXIT trap: reap the spawn_daemon
# wrappers, delete WORK (kept with KEEP_TMP=1), with STARTED_AT (a $SECONDS value)
# log how long the run took, and exit with RC.
finish_cleanup() {
    local rc=$1 started=${2:-} w
    for w in "${WRAPPER_PIDS[@]}"; do kill "$w" 2>/dev/null; wait "$w" 2>/dev/null; done
    if [[ -n $WORK && -d $WORK ]]; then
        if [[ $KEEP_TMP == 1 ]]; then
            log "keeping $WORK"
        else
            rm -rf "$WORK"
        fi
    fi
    if [[ -n $started ]]; then log "done in $((SECONDS - started))s"; fi
    exit "$rc"
}

# ---------------------------------------------------------------------------
# Postgres
# ---------------------------------------------------------------------------
# init_pgdata DATA PORT TITLE [SETTING...]: initdb DATA (superuser PG_SUPERUSER,
# trust on the Unix socket in WORK, SCRAM over TCP) and append to its
# postgresql.conf, under "# --- TITLE ---", the settings every benchmark uses, each
# SETTING line (e.g. "synchronous_commit = off"), then the logging settings.
init_pgdata() {
    local data=$1 port=$2 title=$3; shift 3
    log "initdb (PostgreSQL: $("$PG_BIN/postgres" --version))"
    as_pg "$PG_BIN/initdb" -D "$data" -U "$PG_SUPERUSER" -E UTF8 --locale=C --no-sync \
        --auth-local=trust --auth-host=scram-sha-256 >"$WORK/initdb.log" 2>&1 \
        || die "initdb failed" "$WORK/initdb.log"
    {
        cat <<EOF

# --- $title ---
listen_addresses = '127.0.0.1'
port = $port
unix_socket_directories = '$WORK'
max_connections = 400
shared_buffers = 256MB
fsync = off
EOF
        if (($# > 0)); then printf '%s\n' "$@"; fi
        cat <<EOF
password_encryption = 'scram-sha-256'
logging_collector = off
log_min_messages = warning
EOF
    } >>"$data/postgresql.conf"
}

# spawn_postgres PIDVAR NAME DATA PORT: start a postmaster on DATA as the server
# user (log WORK/NAME.log) and wait until it accepts connections on PORT.
spawn_postgres() {
    local pidvar=$1 name=$2 data=$3 port=$4 logfile=$WORK/$2.log
    spawn_daemon "$pidvar" "$name" "$logfile" 1 "$PG_BIN/postgres" -D "$data"
    wait_until "$STARTUP_DEADLINE" "${!pidvar}" "$logfile" "$name" \
        "$PG_BIN/pg_isready" -q -t 1 -h 127.0.0.1 -p "$port"
}

# create_bench_db PORT: the bench role (password DB_PASSWORD) and its database DB.
create_bench_db() {
    psql -X -q -h "$WORK" -p "$1" -U "$PG_SUPERUSER" -d postgres -v ON_ERROR_STOP=1 \
        -c "CREATE ROLE $DB_USER LOGIN PASSWORD '$DB_PASSWORD'" \
        -c "CREATE DATABASE $DB OWNER $DB_USER" >>"$WORK/setup.log" 2>&1 \
        || die "creating role/database failed" "$WORK/setup.log"
}

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

# permission_tables_sql: SQL that creates the schema of a multi-tenant app's
# role-based access control (sized by PERM_*), fills it deterministically with
# generate_series (a few seconds) and adds its keys and indexes. The caller appends
# its own tables and the VACUUM (ANALYZE).
permission_tables_sql() {
    cat <<EOF
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
EOF
}

# permission_lookup_sql: the permission lookup such an app runs on every request,
# for the user in the pgbench variable :uid (the caller's script sets it first).
permission_lookup_sql() {
    cat <<'EOF'
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
}

# ---------------------------------------------------------------------------
# pgbench
# ---------------------------------------------------------------------------
# pgbench_bg LOGFILE SECONDS PORT CLIENTS PGBENCH_ARGS...: run
# `pgbench PGBENCH_ARGS... -c CLIENTS -j min(CLIENTS, PGBENCH_THREADS) -T SECONDS`
# as the bench user against 127.0.0.1:PORT, output to LOGFILE; returns pgbench's
# exit status. Runs in the background (PGBENCH_PID) and waits, so INT/TERM reach
# the script's trap promptly.
pgbench_bg() {
    local logfile=$1 secs=$2 port=$3 clients=$4; shift 4
    local jobs=$((clients < PGBENCH_THREADS ? clients : PGBENCH_THREADS))
    ((jobs >= 1)) || jobs=1
    PGPASSWORD=$DB_PASSWORD timeout --kill-after=10 $((secs + 60)) \
        pgbench "$@" -c "$clients" -j "$jobs" -T "$secs" \
        -h 127.0.0.1 -p "$port" -U "$DB_USER" "$DB" >"$logfile" 2>&1 &
    PGBENCH_PID=$!
    local rc=0
    wait "$PGBENCH_PID" || rc=$?
    PGBENCH_PID=""
    return "$rc"
}

# pgbench_stat LOGFILE STAT: one number of pgbench's summary in LOGFILE, or nothing:
# txns (transactions actually processed), tps (without initial connection time),
# lat (average latency, ms) or failed (failed transactions).
pgbench_stat() {
    local re
    case $2 in
        txns) re='^number of transactions actually processed: \([0-9]*\).*' ;;
        tps) re='^tps = \([0-9.]*\) (without initial connection time).*' ;;
        lat) re='^latency average = \([0-9.]*\) ms.*' ;;
        failed) re='^number of failed transactions: \([0-9]*\).*' ;;
        *) return 1 ;;
    esac
    sed -n "s/$re/\\1/p" "$1"
}

# run_failed KEY TAG WHAT [LOGFILE]: record a failed run (the others still run):
# RESULT[KEY]=FAILED, FAILNOTE[KEY] = WHAT and the first error line of LOGFILE (its
# last line if none), and a warning prefixed by TAG.
# shellcheck disable=SC2034  # RESULT is read by the scripts
run_failed() {
    local key=$1 tag=$2 what=$3 logfile=${4:-} detail=""
    if [[ -n $logfile && -f $logfile ]]; then
        detail=$(grep -m 1 -E 'error|ERROR|FATAL' "$logfile" || tail -n 1 "$logfile")
    fi
    warn "$tag: $what${detail:+: $detail}"
    RESULT[$key]="FAILED"
    FAILNOTE[$key]="$what${detail:+: $detail}"
}

# ---------------------------------------------------------------------------
# CPU from /proc
# ---------------------------------------------------------------------------
# now_us: wall clock in microseconds (EPOCHREALTIME without its decimal point).
now_us() { local t=$EPOCHREALTIME; echo "${t/[.,]/}"; }

# tree_cpu_ticks PID: CPU clock ticks (utime+stime+cutime+cstime) of PID and all
# its live descendants (0 for an empty PID). cutime/cstime include children already
# reaped, so the sum keeps counting backends that exited. Tolerates processes
# vanishing mid-scan.
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

# Pids of the (primary) postmaster's live backends serving the bench user (this
# includes the proxies' pooled server connections and sluice's monitor),
# space-separated.
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
# sluice
# ---------------------------------------------------------------------------
# describe_sluice BIN REPO_ROOT [DIRTY(0|1)]: "<first line of BIN --version> (BIN,
# repo <short commit>)", for the report; with DIRTY=1 it also says whether src/ or
# Cargo.* have uncommitted changes.
describe_sluice() {
    local bin=$1 repo=$2 version rev dirty=""
    version=$(timeout 5 "$bin" --version 2>/dev/null | head -n 1 || true)
    rev=$(git -C "$repo" rev-parse --short HEAD 2>/dev/null || echo "without commits")
    if [[ ${3:-0} == 1 && -n $(git -C "$repo" status --porcelain -- src Cargo.toml Cargo.lock 2>/dev/null) ]]; then
        dirty=" + uncommitted changes under src/ or Cargo.*"
    fi
    echo "${version:-unknown version} ($bin, repo $rev$dirty)"
}

# wait_sluice_up PID LOGFILE TARGET PORT [HTTP_PORT]: wait until the sluice process
# PID accepts TCP on PORT, answers SELECT 1 and (with HTTP_PORT) serves /metrics.
wait_sluice_up() {
    local pid=$1 logfile=$2 target=$3 port=$4 http=${5:-}
    wait_until "$STARTUP_DEADLINE" "$pid" "$logfile" "$target" tcp_open "$port"
    wait_until "$STARTUP_DEADLINE" "$pid" "$logfile" "$target (SELECT 1 through it)" \
        psql_bench "$port" "SELECT 1"
    if [[ -n $http ]]; then
        wait_until "$STARTUP_DEADLINE" "$pid" "$logfile" "$target (/metrics)" fetch_metrics "$http"
    fi
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

# sluice_log_lines TARGET: WARN/ERROR lines of WORK/TARGET.log, without ANSI colours.
sluice_log_lines() {
    local f=$WORK/$1.log
    [[ -f $f ]] || return 0
    sed 's/\x1b\[[0-9;]*m//g' "$f" | grep -E '(^|[[:space:]])(WARN|ERROR)[[:space:]]' || true
}

# ---------------------------------------------------------------------------
# Report pieces (markdown on stdout)
# ---------------------------------------------------------------------------
# report_failnotes TARGET...: a "- FAILED" line for each TARGET that has a FAILNOTE.
report_failnotes() {
    local target
    for target in "$@"; do
        if [[ -n ${FAILNOTE[$target]:-} ]]; then
            echo
            echo "- FAILED $target: \`${FAILNOTE[$target]//\`/\'}\`"
        fi
    done
}

# report_sluice_logs TARGET...: per sluice TARGET, how many WARN/ERROR lines its log
# has, and the first 20 of them.
report_sluice_logs() {
    local target n
    for target in "$@"; do
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
}
