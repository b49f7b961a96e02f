#!/bin/bash
# The AAD study of issue 12 (docs/results/aad_study.md): does AAD help once its terms reach the
# weights? MNIST LeNet, PGD-10 x 0.075 training at eps 0.3 (flags/mnist_*_cpu.cfg), noise-free
# attention passes (--attention_mode=inference, the default).
#
#   docs/results/aad_study.sh screen_max_a1_b1 ...   # these runs (names below)
#   docs/results/aad_study.sh tables                 # rebuild docs/results/aad_study/ from runs
#   docs/results/aad_study.sh resume                 # every run found under $RUNS, resumed
#
# Runs live under $RUNS, by default $AAD_TF_RUNS/aad_study with AAD_TF_RUNS=~/aad-tf-runs: outside
# the checkout, so that a new session's checkout finds and resumes them (a killed run resumes from
# its last checkpoint; finished training and evaluations are skipped).
#
# Screen runs: 1 epoch (600 steps), seed 0, one per (scaling, alpha, beta); name
# screen_<scaling>_a<alpha>_b<beta>, e.g. screen_max_a0.1_b0.1. The Madry baseline of the screen is
# step 600 of confirm_madry_s0 (2 epochs, same data order, constant lr: its first 600 steps are
# a 1-epoch run). Confirm runs: 2 epochs, seeds 0-2: confirm_madry_s<k> and
# confirm_aad_<scaling>_a<alpha>_b<beta>_s<k>. bfloat16 parity (issue 25): confirm_madry_bf16_s<k>,
# Madry trained under --mixed_precision=bfloat16 (evaluated in float32, as every evaluation is),
# paired by seed with confirm_madry_s<k>; worth running only on a CPU with AMX / AVX512_BF16
# (elsewhere bfloat16 is emulated, about 5x slower: docs/results/mixed_precision_throughput.md).
# Evaluation: clean, PGD-100, APGD-CE, Square (1000 queries) and their worst case on test images
# 0-999 (screen); the whole suite (confirm). Resumable: re-run after an interruption.
# Two invocations with disjoint runs share a 2-core machine (TF_NUM_INTRAOP_THREADS=1 each).
set -euo pipefail
DATA=${DATA:-../shared/data}
RUNS=${RUNS:-${AAD_TF_RUNS:-$HOME/aad-tf-runs}/aad_study}
export TF_CPP_MIN_LOG_LEVEL=2
SCREEN_ATTACKS=clean,pgd100,apgd_ce,square

aad_flags() {  # <scaling>_a<alpha>_b<beta> -> flags
  local spec=$1 scaling alpha beta
  scaling=${spec%%_a*}; alpha=${spec#*_a}; alpha=${alpha%%_b*}; beta=${spec##*_b}
  echo "--flagfile=flags/mnist_madry_aad_cpu.cfg --gradcam_normalize=$scaling --alpha=$alpha --beta=$beta"
}

train() {  # dir, flags...
  local dir=$1; shift
  [ -f $dir/eval.json ] || python -m trainers.main "$@" --data_dir="$DATA" --model_dir=$dir \
    --checkpoint_every=100 --keep_checkpoints=20 --eval_attacks=clean --eval_examples=200
}

screen_eval() {  # dir, [checkpoint], output dir
  local dir=$1 ckpt=$2 out=$3
  [ -f $out/robustness.json ] || python -m trainers.evaluate --model_dir=$dir --data_dir="$DATA" \
    --eval_examples=1000 --attacks=$SCREEN_ATTACKS --nodiagnostics --output_dir=$out \
    ${ckpt:+--checkpoint=$ckpt}
}

if [ "${1:-}" = resume ]; then  # every run directory under $RUNS, by name
  set -- $(cd "$RUNS" 2>/dev/null && ls -d screen_* confirm_* 2>/dev/null || true)
  echo "resuming under $RUNS: ${*:-nothing}" >&2
fi
for run in "$@"; do
  dir=$RUNS/$run
  case $run in
    screen_*)
      train $dir $(aad_flags ${run#screen_}) --epochs=1
      screen_eval $dir "" $dir/screen ;;
    confirm_madry_s*)
      train $dir --flagfile=flags/mnist_madry_cpu.cfg --seed=${run##*_s}
      [ "${run##*_s}" != 0 ] || screen_eval $dir $dir/checkpoints/ckpt-600 $dir/screen_step600
      [ -f $dir/robustness.json ] || python -m trainers.evaluate --model_dir=$dir \
        --data_dir="$DATA" --eval_examples=1000 ;;
    confirm_madry_bf16_s*)  # issue 25's parity runs: Madry trained in bfloat16, evaluated in float32
      train $dir --flagfile=flags/mnist_madry_cpu.cfg --mixed_precision=bfloat16 --seed=${run##*_s}
      [ -f $dir/robustness.json ] || python -m trainers.evaluate --model_dir=$dir \
        --data_dir="$DATA" --eval_examples=1000 ;;
    confirm_aad_*)
      spec=${run#confirm_aad_}; spec=${spec%_s*}
      train $dir $(aad_flags $spec) --seed=${run##*_s}
      [ -f $dir/robustness.json ] || python -m trainers.evaluate --model_dir=$dir \
        --data_dir="$DATA" --eval_examples=1000 ;;
    tables) python -m trainers.aad_study --runs=$RUNS --output_dir=docs/results/aad_study \
      --published=docs/results/aad_study/screen.json --fixed_alpha=0 --fixed_beta=1 ;;
    *) echo "unknown run $run" >&2; exit 2 ;;
  esac
done
