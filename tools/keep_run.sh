#!/bin/bash
# Keeps what a results table needs of a run: its config.json, metrics.jsonl, last pictures and
# machine.json (the machine kind it ran on: run this where it trained).
#     tools/keep_run.sh WORKDIR OUT
set -euo pipefail
workdir=$1 out=$2
mkdir -p "$out/images"
cp "$workdir/config.json" "$workdir/metrics.jsonl" "$out/"
last=$(ls "$workdir/checkpoints" | sort -n | tail -1)
cp "$workdir"/images/*_"$last".png "$out/images/"
python "$(dirname "$0")/../benchmarks/machine.py" > "$out/machine.json"
