'use strict';
// Drive sluice with node-postgres (pg) the way real apps use it.
//
// Every scenario opens MORE concurrent client connections than the proxy has
// server connections and uses named prepared statements (pg sends Parse once
// per connection and name, then only Bind/Execute), so a transaction pooler
// has to make each client's statements available on whichever server
// connection it lands on.
//
//   pg-client  many concurrent pg.Client, several named statements each (one
//              name shared by all clients with client-specific text),
//              BEGIN/INSERT/COMMIT and BEGIN/INSERT/ROLLBACK verified,
//              SET application_name that must follow the client
//   pg-pool    pg.Pool larger than the proxy pool, named statements through
//              pool.query, transactions on pool.connect() clients
//
// Environment:
//   SLUICE_URL        postgresql://user:pass@127.0.0.1:PORT/db   (required)
//   SLUICE_POOL_SIZE  server pool size of the proxy               (required)
//   CLIENTS           concurrent clients (default max(8, 4 * pool size))
//   ITERATIONS        rounds per client (default 30)
//   SCENARIO_TIMEOUT  seconds per scenario (default 120)
//   SCENARIOS         comma-separated names to run (default: all)
//
// Install the dependency first: (cd tests/clients/node && npm ci).
// Stops at the first failure; exit status 0 only if everything passed. The
// last line of output is "N passed, N failed[, N skipped]".

const pg = require('pg');

function envInt(name, dflt) {
  const raw = process.env[name];
  if (raw === undefined || raw === '') {
    if (dflt === undefined) fatal(`environment variable ${name} is required`);
    return dflt;
  }
  const v = Number.parseInt(raw, 10);
  if (!Number.isFinite(v) || String(v) !== raw.trim()) fatal(`${name}=${raw} is not an integer`);
  return v;
}

function fatal(msg) {
  console.log(`error: ${msg}`);
  process.exit(2);
}

const URL = process.env.SLUICE_URL || fatal('SLUICE_URL is required');
const POOL_SIZE = envInt('SLUICE_POOL_SIZE');
const CLIENTS = envInt('CLIENTS', Math.max(8, 4 * POOL_SIZE));
const ITERATIONS = envInt('ITERATIONS', 30);
const SCENARIO_TIMEOUT = Number(process.env.SCENARIO_TIMEOUT || 120);
const ONLY = new Set((process.env.SCENARIOS || '').split(',').map((s) => s.trim()).filter(Boolean));
const CONNECT_TIMEOUT_MS = 30000;
const RUN_ID = `${process.pid}_${Math.random().toString(16).slice(2, 8)}`;

if (CLIENTS <= POOL_SIZE) {
  console.log(`warning: CLIENTS=${CLIENTS} is not more than SLUICE_POOL_SIZE=${POOL_SIZE}; ` +
    'the proxy will not have to multiplex');
}

class Failure extends Error {}

function expect(actual, expected, what) {
  const a = JSON.stringify(actual);
  const e = JSON.stringify(expected);
  if (a !== e) throw new Failure(`${what}: expected ${e}, got ${a}`);
}

function tableName(scenario, suffix = '') {
  return `sluice_node_${scenario}_${RUN_ID}${suffix}`.replace(/-/g, '_').toLowerCase();
}

function newClient() {
  const c = new pg.Client({ connectionString: URL, connectionTimeoutMillis: CONNECT_TIMEOUT_MS });
  // A connection-level error is also thrown by the pending query; keep the
  // unhandled 'error' event from crashing the process.
  c.on('error', (err) => { c.lastError = err; });
  return c;
}

async function adminQuery(sql) {
  const c = newClient();
  await c.connect();
  try {
    await c.query(sql); // no values: simple query protocol
  } finally {
    await c.end();
  }
}

async function withTables(ddlByName, fn) {
  const names = Object.keys(ddlByName);
  await adminQuery(names.map((n) => `DROP TABLE IF EXISTS ${n}; CREATE TABLE ${n} (${ddlByName[n]});`).join('\n'));
  try {
    return await fn();
  } finally {
    try {
      await adminQuery(names.map((n) => `DROP TABLE IF EXISTS ${n}`).join('; '));
    } catch (err) {
      console.log(`  warning: could not drop ${names.join(', ')}: ${err.message}`);
    }
  }
}

// Resolves once `count` callers have arrived.
function barrier(count) {
  let arrived = 0;
  let release;
  const all = new Promise((resolve) => { release = resolve; });
  return () => {
    arrived += 1;
    if (arrived >= count) release();
    return all;
  };
}

