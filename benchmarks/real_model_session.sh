#!/usr/bin/env bash
# The real-model GPU session, one device call per stage, all calls back to back on one warm machine (the
# machine keeps /tmp between calls only while it stays warm):
#   bash benchmarks/real_model_session.sh part 01 .. part 30   # each call carries .blob/partNN (+ .whl on 01)
# .blob holds the GGUF in NPARTS (30) parts of 36 MiB: a call carries the tracked tree (24 MB) beside its part, within
# 64 MiB, and the 22 parts of 50 MiB the model ships in no longer fit (refused on 2026-12-05), nor 24 of 45 MiB once
# the tree passed 19 MB (2026-12-06), nor 27 of 40 MiB once it passed 24 MB (2026-12-07). To make them:
#   cat /tmp/qwen/parts/part{01..22} > q.gguf && split -b 36M -d -a 2 --numeric-suffixes=1 q.gguf .blob/part
#   bash benchmarks/real_model_session.sh fits                 # here, before a lease: do the calls fit 64 MiB?
#   bash benchmarks/real_model_session.sh prep                 # GGUF, convert, tokenise, probe; hardware search
#   bash benchmarks/real_model_session.sh distill 1|2|3        # one distillation stage a call (resumable)
#   bash benchmarks/real_model_session.sh eval                 # jet-nemotron eval: student beside its teacher
# or, past the 10-minute command limit, the whole run as one detached job (a process in its own session outlives
# the call that started it) watched by short calls, each back to back so the machine never idles 30 s:
#   TESTS="modeling_tests/x.py::test_y" bash benchmarks/real_model_session.sh part 01   # + those tests, first
#   CARD_TESTS="..." bash benchmarks/real_model_session.sh part 01   # those tests in the card job below, after
#                                  its profiles (SWEEP=1: then benchmarks/chunk_bwd_sweep.py, with SWEEP_ARGS)
#   SPEED=1 PROFILE=1 bash benchmarks/real_model_session.sh part 01   # + random-weight jobs of the real shapes
#                                  (KERNEL_PARTS="swiglu": kernel_speed.py's parts too, first)
#                                  while the parts arrive: profile_distill.py (PROFILE_RUNS, a run a word, its
#                                  flags joined by commas) and generation.py
#                                  (SPEED_CONTEXTS; SPEED=all: one process for all of them, SPEED_ARGS=--dynamic:
#                                  one compile per model), within SPEED_TIMEOUT seconds
#   bash benchmarks/real_model_session.sh pipeline             # after the parts: prep, stages 1-3 (one process), eval, tests
#                                        (RATE: stage-1 tok/s measured before, skips the probe; EXTRA: more flags)
#                                        pipeline-variants: ROW_WORKERS=N processes draw chat / retrieval rows (0: none);
#                                        MICRO_BATCH / MICRO_BATCH2: rows a forward in stage 1 / 2 (an 80 GB
#                                        H100: stage 2 at 4 in the runs so far; 8 profiled at 75.4 GB with
#                                        train2 mixers; training every weight it took 2;
#                                        CHECKPOINT2=1: stage 2 recomputes the student's activations, 8 may fit)
#   VARIANTS=recipe|placement bash benchmarks/real_model_session.sh pipeline-variants  # or pipeline:
#                                        short distillations side by side (VARIANT_MIN each, ONLY=a,b, HUMANEVAL=N,
#                                        (always with jet-nemotron eval's stdlib perplexity, in process);
#                                        ANSWERS=N (ANSWERS_BUDGET s): the teacher's answers to N function requests
#                                        first, the chat file of variants whose chat_file is '@answers';
#                                        the corpus is tokenised beside save_teacher (tokenise.log);
#                                        LENGTHS=2048,8192, TRIALS=N and DEPTHS=0,0.25,0.5,0.75,1 (jet-nemotron
#                                        eval's default grid) for the retrieval cells, MAX_TOKENS=N of
#                                        corpus to tokenise (every variant reads the same first rows);
#                                        TEACHER_LAST=1: the teacher's suites after the students (whose numbers
#                                        then come first, each into OUT/variants/partial.json as it is measured);
#                                        SEARCH_ARGS="--steps 100 --beam 1" shortens the placement search,
#                                        SEARCHED=map.json skips it and uses that map; EVAL=1 saves each student
#                                        and runs jet-nemotron eval on it beside the teacher: SUITE, EVAL_LENGTHS;
#                                        EVAL=best: the best student only; OPTINS=1 PLAN_MS=n1,n2: the
#                                        speed switches the card job's profiles chose, steps refitted;
#                                        OPTINS=tests: the switches whose card tests passed, the planned steps;
#                                        TRACE_STEPS=N: N steps of each stage (after its first TRACE_AFTER, 50)
#                                        traced under torch.profiler into out/variants/trace/ (a run's step beside
#                                        a profile's);
#                                        AFTER_TESTS="a.py::test_b ...": those card tests after the suites, within
#                                        AFTER_TIMEOUT s (240), into out/card_tests_after.log)
#   bash benchmarks/real_model_session.sh poll 240             # wait (at most N s, default 240), pack what is done
#                                                              #   into $OUT/results.tgz (a call returns 8 files at
#                                                              #   most); a call cut by a machine taken back returns
#                                                              #   nothing, so short polls lose less (2026-12-04);
#                                                              #   exit 3 at once on a fresh machine (no job)
# Budget (DISTILL_MIN, default 6) is the distillation's wall clock over all stages. Results go to $OUT. Prefix each
# call with JET_NEMOTRON_COMMIT=<sha> so results are stamped with it (the device copy's .git was seen stale).
# Send a lease as part 01 alone, then every other call as one batch written beforehand (a machine idle 30 s between
# two calls is taken back; a start that fails refuses each call of its batch at 15 s: 28 of them cost 420 s on
# 2026-12-05): VARIANTS, PLAN_MS, MICRO_BATCH2, CHECKPOINT2, PROFILE_RUNS, HUMANEVAL, LENGTHS, TRIALS and OPTINS may
# be given per card as X_H100 / X_H200, read off the card itself (a lease can run a different experiment per card).
set -uo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false HF_HUB_OFFLINE=1
# the carried wheels' folder (part 01 installs them), on the path even before it exists: part 01's own tests and
# card job need it in that same call (the gguf tests failed for want of it on 2026-12-05); a missing folder is
# skipped by Python
export PYTHONPATH=$PYTHONPATH:/tmp/site
NPARTS=${NPARTS:-30} M=${M:-/tmp/realmodel} WORK=${WORK:-/tmp/distill_real} OUT=${OUT:-/tmp/out}
GGUF=$WORK/qwen2.5-coder-1.5b-instruct-q4_k_m.gguf MD5=136755df932e5b87db9bbc2bea00aba5
SP=$(python3 -c 'import site; print(site.getsitepackages()[0])')
BUDGET=${DISTILL_MIN:-6}
common=(--out "$OUT" --work "$WORK" --gguf "$GGUF" --site-packages "$SP" --time-budget-min "$BUDGET")
JOB=${JOB:-/tmp/jn}  # the detached job's results (JOB/out), logs and flags: speed.done, done
# The card decides some settings (an 80 GB H100 has taken stage 2 at 4 rows a forward, a 141 GB H200 at 8), and a lease
# is one batch of calls sent before any reply says which card came: X_H100 / X_H200 set X on that card, for X in
# the list below (a card of at least 100 GB counts as an H200).
mem=$(nvidia-smi --query-gpu=memory.total --format=csv,noheader,nounits 2>/dev/null | head -1)
if [[ "${mem:-}" =~ ^[0-9]+$ ]]; then
  [ "$mem" -ge 100000 ] && CARD=H200 || CARD=H100
  for v in VARIANTS PLAN_MS MICRO_BATCH2 CHECKPOINT2 PROFILE_RUNS HUMANEVAL LENGTHS TRIALS OPTINS; do
    o=${v}_$CARD
    [ -n "${!o:-}" ] && export "$v=${!o}"
  done
