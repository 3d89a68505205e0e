-- Cache invalidation for writes that bypass sluice (migrations, cron jobs, other
-- services). Opt-in: run this once per database, then call sluice_watch() for each
-- table a cache rule covers. At commit, every write to a watched table sends the table
-- name on the channel "sluice_invalidate"; each sluice LISTENs on its primary and drops
-- the cached results that read that table. Writes through sluice need none of this.
--
--   psql "$DATABASE_URL" -f deploy/sql/sluice_invalidate.sql
--   SELECT sluice_watch('public.user_roles');
--   SELECT sluice_unwatch('public.user_roles');

CREATE OR REPLACE FUNCTION sluice_notify_invalidate() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    -- One notification per statement; Postgres folds duplicates within a transaction.
    PERFORM pg_notify('sluice_invalidate', TG_TABLE_NAME);
    RETURN NULL;
END
$$;

CREATE OR REPLACE FUNCTION sluice_watch(t regclass) RETURNS void
LANGUAGE plpgsql AS $$
BEGIN
    EXECUTE format('DROP TRIGGER IF EXISTS sluice_invalidate ON %s', t);
    EXECUTE format(
        'CREATE TRIGGER sluice_invalidate AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON %s '
        'FOR EACH STATEMENT EXECUTE FUNCTION sluice_notify_invalidate()', t);
END
$$;

CREATE OR REPLACE FUNCTION sluice_unwatch(t regclass) RETURNS void
LANGUAGE plpgsql AS $$
BEGIN
    EXECUTE format('DROP TRIGGER IF EXISTS sluice_invalidate ON %s', t);
END
$$;
