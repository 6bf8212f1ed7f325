#!/usr/bin/env bash
# One device session on a machine with several GPUs: the issue-5 runs as parallel single-GPU jobs, one per
# "lane" (a GPU whose host<->device copies do not slow another lane's: bench/gpu_lanes.py probe).
# Usage, on the device, in a frozen snapshot (bench/README.md "A whole device session, several GPUs"):
#   bash bench/gpu_session.sh probe    # after the first stash: wheels, lanes probe (-> /tmp/lanes), tier tests
#   bash bench/gpu_session.sh grid     # after the second stash: vLLM + model, then the prefix grid jobs
#   bash bench/gpu_session.sh replay   # the trace replay, one mode per lane
#   bash bench/gpu_session.sh tp2      # TP = 2 (GPUs 0,1) beside the cross-layer runs (GPU 2) and the 16k row (GPU 3)
#   bash bench/gpu_session.sh cells    # 4k / 8k cells with async scheduling on / off, replay with a small HBM
# On one GPU (nvidia-h200; bench/README.md "The next device session"), each a call of its own:
#   bash bench/gpu_session.sh check      # after the first stash: tier tests; bandwidth: defaults, dumps not deferred, no stages
#   bash bench/gpu_session.sh disk       # ucm_disk with disk hits forced, then gated (auto): 8k / 16k, c = 1 (DISK_LENGTHS, DISK_CONC)
#   bash bench/gpu_session.sh lategrid   # after the second stash: full, ucm over the whole grid (3 reps, decode)
#   bash bench/gpu_session.sh overflow   # ucm_layerwise_step_load_blocks 1000 on 16k / 4k c = 2, 4; then the profile
#   bash bench/gpu_session.sh native     # native_best, native over the grid (the comparison, same machine)
#   bash bench/gpu_session.sh v1full     # full compute and HBM hits on the V1 model runner (native_best's)
#   bash bench/gpu_session.sh v1ucm      # ucm on the V1 model runner (per-layer tensors)
#   bash bench/gpu_session.sh v2full     # full compute and HBM hits on the V2 model runner (the default)
#   bash bench/gpu_session.sh v2ucm      # ucm on the V2 model runner
#   bash bench/gpu_session.sh prof4k     # the layer-wise profile at 4k / 16k c = 1 on the V2, then the V1 runner
#   bash bench/gpu_session.sh stagger    # c = 2, 4 cells with step budgets (STAGGER_RUNS, default turn:1024 turn:512; also tokens:N, blocks:N)
#   bash bench/gpu_session.sh decode     # decode storing vs not storing: storing switched every 8 steps (DECODE_SWITCH=0: A B B A reps)
#   bash bench/gpu_session.sh replay1    # the trace replay, REPLAY_MODES (default full,ucm_lru)
#   bash bench/gpu_session.sh replayspy  # the same under py-spy (GIL samples per thread; .whl/ holds its wheel)
# On two GPUs (nvidia-h200-x2), after the two stash calls:
#   bash bench/gpu_session.sh pair     # the whole grid: full/ucm on GPU 0 beside native on GPU 1; then the 16k profile
#   bash bench/gpu_session.sh tp2c4    # TP = 2 16k c = 4 with the scheduler's lookups logged, then the trace replay
#   bash bench/gpu_session.sh tp2prof  # the same TP = 2 cell, then the 16k profile on a churned store
# Each step leaves $OUT/<step>.tgz (everything it wrote) and $OUT/<step>.log: the device returns <= 8 files.
# STEP_S (default 570) is the step's whole budget: jobs get deadlines that end inside it.
set -o pipefail
step=${1:?usage: gpu_session.sh probe|grid|replay|tp2|cells|pair|tp2c4|tp2prof|check|lategrid|overflow|native|v1full|v1ucm|v2full|v2ucm|prof4k|stagger|decode|disk|replay1|replayspy}
OUT=${OUT:-/tmp/gpu_session_out}
W=/tmp/session/$step
mkdir -p "$W" "$OUT"
export PYTHONUNBUFFERED=1
END=$(( $(date +%s) + ${STEP_S:-570} - 25 ))  # leave time to pack the results
export END
left() { echo $(( END - $(date +%s) - ${1:-0} )); }

