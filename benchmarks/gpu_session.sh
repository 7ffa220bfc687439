#!/usr/bin/env bash
# Everything that needs the GPU, in order of priority, for one device call per stage:
#   bash benchmarks/gpu_session.sh tests        # kernel + model GPU tests (~7 min on an H200: kernels 5 min)
#   bash benchmarks/gpu_session.sh sanitize     # compute-sanitizer on the bf16 model test
#   bash benchmarks/gpu_session.sh generation 65536   # Jet-Nemotron vs Qwen2 teacher at one context (~5 min on an
#                                                     # H200 at 64K: compiles per batch shape); merge runs with
#                                                     # python benchmarks/generation.py --merge a.json b.json
#   bash benchmarks/gpu_session.sh profile 65536 [515]  # where prefill and decode time goes, per kernel (~2 min);
#                                                       # with a batch, also generate()'s compiled loop at that batch
#   bash benchmarks/gpu_session.sh kernels [--only chunk step ...]  # ours vs flash-linear-attention (needs .wheels);
#                                    # back on the workstation:
#                                    # python benchmarks/kernel_speed.py --merge <files_at>/kernels.json
#   bash benchmarks/gpu_session.sh distill      # converter quality benchmark (~5 min on an H200)
#   bash benchmarks/gpu_session.sh multi_gpu    # 1 GPU vs DDP vs FSDP2 on 2 GPUs (~7 min on 2x H200)
# Results go to $OUT (the device tool brings them back) or benchmarks/results. Every result is stamped with commit,
# card and date (benchmarks/stamp.py); the device gets the files without .git, so name the commit in the call:
#   JET_NEMOTRON_COMMIT=<git rev-parse HEAD on the workstation> bash benchmarks/gpu_session.sh ...
# flash-linear-attention travels as wheels: on the workstation
#   pip download --no-deps -d .wheels flash-linear-attention==0.6.0 fla-core==0.6.0 einops
# and pass carry [".wheels"] to the device call.
set -euo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH=$PWD
out=${OUT:-benchmarks/results}
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
case "${1:-tests}" in
  tests)
    # one process per test file and per GPU-model test: a crashed kernel poisons its CUDA context, so a shared
    # process would turn one failure into many (seen on 2026-11-27); CUDA_LAUNCH_BLOCKING names the kernel
    CUDA_LAUNCH_BLOCKING=1 python -m pytest -q modeling_tests/test_kernels.py 2>&1 | tail -15 || true
    for t in $(python -m pytest -q --collect-only modeling_tests/test_gpu_model.py 2>/dev/null | grep '::'); do
      # || true: under pipefail a failing test would end the loop and hide the results of the tests after it
      CUDA_LAUNCH_BLOCKING=1 python -m pytest -q -s "$t" 2>&1 | grep -E "^E |passed|failed|Error|^dk " | head -12 || true
    done ;;
  sanitize)
    # an illegal address in a bf16 kernel (dk 16 / 32) was seen once: compute-sanitizer names the kernel and offset
    compute-sanitizer --tool memcheck python -m pytest -q -x modeling_tests/test_gpu_model.py \
      -k bf16 2>&1 | grep -E "Invalid|at 0x|by thread|kernel|passed|failed" | head -40 ;;
  generation)
    shift
    for ctx in "${@:-8192}"; do
      python benchmarks/generation.py --contexts "$ctx" --out "$out/gen_$ctx" 2>&1 | grep -v "^jet_nemotron:" | tail -8
    done ;;
  profile)
    python benchmarks/generation.py --profile "${2:-65536}" ${3:+--profile-batch "$3"} --out "$out" 2>&1 | grep -v "^jet_nemotron:" | tail -120 ;;
  kernels)
    if ls .wheels/*.whl >/dev/null 2>&1; then python -m pip install -q --no-deps .wheels/*.whl; fi
    python benchmarks/kernel_speed.py --out "$out" "${@:2}" 2>&1 | tail -40 ;;
  distill)
    python benchmarks/distill_quality.py --out "$out/distill_quality" 2>&1 | tail -40 ;;
  multi_gpu)
    python benchmarks/distill_multi_gpu.py --out "$out/distill_multi_gpu" --work /tmp/distill_multi_gpu \
      --modes single repeat ddp fsdp 2>&1 | tail -12 ;;
  *) echo "unknown stage $1" >&2; exit 2 ;;
esac
