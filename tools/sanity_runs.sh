#!/bin/bash
# The 1-epoch sanity runs of the presets (docs/results.md): each trains through launch.py on
# CIFAR-10 in DATA_DIR, then its config.json, metrics.jsonl and last pictures are kept in
# results/sanity/NAME (checkpoints stay in RUNS/NAME).
#     tools/sanity_runs.sh /tmp/tfds /tmp/runs cae vqvae-resnet ...
set -euo pipefail
data_dir=$1 runs=$2
shift 2
for name in "$@"; do
  # micro_batches=4 is the fast CPU setting (docs/performance.md); a VQ bottleneck trains
  # with whole device batches, so its initialization and restarts see the whole batch.
  micro=4
  case $name in vqvae*) micro=1 ;; esac
  python launch.py --config "configs/cifar.py:$name" --workdir "$runs/$name" \
      --config.data_dir="$data_dir" --config.num_epochs=1 --config.eval_every_steps=130 \
      --config.micro_batches=$micro
  "$(dirname "$0")/keep_run.sh" "$runs/$name" "results/sanity/$name"
done
