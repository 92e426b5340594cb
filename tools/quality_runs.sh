#!/bin/bash
# The quality campaign's runs (issue 18; docs/results.md): each preset at its own default
# config (configs/cifar.py:NAME carries its settings), evaluated every 500 steps for the
# curves; its config.json, metrics.jsonl and last pictures are kept in results/quality/NAME
# (checkpoints stay in RUNS/NAME).
#     tools/quality_runs.sh /tmp/tfds /tmp/runs resae ...
set -euo pipefail
data_dir=$1 runs=$2
shift 2
for name in "$@"; do
  python launch.py --config "configs/cifar.py:$name" --workdir "$runs/$name" \
      --config.data_dir="$data_dir" --config.eval_every_steps=500
  "$(dirname "$0")/keep_run.sh" "$runs/$name" "results/quality/$name"
done
