#!/usr/bin/env bash
# One-command GPU validation, for a machine with one GPU (meant to finish in under 9 minutes
# on an H200), from the repository root:
#
#   scripts/gpu_check.sh OUTDIR
#
# Runs as-is with torch 2.11+ and CUDA 13.0, without the network. In order:
#   build      pip install --no-deps --no-build-isolation -e .  (CUDA kernels for this GPU),
#              then both ops must have CUDA kernels registered
#   tests      the CUDA tests: tests/test_ext.py tests/test_ext_cuda.py
#   memcheck, racecheck, synccheck
#              compute-sanitizer over scripts/sanitize_ops.py (every op path, small inputs)
#   kernels    python -m bench.kernels --device cuda: validates, then times (% of measured copy GB/s)
#   train      train_tiny.py's default config for 300 steps (ms/iter, tok/s, MFU), and an AR and
#              a block-diffusion twin for 100 steps each (the checkpoints bench/efficiency.py needs)
#   decode     python -m bench.efficiency: every decoding configuration at batch 1 and 32, gen-len 256, both ops
# A step that fails is recorded and the next ones still run; once the time budget
# (GPU_CHECK_BUDGET seconds, default 510) is spent the remaining steps are skipped.
# Writes OUTDIR/gpu_check.log (all output) and OUTDIR/gpu_check.json (the figures,
# scripts/gpu_report.py). Exits 1 if any step failed or was skipped.
set -uo pipefail
out=${1:?usage: scripts/gpu_check.sh OUTDIR}
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
budget=${GPU_CHECK_BUDGET:-510}
mkdir -p "$out"
log="$out/gpu_check.log"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
: > "$log"
start=$SECONDS
export PYTHONUNBUFFERED=1

# step NAME LIMIT_SECONDS COMMAND...: run it (output to the log and $work/NAME.out), record its
# exit status and time in $work/steps.tsv.
step() {
  local name=$1 limit=$2
  shift 2
  local left=$((budget - (SECONDS - start)))
  if [ "$left" -le 10 ]; then
    echo "== $name: skipped, the time budget is spent" | tee -a "$log"
    printf '%s\t%s\t%s\n' "$name" skipped 0 >> "$work/steps.tsv"
    return
  fi
  [ "$limit" -gt "$left" ] && limit=$left
  echo "== $name ($((SECONDS - start)) s so far): $*" | tee -a "$log"
  local t0=$SECONDS
  timeout "$limit" "$@" > "$work/$name.out" 2>&1
  local rc=$?
  cat "$work/$name.out" >> "$log"
  echo "== $name: exit $rc after $((SECONDS - t0)) s" | tee -a "$log"
  printf '%s\t%s\t%s\n' "$name" "$rc" "$((SECONDS - t0))" >> "$work/steps.tsv"
}

nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader >> "$log" 2>&1
step build 300 "$PY" -m pip install --no-deps --no-build-isolation -e .
cp mini_dlm/_build.json "$work/build.json" 2>/dev/null
step registered 60 "$PY" -c "
import torch
from mini_dlm.plumbing import backend
cuda = torch.device('cuda')
assert torch.cuda.is_available(), 'torch sees no GPU'
missing = [op for op in ('unmask', 'block_attention') if not backend.has_kernel(op, cuda)]
assert not missing, f'no CUDA kernel for {missing}: {backend.missing_kernel_reason(cuda)}'
print('CUDA kernels registered for unmask and block_attention;', torch.cuda.get_device_name(), torch.__version__)"
step tests 150 "$PY" -m pytest -q tests/test_ext.py tests/test_ext_cuda.py --junitxml="$work/tests.xml"

sanitizer=$(command -v compute-sanitizer || ls /usr/local/cuda*/bin/compute-sanitizer 2>/dev/null | head -n 1)
san=("${sanitizer:-compute-sanitizer}" --error-exitcode 1)
if "${san[0]}" --help 2>/dev/null | grep -q -- "--kernel-name"; then
  san+=(--kernel-name kns=mini_dlm)  # check only our kernels (torch's run unchecked)
fi
for tool in memcheck racecheck synccheck; do
  step "$tool" 120 "${san[@]}" --tool "$tool" "$PY" scripts/sanitize_ops.py
done

step kernels 90 "$PY" -m bench.kernels --device cuda --repeats 20 --json "$work/kernels.json"

flags=(--device cuda --eval-interval 100000 --log-interval 25)  # evaluate only at the end
step train 120 "$PY" train_tiny.py "${flags[@]}" --max-iters 300 --out-dir "$work/mdm"
step train_ar 60 "$PY" train_tiny.py "${flags[@]}" --max-iters 100 --objective ar --out-dir "$work/ar"
step train_bd3 60 "$PY" train_tiny.py "${flags[@]}" --max-iters 100 --block-size 32 --out-dir "$work/bd3"

step decode 180 "$PY" -m bench.efficiency --ar-ckpt "$work/ar/ckpt.pt" --dlm-ckpt "$work/mdm/ckpt.pt" \
  --block-ckpt "$work/bd3/ckpt.pt" --batch-sizes 1,32 --gen-lens 256 --ops ext,torch --repeats 3 \
  --max-seconds 20 --no-plots --out "$work/decode.json"

"$PY" scripts/gpu_report.py "$work" "$out/gpu_check.json" "$((SECONDS - start))" 2>&1 | tee -a "$log"
