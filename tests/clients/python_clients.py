#!/usr/bin/env python3
"""Drive sluice with the Python PostgreSQL clients that real apps use.

Every scenario opens MORE concurrent client connections than the proxy has
server connections, so a transaction pooler has to multiplex them, and runs
several rounds per client, verifying every value that comes back.

    asyncpg            named prepared statements on every query (asyncpg's
                       statement cache), explicit prepare(), transactions,
                       executemany
    asyncpg-pool       asyncpg.create_pool bigger than the proxy pool
    psycopg-autocommit psycopg 3, prepare_threshold=0 (every query a named
                       prepared statement), executemany, COPY in/out, and a
                       SET application_name that must follow the client
    psycopg-tx         psycopg 3 non-autocommit: explicit commit/rollback,
                       SET inside committed / rolled back transactions,
                       a small prepared_max so statements get deallocated
    sqlalchemy         SQLAlchemy 2 asyncio (asyncpg driver), Core inserts
                       and selects in concurrent AsyncSessions

Environment:
    SLUICE_URL         postgresql://user:pass@127.0.0.1:PORT/db   (required)
    SLUICE_POOL_SIZE   server pool size of the proxy               (required)
    CLIENTS            concurrent clients (default max(8, 4 * pool size))
    ITERATIONS         rounds per client (default 30)
    SCENARIO_TIMEOUT   seconds per scenario (default 120)
    SCENARIOS          comma-separated names to run (default: all)
    CUSTOM_GUC=1       also SET a placeholder GUC (sluice_test.tag) and check
                       that it follows the client (off by default: poolers
                       that only track well-known parameters fail it)

Stops at the first failure; exit status 0 only if everything passed. The
last line of output is "N passed, N failed[, N skipped]".
"""

import asyncio
import os
import sys
import threading
import time
import traceback
import uuid


def _env_int(name, default=None):
    raw = os.environ.get(name)
    if raw is None or raw == "":
        if default is None:
            sys.exit(f"error: environment variable {name} is required")
        return default
    try:
        return int(raw)
    except ValueError:
        sys.exit(f"error: {name}={raw!r} is not an integer")


URL = os.environ.get("SLUICE_URL") or sys.exit("error: SLUICE_URL is required")
POOL_SIZE = _env_int("SLUICE_POOL_SIZE")
CLIENTS = _env_int("CLIENTS", max(8, 4 * POOL_SIZE))
ITERATIONS = _env_int("ITERATIONS", 30)
SCENARIO_TIMEOUT = float(os.environ.get("SCENARIO_TIMEOUT") or 120)
CUSTOM_GUC = os.environ.get("CUSTOM_GUC", "") not in ("", "0", "false", "no")
ONLY = {s.strip() for s in os.environ.get("SCENARIOS", "").split(",") if s.strip()}
CONNECT_TIMEOUT = 30
RUN_ID = f"{os.getpid()}_{uuid.uuid4().hex[:6]}"

if CLIENTS <= POOL_SIZE:
    print(f"warning: CLIENTS={CLIENTS} is not more than SLUICE_POOL_SIZE={POOL_SIZE}; "
          "the proxy will not have to multiplex", flush=True)


def log(msg):
    print(msg, flush=True)


class Failure(AssertionError):
    pass


def expect(actual, expected, what):
    if actual != expected:
        raise Failure(f"{what}: expected {expected!r}, got {actual!r}")


def table_name(scenario, suffix=""):
    name = f"sluice_{scenario}_{RUN_ID}{suffix}".replace("-", "_")
    return name.lower()


async def admin_execute(sql):
    """Run one utility statement (DDL) on its own short-lived connection."""
    import asyncpg

    conn = await asyncpg.connect(URL, timeout=CONNECT_TIMEOUT)
    try:
        await conn.execute(sql, timeout=30)  # no args: simple query protocol
    finally:
        await conn.close(timeout=5)


