#!/usr/bin/env bash
# The real-model GPU session, one device call per stage, all calls back to back on one warm machine (the
# machine keeps /tmp between calls only while it stays warm):
#   bash benchmarks/real_model_session.sh part 01 .. part 22   # each call carries .blob/partNN (+ .whl on 01)
#   bash benchmarks/real_model_session.sh prep                 # GGUF, convert, tokenise, probe; hardware search
#   bash benchmarks/real_model_session.sh distill 1|2|3        # one distillation stage a call (resumable)
#   bash benchmarks/real_model_session.sh eval                 # jet-nemotron eval: student beside its teacher
# Budget (DISTILL_MIN, default 6) is the distillation's wall clock over all stages. Results go to $OUT. Prefix each
# call with JET_NEMOTRON_COMMIT=<sha> so results are stamped with it (the device copy's .git was seen stale).
set -uo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false HF_HUB_OFFLINE=1
[ -d /tmp/site ] && export PYTHONPATH=$PYTHONPATH:/tmp/site
M=/tmp/realmodel WORK=/tmp/distill_real OUT=${OUT:-/tmp/out}
GGUF=$WORK/qwen2.5-coder-1.5b-instruct-q4_k_m.gguf MD5=136755df932e5b87db9bbc2bea00aba5
SP=$(python3 -c 'import site; print(site.getsitepackages()[0])')
BUDGET=${DISTILL_MIN:-6}
common=(--out "$OUT" --work "$WORK" --gguf "$GGUF" --site-packages "$SP" --time-budget-min "$BUDGET")
case "$1" in
  part)
    mkdir -p "$M" && cp ".blob/part$2" "$M/part$2" && echo "$(ls "$M" | wc -l) parts"
    if ls .whl/*.whl >/dev/null 2>&1; then
      python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
    fi
    if [ "$(ls "$M" | wc -l)" = 22 ]; then
      mkdir -p "$WORK" && cat "$M"/part{01..22} > "$GGUF" && rm -r "$M"
      [ "$(md5sum < "$GGUF" | cut -c1-32)" = "$MD5" ] && echo "GGUF ok: $GGUF" || echo "GGUF md5 MISMATCH"
    fi
    [ -n "${KERNEL_TESTS:-}" ] && python3 -m pytest -q -x modeling_tests/test_kernels.py -k "$KERNEL_TESTS" 2>&1 | tail -5
    true ;;
  prep)
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
    python3 -c 'import torch, transformers, triton; print("torch", torch.__version__, "transformers", transformers.__version__, "triton", triton.__version__)'
    # the kernel-shape table runs on the GPU while the CPU dequantises the GGUF and tokenises
    (python3 benchmarks/search_real.py --part hardware --source "$GGUF" --out "$OUT" \
       > "$OUT/hardware.log" 2>&1 || echo "hardware search failed: see hardware.log") &
    python3 benchmarks/distill_real.py "${common[@]}" --stages 0 2>&1 | tee "$OUT/prep.log" | grep -v "it/s\]$"
    wait ;;
  distill)
    python3 benchmarks/distill_real.py "${common[@]}" --stages "$2" 2>&1 | tee "$OUT/distill$2.log" | grep -v "it/s\]$" ;;
  eval)
    python3 benchmarks/eval_real.py --model "$WORK/distilled" --baseline "${BASELINE:-$GGUF}" --out "$OUT" \
      --suite "${SUITE:-ppl,niah,humaneval}" --lengths "${LENGTHS:-1024,2048,8192,32000}" --trials 3 2>&1 \
      | tee "$OUT/eval.log" | grep -v "it/s\]$" ;;
  *) echo "unknown stage $1" >&2; exit 2 ;;
esac
