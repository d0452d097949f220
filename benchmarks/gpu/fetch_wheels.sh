#!/usr/bin/env bash
# Download the wheels of benchmarks/gpu/wheels.txt for the GPU machine (CPython 3.12, manylinux x86-64)
# into benchmarks/gpu/wheels/ (git-ignored), on a machine that reaches the package index.
#
#   bash benchmarks/gpu/fetch_wheels.sh            # then carry benchmarks/gpu/wheels to the GPU machine
#   bash benchmarks/gpu/fetch_wheels.sh DIR        # somewhere else
#
# --no-deps: wheels.txt names every wheel the machine lacks; the rest is in its image.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
dest="${1:-$here/wheels}"
python="${PYTHON:-python3}"
mkdir -p "$dest"

"$python" -m pip download --quiet --no-deps --only-binary=:all: \
    --python-version 3.12 --implementation cp --abi cp312 --abi abi3 --abi none \
    --platform manylinux2014_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux_2_28_x86_64 \
    --platform any \
    --dest "$dest" -r "$here/wheels.txt"

# Exactly one wheel per pinned name: two versions of one package would stop the install there.
"$python" - "$here/wheels.txt" "$dest" <<'EOF'
import re
import sys
from pathlib import Path

pins = [line.split("==")[0].strip() for line in Path(sys.argv[1]).read_text().splitlines()
        if line.strip() and not line.startswith("#")]
have = [p.name for p in Path(sys.argv[2]).glob("*.whl")]
norm = lambda name: re.sub(r"[-_.]+", "_", name).lower()  # noqa: E731
missing = []
for pin in pins:
    found = [w for w in have if norm(w.split("-")[0]) == norm(pin)]
    if len(found) != 1:
        missing.append(f"{pin}: {found or 'no wheel'}")
if missing:
    sys.exit("fetch_wheels.sh: " + "; ".join(missing))
total = sum(p.stat().st_size for p in Path(sys.argv[2]).glob("*.whl"))
print(f"fetch_wheels.sh: {len(pins)} wheels, {total / 2**20:.1f} MiB in {sys.argv[2]}")
EOF
