"""The index-served test database (scripts/services.d/gin-indexes.sql).

FerretDB 1.24 pushes top-level equality down to PostgreSQL as
`_jsonb->$1 @> $2` (internal/backends/postgresql/query.go), which its own btree
indexes cannot serve. The test setup gives every index FerretDB creates a GIN
twin per top-level key. These tests show, on PostgreSQL itself, that the twins
exist for the indexes supportd declares, that the plan of FerretDB's query
shape is an index scan, and that FerretDB's real finds use those indexes.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pymongo
import pytest
from bson import ObjectId

from conftest import services_script

CONV = "conversation-conversation"
OUTBOX = "conversation-notification"


def psql_bin() -> str:
    for d in sorted(Path("/usr/lib/postgresql").glob("*/bin"), reverse=True):
        if (d / "psql").exists():
            return str(d / "psql")
    return shutil.which("psql") or pytest.fail("psql not found", pytrace=False)


@pytest.fixture
def pg(services):
    url = services.get("POSTGRES_URL") or os.environ.get("POSTGRES_URL")
    if not url:
        pytest.fail("POSTGRES_URL unknown: restart the services (scripts/services down; up) so that "
                    ".services.env names FerretDB's PostgreSQL", pytrace=False)
    exe = psql_bin()

    def run(*sql: str) -> str:
        args = [exe, "-X", "-q", "-At", url, "-v", "ON_ERROR_STOP=1"]
        for s in sql:
            args += ["-c", s]
        cp = subprocess.run(args, capture_output=True, text=True, timeout=60)
        assert cp.returncode == 0, f"psql {sql}: {cp.stderr}"
        return cp.stdout.strip()
    return run


def table_of(pg, db: str, coll: str) -> str:
    t = pg(f"SELECT _jsonb->>'table' FROM \"{db}\"._ferretdb_database_metadata "
           f"WHERE _jsonb->>'_id' = '{coll}'")
    assert t, f"no FerretDB table for {db}.{coll}"
    return t


def gin_indexes(pg, db: str, table: str) -> dict[str, str]:
    """{top-level field: GIN index name} on FerretDB's table."""
    out = {}
    for line in pg(f"SELECT indexname, indexdef FROM pg_indexes WHERE schemaname = '{db}' "
                   f"AND tablename = '{table}' AND indexdef LIKE '% USING gin %'").splitlines():
        name, d = line.split("|", 1)
        assert "jsonb_path_ops" in d, d
        field = d.split("(_jsonb -> '", 1)[1].split("'::text)", 1)[0]
        out[field] = name
    return out


def plan_nodes(plan: dict):
    yield plan
    for p in plan.get("Plans", []):
        yield from plan_nodes(p)


def explain(pg, db: str, table: str, field: str, value_json: str) -> list[dict]:
    """EXPLAIN of the statement FerretDB sends for {field: value}: its shape
    `_jsonb->$1 @> $2`, prepared, the key and value as parameters."""
    out = pg(f"PREPARE q(text, jsonb) AS SELECT _jsonb FROM \"{db}\".\"{table}\" WHERE _jsonb->$1 @> $2",
             f"EXPLAIN (FORMAT JSON) EXECUTE q('{field}', '{value_json}')")
    return list(plan_nodes(json.loads(out)[0]["Plan"]))


def index_scans(pg, db: str, index: str) -> int:
    v = pg(f"SELECT idx_scan FROM pg_stat_user_indexes WHERE schemaname = '{db}' "
           f"AND indexrelname = '{index}'")
    return int(v or 0)


def seed(sd, n: int = 3000, snoozed: int = 12):
    """Conversations and outbox entries enough for the planner to prefer an
    index over a scan; `snoozed` of them snoozed. supportd creates its
    indexes first (`once probe`), as a deployment does."""
    cp = sd.cli("once", "probe")
    assert cp.returncode == 0, cp.stderr
    client = pymongo.MongoClient(sd.mongo_url, tz_aware=True)
    db = client[sd.db_name]
    now = datetime(2026, 3, 2, 9, 0, tzinfo=timezone.utc)
    docs = [{"_id": ObjectId(), "status": "snoozed" if i < snoozed else "open",
             "updated_at": now - timedelta(minutes=i), "snooze": {"until": now}, "subject": f"t{i}"}
            for i in range(n)]
    db[CONV].insert_many(docs, ordered=False)
    db[OUTBOX].insert_many([{"_id": ObjectId(), "key": f"k{i}", "status": "sent", "via": "email",
                             "next_attempt_at": now} for i in range(n)], ordered=False)
    return client, db, docs


def test_postgres_plans_every_execution(pg):
    # FerretDB prepares its statements; a cached generic plan cannot match an
    # expression index on a parameter's key, so a custom plan per execution.
    assert pg("SHOW plan_cache_mode") == "force_custom_plan"


