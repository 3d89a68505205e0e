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
# shellcheck source=lib.sh
source "$SCRIPT_DIR/lib.sh"   # helpers, REPO_ROOT and the shared knobs (SLUICE_BIN, PG_BIN, …)

OUT=$(abspath "${OUT:-$REPO_ROOT/benches/e2e/results.md}")
CLIENTS=${CLIENTS:-"1 16 64 256"}
DURATION=${DURATION:-15}
WARMUP=${WARMUP:-3}
POOL_SIZE=${POOL_SIZE:-16}
SCALE=${SCALE:-10}
MODES=${MODES:-simple}
WORKLOADS=${WORKLOADS:-select-only}
SLUICE_VARIANTS=${SLUICE_VARIANTS:-default}
# DB, DB_USER, PG_SUPERUSER, the deadlines and the permission-join data set's size
# (PERM_*, see setup_permission_join) are set in lib.sh.

# ---------------------------------------------------------------------------
# Global state (all initialised so the EXIT trap is safe at any point; WORK,
# PG_PID, PGBENCH_PID and WRAPPER_PIDS are in lib.sh)
# ---------------------------------------------------------------------------
PGBOUNCER_PID=""        # pgbouncer pid (session leader)
declare -A SLUICE_PIDS=()   # sluice variant -> pid (session leader)
declare -A SLUICE_PORTS=()  # sluice variant -> listen port
VARIANTS=()             # SLUICE_VARIANTS as an array; empty when sluice is skipped
PG_PORT="" PGBOUNCER_PORT=""
PG_VERSION="" PGBOUNCER_VERSION="" SLUICE_VERSION=""   # as reported by the running servers
RUN_SLUICE=1
# RESULT (lib.sh):   "workload|mode|clients|target" -> "OK tps lat proxy_us proxy_s10k pg_us txns" or "FAILED"
# FAILNOTE (lib.sh): "workload|mode|clients|target" -> why the run failed

# ---------------------------------------------------------------------------
# Helpers
# ---------------------------------------------------------------------------
# (log, die, spawn_daemon, psql_bench, tree_cpu_ticks … are in lib.sh)

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

# ---------------------------------------------------------------------------
# Steps
# ---------------------------------------------------------------------------
check_prerequisites() {
    require_pg_bin initdb postgres pg_isready
    require_cmd pgbench psql setsid awk pgrep getconf timeout
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
    ensure_server_user
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
    create_work_dir sluice-e2e
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
    local data=$WORK/pgdata
    init_pgdata "$data" "$PG_PORT" "sluice e2e benchmark" "synchronous_commit = off" "full_page_writes = off"
    spawn_postgres PG_PID postgres "$data" "$PG_PORT"
    PG_VERSION=$(psql -X -Atq -h "$WORK" -p "$PG_PORT" -U "$PG_SUPERUSER" -d postgres -c 'SELECT version()' \
        | sed 's/, compiled by.*//')
    log "postgres up (pid $PG_PID): $PG_VERSION"
    create_bench_db "$PG_PORT"
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
    {
        permission_tables_sql
        echo "VACUUM (ANALYZE) tenants, users, roles, user_roles, permissions, role_permissions;"
    } >"$sql"
    PGPASSWORD=$DB_PASSWORD PGCONNECT_TIMEOUT=5 timeout 300 \
        psql -X -q -h 127.0.0.1 -p "$PG_PORT" -U "$DB_USER" -d "$DB" -v ON_ERROR_STOP=1 -f "$sql" \
        >>"$WORK/setup.log" 2>&1 || die "permission-join setup failed" "$WORK/setup.log"
    {
        printf '\\set uid random(1, %s)\n' "$PERM_USERS"
        permission_lookup_sql
    } >"$WORK/permission-join.sql"
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
    wait_sluice_up "$pid" "$logfile" "$target" "$port"
    [[ -n $SLUICE_VERSION ]] || SLUICE_VERSION=$(describe_sluice "$SLUICE_BIN" "$REPO_ROOT")
    log "$target up (pid $pid, port $port, $(basename "$conf")): $SLUICE_VERSION"
}

# run_pgbench LOGFILE WORKLOAD MODE CLIENTS SECONDS PORT: returns pgbench's exit
# status (see pgbench_bg). A failed run is recorded with run_failed; the matrix goes on.
run_pgbench() {
    local logfile=$1 workload=$2 mode=$3 clients=$4 secs=$5 port=$6
    local -a wl
    case $workload in
        select-only) wl=(-S) ;;
        permission-join) wl=(-f "$WORK/permission-join.sql") ;;
    esac
    pgbench_bg "$logfile" "$secs" "$port" "$clients" "${wl[@]}" -M "$mode" -n
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
    txns=$(pgbench_stat "$mlog" txns); tps=$(pgbench_stat "$mlog" tps); lat=$(pgbench_stat "$mlog" lat)
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
# cleanup: the EXIT trap (stop_daemon, stop_postgres and the cleanup steps are in lib.sh).
cleanup() {
    local rc=$?
    begin_cleanup "$rc"
    local v
    for v in "${!SLUICE_PIDS[@]}"; do stop_daemon "$(sluice_target "$v")" "${SLUICE_PIDS[$v]}" TERM; done
    stop_daemon pgbouncer "$PGBOUNCER_PID" TERM
    stop_postgres postgres "$PG_PID"   # no DATADIR: fast shutdown by SIGINT, no pg_ctl
    finish_cleanup "$rc"
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
