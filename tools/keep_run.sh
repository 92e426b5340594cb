#!/bin/bash
# Keeps what a results table needs of a run: its config.json (and a relaunch's other configs),
# metrics.jsonl, last pictures, a prior's codes/about.json and machine.json (the machine kind
# it ran on: run this where it trained).
#     tools/keep_run.sh WORKDIR OUT
set -euo pipefail
workdir=$1 out=$2
mkdir -p "$out/images"
cp "$workdir/config.json" "$workdir/metrics.jsonl" "$out/"
for relaunch in "$workdir"/config.resumed_at_step_*.json; do  # Relaunched with other settings.
  [ -f "$relaunch" ] && cp "$relaunch" "$out/"
done
last=$(ls "$workdir/checkpoints" | sort -n | tail -1)
cp "$workdir"/images/*_"$last".png "$out/images/"
if [ -f "$workdir/codes/about.json" ]; then  # A prior's: whose codes, their entropy.
  mkdir -p "$out/codes" && cp "$workdir/codes/about.json" "$out/codes/"
fi
python "$(dirname "$0")/../benchmarks/machine.py" > "$out/machine.json"
