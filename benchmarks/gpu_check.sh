#!/usr/bin/env bash
# The project's GPU check, for a machine with an NVIDIA GPU, in a few minutes:
#   bash benchmarks/gpu_check.sh [OUT_DIR]      (default: gpu_check/)
# 1. installs the pinned requirements and the CUDA 12 build of the pinned jax (from PyPI, or
#    from the wheels in $WHEELS when set, for a machine without network);
# 2. runs the quick test tier on the GPU's backend settings (the tests themselves force
#    CPU devices, so this checks the install and the package, not GPU numerics);
# 3. times the train step of the seed (cae) and the resnet backbone (resae), float32 and
#    bfloat16, batch 128, on the GPU (benchmarks/train_step.py);
# and writes OUT_DIR/gpu.json (the GPU's name, driver, jax's devices), OUT_DIR/tests.txt and
# OUT_DIR/train_step.json. The figures go into docs/performance.md with the GPU named.
set -euo pipefail
cd "$(dirname "$0")/.."
out="${1:-gpu_check}"
mkdir -p "$out"
jax_version="$(sed -n 's/^jax==//p' requirements.txt)"
pip_args=(--quiet --disable-pip-version-check)
if [[ -n "${WHEELS:-}" ]]; then pip_args+=(--no-index --find-links "$WHEELS"); fi
python3 -m pip install "${pip_args[@]}" -r requirements.txt
python3 -m pip install "${pip_args[@]}" "jax[cuda12]==${jax_version}"
python3 -m pip install "${pip_args[@]}" --no-deps -e .

nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader > "$out/nvidia_smi.txt"
python3 - "$out" <<'PY'
import json, sys
import jax
devices = jax.devices()
assert jax.default_backend() == 'gpu', f'jax runs on {jax.default_backend()}, not the GPU'
json.dump({'jax': jax.__version__, 'backend': jax.default_backend(),
           'devices': [d.device_kind for d in devices],
           'nvidia_smi': open(f'{sys.argv[1]}/nvidia_smi.txt').read().strip()},
          open(f'{sys.argv[1]}/gpu.json', 'w'), indent=2)
print('GPU:', [d.device_kind for d in devices])
PY
timeout 300 python3 -m pytest -q -n 4 -m "not slow" tests > "$out/tests.txt" 2>&1 || {
  tail -20 "$out/tests.txt"; echo "quick tests failed (see $out/tests.txt)"; }
tail -1 "$out/tests.txt"
python3 benchmarks/train_step.py --models cae,resae --batch_sizes 128 \
  --dtypes float32,bfloat16 --steps 20 --windows 3 --warmup 5 --output "$out/train_step.json"