class ScratchTables:
    """Create tables for a scenario and drop them afterwards, even on failure."""

    def __init__(self, ddl_by_name):
        self.ddl_by_name = ddl_by_name

    async def __aenter__(self):
        stmts = []
        for name, cols in self.ddl_by_name.items():
            stmts.append(f"DROP TABLE IF EXISTS {name}; CREATE TABLE {name} ({cols});")
        await admin_execute("\n".join(stmts))
        return self

    async def __aexit__(self, *exc):
        try:
            await asyncio.wait_for(
                admin_execute("; ".join(f"DROP TABLE IF EXISTS {n}" for n in self.ddl_by_name)),
                15,
            )
        except Exception as e:  # cleanup must not hide the real failure
            log(f"  warning: could not drop {', '.join(self.ddl_by_name)}: {e!r}")
        return False


async def run_clients(fn, count=CLIENTS):
    """Run fn(n) for n in range(count) concurrently; first error wins."""
    tasks = [asyncio.create_task(fn(n), name=f"client-{n}") for n in range(count)]
    try:
        await asyncio.gather(*tasks)
    finally:
        for t in tasks:
            if not t.done():
                t.cancel()
        await asyncio.wait(tasks, timeout=10)


class ClientError(Exception):
    """Wraps an error with the client / iteration it happened in."""


def where(n, i=None):
    return f"client {n}" + ("" if i is None else f" iteration {i}")


# --------------------------------------------------------------------------
# asyncpg: one connection per client
# --------------------------------------------------------------------------

async def scenario_asyncpg():
    import asyncpg

    t = table_name("asyncpg")
    tm = table_name("asyncpg", "_many")
    backends = set()
    async with ScratchTables({
        t: "client int NOT NULL, iter int NOT NULL, val text NOT NULL",
        tm: "client int NOT NULL, iter int NOT NULL, k int NOT NULL",
    }):
        barrier = asyncio.Barrier(CLIENTS)

        async def client(n):
            conn = await asyncpg.connect(URL, timeout=CONNECT_TIMEOUT)
            try:
                # All clients hold a connection at the same time before the
                # first query: more clients than server connections.
                await barrier.wait()
                # A statement whose text differs per client but whose
                # asyncpg-generated name (__asyncpg_stmt_N__) is the same on
                # every connection: a proxy that confuses clients' statements
                # returns the wrong sum.
                expect(await conn.fetchval(f"SELECT $1::int + {n}", 1000), 1000 + n,
                       f"{where(n)} client-specific statement")
                stmt = await conn.prepare("SELECT $1::int * $2::int AS p, $3::text AS s")
                for i in range(ITERATIONS):
                    w = where(n, i)
                    expect(await conn.fetchval("SELECT $1::int + 1", i), i + 1, f"{w} fetchval")
                    expect(await conn.fetchval(f"SELECT $1::int + {n}", i), i + n,
                           f"{w} client-specific statement")

                    count = i % 7 + 3
                    rows = await conn.fetch(
                        "SELECT g, g * $1::int AS m FROM generate_series(1, $2::int) g",
                        n + 1, count)
                    expect([tuple(r) for r in rows],
                           [(g, g * (n + 1)) for g in range(1, count + 1)], f"{w} fetch")

                    async with conn.transaction():
                        pid = await conn.fetchval("SELECT pg_backend_pid()")
                        await conn.execute(
                            f"INSERT INTO {t} (client, iter, val) VALUES ($1, $2, $3)",
                            n, i, f"c{n}-i{i}")
                        # Uncommitted row is only visible on the same server
                        # connection: the transaction must stay pinned.
                        expect(await conn.fetchval(
                            f"SELECT val FROM {t} WHERE client = $1 AND iter = $2", n, i),
                            f"c{n}-i{i}", f"{w} read own insert inside transaction")
                        expect(await conn.fetchval("SELECT pg_backend_pid()"), pid,
                               f"{w} backend pid inside one transaction")
                        backends.add(pid)
                    expect(await conn.fetchval(
                        f"SELECT count(*) FROM {t} WHERE client = $1", n), i + 1,
                        f"{w} committed row count")

                    if i % 5 == 4:
                        try:
                            async with conn.transaction():
                                await conn.execute(
                                    f"INSERT INTO {t} (client, iter, val) VALUES ($1, $2, 'rollback')",
                                    n, i)
                                raise _Rollback()
                        except _Rollback:
                            pass
                        expect(await conn.fetchval(
                            f"SELECT count(*) FROM {t} WHERE client = $1 AND val = 'rollback'", n),
                            0, f"{w} rolled back row must be gone")

                    for k in range(3):
                        r = await stmt.fetchrow(i, k + n, f"s{n}.{i}.{k}")
                        expect((r["p"], r["s"]), (i * (k + n), f"s{n}.{i}.{k}"),
                               f"{w} prepared statement run {k}")

                    await conn.executemany(
                        f"INSERT INTO {tm} (client, iter, k) VALUES ($1, $2, $3)",
                        [(n, i, k) for k in range(5)])
                    got = await conn.fetchrow(
                        f"SELECT count(*) AS c, sum(k) AS s FROM {tm} WHERE client = $1 AND iter = $2",
                        n, i)
                    expect((got["c"], got["s"]), (5, 10), f"{w} executemany rows")
                expect(await conn.fetchval(f"SELECT count(*) FROM {tm} WHERE client = $1", n),
                       5 * ITERATIONS, f"{where(n)} executemany total")
            finally:
                await conn.close(timeout=5)

        await run_clients(client)
    return f"{len(backends)} distinct server backends seen"


