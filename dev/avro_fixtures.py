#!/usr/bin/env python3
"""floe dev stack: turns the records dev/avro-fixtures.sh captured into test fixtures.

Reads the capture (dev/debezium/FloeCapture.java: one JSON line per record, raw bytes and
decoded data), pairs every Avro record with its JSON twin (the same change seen by the JSON
forwarder), checks that the Avro record decodes (real AvroConverter) to the same key and
value as the JSON twin's payload (and that the unwrapped one carries the twin's row image),
and writes into --out: messages.jsonl, schemas.json, subjects.json and README.md.
Standard library only. Used by dev/avro-fixtures.sh; not meant to be run by hand.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import re
import sys
import urllib.request
from pathlib import Path

# Topic prefix of each forwarder of dev/avro-fixtures.sh -> (format, SMT).
FORMATS = {"fxjson": ("json", None), "fxavro": ("avro", None), "fxunwrap": ("avro", "unwrap")}
TABLES = "public.all_types,public.all_types_trunc,public.composite_pk"


def fail(msg: str) -> None:
    print(f"avro-fixtures: error: {msg}", file=sys.stderr)
    sys.exit(1)


def canon(v) -> str:
    return json.dumps(v, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def get(url: str):
    with urllib.request.urlopen(url, timeout=10) as r:
        return json.loads(r.read())


def classify(rec: dict) -> dict:
    topic = rec["topic"]
    if topic.startswith("__debezium-heartbeat."):
        prefix, kind = topic.rsplit(".", 1)[1], "heartbeat"
    else:
        prefix = topic.split(".", 1)[0]
        kind = "transaction" if topic == f"{prefix}.transaction" else "change"
    fmt, smt = FORMATS[prefix]
    # The data: the JSON envelope's payload (schemas.enable=true), or what AvroConverter decoded.
    key, value = rec["key"], rec["value"]
    if fmt == "json":
        key = None if key is None else key["payload"]
        value = None if value is None else value["payload"]
    return {**rec, "prefix": prefix, "kind": kind, "format": fmt, "smt": smt,
            "key_data": key, "value_data": value}


def pair_ids(records: list[dict]) -> None:
    """Sets rec["pair"]: the same for the JSON, Avro and unwrapped record of one change."""
    previous: dict[tuple, dict] = {}  # (topic, partition) -> the record before
    first_heartbeat: set[str] = set()
    for rec in records:  # ordered by topic, partition, offset
        v, k = rec["value_data"], rec["key_data"]
        if rec["kind"] == "heartbeat":
            rec["pair"] = None
            if rec["prefix"] not in first_heartbeat:
                first_heartbeat.add(rec["prefix"])
                rec["pair"] = "heartbeat"
        elif rec["kind"] == "transaction":
            rec["pair"] = f"tx:{v['id']}:{v['status']}"
        elif v is None:
            prev = previous.get((rec["topic"], rec["partition"]))
            if prev is None or prev.get("op") != "d" or canon(prev["key_data"]) != canon(k):
                fail(f"a tombstone not right after its delete: {rec['topic']} {rec['offset']}")
            rec["op"] = "tombstone"
            rec["pair"] = prev["pair"] + ":tombstone"
        else:
            table = rec["topic"].rsplit(".", 1)[1]
            if rec["smt"] == "unwrap":
                op, lsn = v["__op"], v["__lsn"]
            else:
                op, lsn = v["op"], v["source"]["lsn"]
            rec["op"] = op
            # Snapshot reads carry the LSN of each forwarder's own snapshot: pair them by key.
            rec["pair"] = f"{table}:r:{canon(k)}" if op == "r" else f"{table}:{op}:{lsn}:{canon(k)}"
        previous[(rec["topic"], rec["partition"])] = rec


def comparable(value):
    """A change event without what differs between two forwarders of the same change: the
    connector name (the topic prefix) in source.name, the processing time (ts_ms, ts_us,
    ts_ns), and for a snapshot read the position and time of each forwarder's own snapshot."""
    if not isinstance(value, dict) or "source" not in value:
        return value
    v = {k: x for k, x in value.items() if k not in ("ts_ms", "ts_us", "ts_ns")}
    source = dict(v["source"])
    source["name"] = "<prefix>"
    if v.get("op") == "r":
        for k in ("lsn", "sequence", "txId", "ts_ms", "ts_us", "ts_ns"):
            source.pop(k, None)
    v["source"] = source
    return v


