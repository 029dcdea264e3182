#!/usr/bin/env python3
# ruff: noqa
# Copied unchanged from ../shared/bench-anchors/gen_corpus.py (gen_version 3): the same
# parameters give byte-identical corpora, so figures stay comparable with the anchors'.
"""Deterministic synthetic Airflow DAG-folder corpus generator.

Default: 5,000 DAG-like .py files of 1-16 KB spread over ~100 leaf folders
(10 teams x 10 domains), plus 20 larger SQL/JSON files of 200 KB - 2 MB.
Same --seed + same parameters => byte-identical tree.

Usage: gen_corpus.py OUTDIR [--files N] [--dirs D] [--big 20] [--seed 42]
Writes OUTDIR/../<basename>.manifest.json (file count, bytes, digest) and skips
regeneration when an identical manifest already exists.
"""
import argparse
import hashlib
import json
import os
import random
import shutil
import sys

OPERATORS = [
    ("BashOperator", "airflow.operators.bash", "bash_command='{cmd}'"),
    ("PythonOperator", "airflow.operators.python", "python_callable={fn}"),
    ("EmptyOperator", "airflow.operators.empty", ""),
    ("PostgresOperator", "airflow.providers.postgres.operators.postgres", "sql='{sqlfile}', postgres_conn_id='{conn}'"),
    ("S3KeySensor", "airflow.providers.amazon.aws.sensors.s3", "bucket_key='s3://{bucket}/{key}/{{{{ ds }}}}/_SUCCESS', poke_interval=300"),
    ("KubernetesPodOperator", "airflow.providers.cncf.kubernetes.operators.pod", "image='registry.local/{team}/{name}:{ver}', cmds=['python', '-m', '{mod}']"),
]
WORDS = ("orders customers invoices payments ledger events sessions clicks "
         "inventory shipments returns refunds accounts users products prices "
         "campaigns leads churn forecast metrics audit billing partners "
         "warehouse staging raw curated daily hourly weekly snapshot export "
         "import dedupe enrich validate aggregate publish notify archive").split()
TEAMS = ["finance", "growth", "platform", "ml", "ops", "sales", "risk",
         "supply", "support", "marketing", "data", "infra", "security",
         "product", "hr", "legal", "bi", "core", "search", "ads"]


def words(rng, n, sep="_"):
    return sep.join(rng.choice(WORDS) for _ in range(n))


def task_block(rng, i, team):
    op, _mod, args = rng.choice(OPERATORS)
    name = words(rng, 2)
    fmt = dict(cmd="python /opt/jobs/%s.py --date {{ ds }} --retries %d" % (words(rng, 2), rng.randint(1, 5)),
               fn="_" + words(rng, 2), sqlfile="sql/%s.sql" % words(rng, 2),
               conn="%s_%s" % (team, rng.choice(["pg", "dwh", "replica"])),
               bucket="%s-%s" % (team, words(rng, 1)), key=words(rng, 2, "/"),
               team=team, name=words(rng, 1), ver="%d.%d.%d" % (rng.randint(0, 9), rng.randint(0, 30), rng.randint(0, 99)),
               mod="jobs.%s" % words(rng, 2, "."))
    a = args.format(**fmt)
    lines = []
    if rng.random() < 0.3:
        lines.append("    # %s: %s" % (words(rng, 1).upper(), words(rng, rng.randint(5, 12), " ")))
    lines.append("    t%d_%s = %s(" % (i, name, op))
    lines.append("        task_id='%s_%d'," % (name, i))
    if a:
        lines.append("        %s," % a)
    lines.append("        retries=%d," % rng.randint(0, 5))
    lines.append("        retry_delay=timedelta(minutes=%d)," % rng.choice([1, 5, 10, 15, 30]))
    if rng.random() < 0.4:
        lines.append("        execution_timeout=timedelta(hours=%d)," % rng.randint(1, 6))
    if rng.random() < 0.3:
        lines.append("        doc_md=\"\"\"%s\"\"\"," % words(rng, rng.randint(8, 30), " "))
    lines.append("    )")
    return "t%d_%s" % (i, name), "\n".join(lines) + "\n"


def dag_file(rng, target, team, domain, idx):
    dag_id = "%s_%s_%s_%04d" % (team, domain, words(rng, 1), idx)
    used = sorted({op for op in rng.sample(OPERATORS, rng.randint(2, 5))})
    head = ['"""%s.\n\n%s\n"""' % (dag_id.replace("_", " ").title(), words(rng, rng.randint(10, 40), " ")),
            "from datetime import datetime, timedelta", "",
            "from airflow import DAG"]
    for op, mod, _ in used:
        head.append("from %s import %s" % (mod, op))
    for op, mod, _ in OPERATORS:
        if (op, mod, _) not in used:
            head.append("from %s import %s  # noqa: F401" % (mod, op))
    head += ["", "default_args = {",
             "    'owner': '%s'," % team,
             "    'depends_on_past': %s," % rng.choice(["False", "True"]),
             "    'email': ['%s-alerts@example.invalid']," % team,
             "    'retries': %d," % rng.randint(0, 3), "}", ""]
    for f in range(rng.randint(1, 3)):
        head += ["def _%s(**context):" % words(rng, 2),
                 "    \"\"\"%s\"\"\"" % words(rng, rng.randint(4, 12), " "),
                 "    ds = context['ds']",
                 "    rows = [r for r in range(%d) if r %% %d == 0]" % (rng.randint(10, 10000), rng.randint(2, 9)),
                 "    return {'ds': ds, 'n': len(rows), 'tag': '%s'}" % words(rng, 1), ""]
    head += ["with DAG(",
             "    dag_id='%s'," % dag_id,
             "    default_args=default_args,",
             "    schedule=%s," % rng.choice(["'@daily'", "'@hourly'", "'0 3 * * *'", "'*/15 * * * *'", "None"]),
             "    start_date=datetime(%d, %d, %d)," % (rng.randint(2019, 2024), rng.randint(1, 12), rng.randint(1, 28)),
             "    catchup=False,",
             "    tags=['%s', '%s']," % (team, domain),
             ") as dag:", ""]
    text = "\n".join(head) + "\n"
    parts = [text]
    size = len(text)
    names = []
    i = 0
    while size < target - 200 or i == 0:
        var, blk = task_block(rng, i, team)
        parts.append(blk)
        size += len(blk)
        names.append(var)
        i += 1
    if len(names) > 1:
        chain = "    " + " >> ".join(names[:min(len(names), 8)]) + "\n"
        parts.append("\n" + chain)
    return "".join(parts).encode()


