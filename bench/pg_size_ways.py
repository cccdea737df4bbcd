"""``python -m bench.pg_size_ways``: what each named way to shrink the Postgres store
would save, measured on a real 1,000-step store (not a target; a decision aid).

The store is grown exactly as the checkpoint benchmark grows it, ``VACUUM FULL``ed so
every figure compares compacted tables, then changed in place, one way after the other:
native ``uuid`` run ids in every table that holds one, then no ``messages.created_at``.
Each line gives the whole store's size after that change and what the change saved.
"""

from __future__ import annotations

from typing import Any

from bench.checkpoint_cost import pausepoint_subject

STEPS = 1_000


def _total(conn: Any, schema: str) -> int:
    return int(
        conn.execute(
            "SELECT sum(pg_total_relation_size(c.oid)) FROM pg_class c "
            "JOIN pg_namespace n ON n.oid = c.relnamespace "
            "WHERE n.nspname = %s AND c.relkind = 'r'",
            (schema,),
        ).fetchone()[0]
    )


def _uuid_run_ids(conn: Any, schema: str) -> None:
    fks = conn.execute(
        "SELECT conrelid::regclass::text, conname FROM pg_constraint "
        "WHERE contype = 'f' AND connamespace = %s::regnamespace",
        (schema,),
    ).fetchall()
    for table, name in fks:
        conn.execute(f"ALTER TABLE {table} DROP CONSTRAINT {name}")
    columns = conn.execute(
        "SELECT table_name, column_name FROM information_schema.columns "
        "WHERE table_schema = %s AND data_type LIKE 'char%%' AND ("
        "(table_name = 'runs' AND column_name IN ('id', 'parent_run_id')) "
        "OR column_name = 'run_id')",
        (schema,),
    ).fetchall()
    for table, column in columns:
        conn.execute(f"ALTER TABLE {table} ALTER COLUMN {column} TYPE uuid USING {column}::uuid")


def main() -> int:
    with pausepoint_subject("postgres") as subject:
        subject.steps(STEPS)
        meter: Any = subject.meter
        conn, schema = meter.conn, meter.schema
        conn.execute(f"SET search_path = {schema}")
        grown = _total(conn, schema) / 2**20
        print(f"after {STEPS:,} steps, as measured: {grown:.3f} MiB")
        conn.execute("VACUUM FULL")
        before = _total(conn, schema)
        print(f"VACUUM FULL: {before / 2**20:.3f} MiB (the base of the savings below)")
        for name, change in (
            ("uuid run ids", lambda: _uuid_run_ids(conn, schema)),
            (
                "no messages.created_at",
                lambda: conn.execute("ALTER TABLE messages DROP COLUMN created_at"),
            ),
        ):
            change()
            conn.execute("VACUUM FULL")
            after = _total(conn, schema)
            print(f"+ {name}: {after / 2**20:.3f} MiB, saves {(before - after) / 1024:.0f} KiB")
            before = after
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
