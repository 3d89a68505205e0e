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
# shellcheck source=lib.sh
source "$SCRIPT_DIR/lib.sh"   # helpers, REPO_ROOT and the shared knobs (SLUICE_BIN, PG_BIN, …)

OUT=$(abspath "${OUT:-$REPO_ROOT/benches/e2e/results/routing-mix.md}")
CLIENTS=${CLIENTS:-64}
DURATION=${DURATION:-20}
WARMUP=${WARMUP:-3}
MODE=${MODE:-extended}
POOL_SIZE=${POOL_SIZE:-16}
CONSISTENCY=${CONSISTENCY:-session}
# DB, DB_USER, PG_SUPERUSER, the deadlines and the size of the permission tables
# (PERM_*, as in pgbench_compare.sh's permission-join workload) are set in lib.sh.

READ_WEIGHT=9         # pgbench -f read.sql@9 -f write.sql@1
WRITE_WEIGHT=1

# The targets, in the order they run and appear in the report.
TARGETS=(direct-primary sluice-primary-only sluice-replica)
# Routing reasons that mark a read (see src/router/route.rs): a read that went to
# the primary carries lag, consistency or unavailable instead of read.
READ_REASONS="read lag consistency unavailable"

# ---------------------------------------------------------------------------
# Global state (all initialised so the EXIT trap is safe at any point; WORK,
# PG_PID (the primary's postmaster), PGBENCH_PID and WRAPPER_PIDS are in lib.sh)
# ---------------------------------------------------------------------------
REPLICA_PID=""          # replica postmaster pid (session leader)
declare -A SLUICE_PIDS=()        # target -> pid (session leader)
declare -A SLUICE_PORTS=()       # target -> listen.postgres port
declare -A SLUICE_HTTP_PORTS=()  # target -> listen.http port
PRIMARY_PORT="" REPLICA_PORT=""
PG_VERSION="" SLUICE_VERSION=""
STARTED_AT=$SECONDS
# RESULT (lib.sh):   target -> "OK tps lat txns failed pg_ticks rep_ticks sl_ticks elapsed_us" or "FAILED"
declare -A ROUTING      # target -> "reads writes replica p_read p_consistency p_lag p_unavailable other"
# FAILNOTE (lib.sh): target -> why the run failed

# ---------------------------------------------------------------------------
# Helpers (log, die, spawn_daemon, psql_su, tree_cpu_ticks, fetch_metrics … are in lib.sh)
# ---------------------------------------------------------------------------
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
    require_pg_bin initdb postgres pg_isready pg_basebackup pg_ctl
    require_cmd pgbench psql setsid awk pgrep getconf timeout
    command -v curl >/dev/null || command -v python3 >/dev/null \
        || die "need curl or python3 to read sluice's /metrics"
    [[ -x $SLUICE_BIN ]] || die "sluice binary not found at $SLUICE_BIN (build with 'cargo build --release' or set SLUICE_BIN)"
    ensure_server_user
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
    create_work_dir sluice-routing
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
    local data=$WORK/primary
    init_pgdata "$data" "$PRIMARY_PORT" "sluice routing benchmark" "synchronous_commit = on" \
        "wal_level = replica" "max_wal_senders = 5" "wal_keep_size = 256MB" "hot_standby = on"
    # First match wins: replication for the superuser without a password (for
    # pg_basebackup and the replica's walreceiver), SCRAM for everything else.
    cat >"$data/pg_hba.conf" <<EOF
local all all trust
local replication all trust
host replication $PG_SUPERUSER 127.0.0.1/32 trust
host all all 127.0.0.1/32 scram-sha-256
EOF
    spawn_postgres PG_PID primary "$data" "$PRIMARY_PORT"
    PG_VERSION=$(psql_su "$PRIMARY_PORT" postgres 'SELECT version()' | sed 's/, compiled by.*//')
    log "primary up (pid $PG_PID, port $PRIMARY_PORT): $PG_VERSION"
    create_bench_db "$PRIMARY_PORT"
}