all_gpus() { python3 -c 'import torch; print(",".join(map(str, range(torch.cuda.device_count()))))'; }
lanes() { cat /tmp/lanes 2>/dev/null || all_gpus; }
# a job's deadline (evaluated when the job starts) and the trace replay's command, for the steps below
D='--deadline-s $(( END - $(date +%s) - 40 - ${RESERVE:-0} ))'  # RESERVE: seconds kept for work after the jobs
R="BENCH=bench/trace_replay.py bash bench/gpu_prefix_ttft.sh --requests ${REPLAY_N:-300} --max-model-len 4096 --time-scale 4 --max-output 16 --ws-fraction 0.5 --num-gpu-blocks ${REPLAY_HBM:-3072}"

setup() {  # once per machine: vLLM bundle, wheels, the 7B model (gpu_prefix_ttft.sh does it; --help runs
  # nothing else); then vLLM and ucm importable in this shell
  bash bench/gpu_prefix_ttft.sh --help > "$W/setup.log" 2>&1 || { tail -20 "$W/setup.log"; return 1; }
  grep -E "device_setup|setup done|importable" "$W/setup.log"
  source .gpu/device_setup.sh >/dev/null; source bench/ucm_site.sh
}

tp2_c4() {  # TP = 2 at 16k c = 4 (one request lost its DRAM hit there, 2026-11-28), every lookup logged
  CUDA_VISIBLE_DEVICES=0,1 PRESET=qwen2.5-32b NO_WEIGHTS=1 OUT=$W/tp2 timeout "$(left 250)" bash bench/gpu_prefix_ttft.sh \
    --tp 2 --load-format dummy --lengths 16000 --concurrency 4 --modes ucm --decode-batch 0 --reps 2 --ucm-debug \
    --deadline-s "$(left 280)" > "$W/tp2.log" 2>&1
  grep -E "TP ranks disagree|prefix hit now ends|no answer|pin failed|hit80=" "$W/tp2.log" | head -20
}

run_jobs() {  # run_jobs JOB... : the jobs over the lanes, in order, each killed at the step's end
  local args=() j
  for j in "$@"; do args+=(--job "$j"); done
  python3 bench/gpu_lanes.py run --lanes "${LANES:-$(lanes)}" --log-dir "$W/logs" --timeout-s "$(left $(( 5 + ${RESERVE:-0} )))" "${args[@]}"
}