fi
# snapshot DIR: a copy of this checkout for a detached job to run from. Every device call copies the working tree
# anew, and a job importing from it while the next call's copy lands can miss a module: the card job's first
# profile died so (2026-12-05, "No module named 'jet_nemotron.input_checks'", started as part 02 arrived).
snapshot() {
  rm -rf "$1" && mkdir -p "$1" &&
    tar --exclude=./.git --exclude=./.blob --exclude=./.whl -cf - . | tar -xf - -C "$1"
}
case "$1" in
  fits)
    # here, before a lease: a call carries the tracked and the untracked-not-ignored files beside its part (and .whl
    # on part 01), and one over 64 MiB is refused; a lease's first call was, three times (2026-12-05 / 06 / 07), as
    # each run's record grew the tree. Exit 1 when the tree, the largest part and the wheels pass 64 MiB.
    limit=$((64 * 1024 * 1024))
    bytes() { xargs -0 -r stat -c %s -- 2>/dev/null | awk '{s += $1} END {print s + 0}'; }  # of NUL-ended paths
    tree=$({ git ls-files -z; git ls-files -z --others --exclude-standard; } | bytes)
    part=$(ls -S .blob/part* 2>/dev/null | head -1)
    [ -n "$part" ] || { echo "no .blob/part*: make the parts first (the split above)"; exit 2; }
    size=$(printf '%s\0' "$part" | bytes) whl=$(printf '%s\0' .whl/*.whl | bytes)
    total=$((tree + size + whl))
    echo "tree $tree + $part $size + wheels $whl = $total bytes of $limit"
    [ "$total" -le "$limit" ] || { echo "over 64 MiB: split the GGUF in smaller parts (NPARTS and the split above)"
                                   exit 1; } ;;
  part)
    mkdir -p "$M" && cp ".blob/part$2" "$M/part$2" && echo "$(ls "$M" | wc -l) parts"
    if ls .whl/*.whl >/dev/null 2>&1; then
      python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
    fi
    if [ "$(ls "$M" | wc -l)" = "$NPARTS" ]; then
      mkdir -p "$WORK" && cat "$M"/part* > "$GGUF" && rm -r "$M"
      [ "$(md5sum < "$GGUF" | cut -c1-32)" = "$MD5" ] && echo "GGUF ok: $GGUF" || echo "GGUF md5 MISMATCH"
    fi
    # TESTS: pytest node ids run on the card first, before any card job shares it (a GPU-only path checked before
    # the pipeline relies on it), every one of them (pick_optins.py gates each kernel on its own tests), into
    # JOB/out/tests.log with every result named (-rA)
    if [ -n "${TESTS:-}" ]; then
      mkdir -p $JOB/out && python3 -m pytest -q -rA $TESTS > $JOB/out/tests.log 2>&1; tail -5 $JOB/out/tests.log
    fi
    if [ -n "${SPEED:-}${PROFILE:-}${KERNEL_PARTS:-}${CARD_TESTS:-}${SWEEP:-}${FP8_SPEED:-}" ]; then
      # the card is idle while the parts arrive: random-weight jobs of the real shapes use it (the pipelines wait
      # for speed.done before distilling); one process each, so a cut one loses only its own, all within
      # SPEED_TIMEOUT seconds
      mkdir -p $JOB/out && rm -f $JOB/speed.done
      # in this order, each in its own process:
      # KERNEL_PARTS="swiglu norm": kernel_speed.py's parts, ours beside PyTorch eager and compiled (short);
      # PROFILE_RUNS: one run a word, commas joining one run's flags ("--stage=2 --stage=2,--compile": two runs); the
      #   step profiles are what the MFU goal is read from, and on 2026-12-05 the tests and the sweep ahead of them
      #   used the whole SPEED_TIMEOUT before two of three profiles ran, so they come before both;
      # CARD_TESTS: pytest node ids, run in the card job, not before the parts go on as TESTS do (a lease then spends
      #   no call waiting on them; the pipeline waits for the card job), into out/card_tests.log, which names every
      #   test passed (-rA) as well as each failure;
      # FP8_SPEED=1: the teacher's forward with FP8 MLPs against bf16 (teacher_fp8_speed.py, about a minute);
      # SWEEP=1: the per-chunk backward kernel's launch configs timed against its default (chunk_bwd_sweep.py); it
      #   writes its JSON after every config, so a cut sweep keeps what it timed
      # the job is one line of commands: a list given over several lines (CARD_TESTS="a\n b") is joined by spaces
      # first, or its newline would end the command there (the first test alone would run, unlogged)
      flat() { echo $*; }
      jobs=""
      [ -n "${KERNEL_PARTS:-}" ] &&
        jobs=" python3 benchmarks/kernel_speed.py --only $(flat $KERNEL_PARTS) --out $JOB/out/kernels;"
      [ -n "${PROFILE:-}" ] && for p in ${PROFILE_RUNS:---stage=1 --local}; do
        jobs="$jobs python3 benchmarks/profile_distill.py ${p//,/ } --out $JOB/out/profile;"; done
      [ -n "${CARD_TESTS:-}" ] &&
        jobs="$jobs python3 -m pytest -q -rA $(flat $CARD_TESTS) > $JOB/out/card_tests.log 2>&1;"
      [ -n "${FP8_SPEED:-}" ] &&
        jobs="$jobs python3 benchmarks/teacher_fp8_speed.py --out $JOB/out/teacher_fp8;"
      [ -n "${SWEEP:-}" ] &&
        jobs="$jobs python3 benchmarks/chunk_bwd_sweep.py --out $JOB/out/sweep $(flat ${SWEEP_ARGS:-});"
      # SPEED=1: one process per context (a cut one loses only its own); SPEED=all: one process for every context
      # (with SPEED_ARGS=--dynamic, one compile per model serves them all); SPEED_ARGS go to generation.py
      if [ "${SPEED:-}" = all ]; then
        jobs="$jobs python3 benchmarks/generation.py --contexts $(flat ${SPEED_CONTEXTS:-4096 32768})"
        jobs="$jobs $(flat ${SPEED_ARGS:-}) --out $JOB/out/gen_all;"
      elif [ -n "${SPEED:-}" ]; then
        for c in ${SPEED_CONTEXTS:-4096 32768}; do
          jobs="$jobs python3 benchmarks/generation.py --contexts $c $(flat ${SPEED_ARGS:-}) --out $JOB/out/gen_$c;"; done
      fi
      snapshot $JOB/tree.card
      # the card's clocks and power beside the profiles too (gpu_by_stage.py on a profile's JSON), as the pipeline
      # samples its runs: a profile and a run of the same step can differ by the card's clocks, not the code
      setsid nohup bash -c "cd $JOB/tree.card && export PYTHONPATH=$JOB/tree.card:/tmp/site
        bash benchmarks/sample_gpu.sh $JOB/out/gpu_samples_card.csv & sampler=\$!
        timeout ${SPEED_TIMEOUT:-360} bash -c '$jobs'; kill \$sampler; touch $JOB/speed.done" \
        > $JOB/speed.log 2>&1 < /dev/null &
      echo "card job started: $JOB/speed.log ($jobs)"
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
  pipeline)
    mkdir -p $JOB/out && rm -f $JOB/done
    [ -e $JOB/speed.log ] || touch $JOB/speed.done  # no speed job: nothing to wait for
    J=(--out $JOB/out --work "$WORK" --gguf "$GGUF" --site-packages "$SP" --time-budget-min "$BUDGET"
       --wait-for $JOB/speed.done --passkey-trials 10 ${RATE:+--rate $RATE} ${EXTRA:-})
    E=(--baseline "$WORK/teacher_fp32" --out $JOB/out --suite "${SUITE:-ppl,niah,humaneval}"
       --lengths "${LENGTHS:-2048,8192,16384,32000}" --trials 3)
    snapshot $JOB/tree
    setsid nohup bash -c "cd $JOB/tree && export PYTHONPATH=$JOB/tree:/tmp/site
      nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
      python3 -c 'import torch, transformers, triton; print(torch.__version__, transformers.__version__, triton.__version__)'
      python3 benchmarks/distill_real.py ${J[*]} --stages 0,1,2,3 --save-teacher > $JOB/distill.log 2>&1
      student=$WORK/distilled
      python3 benchmarks/eval_real.py --model \$student ${E[*]} > $JOB/eval.log 2>&1
      timeout 240 python3 -m pytest -q modeling_tests/test_gpu_model.py > $JOB/gpu_tests.log 2>&1
      touch $JOB/done" > $JOB/pipeline.log 2>&1 < /dev/null &
    echo "pipeline started: $JOB/pipeline.log" ;;
  pipeline-variants)
    # VARIANTS=recipe (one knob each) or placement (searched vs preset vs uniform; the search runs first):
    # each variant distilled VARIANT_MIN minutes from the same start, measured alike (benchmarks/distill_variants.py)
    mkdir -p $JOB/out && rm -f $JOB/done
    [ -e $JOB/speed.log ] || touch $JOB/speed.done
    V=(--variants "${VARIANTS:-recipe}" ${ONLY:+--only "$ONLY"} --teacher "$WORK/teacher_fp32" --site-packages "$SP"
       --minutes "${VARIANT_MIN:-3}" --out $JOB/out/variants ${RATE:+--rate $RATE} --humaneval "${HUMANEVAL:-0}"
       --stdlib-ppl
       ${LENGTHS:+--lengths $LENGTHS} ${TRIALS:+--trials $TRIALS} ${DEPTHS:+--depths $DEPTHS}
       ${MAX_TOKENS:+--max-tokens $MAX_TOKENS} ${MICRO_BATCH:+--micro-batch $MICRO_BATCH}
       ${MICRO_BATCH2:+--micro-batch2 $MICRO_BATCH2} ${CHECKPOINT2:+--checkpoint2} ${TEACHER_LAST:+--teacher-last}
       ${ROW_WORKERS:+--row-workers $ROW_WORKERS} ${TRACE_STEPS:+--trace-steps $TRACE_STEPS}
       ${TRACE_AFTER:+--trace-after $TRACE_AFTER}
       ${EVAL:+--save-students $WORK/students} ${ANSWERS:+--answers $JOB/out/answers/teacher_answers.jsonl.gz})
    # placement presets search first, unless SEARCHED names a map a search wrote before (e.g. the committed one)
    search=0; case "${VARIANTS:-recipe}" in placement*) search=1 ;; esac
    if [ -n "${SEARCHED:-}" ]; then
      [ -f "$SEARCHED" ] || { echo "SEARCHED=$SEARCHED: no such layer map" >&2; exit 2; }
      search=0 V+=(--searched "$(realpath "$SEARCHED")")
    fi
    # the flags quoted for the detached bash -c below, which splits its string again: a variant name in ONLY holds
    # spaces and commas ("stage 1 only, batch 8, lr 1e-3")
    VQ=$(printf '%q ' "${V[@]}")
    snapshot $JOB/tree
    # the card's clocks, power and utilisation through the whole job (benchmarks/gpu_by_stage.py lines them up with
    # the steps): in-run stage-2 steps were 13% slower than their profile (2026-12-06), which step times alone
    # cannot attribute to the card or the host
    setsid nohup bash -c "cd $JOB/tree && export PYTHONPATH=$JOB/tree:/tmp/site
      bash benchmarks/sample_gpu.sh $JOB/out/gpu_samples.csv & sampler=\$!
      if [ ! -e $WORK/teacher_fp32/config.json ]; then
        # the corpus is tokenised into the cache the variants read (on the CPU, with the GGUF's tokenizer) while the
        # teacher is dequantised and saved: the variants' own tokenising (25 s on 2026-12-04) becomes a cache read
        python3 benchmarks/distill_variants.py $VQ --teacher $GGUF --tokenise-only > $JOB/tokenise.log 2>&1 &
        tokenise=\$!
        python3 benchmarks/save_teacher.py $GGUF $WORK/teacher_fp32 > $JOB/save_teacher.log 2>&1
        wait \$tokenise  # not the sampler, which runs until the job ends
      fi
      while [ ! -e $JOB/speed.done ]; do sleep 2; done
      # ANSWERS=N: the teacher first answers N function requests (at most ANSWERS_BUDGET s), for variants whose
      # chat_file is '@answers'; the chat file comes back in the results to be committed
      [ -n '${ANSWERS:-}' ] && python3 benchmarks/teacher_answers.py --teacher $WORK/teacher_fp32 --site-packages $SP \
        --n ${ANSWERS:-0} ${ANSWERS_BUDGET:+--time-budget-s $ANSWERS_BUDGET} \
        --out $JOB/out/answers/teacher_answers.jsonl.gz > $JOB/answers.log 2>&1
      # OPTINS=1: the speed switches and stage 2's shape the card job's profiles and tests chose on this card, and
      # the variants' steps fitted to the seconds they were planned for at PLAN_MS (benchmarks/pick_optins.py);
      # OPTINS=tests: no profiles, every switch whose card test passed, the variants' own steps
      # (a switch whose card test ran nowhere in this lease has it run here first, seconds, rather than be off)
      picked=''
      if [ -n '${OPTINS:-}' ]; then
        logs=\"$JOB/out/card_tests.log $JOB/out/tests.log $JOB/out/switch_tests.log\"
        untested=\$(python3 benchmarks/pick_optins.py --untested --card-tests \$logs)
        [ -n \"\$untested\" ] && timeout 300 python3 -m pytest -q -rA \$untested > $JOB/out/switch_tests.log 2>&1
        python3 benchmarks/pick_optins.py --profiles $JOB/out/profile \
          --card-tests \$logs --variants ${VARIANTS:-recipe} \
          --plan-ms '${PLAN_MS:-}' $([ "${OPTINS:-}" = tests ] && echo --no-profiles) --out $JOB/out/optins \
          > $JOB/optins.log 2>&1
        if [ -f $JOB/out/optins/variants_fitted.json ]; then
          set -a; . $JOB/out/optins/optins.env; set +a
          picked=\"\$(cat $JOB/out/optins/optins.args) --variants $JOB/out/optins/variants_fitted.json\"
        fi
      fi
      if [ $search = 1 ]; then
        python3 benchmarks/search_real.py --part placement --source $WORK/teacher_fp32 --out $JOB/out \
          --data $SP/torch/_inductor $SP/torch/nn --eval-data \$(python3 -c 'import email, os; print(os.path.dirname(email.__file__))') \
          ${SEARCH_ARGS:-} > $JOB/search.log 2>&1
        python3 benchmarks/distill_variants.py $VQ --searched $JOB/out/placement/layer_map.json > $JOB/variants.log 2>&1
      else
        python3 benchmarks/distill_variants.py $VQ \$picked > $JOB/variants.log 2>&1
      fi
      # EVAL=1: every saved student then goes through jet-nemotron eval beside the teacher (SUITE, EVAL_LENGTHS),
      # into OUT/eval_<name>/eval; EVAL=best: only the best of them (HumanEval, then held-out KL), as each eval
      # measures the teacher again
      if [ -n '${EVAL:-}' ]; then
        students=\$(ls -d $WORK/students/*/ 2>/dev/null)
        [ '${EVAL:-}' = best ] && students=\$(python3 -c 'import sys; sys.path.insert(0, \"benchmarks\")
from distill_variants import best_student; print(best_student(\"$JOB/out/variants/variants.json\") or \"\")')
        for d in \$students; do
          python3 benchmarks/eval_real.py --model \$d --baseline $WORK/teacher_fp32 --out $JOB/out/eval_\$(basename \$d) \
            --suite ${SUITE:-ppl,niah,humaneval} --lengths ${EVAL_LENGTHS:-2048,8192,32000} --trials 3 >> $JOB/eval.log 2>&1
        done
      fi
      # AFTER_TESTS: pytest node ids run on the card after the students' and teacher's suites, within AFTER_TIMEOUT
      # seconds (240), into out/card_tests_after.log: the lease's slack after a 15-minute run is about 400 s, where
      # the card job's CARD_TESTS share the 330 s before the distillation with the profiles (run p, 2026-12-07: 7
      # tests ran there, then 48 chunked-kernel cases in a call of their own)
      if [ -n '${AFTER_TESTS:-}' ]; then
        timeout ${AFTER_TIMEOUT:-240} python3 -m pytest -q -rA $(echo ${AFTER_TESTS:-}) \
          > $JOB/out/card_tests_after.log 2>&1
      fi
      kill \$sampler
      touch $JOB/done" > $JOB/pipeline.log 2>&1 < /dev/null &
    echo "variants pipeline started: $JOB/pipeline.log" ;;
  poll)
    # no job folder: this call started a fresh machine, because the one running the job was taken back (it keeps
    # nothing); say so at once rather than wait out the poll on a bare machine (one such poll cost 230 s of the
    # lease on 2026-12-04)
    [ -d $JOB ] || { echo "no $JOB here: a fresh machine (the one running the job was taken back); give it back"
                     exit 3; }
    # done: the pipeline finished, or a session of the card job alone (SPEED / PROFILE on part 01, no pipeline
    # started) finished that job, so a speed-only session stops polling, and holding the card, when it ends
    finished() { [ -e $JOB/done ] || { [ ! -e $JOB/pipeline.log ] && [ -e $JOB/speed.done ]; }; }
    # packs every 10 s, so a call cut by the device limit still brings back what was done until then: one
    # archive, since at most 8 files come back from a call; small files only (a search's checkpoints, GBs of
    # JetBlock weights and Adam state, stay on the machine). Unpack with: tar xzf results.tgz
    t0=$SECONDS; mkdir -p "$OUT"
    while :; do
      # tar exits 1 when a file changed while it was read (a log being written): the archive is still good
      (cd $JOB && { find out -type f -size -20M; ls *.log; } 2>/dev/null \
        | tar czf "$OUT/results.tgz.tmp" --warning=no-file-changed -T -; [ $? -le 1 ] \
        && mv "$OUT/results.tgz.tmp" "$OUT/results.tgz")
      finished && break
      [ $((SECONDS - t0)) -ge "${2:-240}" ] && break
      sleep 10
    done
    for f in $JOB/*.log; do echo "== $f"; tr '\r' '\n' < "$f" | grep -v "it/s\]$" | tail -${TAIL:-6}; done
    if [ -e $JOB/done ]; then echo "pipeline done"; elif finished; then echo "card job done (no pipeline)"
    else echo "pipeline running"; fi ;;
  *) echo "unknown stage $1" >&2; exit 2 ;;
esac