def check_twins(records: list[dict]) -> dict[str, dict]:
    """Every pair has one JSON and one Avro record holding the same data; the unwrapped
    record (when there is one) holds the row image of the JSON twin."""
    groups: dict[str, dict] = collections.defaultdict(dict)
    for rec in records:
        if rec["pair"] is None:
            continue
        slot = rec["format"] + ("+" + rec["smt"] if rec["smt"] else "")
        if slot in groups[rec["pair"]]:
            fail(f"two {slot} records for pair {rec['pair']}")
        groups[rec["pair"]][slot] = rec
    problems = []
    for pid, g in groups.items():
        j, a, u = g.get("json"), g.get("avro"), g.get("avro+unwrap")
        if j is None or a is None:
            problems.append(f"{pid}: json={j is not None} avro={a is not None}")
            continue
        if pid == "heartbeat":
            continue
        if canon(j["key_data"]) != canon(a["key_data"]):
            problems.append(f"{pid}: keys differ: {canon(j['key_data'])} vs {canon(a['key_data'])}")
        jv, av = canon(comparable(j["value_data"])), canon(comparable(a["value_data"]))
        if jv != av:
            problems.append(f"{pid}: values differ:\n  json {jv[:1500]}\n  avro {av[:1500]}")
        if u is not None and j["kind"] == "change" and j["value_data"] is not None:
            env = j["value_data"]
            image = env["before"] if env["op"] == "d" else env["after"]
            row = {c: x for c, x in u["value_data"].items() if not c.startswith("__")}
            if canon(row) != canon(image):
                problems.append(f"{pid}: unwrapped row differs from the envelope's")
            if u["value_data"].get("__deleted") != ("true" if env["op"] == "d" else "false"):
                problems.append(f"{pid}: __deleted is {u['value_data'].get('__deleted')!r}")
        elif u is not None and canon(comparable(u["value_data"])) != canon(comparable(a["value_data"])):
            problems.append(f"{pid}: the unwrap forwarder changed a {j['kind']} record")
    if problems:
        fail("twins do not match:\n" + "\n".join(problems))
    return groups


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--capture", required=True)
    ap.add_argument("--registry", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--dbz-libs", required=True)
    ap.add_argument("--pg-version", default="15")
    ap.add_argument("--settings", nargs="*", default=[], help="NAME=FILE: forwarder settings")
    args = ap.parse_args()
    out = Path(args.out)

    with open(args.capture, encoding="utf-8") as f:
        records = [classify(json.loads(line)) for line in f if line.strip()]
    if not records:
        fail(f"nothing captured in {args.capture}")
    pair_ids(records)
    groups = check_twins(records)

    # Pairs in the order the JSON forwarder wrote them (topic, partition, offset); inside a
    # pair: JSON, Avro, Avro unwrapped.
    order = {"json": 0, "avro": 1, "avro+unwrap": 2}
    pairs = [r["pair"] for r in records if r["format"] == "json" and r["pair"] is not None]
    lines = []
    for pid in pairs:
        for slot, rec in sorted(groups[pid].items(), key=lambda s: order[s[0]]):
            lines.append({
                "pair": pid, "format": rec["format"], "smt": rec["smt"], "topic": rec["topic"],
                "partition": rec["partition"], "offset": rec["offset"],
                "key_b64": rec["key_b64"], "value_b64": rec["value_b64"], "headers": rec["headers"],
                "key_schema_id": rec["key_schema_id"], "value_schema_id": rec["value_schema_id"],
            })
    unwrapped_extra = [r for r in records if r["smt"] == "unwrap" and r["pair"] is not None
                       and r["pair"] not in set(pairs)]
    if unwrapped_extra:
        fail(f"unwrapped records without a JSON twin: {[r['pair'] for r in unwrapped_extra]}")

    # The registry: every subject's versions and every schema, as it returns them.
    reg = args.registry.rstrip("/")
    subjects = {}
    for s in get(f"{reg}/subjects"):
        subjects[s] = [get(f"{reg}/subjects/{s}/versions/{v}")["id"]
                       for v in get(f"{reg}/subjects/{s}/versions")]
    ids = sorted({i for v in subjects.values() for i in v})
    schemas = {str(i): get(f"{reg}/schemas/ids/{i}")["schema"] for i in ids}
    used = {x for line in lines for x in (line["key_schema_id"], line["value_schema_id"]) if x}
    missing = used - set(ids)
    if missing:
        fail(f"schema ids used by the records but not in the registry: {sorted(missing)}")

    out.mkdir(parents=True, exist_ok=True)
    with open(out / "messages.jsonl", "w", encoding="utf-8") as f:
        for line in lines:
            f.write(json.dumps(line, separators=(",", ":")) + "\n")
    with open(out / "schemas.json", "w", encoding="utf-8") as f:
        json.dump(schemas, f, indent=1)
        f.write("\n")
    with open(out / "subjects.json", "w", encoding="utf-8") as f:
        json.dump(subjects, f, indent=1, sort_keys=True)
        f.write("\n")

    # Counts for the README.
    kept = {(r["topic"], r["partition"], r["offset"]) for r in records if r["pair"] is not None}
    counts = collections.Counter()
    for r in records:
        if (r["topic"], r["partition"], r["offset"]) not in kept:
            continue
        slot = r["format"] + ("+" + r["smt"] if r["smt"] else "")
        topic = "__debezium-heartbeat.<prefix>" if r["kind"] == "heartbeat" else \
            "<prefix>." + r["topic"].split(".", 1)[1]
        if r["kind"] == "change":
            what = r["op"]
        elif r["kind"] == "transaction":
            what = r["value_data"]["status"]
        else:
            what = "heartbeat"
        counts[(topic, what, slot)] += 1
    totals = collections.Counter(l["format"] + ("+" + l["smt"] if l["smt"] else "") for l in lines)
    dropped = len(records) - len(kept)
    libs = sorted(os.listdir(args.dbz_libs))

    def version(prefix: str) -> str:
        for n in libs:
            m = re.fullmatch(re.escape(prefix) + r"-(\d[\w.\-]*)\.jar", n)
            if m:
                return m.group(1)
        return "?"

    settings = {}
    for s in args.settings:
        name, _, path = s.partition("=")
        with open(path, encoding="utf-8") as f:
            settings[name] = [l.rstrip("\n") for l in f if l.strip() and not l.startswith("#")
                              and not l.startswith(("database.port=", "floe.producer.bootstrap"))]
    write_readme(out, lines, counts, totals, dropped, subjects, schemas, settings, {
        "debezium": version("debezium-embedded"), "connector": version("debezium-connector-postgres"),
        "converter": version("kafka-connect-avro-converter"), "serializer": version("kafka-avro-serializer"),
        "client": version("kafka-schema-registry-client"), "avro": version("avro"),
        "kafka": version("kafka-clients"), "connect": version("connect-json"), "pg": args.pg_version,
    })
    size = sum((out / n).stat().st_size for n in os.listdir(out) if (out / n).is_file())
    print(f"avro-fixtures: {len(lines)} records in {len(set(l['pair'] for l in lines))} pairs "
          f"({', '.join(f'{k} {v}' for k, v in sorted(totals.items()))}), {len(schemas)} schemas, "
          f"{size // 1024} kB in {out}")


def write_readme(out, lines, counts, totals, dropped, subjects, schemas, settings, v) -> None:
    rows = []
    for topic, what in sorted({(t, w) for t, w, _ in counts}):
        cells = [str(counts.get((topic, what, slot), 0)) for slot in ("json", "avro", "avro+unwrap")]
        rows.append(f"| `{topic}` | {what} | " + " | ".join(cells) + " |")
    two = [s for s, ids in sorted(subjects.items()) if len(ids) > 1]
    text = f"""# Avro and JSON twins of real Debezium change events

Written by `dev/avro-fixtures.sh` (do not edit by hand; run it again to regenerate). Real
Debezium {v['debezium']} (PostgreSQL connector {v['connector']}, pgoutput, embedded engine)
on PostgreSQL {v['pg']}, the same changes serialised three ways by three
forwarders of the dev stack (`dev/stack.sh debezium-exec`), each with its own replication
slot and topic prefix:

| forwarder (topic prefix) | `format` / `smt` | serialisation |
|---|---|---|
| `fxjson` | `json` / null | Kafka Connect {v['connect']} `JsonConverter`, `schemas.enable=true` (the dev stack's default) |
| `fxavro` | `avro` / null | Confluent `io.confluent.connect.avro.AvroConverter` {v['converter']} (kafka-avro-serializer {v['serializer']}, kafka-schema-registry-client {v['client']}, Avro {v['avro']}), `auto.register.schemas=true` (default), subject = `<topic>-key` / `<topic>-value` (TopicNameStrategy, default), registry: `dev/registry/registry.py` |
| `fxunwrap` | `avro` / `unwrap` | as `fxavro`, after `io.debezium.transforms.ExtractNewRecordState` with `add.fields=op,lsn`, `delete.tombstone.handling.mode=rewrite` |

Connector settings common to all three (the dev stack's, `dev/stack.sh`):
`decimal.handling.mode=precise`, `provide.transaction.metadata=true` (topic
`<prefix>.transaction` and a `transaction` block in each event),
`heartbeat.interval.ms=2000`, `snapshot.mode=initial`, `skipped.operations=none`,
`header.converter.class=org.apache.kafka.connect.storage.SimpleHeaderConverter` (Debezium
adds no headers here: `headers` are empty), interval, time and binary handling at Debezium's
defaults, `table.include.list={TABLES}`.
Kafka producer: kafka-clients {v['kafka']}, default partitioner (murmur2 of the key bytes),
so a JSON record and its Avro twin usually sit on different partitions of their topics.

## How

```sh
dev/stack.sh start                  # tansu, registry, postgres are what it needs
dev/avro-fixtures.sh                # writes tests/fixtures/avro/
```

The script recreates the tables with `setup.sql` (one `composite_pk` row exists before the
forwarders start, so their initial snapshot reads it: `op` `r`), starts the three forwarders,
runs `changes.sql` (the statements of `tests/all/live_types.rs`, its `{{run}}` being `floe`:
every type, a row of NULLs, a 10 kB TOASTed text left unchanged by later updates, a
primary-key update, a truncate, `ALTER TABLE ... ADD COLUMN extra text` mid-stream; then
changes of a two-column primary key), waits for the last insert on all three, stops them and
reads every record they wrote (`dev/debezium/FloeCapture.java`). `dev/avro_fixtures.py` pairs
the records and checks, for every pair, that the Avro key and value decoded by the real
AvroConverter (rendered by JsonConverter without schemas) equal the JSON twin's `payload`,
and that the unwrapped value holds the twin's `after` (`before` for a delete) plus
`__op`, `__lsn` and `__deleted`.

## Files

- `messages.jsonl`: one record per line, the pairs in the order the JSON forwarder wrote
  them (topic, partition, offset), inside a pair JSON first, then Avro, then Avro unwrapped:
  `{{"pair", "format": "json"|"avro", "smt": null|"unwrap", "topic", "partition", "offset",
  "key_b64", "value_b64" (null: tombstone / null key), "headers": [[name, base64]],
  "key_schema_id", "value_schema_id" (the id in the Confluent framing, null for JSON)}}`.
  An Avro key or value is Confluent's wire format: byte 0, the schema id (4 bytes, big
  endian), the Avro binary encoding of the data with that writer schema (`schemas.json`).
  Twins differ only in what differs between two forwarders of one change: `source.name`
  (the topic prefix), the envelope's `ts_ms`/`ts_us`/`ts_ns` (processing time), and for a
  snapshot read (`op` `r`) `source.lsn`, `sequence`, `txId` and `ts_*`.
  `pair` is the same for the twins: `<table>:<op>:<lsn>:<key JSON>` (the key's fields,
  sorted, no spaces) for a change
  (`<table>:r:<key JSON>` for a snapshot read: each forwarder snapshots at its own LSN),
  that plus `:tombstone` for the tombstone after a delete (the unwrap forwarder drops
  tombstones), `tx:<txId:lsn>:BEGIN|END` for transaction metadata, `heartbeat` for the first
  heartbeat of each forwarder (not the same event: heartbeats only pair by kind; the later
  ones, {dropped} records, are left out).
- `schemas.json`: `{{"<id>": "<schema>"}}`, every schema the registry held, as
  `GET /schemas/ids/<id>` returns it (Avro schema JSON text; the registry was empty before
  the run). Record namespaces follow the topic (`fxavro.public.all_types.Value`), so
  `fxavro` and `fxunwrap` register different schemas. Ids are global: the same schema
  under two subjects has one id (the heartbeat and transaction schemas of `fxavro` and
  `fxunwrap`); their numbers follow the order in which the two Avro forwarders, running at
  the same time, registered them.
- `subjects.json`: `{{"<subject>": [id of version 1, id of version 2, ...]}}`. The added
  column gave a second value schema: {', '.join(f'`{s}`' for s in two) or 'none'}.
- `setup.sql`, `changes.sql`: the SQL, as run (`psql -f -`, as `live_types.rs` does: one
  transaction per statement but for the `BEGIN; ...; COMMIT;` line).

Records: {sum(totals.values())} ({', '.join(f'{k}: {n}' for k, n in sorted(totals.items()))}),
{len(schemas)} schemas. `op` `tombstone`: the null-value record after a delete; ExtractNewRecordState
drops tombstones (`rewrite`) and truncate events, and passes transaction metadata and
heartbeats through unchanged.

| topic | `op` / status | json | avro | avro+unwrap |
|---|---|---|---|---|
""" + "\n".join(rows) + "\n"
    if settings:
        text += "\n## Forwarder settings, as written by `dev/stack.sh debezium-exec`\n"
        text += "\n(`database.port` and the producer's `bootstrap.servers` left out.)\n"
        for name, lines_ in settings.items():
            text += f"\n`{name}`:\n\n```properties\n" + "\n".join(lines_) + "\n```\n"
    (out / "README.md").write_text(text, encoding="utf-8")


if __name__ == "__main__":
    main()