def big_sql(rng, target):
    out, size, n = [], 0, 0
    while size < target:
        t = words(rng, 2)
        cols = [words(rng, 1) + "_%d" % c for c in range(rng.randint(4, 12))]
        s = ("-- step %d: %s\nINSERT INTO curated.%s (%s)\nSELECT %s\nFROM raw.%s r\n"
             "LEFT JOIN dim.%s d ON d.id = r.%s_id\nWHERE r.ds = '{{ ds }}' AND r.%s > %d\n"
             "GROUP BY %s;\n\n") % (n, words(rng, 6, " "), t, ", ".join(cols),
                                     ",\n       ".join("COALESCE(r.%s, 0) AS %s" % (c, c) for c in cols),
                                     t, words(rng, 1), words(rng, 1), cols[0], rng.randint(0, 10 ** 6),
                                     ", ".join(cols[:3]))
        out.append(s)
        size += len(s)
        n += 1
    return "".join(out).encode()


def big_json(rng, target):
    recs, size = [], 2
    while size < target:
        r = {"id": rng.randint(1, 10 ** 9), "name": words(rng, 3),
             "team": rng.choice(TEAMS), "score": round(rng.random() * 1000, 4),
             "tags": [words(rng, 1) for _ in range(rng.randint(1, 5))],
             "active": rng.random() < 0.5}
        s = json.dumps(r, sort_keys=True)
        recs.append(s)
        size += len(s) + 2
    return ("[\n" + ",\n".join(recs) + "\n]\n").encode()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("outdir")
    ap.add_argument("--files", type=int, default=5000)
    ap.add_argument("--dirs", type=int, default=100, help="approx. number of leaf folders")
    ap.add_argument("--big", type=int, default=20)
    ap.add_argument("--seed", type=int, default=42)
    ap.add_argument("--min-kb", type=int, default=1)
    ap.add_argument("--max-kb", type=int, default=16)
    ap.add_argument("--force", action="store_true")
    a = ap.parse_args()

    params = dict(files=a.files, dirs=a.dirs, big=a.big, seed=a.seed, min_kb=a.min_kb, max_kb=a.max_kb, gen_version=3)
    out = os.path.abspath(a.outdir)
    manifest_path = out.rstrip("/") + ".manifest.json"
    if not a.force and os.path.isdir(out) and os.path.exists(manifest_path):
        try:
            m = json.load(open(manifest_path))
            if m.get("params") == params:
                print("corpus up to date: %s (%d files, %.1f MB)" % (out, m["file_count"], m["total_bytes"] / 1e6))
                return
        except Exception:
            pass
    if os.path.exists(out):
        shutil.rmtree(out)
    rng = random.Random(a.seed)
    nteams = max(1, int(round(a.dirs ** 0.5)))
    ndom = max(1, -(-a.dirs // nteams))
    leaves = []
    for t in range(nteams):
        team = TEAMS[t % len(TEAMS)] + ("" if t < len(TEAMS) else str(t))
        for d in range(ndom):
            if len(leaves) >= a.dirs:
                break
            leaves.append((team, "%s_%02d" % (WORDS[(t * 7 + d) % len(WORDS)], d)))
    h = hashlib.sha256()
    total = 0
    entries = []
    for i in range(a.files):
        team, dom = leaves[i % len(leaves)]
        rel = os.path.join("dags", team, dom, "%s_%s_%05d.py" % (team, words(rng, 2), i))
        target = rng.randint(a.min_kb * 1024, a.max_kb * 1024)
        data = dag_file(rng, target, team, dom, i)
        entries.append((rel, data))
    for j in range(a.big):
        target = rng.randint(200 * 1024, 2 * 1024 * 1024)
        if j % 2 == 0:
            rel = os.path.join("include", "sql", "%s_%02d.sql" % (words(rng, 2), j))
            data = big_sql(rng, target)
        else:
            rel = os.path.join("include", "data", "%s_%02d.json" % (words(rng, 2), j))
            data = big_json(rng, target)
        entries.append((rel, data))
    for rel, data in entries:
        p = os.path.join(out, rel)
        os.makedirs(os.path.dirname(p), exist_ok=True)
        with open(p, "wb") as f:
            f.write(data)
        h.update(rel.encode() + b"\0" + hashlib.sha256(data).digest())
        total += len(data)
    dirs = sum(len(ds) for _, ds, _ in os.walk(out))
    m = dict(params=params, file_count=len(entries), dir_count=dirs, total_bytes=total,
             py_files=a.files, big_files=a.big, digest=h.hexdigest(), path=out)
    with open(manifest_path, "w") as f:
        json.dump(m, f, indent=1)
    print("generated corpus %s: %d files in %d dirs, %.1f MB, digest %s" % (out, len(entries), dirs, total / 1e6, h.hexdigest()[:16]))


if __name__ == "__main__":
    sys.exit(main())