class _Rollback(Exception):
    pass


# --------------------------------------------------------------------------
# asyncpg: create_pool larger than the proxy pool
# --------------------------------------------------------------------------

async def scenario_asyncpg_pool():
    import asyncpg

    t = table_name("asyncpg_pool")
    async with ScratchTables({t: "worker int NOT NULL, iter int NOT NULL"}):
        pool = await asyncpg.create_pool(
            URL, min_size=min(POOL_SIZE + 1, CLIENTS), max_size=CLIENTS,
            timeout=CONNECT_TIMEOUT)
        try:
            async def worker(n):
                for i in range(ITERATIONS):
                    w = f"worker {n} iteration {i}"
                    expect(await pool.fetchval("SELECT $1::int * 3", n * 1000 + i),
                           (n * 1000 + i) * 3, f"{w} pool.fetchval")
                    rows = await pool.fetch("SELECT g FROM generate_series(1, $1::int) g", i % 4 + 1)
                    expect([r[0] for r in rows], list(range(1, i % 4 + 2)), f"{w} pool.fetch")
                    if i % 3 == 0:
                        async with pool.acquire() as conn:
                            async with conn.transaction():
                                await conn.execute(
                                    f"INSERT INTO {t} (worker, iter) VALUES ($1, $2)", n, i)
                                expect(await conn.fetchval(
                                    f"SELECT count(*) FROM {t} WHERE worker = $1 AND iter = $2",
                                    n, i), 1, f"{w} read own insert inside transaction")
                expect(await pool.fetchval(f"SELECT count(*) FROM {t} WHERE worker = $1", n),
                       len(range(0, ITERATIONS, 3)), f"worker {n} committed rows")

            # Twice as many workers as pool connections: some wait for the
            # asyncpg pool, all of them go through the smaller proxy pool.
            await run_clients(worker, count=2 * CLIENTS)
        finally:
            await asyncio.wait_for(pool.close(), 15)
    return f"pool min={min(POOL_SIZE + 1, CLIENTS)} max={CLIENTS}, {2 * CLIENTS} workers"


# --------------------------------------------------------------------------
# psycopg 3, autocommit, every query a named prepared statement
# --------------------------------------------------------------------------

async def psycopg_copy_roundtrip(conn, t, n, i, w):
    rows = [(n, i, k, f"copy {n}/{i}/{k}\twith tab") for k in range(10)]
    async with conn.cursor() as cur:
        async with cur.copy(f"COPY {t} (client, iter, k, txt) FROM STDIN") as copy:
            for row in rows:
                await copy.write_row(row)
        expect(cur.rowcount, len(rows), f"{w} COPY FROM STDIN rowcount")
        got = []
        # n and i are ints we generated, safe to inline (COPY takes no params).
        async with cur.copy(
                f"COPY (SELECT client, iter, k, txt FROM {t} WHERE client = {int(n)} "
                f"AND iter = {int(i)} ORDER BY k) TO STDOUT") as copy:
            copy.set_types(["int4", "int4", "int4", "text"])
            async for row in copy.rows():
                got.append(tuple(row))
        expect(got, rows, f"{w} COPY TO STDOUT rows")


