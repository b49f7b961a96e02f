#!/bin/bash
# The CIFAR-10 AAD study (issue 24, docs/results/cifar10_study.md): does AAD help Madry on natural
# images? ResNet9 width 16, FGSM-RS training, 5 epochs (flags/cifar10_madry{,_aad}_cpu.cfg).
#
#   docs/results/cifar10_study.sh madry_s0 aad_none_a0.01_b0.01_s0 ...   # these runs
#   docs/results/cifar10_study.sh resume        # every run found under $RUNS, resumed
#   docs/results/cifar10_study.sh tables        # rebuild docs/results/cifar10_study/ from runs
#   docs/results/cifar10_study.sh --dry_run RUN...   # print the commands, run nothing
#
# Runs: madry_s<k> (flags/cifar10_madry_cpu.cfg --seed=k) and aad_<scaling>_a<alpha>_b<beta>_s<k>
# (flags/cifar10_madry_aad_cpu.cfg --gradcam_normalize=<scaling> --alpha --beta --seed=k);
# aadbatch_<...> and aadtrain_<...> are the same with --attention_mode=batch (AAD's attention
# passes on batch statistics, the network the classification loss trains) and
# --attention_mode=training (the same, but the passes also update the moving statistics). The
# same seed gives the same weights at step 0, data order and training-attack noise, so runs pair
# by seed. Screen: seed 0, evaluated with clean, PGD-100 and APGD-CE on test images 0-499
# (<run>/screen/robustness.json). Confirm (any setting with a seed-1 run): seeds 0-2 of Madry and of the best AAD setting, the
# whole study suite on the same 500 images (<run>/robustness.json): PGD-100, CW-100, APGD-CE,
# APGD-T (9 targets), Square (1000 queries), PGD-A^3 (each run's Grad-CAM scaling), their worst
# case, and the gradient-masking diagnostics.
#
# Runs live under $RUNS, by default $AAD_TF_RUNS/cifar10_study with AAD_TF_RUNS=~/aad-tf-runs:
# outside the checkout, so that a new session resumes them (training from its last checkpoint;
# finished training and evaluations are skipped). Two invocations with disjoint runs share a
# 2-core machine (TF_NUM_INTRAOP_THREADS=1 each).
set -euo pipefail
DATA=${DATA:-../shared/data}
RUNS=${RUNS:-${AAD_TF_RUNS:-$HOME/aad-tf-runs}/cifar10_study}
export TF_CPP_MIN_LOG_LEVEL=2
EVAL_EXAMPLES=${EVAL_EXAMPLES:-500}
SCREEN_ATTACKS=clean,pgd100,apgd_ce
STUDY_ATTACKS=clean,pgd100,cw100,apgd_ce,apgd_t,square,pgd_a3

train() {  # dir, flags...
  local dir=$1; shift
  [ -f $dir/eval.json ] || $DRY python -m trainers.main "$@" --data_dir="$DATA" --model_dir=$dir \
    --eval_attacks=clean,fgsm,pgd20 --eval_examples=1000 ${EXTRA:-}
}

evaluate() {  # dir, output dir, attacks, extra flags...
  local dir=$1 out=$2 attacks=$3; shift 3
  [ -f $out/robustness.json ] || $DRY python -m trainers.evaluate --model_dir=$dir --data_dir="$DATA" \
    --eval_examples=$EVAL_EXAMPLES --attacks=$attacks --output_dir=$out "$@"
}

DRY=
if [ "${1:-}" = --dry_run ]; then DRY=echo; shift; fi
if [ "${1:-}" = resume ]; then  # every run directory under $RUNS, by name
  set -- $(cd "$RUNS" 2>/dev/null && ls -d madry_s* aad_* aadbatch_* aadtrain_* 2>/dev/null || true)
  echo "resuming under $RUNS: ${*:-nothing}" >&2
fi
for run in "$@"; do
  dir=$RUNS/$run seed=${run##*_s}
  case $run in
    madry_s*)
      train $dir --flagfile=flags/cifar10_madry_cpu.cfg --seed=$seed ;;
    aad_*|aadbatch_*|aadtrain_*)
      spec=${run#*_}; spec=${spec%_s*}
      scaling=${spec%%_a*}; alpha=${spec#*_a}; alpha=${alpha%%_b*}; beta=${spec##*_b}
      mode=()
      case ${run%%_*} in
        aadbatch) mode=(--attention_mode=batch) ;;
        aadtrain) mode=(--attention_mode=training) ;;
      esac
      train $dir --flagfile=flags/cifar10_madry_aad_cpu.cfg --gradcam_normalize=$scaling \
        --alpha=$alpha --beta=$beta --seed=$seed "${mode[@]}" ;;
    tables)
      $DRY python -m trainers.aad_study --study=cifar10 --runs=$RUNS --output_dir=docs/results/cifar10_study \
        --fixed_alpha=0 --fixed_beta=0.1
      # Every run's results beside the tables: <run>_eval.json, <run>_robustness.json (study
      # suite), <run>_screen_robustness.json, <run>_screen_step500_robustness.json, ...
      for d in "$RUNS"/*/; do
        name=$(basename "$d")
        for path in "$d"eval.json "$d"robustness.json "$d"screen*/robustness.json; do
          f=${path#"$d"}
          [ -f "$path" ] && $DRY cp "$path" "docs/results/cifar10_study/${name}_${f//\//_}"
        done
      done
      continue ;;
    *) echo "unknown run '$run' (madry_s<k>, aad[batch|train]_<scaling>_a<alpha>_b<beta>_s<k>, resume or" \
            "tables)" >&2; exit 2 ;;
  esac
  evaluate $dir $dir/screen $SCREEN_ATTACKS --nodiagnostics
  # The study suite for confirm runs: seeds >= 1, and seed 0 of a setting that has a seed-1 run.
  if [ "$seed" != 0 ] || [ -d "${dir%_s0}_s1" ]; then evaluate $dir $dir $STUDY_ATTACKS; fi
done
