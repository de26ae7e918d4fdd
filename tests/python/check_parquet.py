"""Cross-checks a finished sweep's Parquet output with pyarrow and DuckDB (independent readers).

Usage: python tests/python/check_parquet.py OUT_DIR/SWEEP --trials N --episodes E

Checks: trials.parquet has N rows, one per trial id, typed parameter columns, every trial
completed; the metric parts hold exactly E reward rows per trial with steps 1..E and no
(trial, attempt, step, name) key twice; the objective equals the last MEAR of each trial;
configs.parquet holds one row per configuration whose n, mean, sample std and median DuckDB
recomputes from trials.parquet, best mean first; sweep.json names the metric and goal.
"""

import argparse
import glob
import json
import os
import sys

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("sweep_dir")
    ap.add_argument("--trials", type=int, required=True)
    ap.add_argument("--episodes", type=int, required=True)
    args = ap.parse_args()

    trials = pq.read_table(os.path.join(args.sweep_dir, "trials.parquet"))
    assert trials.num_rows == args.trials, f"{trials.num_rows} trial rows, expected {args.trials}"
    assert len(set(trials.column("trial_id").to_pylist())) == args.trials
    assert set(trials.column("status").to_pylist()) == {"completed"}, trials.column("status").to_pylist()
    schema = trials.schema
    assert schema.field("lr").type == pa.float64(), schema.field("lr").type
    assert schema.field("episodes").type == pa.int64(), schema.field("episodes").type
    assert schema.field("tie_break").type == pa.string(), schema.field("tie_break").type

    parts = sorted(glob.glob(os.path.join(args.sweep_dir, "metrics", "part-*.parquet")))
    assert parts, "no metric parts"
    metrics = pa.concat_tables([pq.read_table(p) for p in parts])
    names = [f.name for f in metrics.schema]
    assert names == ["trial_id", "attempt", "step", "wall_time", "name", "value"], names

    con = duckdb.connect()
    con.register("metrics", metrics)
    con.register("trials", trials)
    doubled = con.execute(
        "SELECT count(*) FROM (SELECT trial_id, attempt, step, name, count(*) AS n FROM metrics "
        "GROUP BY ALL HAVING n > 1)"
    ).fetchone()[0]
    assert doubled == 0, f"{doubled} metric keys stored twice"
    per_trial = con.execute(
        "SELECT trial_id, count(*), min(step), max(step) FROM metrics WHERE name = 'reward' GROUP BY trial_id"
    ).fetchall()
    assert len(per_trial) == args.trials, f"reward rows for {len(per_trial)} trials"
    for trial_id, n, lo, hi in per_trial:
        assert (n, lo, hi) == (args.episodes, 1, args.episodes), (trial_id, n, lo, hi)
    mismatched = con.execute(
        "SELECT t.trial_id, t.objective, m.value FROM trials t JOIN ("
        "  SELECT trial_id, arg_max(value, step) AS value FROM metrics WHERE name = 'mear' GROUP BY trial_id"
        ") m USING (trial_id) WHERE t.objective IS DISTINCT FROM m.value"
    ).fetchall()
    assert not mismatched, f"objective is not the last mear: {mismatched[:3]}"
    best = con.execute(
        "SELECT lr, tie_break, avg(objective) AS mean, stddev_samp(objective) AS std, count(*) AS n "
        "FROM trials GROUP BY ALL ORDER BY mean DESC LIMIT 3"
    ).fetchall()
    configs = pq.read_table(os.path.join(args.sweep_dir, "configs.parquet"))
    con.register("configs", configs)
    expected = con.execute(
        "SELECT config_id, count(*), avg(objective), stddev_samp(objective), median(objective) "
        "FROM trials GROUP BY config_id"
    ).fetchall()
    assert configs.num_rows == len(expected), f"{configs.num_rows} configuration rows, expected {len(expected)}"
    stored = {r["config_id"]: r for r in configs.to_pylist()}
    for config_id, n, mean, std, median in expected:
        row = stored[config_id]
        assert row["n"] == n, (config_id, row["n"], n)
        for name, want in (("mean", mean), ("std", std), ("median", median)):
            assert abs(row[name] - want) <= 1e-9 * max(1.0, abs(want)), (config_id, name, row[name], want)
    means = configs.column("mean").to_pylist()
    assert means == sorted(means, reverse=True), "configs.parquet is not best mean first"
    assert configs.column("rank").to_pylist() == list(range(1, configs.num_rows + 1))
    with open(os.path.join(args.sweep_dir, "sweep.json")) as f:
        meta = json.load(f)
    assert (meta["metric"]["name"], meta["metric"]["goal"]) == ("mear", "maximize"), meta

    print(f"pyarrow + duckdb: {trials.num_rows} trials, {metrics.num_rows} metric rows, all checks passed")
    for row in best:
        print("  ", row)
    return 0


if __name__ == "__main__":
    sys.exit(main())
