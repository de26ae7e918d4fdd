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
import tempfile
import time

import optuna


def objective(trial):
    x = trial.suggest_float("x", -1.0, 1.0)
    y = trial.suggest_float("y", -1.0, 1.0)
    return (x - 0.3) ** 2 + (y + 0.1) ** 2


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=1000)
    parser.add_argument("--storage", help="an SQLAlchemy URL; default: a fresh SQLite file in a temp dir")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    # Per-trial INFO lines would be timed too; our bench logs at warn level as well.
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    with tempfile.TemporaryDirectory() as tmp:
        storage = args.storage or "sqlite:///" + os.path.join(tmp, "optuna.db")
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
                }
            )
        )


if __name__ == "__main__":
    main()