{
  date -u
  nvidia-smi --query-gpu=index,name,memory.total,pcie.link.gen.max,pcie.link.width.max --format=csv,noheader
  echo "cpus $(nproc); $(free -g | awk '/Mem:/{print "RAM " $2 " GiB"}')"
  case $step in
  probe)
    source bench/ucm_site.sh || exit 1
    nvidia-smi topo -m
    python3 bench/gpu_lanes.py probe --out "$W/lanes.json" | tee "$W/probe.txt"
    grep -o 'LANES=[0-9,]*' "$W/probe.txt" | tail -1 | cut -d= -f2 > /tmp/lanes
    echo "lanes: $(cat /tmp/lanes)"
    CUDA_VISIBLE_DEVICES=0 timeout "$(left)" python3 -m pytest -q -p no:cacheprovider tests/tiers 2>&1 | tail -5
    ;;
  grid)
    setup || exit 1
    run_jobs "OUT=$W/grid bash bench/gpu_prefix_ttft.sh --modes full,ucm $D" \
      "OUT=$W/grid_native bash bench/gpu_prefix_ttft.sh --modes native_best,native --decode-batch 0 $D" \
      "OUT=$W/grid_variants bash bench/gpu_prefix_ttft.sh --modes ucm_batched --decode-batch 0 $D" \
      "mkdir -p $W/checks/async; source .gpu/device_setup.sh >/dev/null; python3 bench/dram_bandwidth.py --blocks 1024 --fragmented --out $W/checks/dram_bandwidth.json; python3 -m tests.vllm.gpu_check --out $W/checks --load-mode layerwise; python3 -m tests.vllm.gpu_check --out $W/checks/async --load-mode async" \
      "BENCH=bench/profile_layerwise.py OUT=$W/profile bash bench/gpu_prefix_ttft.sh --lengths 16000 --concurrency 1,4"
    # the three grid folders merged into one table (later folders win; each mode ran once)
    python3 bench/prefix_ttft.py --mode table --out "$W/grid" --from "$W/grid_native,$W/grid_variants" 2>&1 | tail -3
    ;;
  replay)
    setup || exit 1
    # two modes a job: trace_replay.py splits a job's deadline evenly between its modes
    if [ -n "$LANES" ]; then  # one mode a GPU
      run_jobs "OUT=$W/a $R --modes full $D" "OUT=$W/b $R --modes native $D" "OUT=$W/c $R --modes ucm_lru $D" \
        "OUT=$W/d $R --modes ucm_best $D"
      python3 bench/trace_replay.py --mode table --out "$W/a" --from "$W/b,$W/c,$W/d" 2>&1 | tail -3
    else
      run_jobs "OUT=$W/a $R --modes full,ucm_lru $D" "OUT=$W/b $R --modes native,ucm_best $D"
      python3 bench/trace_replay.py --mode table --out "$W/a" --from "$W/b" 2>&1 | tail -3
    fi
    ;;
  tp2)
    setup || exit 1
    # TP = 2 needs two GPUs of its own: not through the lanes (GPUs 0 and 1); the cross-layer runs
    # (V1 runner: prefix row, then gpu_check) on GPU 2; the 16k row and its profile on GPU 3
    ( CUDA_VISIBLE_DEVICES=2 OUT=$W/cross_layer bash bench/gpu_prefix_ttft.sh --modes ucm --ucm-cross-layer \
        --model-runner v1 --lengths 16000 --decode-batch 0 --deadline-s "$(left 200)"
      CUDA_VISIBLE_DEVICES=2 VLLM_USE_V2_MODEL_RUNNER=0 timeout "$(left 10)" python3 -m tests.vllm.gpu_check \
        --out "$W/cross_layer_check" --cross-layer --model-dir /tmp/ucm-tiny-bf16-cl ) > "$W/cross_layer.log" 2>&1 &
    if [ "$(nvidia-smi -L | wc -l)" -ge 4 ]; then
      ( CUDA_VISIBLE_DEVICES=3 OUT=$W/row16k bash bench/gpu_prefix_ttft.sh --modes full,ucm --lengths 16000 \
          --decode-batch 0 --deadline-s "$(left 200)"
        CUDA_VISIBLE_DEVICES=3 BENCH=bench/profile_layerwise.py OUT=$W/profile timeout "$(left 10)" \
          bash bench/gpu_prefix_ttft.sh --lengths 16000 --concurrency 1
        CUDA_VISIBLE_DEVICES=3 timeout "$(left 10)" python3 -m tests.vllm.gpu_check --out "$W/check_layerwise" \
          --model-dir /tmp/ucm-tiny-bf16-lw ) > "$W/row16k.log" 2>&1 &
    fi
    CUDA_VISIBLE_DEVICES=0,1 PRESET=qwen2.5-32b NO_WEIGHTS=1 OUT=$W/tp2 timeout "$(left 100)" bash bench/gpu_prefix_ttft.sh \
      --tp 2 --load-format dummy --lengths 16000 --modes full,ucm --decode-batch 0 --deadline-s "$(left 140)"
    CUDA_VISIBLE_DEVICES=0,1 timeout "$(left 5)" python3 -m tests.vllm.gpu_check --out "$W/tp2_check" --tp 2 \
      --model-dir /tmp/ucm-tiny-bf16-tp2 > "$W/tp2_check.log" 2>&1; grep -E '"ok"|Error' "$W/tp2_check.log"
    wait
    tail -15 "$W/cross_layer.log"; tail -5 "$W/row16k.log" 2>/dev/null
    ;;
  cells)
    # the 4k and 8k cells again, vLLM's async scheduling on (lane 0) and off (lane 1), then the trace
    # replay sized so DRAM matters (a smaller HBM tier) on the other two GPUs: four jobs at once on
    # four GPUs (LANES: all of them; the host's copies then run at ~0.75 of one GPU alone)
    setup || exit 1
    C="bash bench/gpu_prefix_ttft.sh --lengths 4000,8000 --modes full,ucm,ucm_batched --decode-batch 0"
    LANES=${LANES:-$(all_gpus)} run_jobs "OUT=$W/async_on $C --async-scheduling on $D" "OUT=$W/async_off $C --async-scheduling off $D" \
      "OUT=$W/replay_a $R --modes full,ucm_lru $D" "OUT=$W/replay_b $R --modes native,ucm_best $D"
    python3 bench/trace_replay.py --mode table --out "$W/replay_a" --from "$W/replay_b" 2>&1 | tail -3
    ;;
  pair)
    # the issue's grid on one machine in one run: full/ucm on GPU 0, native and native best on GPU 1;
    # the 16k c = 1 profile (100 % and 80 % passes) on whichever GPU frees first; then decode with and
    # without ucm storing, alone on the machine (beside another job it varied by +-15 %, 2026-11-28)
    setup || exit 1
    export RESERVE=150
    LANES=${LANES:-0,1} run_jobs "OUT=$W/grid bash bench/gpu_prefix_ttft.sh --modes full,ucm --decode-batch 0 $D" \
      "OUT=$W/grid_native bash bench/gpu_prefix_ttft.sh --modes native_best,native --decode-batch 0 $D" \
      "BENCH=bench/profile_layerwise.py OUT=$W/profile bash bench/gpu_prefix_ttft.sh --lengths 16000 --concurrency 1"
    unset RESERVE
    CUDA_VISIBLE_DEVICES=0 OUT=$W/decode timeout "$(left 5)" bash bench/gpu_prefix_ttft.sh --modes full,ucm --decode-only \
      --decode-reps 5 --lengths 4000 --deadline-s "$(left 20)" > "$W/decode.log" 2>&1; grep "decode:" "$W/decode.log"
    python3 bench/prefix_ttft.py --mode table --out "$W/grid" --from "$W/grid_native,$W/decode" 2>&1 | tail -3
    ;;
  tp2c4)
    # TP = 2 at 16k c = 4 with every lookup logged; then the trace replay, two modes a GPU
    setup || exit 1
    tp2_c4
    LANES=${LANES:-0,1} run_jobs "OUT=$W/a $R --modes full,ucm_lru $D" "OUT=$W/b $R --modes native,ucm_best $D"
    python3 bench/trace_replay.py --mode table --out "$W/a" --from "$W/b" 2>&1 | tail -3
    ;;
  tp2prof)
    # TP = 2 16k c = 4 again (after a fix), then the 16k profile on a store that has churned (c = 4 first)
    setup || exit 1
    tp2_c4
    CUDA_VISIBLE_DEVICES=0 BENCH=bench/profile_layerwise.py OUT=$W/profile timeout "$(left 5)" \
      bash bench/gpu_prefix_ttft.sh --lengths 16000 --concurrency 4,1 > "$W/profile.log" 2>&1
    grep -E '"(L|c|copier_paths|ttft_s|hit100|hit80)"|direct|single plane|whole-row' "$W/profile.log" | head -40
    ;;
  check)
    source bench/ucm_site.sh || exit 1
    # at least 90 s: at STEP_S=200 the 150 s reserve left pytest ~20 s and cut it after 207 of 364 tests (2026-11-29)
    t=$(left 150); [ "$t" -lt 90 ] && t=90
    timeout "$t" python3 -m pytest -q -p no:cacheprovider tests/tiers 2>&1 | tail -5
    [ "${PIPESTATUS[0]}" = 124 ] && echo "tests/tiers: CUT by the ${t} s timeout (no result)"
    # the bandwidth with the defaults (deferred, batched), dumps on the caller's thread, and no stages (2026-11-28,
    # bdd705b: deferred 0.55-0.63 of plain against 0.81-0.87, lost to event polling fixed in b7caf54; loads
    # 0.72-0.85 with a gap at each stage boundary): one profiled dump and load each
    # (WHOLE_LOAD_PLANES_PER_EVENT=4: a whole load's completions per four planes, as up to 190a086, against
    # the default of one per stage)
    # the disk's own rate (the disk tier's hits read ~0.8 GB/s there, slower than recomputing): 1 GiB written
    # and read back with direct I/O, no page cache
    dd if=/dev/zero of=/tmp/ucm_dd bs=16M count=64 oflag=direct 2>&1 | tail -1 | sed 's/^/disk write: /'
    dd if=/tmp/ucm_dd of=/dev/null bs=16M iflag=direct 2>&1 | tail -1 | sed 's/^/disk read: /'; rm -f /tmp/ucm_dd
    # CHECK_VARIANTS: the runs, each a comma-separated list of UCM_ switches (e.g. "DEFER_DUMPS=0,SMALL_CALL_BYTES=1099511627776");
    # BW_ARGS: more dram_bandwidth.py options (e.g. --profile-stack: Python calls in the traces)
    # a variant named again (alternated A B A B) gets its run number: bw_<variant>_run<n>.json, not overwritten
    n=0
    for v in ${CHECK_VARIANTS:-DEFER_DUMPS=1 DEFER_DUMPS=0 STAGE_HEAD_MIB=512 STAGE_HEAD_MIB=100000 WHOLE_LOAD_PLANES_PER_EVENT=4}; do
      n=$((n + 1)); tag=$v; [ -e "$W/bw_$v.json" ] && tag="${v}_run$n"
      env $(echo "$v" | tr ',' ' ' | sed 's/\([^ ]*\)/UCM_\1/g') timeout "$(left 30)" python3 bench/dram_bandwidth.py --blocks 1024 --piece-kib 32 --fragmented \
        --out "$W/bw_$tag.json" --profile "$W/prof_$tag" ${BW_ARGS:-} 2>&1 | grep -E "plain|^vllm" | sed "s/^/$tag: /"
    done
    ;;
  lategrid)
    setup || exit 1
    OUT=$W/grid bash bench/gpu_prefix_ttft.sh --modes full,ucm --lengths 8000,4000,16000 --reps 3 --decode-reps 6 \
      --decode-tokens 1024 --deadline-s "$(left 30)" 2>&1 | tail -40
    ;;
  overflow)
    setup || exit 1
    OUT=$W/grid bash bench/gpu_prefix_ttft.sh --modes ucm --lengths 16000,4000 --concurrency 2,4 --reps 3 \
      --decode-batch 0 --ucm-step-load-blocks 1000 --deadline-s "$(left 200)" 2>&1 | tail -20
    BENCH=bench/profile_layerwise.py OUT=$W/profile timeout "$(left 5)" bash bench/gpu_prefix_ttft.sh \
      --lengths 8000,16000 --concurrency 4,2 --reps 3 > "$W/profile.log" 2>&1
    grep -E '"copier\.|"ttft"|full_connector_on' "$W/profile.log" | head -30
    ;;
  native)
    setup || exit 1
    # NATIVE_MODES: native_best alone halves the call (native's default is the weaker column)
    OUT=$W/grid bash bench/gpu_prefix_ttft.sh --modes "${NATIVE_MODES:-native_best,native}" --lengths 8000,4000,16000 --reps 3 --reps-at 4000:5 \
      --decode-batch 0 --deadline-s "$(left 30)" 2>&1 | tail -20
    ;;
  v1full|v1ucm|v2full|v2ucm)  # HBM hits or ucm on one model runner (one mode a call): V1 is native_best's, V2
    # vLLM 0.26's default. First, for ucm, gpu_check: hits and identical greedy tokens with vLLM's defaults; on V1
    # also injected load failures with async scheduling off (V1 with it on crashes, #34484; V2 keeps a failed
    # layer-wise load's blocks as computed either way, #49250: 2026-11-28, 26bb11d)
    setup || exit 1
    runner=${step:1:1} mode=${step#v?}
    [ "$runner" = 1 ] && export VLLM_USE_V2_MODEL_RUNNER=0
    # gpu_check takes ~110 s: it runs only if the grid keeps >= 180 s after it (2026-11-29: at STEP_S=230 it left
    # the grid 53 s, one cell); SKIP_CHECK=1 skips it
    if [ "$mode" = ucm ] && [ -z "${SKIP_CHECK:-}" ] && [ "$(left 30)" -lt 330 ]; then
      echo "gpu_check skipped: $(left 30) s left for check and grid (STEP_S >= 430 runs both)"
    elif [ "$mode" = ucm ] && [ -z "${SKIP_CHECK:-}" ]; then
      timeout 150 python3 -m tests.vllm.gpu_check --skip-failure --out "$W/check_v$runner" \
        --model-dir "/tmp/ucm-tiny-bf16-v$runner" > "$W/check_v${runner}_hits.log" 2>&1
      [ "$runner" = 1 ] && UCM_GPU_ASYNC_SCHEDULING=0 timeout 150 python3 -m tests.vllm.gpu_check \
        --out "$W/check_v1" --model-dir /tmp/ucm-tiny-bf16-v1 > "$W/check_v1_failure.log" 2>&1
      grep -H -E '"ok"|Error' "$W"/check_v"$runner"_*.log | head -6
    fi
    # the grid's warm-up alone takes ~60 s: after a first setup (unpacking, the model: ~80 s) STEP_S=200 left it
    # 47 s and no cell (2026-11-29, nineteenth session)
    [ "$(left 30)" -lt 120 ] && echo "WARNING: the grid gets $(left 30) s, less than its warm-up and a cell: raise STEP_S"
    # GRID_ARGS: more prefix_ttft.py flags, e.g. "--ucm-step-tokens 1024"
    # --reps-at 4000:5: the 4k cells were bimodal with the host's speed (fourteenth session, every mode)
    OUT=$W/grid bash bench/gpu_prefix_ttft.sh --modes "$mode" --model-runner "v$runner" --lengths 8000,4000,16000 \
      --reps 3 --reps-at 4000:5 --decode-batch 0 ${GRID_ARGS:-} --deadline-s "$(left 30)" 2>&1 | tail -20
    ;;
  prof4k)  # where ucm's extra ~10 ms at 4k c = 1 goes on the V1 runner (2026-11-28): the same profile on V2, then V1;
    # PROF_ARGS: other cells (e.g. "--lengths 16000 --concurrency 2": V2's 100 % hit there took 76 ms, V1's 57)
    setup || exit 1
    # PROF_RUNNERS: "1 0" (V2, then V1), or one of them (an engine start and warm-up take ~100 s: two runners
    # in 230 s left nothing, twelfth session)
    set -- ${PROF_RUNNERS:-1 0}
    for r in "$@"; do  # the first of two runners gets half of what is left, the second the rest
      t=$(left 10); [ $# -gt 1 ] && [ "$r" = "$1" ] && t=$(( t / 2 ))
      VLLM_USE_V2_MODEL_RUNNER=$r BENCH=bench/profile_layerwise.py OUT=$W/profile_v2runner$r timeout "$t" \
        bash bench/gpu_prefix_ttft.sh ${PROF_ARGS:---lengths 4000,16000 --concurrency 1} 2>&1 | grep -E "ms|wall" | tail -12
    done
    ;;
  stagger)  # native best beats ucm at c = 2 (and 4k c = 4) by computing the c requests in turn (its per-request
    # TTFTs at 8k c = 2, 80 %: 57 / 103 ms against ucm's 97 / 97, 2026-11-28): budgets that give each hit a step of
    # its own. tokens:N = ucm_layerwise_step_tokens N on 4k / 8k (80 % cells), without the in-turn wait; turn:N = the
    # same with ucm_layerwise_in_turn_tokens IN_TURN_TOKENS (default 2048; since the thirteenth session the
    # connector's defaults are step tokens 512 with the wait 2048); blocks:N = ucm_layerwise_step_load_blocks
    # N on 16k / 8k (100 % cells: 1,000 blocks a 16k request, 500 an 8k one). Twelfth session: tokens 1024
    # split 8k x 2 but its first token came at 87 ms (the second request's launch went first): turn:N
    # measures the wait for it. STAGGER_ARGS: more flags for every run (e.g. --ucm-prefetch)
    set -- ${STAGGER_RUNS:-turn:1024 turn:512}
    while [ $# -gt 0 ]; do  # each run gets an equal share of the time left
      kind=${1%%:*} n=${1#*:}
      case $kind in
      tokens) args="--lengths 8000,4000 --ucm-step-tokens $n --ucm-in-turn-tokens 0" ;;
      turn) args="--lengths 8000,4000 --ucm-step-tokens $n --ucm-in-turn-tokens ${IN_TURN_TOKENS:-2048}" ;;
      *) args="--lengths 16000,8000 --ucm-step-load-blocks $n" ;;
      esac
      OUT=$W/${kind}_$n bash bench/gpu_prefix_ttft.sh --modes ucm $args --concurrency 2,4 --reps 3 --decode-batch 0 \
        ${STAGGER_ARGS:-} --deadline-s "$(( $(left 30) / $# ))" 2>&1 | grep -E "^\| [0-9]+ \| [24] \|" | head -4 | sed "s/^/$1: /"
      shift
    done
    ;;
  replay1)  # the trace replay on one GPU, REPLAY_MODES (default full,ucm_lru) in one job; REPLAY_ARGS adds
    # flags (e.g. "--ucm-admission reuse": store a block on its second sighting, fewer dumps)
    setup || exit 1
    eval "OUT=$W/replay $R --modes ${REPLAY_MODES:-full,ucm_lru} ${REPLAY_ARGS:-} $D" 2>&1 | tail -30
    ;;
  replayspy)  # the replay under py-spy (its wheel in .whl/, bench/README.md): with --gil a sample is a thread
    # holding the GIL, so the threads' shares say who kept vLLM's engine thread waiting; bench/spy_summary.py
    setup || exit 1
    spy=$(ls /tmp/ucm_site/py_spy-*.data/scripts/py-spy 2>/dev/null | head -1)
    [ -n "$spy" ] || { echo "no py-spy wheel in .whl/ (bench/README.md: pip download py-spy)"; exit 1; }
    chmod +x "$spy"
    # a machine that forbids ptrace still runs the replay (its per-step record and phases), without the profile
    if ! timeout 30 "$spy" record -r 50 -f raw -o "$W/spy_probe.txt" -- python3 -c "import time; time.sleep(1)" \
        > "$W/spy_probe.log" 2>&1; then
      echo "py-spy cannot sample here ($(tail -1 "$W/spy_probe.log")): the replay without it"; spy=""
    fi
    # the replay attaches py-spy to its own process around the replay loop (trace_replay.SpyOnSelf: wrapped
    # around the command with --subprocesses, py-spy sampled only the first Python child, 2026-11-29)
    export UCM_SPY=$spy UCM_SPY_ARGS="${SPY_ARGS:--r 100}"
    eval "OUT=$W/replay $R --modes ${REPLAY_MODES:-full,ucm_lru} ${REPLAY_ARGS:-} $D" 2>&1 | tail -30
    for f in "$W"/replay/spy_*.txt; do
      [ -s "$f" ] && python3 bench/spy_summary.py "$f" --json "${f%.txt}.json" --top 15 > "${f%.txt}.md" \
        && echo "== $f" && head -40 "${f%.txt}.md"
    done
    ;;
  decode)  # decode storing vs not storing, A B B A pairs in one engine (the cell runs after a 4k c = 1 cell)
    setup || exit 1
    # H200, eager, batch 8: ~300 tok/s, CPU-bound steps whose median moved 20-42 ms from one ~7 s repetition to
    # the next (2026-11-28: the host's CPU speed drifts), so 8 pairs of 256 tokens spread 0.85-1.59. Shorter
    # repetitions, more pairs: 24 pairs of 64 tokens (~2.5 s a repetition), ~170 s; the report also pairs the
    # repetitions' median step times. 24 pairs were inconclusive (2026-11-29: 0.985, interval 0.867-0.998, the first
    # 18 pairs swinging 259-540 tok/s in both modes), and so were 32 (DECODE_PAIRS, ~7 s a pair with the A B B A
    # order; nineteenth session: 1.017, interval 0.969-1.064; pairs 0.51-1.65). So by default
    # storing is switched off and on every DECODE_SWITCH steps inside each repetition and neighbouring blocks of
    # steps are compared (--decode-switch-steps): DECODE_REPS repetitions of 512 tokens, ~10 s each on the H200.
    # DECODE_SWITCH=0: the A B B A repetitions as before
    if [ "${DECODE_SWITCH:-8}" != 0 ]; then
      decode_args="--decode-switch-steps ${DECODE_SWITCH:-8} --decode-reps ${DECODE_REPS:-8} --decode-tokens 512"
    else
      decode_args="--decode-reps ${DECODE_PAIRS:-32} --decode-tokens 64"
    fi
    OUT=$W/grid bash bench/gpu_prefix_ttft.sh --modes ucm --lengths 4000 --concurrency 1 --reps 1 $decode_args \
      --deadline-s "$(left 30)" 2>&1 | grep -A16 "Decode speed"
    ;;
  disk)  # the disk tier after its bounded write backlog and the disk-hit gate (2026-11-29, CPU-tested only): ucm_disk
    # with disk hits forced (--disk-hits always: the issue's ucm_disk80 column), then with ucm's default (auto:
    # recompute while the disk reads slower than the model computes); full_connector_on shows what misses pay
    setup || exit 1
    python3 -m pytest -q -p no:cacheprovider tests/vllm/test_forward_timer.py 2>&1 | tail -2  # incl. its CUDA case
    half=$(( $(left 20) / 2 ))
    for hits in ${DISK_HITS:-always auto}; do  # DISK_ARGS: more prefix_ttft.py flags (e.g. --no-disk-push-lift)
      budget=$([ "$hits" = always ] && [ "${DISK_HITS:-always auto}" != always ] && echo "$half" || left 20)
      OUT=$W/$hits bash bench/gpu_prefix_ttft.sh --modes ucm_disk --model-runner v2 --lengths "${DISK_LENGTHS:-8000,16000}" \
        --concurrency "${DISK_CONC:-1}" --reps 3 --decode-batch 0 --disk-hits "$hits" --deadline-s "$budget" $DISK_ARGS 2>&1 | grep -E "ucm_disk L="
    done
    ;;
  *) echo "unknown step $step"; exit 2 ;;
  esac
  echo "== $step done after $SECONDS s"
} 2>&1 | tee "$OUT/$step.log"
tar czf "$OUT/$step.tgz" -C /tmp/session "$step" && ls -l "$OUT"
