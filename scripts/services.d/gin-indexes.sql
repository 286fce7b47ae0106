-- The index-served test database: GIN expression indexes beside FerretDB's own.
--
-- FerretDB 1.24 (PostgreSQL backend) pushes top-level equality down as
-- `_jsonb->$1 @> $2` (jsonb containment) but creates its indexes as btree on
-- `((_jsonb->'field'))`, which cannot serve `@>`: every filtered find or update
-- scans the table. A GIN index `USING gin ((_jsonb->'field') jsonb_path_ops)`
-- can. This file (loaded by scripts/services into every database a FerretDB
-- of ours uses, idempotently) mirrors every btree index FerretDB creates onto
-- GIN, one per top-level field — `_id` (the `_id_` index of every collection)
-- and each top-level key of the MongoDB indexes supportd declares
-- (src/store/indexes.c, sent as createIndexes at every `run`/`once`). So the
-- list is supportd's own, carried here by FerretDB; nothing is kept twice.
-- Nested keys (`snooze.until`) get none: FerretDB pushes down only top-level
-- equality.
--
--   supportd_gin_for_index(index oid)  GIN twins of one FerretDB index
--   supportd_gin_for_schema(schema)    ... of every index in one database
--                                      (scripts/services index [DATABASE])
--   event trigger supportd_gin         ... of each index the moment FerretDB
--                                      creates it (new databases, new collections)
--
-- Test setup only: on MongoDB the indexes supportd creates serve these lookups.

CREATE OR REPLACE FUNCTION public.supportd_gin_for_index(idx oid) RETURNS integer
LANGUAGE plpgsql AS $fn$
DECLARE
    nsp text;
    rel text;
    am text;
    natts integer;
    expr text;
    field text;
    twin text;
    made integer := 0;
BEGIN
    SELECT n.nspname, c.relname, a.amname, i.indnatts INTO nsp, rel, am, natts
      FROM pg_index i
      JOIN pg_class ic ON ic.oid = i.indexrelid
      JOIN pg_am a ON a.oid = ic.relam
      JOIN pg_class c ON c.oid = i.indrelid
      JOIN pg_namespace n ON n.oid = c.relnamespace
     WHERE i.indexrelid = idx;
    -- Only FerretDB's btree indexes on its collection tables (a FerretDB
    -- database is a schema holding _ferretdb_database_metadata); our own GIN
    -- indexes fire this trigger too and stop here.
    IF NOT FOUND OR am <> 'btree' OR rel LIKE '\_ferretdb\_%'
       OR to_regclass(format('%I._ferretdb_database_metadata', nsp)) IS NULL THEN
        RETURN 0;
    END IF;
    FOR k IN 1 .. natts LOOP
        expr := pg_get_indexdef(idx, k, false);
        -- a top-level key prints as `((_jsonb -> 'status'::text))`; a nested
        -- one as `(((_jsonb -> 'snooze'::text) -> 'until'::text))`
        field := substring(expr FROM '^\(*_jsonb -> ''((?:[^'']|'''')*)''::text\)*$');
        CONTINUE WHEN field IS NULL;
        field := replace(field, '''''', '''');
        twin := left(rel || '_' || regexp_replace(field, '[^A-Za-z0-9_]', '_', 'g'), 48)
                    || '_' || left(md5(rel || '/' || field), 6) || '_gin';
        -- fastupdate off: the twins exist before the documents arrive (supportd
        -- creates its indexes first), so every row reaches them as an insert;
        -- with fast update those wait in a pending list of up to 4 MB that every
        -- lookup scans linearly (248 pages for one _id among 100,000 rows
        -- against 5 among 1,000: test_index_served.py).
        EXECUTE format('CREATE INDEX IF NOT EXISTS %I ON %I.%I USING gin ((_jsonb -> %L) jsonb_path_ops) '
                       'WITH (fastupdate = off)', twin, nsp, rel, field);
        -- a twin made by an earlier version of this file: switched, its pending list merged
        IF NOT coalesce((SELECT 'fastupdate=off' = ANY (reloptions) FROM pg_class
                          WHERE oid = format('%I.%I', nsp, twin)::regclass), false) THEN
            EXECUTE format('ALTER INDEX %I.%I SET (fastupdate = off)', nsp, twin);
            PERFORM gin_clean_pending_list(format('%I.%I', nsp, twin)::regclass);
        END IF;
        made := made + 1;
    END LOOP;
    RETURN made;
END
$fn$;

CREATE OR REPLACE FUNCTION public.supportd_gin_for_schema(nsp text) RETURNS integer
LANGUAGE sql AS $fn$
    SELECT coalesce(sum(public.supportd_gin_for_index(i.indexrelid)), 0)::integer
      FROM pg_index i
      JOIN pg_class c ON c.oid = i.indrelid
      JOIN pg_namespace n ON n.oid = c.relnamespace
     WHERE n.nspname = nsp;
$fn$;

CREATE OR REPLACE FUNCTION public.supportd_gin_on_create_index() RETURNS event_trigger
LANGUAGE plpgsql AS $fn$
DECLARE
    r record;
BEGIN
    FOR r IN SELECT objid FROM pg_event_trigger_ddl_commands() WHERE object_type = 'index' LOOP
        -- Never fail FerretDB's own DDL over a twin: warn (PostgreSQL's log)
        -- and go on; test_index_served.py notices a missing twin.
        BEGIN
            PERFORM public.supportd_gin_for_index(r.objid);
        EXCEPTION WHEN OTHERS THEN
            RAISE WARNING 'supportd_gin: no GIN twin for index %: %', r.objid::regclass, SQLERRM;
        END;
    END LOOP;
END
$fn$;

-- On CREATE INDEX, not CREATE TABLE: FerretDB creates a collection's table
-- before it records the collection in its metadata, and its indexes after;
-- and supportd's indexes come later still, from createIndexes.
DROP EVENT TRIGGER IF EXISTS supportd_gin;
CREATE EVENT TRIGGER supportd_gin ON ddl_command_end WHEN TAG IN ('CREATE INDEX')
    EXECUTE FUNCTION public.supportd_gin_on_create_index();
