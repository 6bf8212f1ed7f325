#!/usr/bin/env bash
# Usage (on the GPU machine, from the repo root, after the two `stash` calls of bench/README.md):
#   bash bench/gpu_prefix_ttft.sh [prefix_ttft.py options, e.g. --modes full,ucm --deadline-s 480]
# Sets up what the GPU image lacks, then runs bench/prefix_ttft.py on a random-weight Qwen2.5-7B:
#   vLLM 0.26.0 from the stashed bundle (.gpu/device_setup.sh, unpacked once per machine),
#   the pure-Python wheels of .whl/ and this checkout on PYTHONPATH (bench/ucm_site.sh),
#   the model made once in /tmp/models/<preset>.
# Writes into $OUT (default /tmp/prefix_ttft): the per-mode parts, the merged result, and log.txt.
# BENCH=bench/trace_replay.py or BENCH=bench/profile_layerwise.py runs that script instead, with the
# same set-up and the same --model/--out. PRESET=qwen2.5-32b NO_WEIGHTS=1 makes a config-only 32B-shaped
# model instead (with --load-format dummy --tp 2 on a 2-GPU machine).
set -o pipefail
OUT=${OUT:-/tmp/prefix_ttft}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
{
  date -u
  nvidia-smi --query-gpu=name,memory.total,driver_version,pcie.link.gen.max,pcie.link.width.max --format=csv,noheader
  echo "cpus $(nproc); $(free -g | awk '/Mem:/{print "RAM " $2 " GiB"}'); /tmp on $(df -T /tmp | awk 'NR==2{print $2}')"
  source .gpu/device_setup.sh || exit 1
  source bench/ucm_site.sh || exit 1
  python3 -c 'import omegaconf, hydra, cachetools, ucm.integration.vllm.uc_connector as c; print("ucm connector importable:", c.__file__)' || exit 1
  MODEL=/tmp/models/${PRESET:-qwen2.5-7b}
  [ -f $MODEL/config.json ] || python3 .gpu/make_model.py --preset ${PRESET:-qwen2.5-7b} --out $MODEL ${NO_WEIGHTS:+--no-weights} || exit 1
  echo "== setup done after $SECONDS s"
  python3 "${BENCH:-bench/prefix_ttft.py}" --model $MODEL --out "$OUT" "$@"
  echo "== exit $? after $SECONDS s"
} 2>&1 | tee -a "$OUT/log.txt"
