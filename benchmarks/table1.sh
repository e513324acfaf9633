#!/usr/bin/env bash
# Table 1 on one GPU host in one command: benchmarks/table1.py says what it does.
#
#   bash benchmarks/table1.sh OUT [--workdir W] [--resume PACK] [--deadline SECONDS] \
#       [--dtype bfloat16] [--steps N] [--eval-batch-size B]
#   bash benchmarks/table1.sh OUT --dry-run          # every phase at tiny sizes on the CPU
#
# PYTHON (default python3) runs everything.
cd "$(dirname "${BASH_SOURCE[0]}")/.." || exit 2
exec "${PYTHON:-python3}" benchmarks/table1.py "$@"
