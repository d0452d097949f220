"""Load-test a running srserve; a thin wrapper over `srserve bench` (same flags).

    python benchmarks/load_test.py --target grpc://127.0.0.1:9000 --arrival poisson:0.5 --requests 40 \
        --slo-scale 3 --out out/bench
    python benchmarks/load_test.py --deploy deploy/tiny.yaml --arrival gamma:0.8:3 --requests 40 --out out/bursty
"""

from __future__ import annotations

import sys

from srserve.cli.main import main

if __name__ == "__main__":
    sys.exit(main(["bench", *sys.argv[1:]]))
