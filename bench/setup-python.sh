#!/usr/bin/env bash
# Creates bench/.venv with the Python baselines' packages, pinned, for `sweep bench compare`.
#
#   bash bench/setup-python.sh            # uses python3 from PATH
#   PYTHON=python3.12 bash bench/setup-python.sh
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
python="${PYTHON:-python3}"
venv="$here/.venv"

"$python" -m venv "$venv"
"$venv/bin/python" -m pip install --quiet --upgrade pip
"$venv/bin/python" -m pip install --quiet \
    "optuna==4.5.0" \
    "gymnasium==1.2.0" \
    "numpy==2.2.6"
"$venv/bin/python" -c 'import optuna, gymnasium, numpy; print(f"bench/.venv: optuna {optuna.__version__}, gymnasium {gymnasium.__version__}, numpy {numpy.__version__}")'
