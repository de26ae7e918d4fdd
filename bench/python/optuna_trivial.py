"""Trivial Optuna trials on SQLite storage: the Python reference for `sweep bench trials`.

The objective is the `quadratic` job's (worker/src/jobs/trivial.rs) with no noise:
loss = (x - 0.3)^2 + (y + 0.1)^2, x and y drawn uniformly from [-1, 1] by Optuna's RandomSampler
(our sweep's `method: random`), one process, `n_jobs=1`. Every trial is stored in an SQLite
database, as ours are in the coordinator's store, so both sides pay for durable trial state.

The clock runs around `study.optimize` only: creating the database (like starting our
coordinator) is not counted.

Usage:

    bench/.venv/bin/python bench/python/optuna_trivial.py --trials 1000 --storage sqlite:////tmp/optuna.db

Prints one JSON line: {"trials": N, "seconds": S, "trials_per_sec": R, "best_value": B,
"optuna": VERSION}.
"""

import argparse
import json
import os
import sqlite3
import tempfile
import time

import optuna


def objective(trial):
    x = trial.suggest_float("x", -1.0, 1.0)
    y = trial.suggest_float("y", -1.0, 1.0)
    return (x - 0.3) ** 2 + (y + 0.1) ** 2


def wal_storage(url):
    """An RDBStorage whose every SQLite connection uses WAL and synchronous=NORMAL."""
    if not url.startswith("sqlite:///"):
        raise SystemExit("--sqlite-wal needs a sqlite:/// storage URL")
    path = url[len("sqlite:///") :]

    def connect():
        connection = sqlite3.connect(path, check_same_thread=False)
        connection.execute("PRAGMA journal_mode=WAL")
        connection.execute("PRAGMA synchronous=NORMAL")
        return connection

    return optuna.storages.RDBStorage(url, engine_kwargs={"creator": connect})


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=1000)
    parser.add_argument("--storage", help="an SQLAlchemy URL; default: a fresh SQLite file in a temp dir")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--sqlite-wal",
        action="store_true",
        help="open the SQLite file in WAL mode with synchronous=NORMAL, as sweep's store does "
        "(Optuna's default is a rollback journal that syncs every commit to disk)",
    )
    args = parser.parse_args()

    # Per-trial INFO lines would be timed too; our bench logs at warn level as well.
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    with tempfile.TemporaryDirectory() as tmp:
        storage = args.storage or "sqlite:///" + os.path.join(tmp, "optuna.db")
        if args.sqlite_wal:
            storage = wal_storage(storage)
        study = optuna.create_study(
            study_name="bench-trivial",
            storage=storage,
            sampler=optuna.samplers.RandomSampler(seed=args.seed),
            direction="minimize",
            load_if_exists=False,
        )
        started = time.perf_counter()
        study.optimize(objective, n_trials=args.trials, n_jobs=1)
        seconds = time.perf_counter() - started
        completed = len(study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,)))
        print(
            json.dumps(
                {
                    "trials": completed,
                    "seconds": seconds,
                    "trials_per_sec": completed / seconds,
                    "best_value": study.best_value,
                    "optuna": optuna.__version__,
                    "sqlite_wal": args.sqlite_wal,
                }
            )
        )


if __name__ == "__main__":
    main()
