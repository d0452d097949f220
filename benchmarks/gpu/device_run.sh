#!/usr/bin/env bash
# Run the GPU suite on the offline GPU machine: install the carried wheels (benchmarks/gpu/wheels/,
# made by fetch_wheels.sh) into a temporary path without network, check that everything the suite
# imports imports, check that torch sees a CUDA device, then run benchmarks/gpu/run_suite.py.
#
#   bash benchmarks/gpu/device_run.sh --out "$OUT/gpu"            # arguments go to run_suite.py
#   PYTHON=/path/to/python bash benchmarks/gpu/device_run.sh ...   # another interpreter (default python3)
#   bash benchmarks/gpu/device_run.sh --smoke --out DIR            # CPU: the same setup, tiny configs, no GPU check
#
# Exit codes: 2 wheels missing, 4 an import failed, 3 no CUDA device; else run_suite.py's.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
wheels="${SRSERVE_WHEELS:-$here/wheels}"
python="${PYTHON:-python3}"

say() { echo "device_run.sh: $*" >&2; }

shopt -s nullglob
found=("$wheels"/*.whl)
if [ "${#found[@]}" -eq 0 ]; then
    say "no wheels in $wheels: run 'bash benchmarks/gpu/fetch_wheels.sh' where the package index is reachable, and carry benchmarks/gpu/wheels"
    exit 2
fi

site="$(mktemp -d "${TMPDIR:-/tmp}/srserve-gpu-site.XXXXXX")"
trap 'rm -rf "$site"' EXIT
if "$python" -m pip --version >/dev/null 2>&1; then
    if ! "$python" -m pip install --quiet --no-index --no-deps --no-compile --no-cache-dir \
        --disable-pip-version-check --target "$site" "${found[@]}"; then
        say "the wheels do not install on $("$python" --version 2>&1) (they are for CPython 3.12 on x86-64)"
        exit 2
    fi
else  # no pip: a wheel is a zip laid out for site-packages
    "$python" -c 'import sys, zipfile; [zipfile.ZipFile(w).extractall(sys.argv[1]) for w in sys.argv[2:]]' \
        "$site" "${found[@]}"
fi
export PYTHONPATH="$site:$repo${PYTHONPATH:+:$PYTHONPATH}"
export HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1
say "installed ${#found[@]} wheels into $site ($("$python" --version 2>&1))"

# Everything the suite imports, before any GPU question: a missing package fails here, by name.
if ! "$python" "$here/run_suite.py" --check-imports --out "$site/check"; then
    say "the suite's imports failed with the carried wheels (see above)"
    exit 4
fi

smoke=0
for arg in "$@"; do
    [ "$arg" = "--smoke" ] && smoke=1
done
if [ "$smoke" -eq 0 ]; then
    if ! "$python" - <<'EOF'
import sys

import torch

if not torch.cuda.is_available():
    print(
        f"device_run.sh: torch {torch.__version__} (CUDA {torch.version.cuda}) sees no CUDA device "
        f"({torch.cuda.device_count()} visible): the imports succeeded, but this suite needs a GPU",
        file=sys.stderr,
    )
    sys.exit(3)
print(f"device_run.sh: CUDA device {torch.cuda.get_device_name(0)}, torch {torch.__version__}", file=sys.stderr)
EOF
    then
        exit 3
    fi
else
    say "--smoke: tiny configs on the CPU, no GPU check"
fi

exec "$python" "$here/run_suite.py" "$@"
