#!/bin/bash
# Reproduces docs/results at the CPU budget (issue 7): trains every MNIST row and seed with the
# flags/mnist_*_cpu.cfg flagfiles and the CIFAR-10 Madry / Madry+AAD pair with
# flags/cifar10_*_cpu.cfg, runs the robustness suite on each, then rebuilds the tables.
# Resumable: re-run after an interruption (finished steps are skipped, training resumes from the
# last checkpoint). Run from the repository root; DATA defaults to ../shared/data, RUNS to runs.
# Cost on a 2-core CPU: about 2.5 h for MNIST (7 models + 7 suites), 1 h for CIFAR-10.
set -euo pipefail
DATA=${DATA:-../shared/data}
RUNS=${RUNS:-runs}
export TF_CPP_MIN_LOG_LEVEL=2
GRID=clean,fgsm,pgd10,pgd20,pgd40,pgd100,cw10,cw20,cw40,cw100
MNIST_RUNS="raw_cpu_s0 madry_cpu_s0 madry_aad_cpu_s0 alp_cpu_s0 alp_aad_cpu_s0 madry_cpu_s1 madry_aad_cpu_s1"

for run in $MNIST_RUNS; do
  row=${run%_cpu_s*}; seed=${run##*_s}
  [ -f $RUNS/mnist_$run/eval.json ] || python -m trainers.main --flagfile=flags/mnist_${row}_cpu.cfg \
    --data_dir="$DATA" --model_dir=$RUNS/mnist_$run --seed=$seed --eval_examples=2000 \
    --checkpoint_every=100
  [ -f $RUNS/mnist_$run/robustness.json ] || python -m trainers.evaluate \
    --model_dir=$RUNS/mnist_$run --data_dir="$DATA" --eval_examples=1000
  # The paper grid on test images 1000-1999 too (merged by collect_results: grid on 2000).
  [ -f $RUNS/mnist_$run/grid_1000_2000/robustness.json ] || python -m trainers.evaluate \
    --model_dir=$RUNS/mnist_$run --data_dir="$DATA" --eval_offset=1000 --eval_examples=1000 \
    --attacks=$GRID --nodiagnostics --output_dir=$RUNS/mnist_$run/grid_1000_2000
done

for row in madry madry_aad; do
  run=$RUNS/cifar10_${row}_cpu_s0
  [ -f $run/eval.json ] || python -m trainers.main --flagfile=flags/cifar10_${row}_cpu.cfg \
    --data_dir="$DATA" --model_dir=$run --seed=0 --eval_examples=200
  [ -f $run/robustness.json ] || python -m trainers.evaluate --model_dir=$run --data_dir="$DATA" \
    --eval_examples=1000 --attacks=clean,fgsm,pgd10,pgd20,cw20 --nodiagnostics
done

python -m trainers.collect_results --dataset=mnist --output_dir=docs/results/mnist_cpu \
  --grid_subdirs=grid_1000_2000 \
  --row=raw=$RUNS/mnist_raw_cpu_s0 \
  --row=madry=$RUNS/mnist_madry_cpu_s0,$RUNS/mnist_madry_cpu_s1 \
  --row=madry_aad=$RUNS/mnist_madry_aad_cpu_s0,$RUNS/mnist_madry_aad_cpu_s1 \
  --row=alp=$RUNS/mnist_alp_cpu_s0 --row=alp_aad=$RUNS/mnist_alp_aad_cpu_s0
python -m trainers.collect_results --dataset=cifar10 --output_dir=docs/results/cifar10_cpu \
  --row=madry=$RUNS/cifar10_madry_cpu_s0 --row=madry_aad=$RUNS/cifar10_madry_aad_cpu_s0