# load_data: the permission tables exactly as pgbench_compare.sh's
# setup_permission_join, plus the write target audit_log; then the two pgbench scripts.
load_data() {
    local sql=$WORK/setup.sql
    log "creating and filling the permission tables and audit_log"
    {
        permission_tables_sql
        cat <<EOF

-- The write side of the mix: an append-only audit trail.
CREATE TABLE audit_log (id bigserial PRIMARY KEY, user_id int NOT NULL, at timestamptz NOT NULL DEFAULT now());

VACUUM (ANALYZE) tenants, users, roles, user_roles, permissions, role_permissions, audit_log;
EOF
    } >"$sql"
    PGPASSWORD=$DB_PASSWORD PGCONNECT_TIMEOUT=5 timeout 300 \
        psql -X -q -h 127.0.0.1 -p "$PRIMARY_PORT" -U "$DB_USER" -d "$DB" -v ON_ERROR_STOP=1 -f "$sql" \
        >>"$WORK/setup.log" 2>&1 || die "loading the permission tables failed" "$WORK/setup.log"
    psql_su "$PRIMARY_PORT" "$DB" CHECKPOINT >>"$WORK/setup.log" 2>&1 || true

    {
        printf '\\set uid random(1, %s)\n' "$PERM_USERS"
        permission_lookup_sql
    } >"$WORK/read.sql"
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
    spawn_postgres REPLICA_PID replica "$data" "$REPLICA_PORT"
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
    wait_sluice_up "$pid" "$logfile" "$target" "$port" "$http"
    if [[ $target == sluice-replica ]]; then
        wait_until "$STARTUP_DEADLINE" "$pid" "$logfile" "$target (replica available in /metrics)" \
            replica_available "$http"
    fi
    [[ -n $SLUICE_VERSION ]] || SLUICE_VERSION=$(describe_sluice "$SLUICE_BIN" "$REPO_ROOT")
    log "$target up (pid $pid, port $port, http $http): $SLUICE_VERSION"
}

# run_pgbench LOGFILE SECONDS PORT: the read/write mix; returns pgbench's exit
# status (see pgbench_bg). A failed run is recorded with run_failed (key and tag:
# the target); the other targets still run.
run_pgbench() {
    local logfile=$1 secs=$2 port=$3
    pgbench_bg "$logfile" "$secs" "$port" "$CLIENTS" --no-vacuum \
        -f "$WORK/read.sql@$READ_WEIGHT" -f "$WORK/write.sql@$WRITE_WEIGHT" -M "$MODE"
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
            run_failed "$target" "$target" "warm-up pgbench failed" "$wlog"; return 0
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
        run_failed "$target" "$target" "pgbench failed" "$mlog"; return 0
    fi
    if [[ $target == direct-primary ]]; then wait_new_backends_gone "$baseline"; fi
    t1=$(now_us)
    pg1=$(tree_cpu_ticks "$PG_PID"); rep1=$(tree_cpu_ticks "$REPLICA_PID"); sl1=$(tree_cpu_ticks "$sluice_pid")
    if [[ -n $sluice_pid ]] && ! alive "$sluice_pid"; then
        run_failed "$target" "$target" "sluice process $sluice_pid died" "$WORK/$target.log"; return 0
    fi
    if [[ -n $http ]]; then
        route_counts "$http" >"$after" || die "$target: reading /metrics failed"
        # No counters at all: a database without replicas has no router.
        if [[ -s $after ]]; then ROUTING[$target]=$(route_delta "$before" "$after"); fi
    fi

    local txns tps lat failed
    txns=$(pgbench_stat "$mlog" txns); tps=$(pgbench_stat "$mlog" tps)
    lat=$(pgbench_stat "$mlog" lat); failed=$(pgbench_stat "$mlog" failed)
    if [[ -z $txns || -z $tps || -z $lat || $txns -eq 0 ]]; then
        run_failed "$target" "$target" "could not parse pgbench output" "$mlog"; return 0
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

write_report() {
    local cpu_model target
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
        report_failnotes "${TARGETS[@]}"
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
        report_sluice_logs sluice-primary-only sluice-replica
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
# cleanup: the EXIT trap (stop_daemon, stop_postgres and the cleanup steps are in lib.sh).
cleanup() {
    local rc=$?
    begin_cleanup "$rc"
    local t
    for t in "${!SLUICE_PIDS[@]}"; do stop_daemon "$t" "${SLUICE_PIDS[$t]}" TERM; done
    stop_postgres replica "$REPLICA_PID" "$WORK/replica"
    stop_postgres primary "$PG_PID" "$WORK/primary"
    finish_cleanup "$rc" "$STARTED_AT"
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
