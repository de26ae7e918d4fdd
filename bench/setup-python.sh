#!/usr/bin/env bash
# Creates bench/.venv with the Python baselines' packages, pinned, for `sweep bench compare`,
# bench/python/imdb_torch_bench.py and the fixture scripts in tests/fixtures/. Safe to rerun.
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
    "numpy==2.2.6" \
    "pyarrow==26.0.1" \
    "keras-preprocessing==1.1.2" "six==1.17.0" \
    "scipy==1.16.3"
# PyTorch for CPU use. PyPI's only Linux x86_64 torch wheel is the CUDA build and only PyPI is
# reachable, so install it --no-deps with just the CUDA wheels whose libraries libtorch links
# against (needed at import even on CPU; ~2.3 GB in all), skipping triton, cusolver (loaded lazily),
# nvtx, cccl and cuda-bindings (~0.5 GB). `pip check` will list those as missing; that is expected.
"$venv/bin/python" -m pip install --quiet --no-deps \
    "torch==2.15.0" \
    "nvidia-cuda-runtime==13.2.86" "nvidia-cuda-cupti==13.2.86" "nvidia-cuda-nvrtc==13.2.86" \
    "nvidia-nvjitlink==13.5.37" "nvidia-cublas==13.4.1.3" "nvidia-cufft==12.2.0.57" \
    "nvidia-cusparse==12.7.10.12" "nvidia-cufile==1.17.1.22" "nvidia-cudnn-cu13==9.26.0.51" \
    "nvidia-cusparselt-cu13==0.8.1" "nvidia-nccl-cu13==2.30.7" "nvidia-nvshmem-cu13==3.7.2" \
    "filelock==4.3.2" "typing-extensions==4.16.0" "sympy==1.14.0" "mpmath==1.3.0" \
    "networkx==3.6.1" "jinja2==3.1.6" "markupsafe==3.0.4" "fsspec==2026.9.0"
"$venv/bin/python" -c 'import optuna, gymnasium, numpy, torch, pyarrow, keras_preprocessing; print(f"bench/.venv: optuna {optuna.__version__}, gymnasium {gymnasium.__version__}, numpy {numpy.__version__}, torch {torch.__version__}, pyarrow {pyarrow.__version__}, keras-preprocessing {keras_preprocessing.__version__}")'