def test_supportd_indexes_get_gin_twins_and_lookups_use_them(sd, pg):
    client, db, docs = seed(sd)
    table = table_of(pg, sd.db_name, CONV)
    pg(f'ANALYZE "{sd.db_name}"."{table}"')
    gin = gin_indexes(pg, sd.db_name, table)
    # _id, and every top-level key of supportd's conversation indexes
    # (src/store/indexes.c); the nested snooze.until and sla.next_due get none.
    assert set(gin) == {"_id", "status", "updated_at", "supportd_unsnooze_pending"}, gin
    outbox_gin = gin_indexes(pg, sd.db_name, table_of(pg, sd.db_name, OUTBOX))
    assert {"_id", "key", "status"} <= set(outbox_gin), outbox_gin

    # The plan of FerretDB's statement shape, with a stored _id as the value.
    id_json = pg(f'SELECT _jsonb->\'_id\' FROM "{sd.db_name}"."{table}" OFFSET 1500 LIMIT 1')
    nodes = explain(pg, sd.db_name, table, "_id", id_json)
    types = [n["Node Type"] for n in nodes]
    assert "Seq Scan" not in types, types
    assert any(n["Node Type"] in ("Bitmap Index Scan", "Index Scan") and n.get("Index Name") == gin["_id"]
               for n in nodes), nodes
    nodes = explain(pg, sd.db_name, table, "status", '"snoozed"')
    assert any(n.get("Index Name") == gin["status"] for n in nodes), nodes
    assert "Seq Scan" not in [n["Node Type"] for n in nodes]

    # FerretDB's real finds: the GIN indexes' scan counters move. Nothing
    # else queries by these keys here (inserts do not), and the counters
    # reach pg_stat_user_indexes when FerretDB's connection goes idle.
    before_id = index_scans(pg, sd.db_name, gin["_id"])
    before_status = index_scans(pg, sd.db_name, gin["status"])
    target = docs[1500]
    assert db[CONV].find_one({"_id": target["_id"]})["subject"] == target["subject"]
    assert len(list(db[CONV].find({"status": "snoozed"}))) == 12
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if (index_scans(pg, sd.db_name, gin["_id"]) > before_id and
                index_scans(pg, sd.db_name, gin["status"]) > before_status):
            break
        time.sleep(0.5)
    assert index_scans(pg, sd.db_name, gin["_id"]) > before_id, "find by _id did not use the GIN index"
    assert index_scans(pg, sd.db_name, gin["status"]) > before_status, \
        "find by status did not use the GIN index"
    client.close()


def test_services_index_step_restores_missing_twins(sd, pg):
    client, db, _ = seed(sd, n=50)
    table = table_of(pg, sd.db_name, CONV)
    gin = gin_indexes(pg, sd.db_name, table)
    # A database older than the trigger: its twins missing.
    pg(*(f'DROP INDEX "{sd.db_name}"."{name}"' for name in gin.values()))
    assert gin_indexes(pg, sd.db_name, table) == {}
    cp = services_script("index", sd.db_name)
    assert f"{sd.db_name}:" in cp.stdout, cp.stdout
    assert gin_indexes(pg, sd.db_name, table) == gin
    services_script("index", sd.db_name)  # idempotent
    assert gin_indexes(pg, sd.db_name, table) == gin
    client.close()


def twin_options(pg, db: str, table: str) -> dict[str, str]:
    """{GIN twin name: its reloptions} on FerretDB's table."""
    out = {}
    for name in gin_indexes(pg, db, table).values():
        out[name] = pg(f"SELECT coalesce(array_to_string(reloptions, ','), '') FROM pg_class "
                       f"WHERE oid = '\"{db}\".\"{name}\"'::regclass")
    return out


def lookup_blocks(pg, db: str, table: str, value_json: str) -> int:
    """Buffers the GIN index scan of one lookup by _id touches (FerretDB's statement shape):
    what a lookup costs, counted, not timed."""
    # the index path at either size (the planner would scan 1,000 rows instead)
    out = pg("SET enable_seqscan = off",
             f"PREPARE q(text, jsonb) AS SELECT _jsonb FROM \"{db}\".\"{table}\" WHERE _jsonb->$1 @> $2",
             f"EXPLAIN (ANALYZE, BUFFERS, FORMAT JSON) EXECUTE q('_id', '{value_json}')")
    nodes = [n for n in plan_nodes(json.loads(out)[0]["Plan"]) if n["Node Type"] == "Bitmap Index Scan"]
    assert nodes, out
    return sum(n.get("Shared Hit Blocks", 0) + n.get("Shared Read Blocks", 0) for n in nodes)


def test_lookups_cost_the_same_among_100000_rows_inserted_after_the_index(sd, pg):
    """supportd creates its indexes before the platform's documents arrive, so every row
    reaches the GIN twins as an insert. With GIN's fast-update on, inserts wait in a
    pending list (up to gin_pending_list_limit, 4 MB) that every lookup scans linearly;
    the twins are made with fastupdate = off, so a lookup among 100,000 such rows reads
    what it reads among 1,000."""
    client = pymongo.MongoClient(sd.mongo_url)
    client[sd.db_name]["bulk"].create_index("key")  # the table and its twins, still empty
    table = table_of(pg, sd.db_name, "bulk")
    options = twin_options(pg, sd.db_name, table)
    assert len(options) == 2 and all("fastupdate=off" in o for o in options.values()), options

    def insert(first: int, last: int):
        pg(f"INSERT INTO \"{sd.db_name}\".\"{table}\" (_jsonb) SELECT jsonb_build_object("
           f"'_id', 'id' || g, 'key', 'k' || g) FROM generate_series({first}, {last}) g")

    insert(1, 1000)
    pg(f'ANALYZE "{sd.db_name}"."{table}"')
    small = lookup_blocks(pg, sd.db_name, table, '"id500"')
    insert(1001, 100000)
    pg(f'ANALYZE "{sd.db_name}"."{table}"')
    large = lookup_blocks(pg, sd.db_name, table, '"id500"')
    assert large <= 2 * small + 4, (small, large)
    client.close()
