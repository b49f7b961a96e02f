#!/bin/bash
# Reproduces docs/results at the CPU budget (issue 7): trains every MNIST row and seed with the
# flags/mnist_*_cpu.cfg flagfiles, runs the robustness suite on each, then rebuilds the tables.
# The CIFAR-10 study (flags/cifar10_*_cpu.cfg) has its own script: docs/results/cifar10_study.sh.
#
#   docs/results/reproduce_cpu.sh                 # every run in order, then the tables
#   docs/results/reproduce_cpu.sh mnist_alp_cpu_s0 mnist_madry_cpu_s1   # only these runs
#   docs/results/reproduce_cpu.sh tables          # only rebuild the tables from finished runs
#
# Resumable: re-run after an interruption (finished steps are skipped, training resumes from the
# last checkpoint). Run from the repository root; DATA defaults to ../shared/data, RUNS to
# $AAD_TF_RUNS (default ~/aad-tf-runs, outside the checkout, so a new session resumes the runs).
# Two invocations with disjoint runs can share a machine (each with TF_NUM_INTRAOP_THREADS=1 on
# 2 cores, as docs/results did). Cost on a 2-core CPU: about 2.5 h (7 models + 7 suites).
set -euo pipefail
DATA=${DATA:-../shared/data}
RUNS=${RUNS:-${AAD_TF_RUNS:-$HOME/aad-tf-runs}}
export TF_CPP_MIN_LOG_LEVEL=2
GRID=clean,fgsm,pgd10,pgd20,pgd40,pgd100,cw10,cw20,cw40,cw100
MNIST_RUNS="mnist_raw_cpu_s0 mnist_madry_cpu_s0 mnist_madry_aad_cpu_s0 mnist_alp_cpu_s0
            mnist_alp_aad_cpu_s0 mnist_madry_cpu_s1 mnist_madry_aad_cpu_s1"

mnist_run() {  # train, closing eval on 2000, full suite on 0-999, paper grid on 1000-1999
  local run=$1 dir=$RUNS/$1 row seed
  row=${run#mnist_}; row=${row%_cpu_s*}; seed=${run##*_s}
  [ -f $dir/eval.json ] || python -m trainers.main --flagfile=flags/mnist_${row}_cpu.cfg \
    --data_dir="$DATA" --model_dir=$dir --seed=$seed --eval_examples=2000 --checkpoint_every=100
  [ -f $dir/robustness.json ] || python -m trainers.evaluate \
    --model_dir=$dir --data_dir="$DATA" --eval_examples=1000
  [ -f $dir/grid_1000_2000/robustness.json ] || python -m trainers.evaluate \
    --model_dir=$dir --data_dir="$DATA" --eval_offset=1000 --eval_examples=1000 \
    --attacks=$GRID --nodiagnostics --output_dir=$dir/grid_1000_2000
}

tables() {
  python -m trainers.collect_results --dataset=mnist --output_dir=docs/results/mnist_cpu \
    --grid_subdirs=grid_1000_2000 \
    --row=raw=$RUNS/mnist_raw_cpu_s0 \
    --row=madry=$RUNS/mnist_madry_cpu_s0,$RUNS/mnist_madry_cpu_s1 \
    --row=madry_aad=$RUNS/mnist_madry_aad_cpu_s0,$RUNS/mnist_madry_aad_cpu_s1 \
    --row=alp=$RUNS/mnist_alp_cpu_s0 --row=alp_aad=$RUNS/mnist_alp_aad_cpu_s0
}

if [ $# -eq 0 ]; then set -- $MNIST_RUNS tables; fi
for run in "$@"; do
  case $run in
    mnist_*) mnist_run $run ;;
    tables) tables ;;
    *) echo "unknown run '$run' (mnist_<row>_cpu_s<seed> or tables; CIFAR-10: docs/results/cifar10_study.sh)" >&2; exit 2 ;;
  esac
done