// Run fn(n) for n in [0, count) concurrently; the first error wins.
async function runClients(count, fn) {
  const results = await Promise.allSettled(Array.from({ length: count }, (_, n) => fn(n)));
  const failed = results.find((r) => r.status === 'rejected');
  if (failed) throw failed.reason;
}

const where = (n, i) => (i === undefined ? `client ${n}` : `client ${n} iteration ${i}`);

// ---------------------------------------------------------------------------
// Many pg.Client, named statements, transactions
// ---------------------------------------------------------------------------

async function scenarioPgClient() {
  const t = tableName('client');
  const backends = new Set();
  await withTables({ [t]: 'client int NOT NULL, iter int NOT NULL, val text NOT NULL' }, async () => {
    const arrive = barrier(CLIENTS);
    await runClients(CLIENTS, async (n) => {
      const c = newClient();
      await c.connect();
      try {
        // Every client holds its connection before the first query.
        await arrive();
        // Same statement name on every client, different text per client:
        // a proxy mixing up clients' statements returns the wrong value.
        const add = { name: 'stmt_add', text: `SELECT $1::int + ${n} AS v` };
        const value = { name: 'stmt_value', text: 'SELECT $1::int AS v, $2::text AS s' };
        const rows = { name: 'stmt_rows', text: 'SELECT g, g * $1::int AS m FROM generate_series(1, $2::int) g' };
        const ins = { name: 'stmt_ins', text: `INSERT INTO ${t} (client, iter, val) VALUES ($1, $2, $3)` };
        const readBack = { name: 'stmt_read', text: `SELECT val FROM ${t} WHERE client = $1 AND iter = $2 ORDER BY val` };
        const count = { name: 'stmt_count', text: `SELECT count(*)::int AS c FROM ${t} WHERE client = $1` };
        const pid = { name: 'stmt_pid', text: 'SELECT pg_backend_pid() AS p' };

        await c.query(`SET application_name = 'node_${n}'`);
        for (let i = 0; i < ITERATIONS; i++) {
          const w = where(n, i);
          let r = await c.query({ ...add, values: [i] });
          expect(r.rows[0].v, i + n, `${w} stmt_add`);
          r = await c.query({ ...value, values: [i * 7, `s${n}.${i}`] });
          expect([r.rows[0].v, r.rows[0].s], [i * 7, `s${n}.${i}`], `${w} stmt_value`);
          const cnt = (i % 6) + 2;
          r = await c.query({ ...rows, values: [n + 1, cnt] });
          expect(r.rows.map((x) => [x.g, x.m]),
            Array.from({ length: cnt }, (_, k) => [k + 1, (k + 1) * (n + 1)]), `${w} stmt_rows`);

          // Committed transaction: the uncommitted row is visible only on
          // the same server connection, so the transaction must stay pinned.
          await c.query('BEGIN');
          const p1 = (await c.query(pid)).rows[0].p;
          await c.query({ ...ins, values: [n, i, `keep${i}`] });
          r = await c.query({ ...readBack, values: [n, i] });
          expect(r.rows.map((x) => x.val), [`keep${i}`], `${w} read own insert inside transaction`);
          expect((await c.query(pid)).rows[0].p, p1, `${w} backend pid inside one transaction`);
          backends.add(p1);
          await c.query('COMMIT');

          // Rolled back transaction: the row must be gone afterwards.
          await c.query('BEGIN');
          await c.query({ ...ins, values: [n, i, `rollback${i}`] });
          r = await c.query({ ...readBack, values: [n, i] });
          expect(r.rows.map((x) => x.val), [`keep${i}`, `rollback${i}`], `${w} both rows inside transaction`);
          await c.query('ROLLBACK');
          r = await c.query({ ...readBack, values: [n, i] });
          expect(r.rows.map((x) => x.val), [`keep${i}`], `${w} rows after ROLLBACK`);

          r = await c.query({ ...count, values: [n] });
          expect(r.rows[0].c, i + 1, `${w} committed row count`);

          r = await c.query('SHOW application_name');
          expect(r.rows[0].application_name, `node_${n}`, `${w} SHOW application_name`);
        }
      } finally {
        await c.end();
      }
    });
  });
  return `${backends.size} distinct server backends seen`;
}

// ---------------------------------------------------------------------------
// pg.Pool larger than the proxy pool
// ---------------------------------------------------------------------------