async def scenario_psycopg_autocommit():
    import psycopg

    t = table_name("psycopg_ac")
    tc = table_name("psycopg_ac", "_copy")
    async with ScratchTables({
        t: "client int NOT NULL, iter int NOT NULL, k int NOT NULL",
        tc: "client int NOT NULL, iter int NOT NULL, k int NOT NULL, txt text NOT NULL",
    }):
        barrier = asyncio.Barrier(CLIENTS)

        async def client(n):
            conn = await psycopg.AsyncConnection.connect(
                URL, prepare_threshold=0, autocommit=True, connect_timeout=CONNECT_TIMEOUT)
            try:
                await barrier.wait()
                async with conn.cursor() as cur:
                    # Same psycopg statement name (_pg3_0) on every
                    # connection, different text per client.
                    await cur.execute(f"SELECT %s::int + {n}", (1000,))
                    expect((await cur.fetchone())[0], 1000 + n, f"{where(n)} client-specific statement")
                    for i in range(ITERATIONS):
                        w = where(n, i)
                        app = f"client_{n}_{i}"
                        await cur.execute(f"SET application_name = '{app}'")
                        if CUSTOM_GUC:
                            await cur.execute(f"SET sluice_test.tag = 'tag_{n}_{i}'")

                        await cur.execute("SELECT %s::int + %s::int, %s::text", (i, n, f"x{n}"))
                        expect(await cur.fetchone(), (i + n, f"x{n}"), f"{w} parameterized select")

                        count = i % 5 + 2
                        await cur.execute("SELECT g FROM generate_series(1, %s) g", (count,))
                        expect([r[0] for r in await cur.fetchall()], list(range(1, count + 1)),
                               f"{w} multi-row select")

                        await cur.executemany(
                            f"INSERT INTO {t} (client, iter, k) VALUES (%s, %s, %s)",
                            [(n, i, k) for k in range(4)])
                        await cur.execute(
                            f"SELECT count(*), sum(k) FROM {t} WHERE client = %s AND iter = %s", (n, i))
                        expect(await cur.fetchone(), (4, 6), f"{w} executemany rows")

                        # Session state set above must still be ours, after
                        # several statements and other clients' SETs.
                        await cur.execute("SHOW application_name")
                        expect((await cur.fetchone())[0], app, f"{w} SHOW application_name")
                        if CUSTOM_GUC:
                            await cur.execute("SELECT current_setting('sluice_test.tag')")
                            expect((await cur.fetchone())[0], f"tag_{n}_{i}", f"{w} custom GUC")

                        if i % 3 == 0:
                            await psycopg_copy_roundtrip(conn, tc, n, i, w)

                        await cur.execute("SELECT current_setting('application_name')")
                        expect((await cur.fetchone())[0], app, f"{w} application_name after more work")
            finally:
                await asyncio.wait_for(conn.close(), 5)

        await run_clients(client)
    return "prepare_threshold=0, autocommit"


# --------------------------------------------------------------------------
# psycopg 3, explicit transactions
# --------------------------------------------------------------------------

