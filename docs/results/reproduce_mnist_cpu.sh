#!/bin/bash
# Reproduces docs/results at the MNIST CPU budget (issue 7): trains every row and seed with the
# *_cpu.cfg flagfiles, then runs the full robustness suite. Resumable: re-run after an interruption.
# Run from the repository root; DATA defaults to ../shared/data.
set -euo pipefail
DATA=${DATA:-../shared/data}
export TF_CPP_MIN_LOG_LEVEL=2
for run in madry_cpu_s0 madry_aad_cpu_s0 raw_cpu_s0 alp_cpu_s0 alp_aad_cpu_s0 madry_cpu_s1 madry_aad_cpu_s1; do
  row=${run%_cpu_s*}; seed=${run##*_s}
  python -m trainers.main --flagfile=flags/mnist_${row}_cpu.cfg --data_dir="$DATA" \
    --model_dir=runs/mnist_${run} --seed=$seed --eval_examples=2000 --checkpoint_every=100
done
for run in madry_cpu_s0 madry_aad_cpu_s0 raw_cpu_s0 alp_cpu_s0 alp_aad_cpu_s0 madry_cpu_s1 madry_aad_cpu_s1; do
  [ -f runs/mnist_${run}/robustness.json ] || python -m trainers.evaluate \
    --model_dir=runs/mnist_${run} --data_dir="$DATA" --eval_examples=1000
done