async function scenarioPgPool() {
  const t = tableName('pool');
  const pool = new pg.Pool({ connectionString: URL, max: CLIENTS, connectionTimeoutMillis: CONNECT_TIMEOUT_MS });
  pool.on('error', () => {}); // idle-client errors surface through queries
  const workers = 2 * CLIENTS;
  try {
    await withTables({ [t]: 'worker int NOT NULL, iter int NOT NULL' }, async () => {
      await runClients(workers, async (n) => {
        for (let i = 0; i < ITERATIONS; i++) {
          const w = `worker ${n} iteration ${i}`;
          let r = await pool.query({ name: 'pool_mul', text: 'SELECT $1::int * 3 AS v', values: [n * 1000 + i] });
          expect(r.rows[0].v, (n * 1000 + i) * 3, `${w} pool.query named`);
          r = await pool.query({ name: 'pool_series', text: 'SELECT g FROM generate_series(1, $1::int) g', values: [(i % 4) + 1] });
          expect(r.rows.map((x) => x.g), Array.from({ length: (i % 4) + 1 }, (_, k) => k + 1), `${w} pool.query rows`);
          if (i % 3 === 0) {
            const c = await pool.connect();
            let broken = false;
            try {
              await c.query('BEGIN');
              await c.query({ name: 'pool_ins', text: `INSERT INTO ${t} (worker, iter) VALUES ($1, $2)`, values: [n, i] });
              r = await c.query({ name: 'pool_one', text: `SELECT count(*)::int AS c FROM ${t} WHERE worker = $1 AND iter = $2`, values: [n, i] });
              expect(r.rows[0].c, 1, `${w} read own insert inside transaction`);
              await c.query('COMMIT');
            } catch (err) {
              broken = true;
              throw err;
            } finally {
              c.release(broken);
            }
          }
        }
        const r = await pool.query({ name: 'pool_total', text: `SELECT count(*)::int AS c FROM ${t} WHERE worker = $1`, values: [n] });
        expect(r.rows[0].c, Math.ceil(ITERATIONS / 3), `worker ${n} committed rows`);
      });
    });
  } finally {
    await pool.end();
  }
  return `pool max=${CLIENTS}, ${workers} workers`;
}

// ---------------------------------------------------------------------------
// runner
// ---------------------------------------------------------------------------

const SCENARIOS = [
  ['pg-client', scenarioPgClient],
  ['pg-pool', scenarioPgPool],
];

function withTimeout(promise, seconds) {
  let timer;
  const timeout = new Promise((_, reject) => {
    timer = setTimeout(() => reject(new Failure(`timed out after ${seconds}s (hang?)`)), seconds * 1000);
  });
  return Promise.race([promise, timeout]).finally(() => clearTimeout(timer));
}

function finish(passed, failed, skipped) {
  let summary = `${passed} passed, ${failed} failed`;
  if (skipped) summary += `, ${skipped} skipped`;
  console.log(summary);
  process.exit(failed === 0 ? 0 : 1);
}

async function main() {
  const known = SCENARIOS.map(([n]) => n);
  const unknown = [...ONLY].filter((n) => !known.includes(n));
  if (unknown.length) {
    console.log(`error: unknown scenario(s) ${unknown.join(', ')}; known: ${known.join(', ')}`);
    finish(0, 1, 0);
  }
  const selected = SCENARIOS.filter(([n]) => ONLY.size === 0 || ONLY.has(n));
  console.log(`node clients: pg ${require('pg/package.json').version}, ${CLIENTS} clients x ` +
    `${ITERATIONS} iterations, proxy pool size ${POOL_SIZE}, timeout ${SCENARIO_TIMEOUT}s per scenario`);

  // Last-resort guard in case something keeps the event loop stuck.
  setTimeout(() => {
    console.log('FAIL watchdog: whole run exceeded its deadline');
    finish(0, 1, 0);
  }, (SCENARIO_TIMEOUT * SCENARIOS.length + 60) * 1000).unref();

  let passed = 0;
  for (let idx = 0; idx < selected.length; idx++) {
    const [name, fn] = selected[idx];
    const start = Date.now();
    try {
      const detail = await withTimeout(fn(), SCENARIO_TIMEOUT);
      console.log(`PASS ${name} (${((Date.now() - start) / 1000).toFixed(1)}s): ${detail}`);
      passed += 1;
    } catch (err) {
      console.log(`FAIL ${name} (${((Date.now() - start) / 1000).toFixed(1)}s): ${err && err.message}`);
      if (!(err instanceof Failure) && err && err.stack) console.log(err.stack);
      const rest = selected.slice(idx + 1).map(([n]) => n);
      if (rest.length) console.log(`stopping after first failure; not run: ${rest.join(', ')}`);
      finish(passed, 1, rest.length);
    }
  }
  finish(passed, 0, 0);
}

main().catch((err) => {
  console.log(`FAIL runner: ${err && err.stack}`);
  finish(0, 1, 0);
});