async def scenario_psycopg_tx():
    import psycopg

    t = table_name("psycopg_tx")
    tc = table_name("psycopg_tx", "_copy")
    async with ScratchTables({
        t: "client int NOT NULL, iter int NOT NULL, tag text NOT NULL",
        tc: "client int NOT NULL, iter int NOT NULL, k int NOT NULL, txt text NOT NULL",
    }):
        barrier = asyncio.Barrier(CLIENTS)

        async def client(n):
            conn = await psycopg.AsyncConnection.connect(
                URL, prepare_threshold=0, autocommit=False, connect_timeout=CONNECT_TIMEOUT)
            # Few cache slots: psycopg has to deallocate statements as it
            # goes, which the proxy must handle too.
            conn.prepared_max = 4
            try:
                await barrier.wait()
                async with conn.cursor() as cur:
                    await cur.execute(f"SET application_name = 'tx_{n}'")
                    await conn.commit()
                    for i in range(ITERATIONS):
                        w = where(n, i)
                        await cur.execute(
                            f"INSERT INTO {t} (client, iter, tag) VALUES (%s, %s, 'keep')", (n, i))
                        await cur.execute("SELECT txid_current(), pg_backend_pid()")
                        xid, pid = await cur.fetchone()
                        await cur.execute("SELECT txid_current(), pg_backend_pid()")
                        expect(await cur.fetchone(), (xid, pid),
                               f"{w} same transaction id/backend inside one transaction")
                        await conn.commit()

                        await cur.execute(
                            f"INSERT INTO {t} (client, iter, tag) VALUES (%s, %s, 'discard')", (n, i))
                        await cur.execute(
                            f"SELECT count(*) FROM {t} WHERE client = %s AND iter = %s", (n, i))
                        expect((await cur.fetchone())[0], 2, f"{w} uncommitted row visible in its transaction")
                        await conn.rollback()
                        await cur.execute(
                            f"SELECT tag FROM {t} WHERE client = %s AND iter = %s", (n, i))
                        expect(await cur.fetchall(), [("keep",)], f"{w} rows after commit + rollback")
                        await conn.commit()

                        # SET inside a committed transaction sticks; inside a
                        # rolled back one it reverts (PostgreSQL semantics).
                        await cur.execute(f"SET application_name = 'tx_{n}_{i}'")
                        await conn.commit()
                        await cur.execute(f"SET application_name = 'bogus_{n}_{i}'")
                        await conn.rollback()
                        await cur.execute("SHOW application_name")
                        expect((await cur.fetchone())[0], f"tx_{n}_{i}",
                               f"{w} application_name after commit then rolled back SET")
                        await conn.commit()

                        if i % 5 == 0:
                            await psycopg_copy_roundtrip(conn, tc, n, i, w)
                            await conn.commit()

                    await cur.execute(f"SELECT count(*) FROM {t} WHERE client = %s", (n,))
                    expect((await cur.fetchone())[0], ITERATIONS, f"{where(n)} committed rows total")
                    await conn.commit()
            finally:
                await asyncio.wait_for(conn.close(), 5)

        await run_clients(client)
    return "prepare_threshold=0, prepared_max=4, explicit commit/rollback"


# --------------------------------------------------------------------------
# SQLAlchemy 2 asyncio (asyncpg driver), Core
# --------------------------------------------------------------------------

async def scenario_sqlalchemy():
    import sqlalchemy as sa
    from sqlalchemy.ext.asyncio import AsyncSession, create_async_engine

    sa_url = sa.engine.make_url(URL).set(drivername="postgresql+asyncpg")
    engine = create_async_engine(
        sa_url, pool_size=CLIENTS, max_overflow=0, pool_timeout=60,
        connect_args={"timeout": CONNECT_TIMEOUT})
    meta = sa.MetaData()
    tbl = sa.Table(
        table_name("sqlalchemy"), meta,
        sa.Column("id", sa.Integer, sa.Identity(), primary_key=True),
        sa.Column("client", sa.Integer, nullable=False),
        sa.Column("iter", sa.Integer, nullable=False),
        sa.Column("val", sa.String(64), nullable=False),
    )
    per_iter = 3
    try:
        async with engine.begin() as conn:
            await conn.run_sync(meta.drop_all)
            await conn.run_sync(meta.create_all)

        async def client(n):
            async with AsyncSession(engine) as session:
                for i in range(ITERATIONS):
                    w = where(n, i)
                    async with session.begin():
                        await session.execute(
                            sa.insert(tbl),
                            [{"client": n, "iter": i, "val": f"v{n}.{i}.{k}"} for k in range(per_iter)])
                        cnt = (await session.execute(
                            sa.select(sa.func.count()).select_from(tbl).where(tbl.c.client == n)
                        )).scalar_one()
                        expect(cnt, (i + 1) * per_iter, f"{w} count inside transaction")

                    if i % 4 == 3:
                        try:
                            async with session.begin():
                                await session.execute(
                                    sa.insert(tbl).values(client=n, iter=i, val="rollback"))
                                raise _Rollback()
                        except _Rollback:
                            pass

                    vals = (await session.execute(
                        sa.select(tbl.c.val)
                        .where(tbl.c.client == n, tbl.c.iter == sa.bindparam("it"))
                        .order_by(tbl.c.val),
                        {"it": i},
                    )).scalars().all()
                    expect(vals, [f"v{n}.{i}.{k}" for k in range(per_iter)], f"{w} select by params")
                    await session.commit()

            async with engine.connect() as conn:
                cnt = (await conn.execute(
                    sa.select(sa.func.count()).select_from(tbl).where(tbl.c.client == n))).scalar_one()
                expect(cnt, ITERATIONS * per_iter, f"{where(n)} final count")

        await run_clients(client)

        async with engine.connect() as conn:
            total = (await conn.execute(sa.select(sa.func.count()).select_from(tbl))).scalar_one()
            expect(total, CLIENTS * ITERATIONS * per_iter, "total row count")
    finally:
        try:
            async with engine.begin() as conn:
                await conn.run_sync(meta.drop_all)
        except Exception as e:
            log(f"  warning: could not drop {tbl.name}: {e!r}")
        await asyncio.wait_for(engine.dispose(), 15)
    return f"engine pool_size={CLIENTS}"


# --------------------------------------------------------------------------
# runner
# --------------------------------------------------------------------------

SCENARIOS = [
    ("asyncpg", scenario_asyncpg),
    ("asyncpg-pool", scenario_asyncpg_pool),
    ("psycopg-autocommit", scenario_psycopg_autocommit),
    ("psycopg-tx", scenario_psycopg_tx),
    ("sqlalchemy", scenario_sqlalchemy),
]


async def run_all():
    selected = [(n, f) for n, f in SCENARIOS if not ONLY or n in ONLY]
    unknown = ONLY - {n for n, _ in SCENARIOS}
    if unknown:
        log(f"error: unknown scenario(s) {sorted(unknown)}; known: {[n for n, _ in SCENARIOS]}")
        return 0, 1, 0
    log(f"python clients: {CLIENTS} clients x {ITERATIONS} iterations, proxy pool size "
        f"{POOL_SIZE}, timeout {SCENARIO_TIMEOUT:.0f}s per scenario")
    passed = failed = 0
    for idx, (name, fn) in enumerate(selected):
        start = time.monotonic()
        task = asyncio.create_task(fn(), name=name)
        done, _ = await asyncio.wait({task}, timeout=SCENARIO_TIMEOUT)
        elapsed = time.monotonic() - start
        if not done:
            task.cancel()
            await asyncio.wait({task}, timeout=10)
            log(f"FAIL {name}: timed out after {SCENARIO_TIMEOUT:.0f}s (hang?)")
            failed += 1
        elif task.exception() is not None:
            exc = task.exception()
            log(f"FAIL {name} ({elapsed:.1f}s): {type(exc).__name__}: {exc}")
            if not isinstance(exc, Failure):
                log("".join(traceback.format_exception(exc)).rstrip())
            failed += 1
        else:
            log(f"PASS {name} ({elapsed:.1f}s): {task.result()}")
            passed += 1
            continue
        skipped = len(selected) - idx - 1
        if skipped:
            log(f"stopping after first failure; not run: {', '.join(n for n, _ in selected[idx + 1:])}")
        return passed, failed, skipped
    return passed, failed, 0


def main():
    # Last-resort guard: if cancellation itself hangs, still exit.
    deadline = SCENARIO_TIMEOUT * len(SCENARIOS) + 60

    def watchdog():
        print(f"FAIL watchdog: whole run exceeded {deadline:.0f}s\n0 passed, 1 failed", flush=True)
        os._exit(3)

    timer = threading.Timer(deadline, watchdog)
    timer.daemon = True
    timer.start()

    passed, failed, skipped = asyncio.run(run_all())
    summary = f"{passed} passed, {failed} failed"
    if skipped:
        summary += f", {skipped} skipped"
    sys.stderr.flush()
    print(summary, flush=True)
    # Skip interpreter teardown: nothing may print after the summary line.
    os._exit(0 if failed == 0 else 1)


if __name__ == "__main__":
    main()
