#!/bin/bash
# Issues 7 and 15: the paper-budget MNIST Madry, Madry+AAD (paper values) and Madry+AAD as the AAD
# study's best normalised variant (flags/mnist_madry{,_aad,_aad_screen_best}.cfg:
# PGD-40 x 0.01 training, 5 epochs of batch 100, seed 0) and the whole robustness suite on the full
# 10,000 test images. Meant for a machine with a GPU (minutes per model on an H100/H200); on the
# 2-core CPU of docs/results each model would take about 3 hours to train.
#
#   docs/results/reproduce_gpu.sh                     # both rows, then docs/results/mnist_paper_budget
#   EXTRA="--train_steps=2" EVAL_EXAMPLES=20 docs/results/reproduce_gpu.sh   # smoke test anywhere
#
# Resumable like reproduce_cpu.sh. RUNS defaults to $AAD_TF_RUNS
# (default ~/aad-tf-runs: outside the checkout, so runs outlive a session), DATA to ../shared/data.
set -euo pipefail
DATA=${DATA:-../shared/data}
RUNS=${RUNS:-${AAD_TF_RUNS:-$HOME/aad-tf-runs}}
EVAL_EXAMPLES=${EVAL_EXAMPLES:-10000}
export TF_CPP_MIN_LOG_LEVEL=2
for row in madry madry_aad madry_aad_screen_best; do
  dir=$RUNS/mnist_${row}_paper_s0
  [ -f $dir/eval.json ] || python -m trainers.main --flagfile=flags/mnist_${row}.cfg \
    --data_dir="$DATA" --model_dir=$dir --seed=0 --eval_examples=$EVAL_EXAMPLES ${EXTRA:-}
  [ -f $dir/robustness.json ] || python -m trainers.evaluate --model_dir=$dir --data_dir="$DATA" \
    --eval_examples=$EVAL_EXAMPLES --batch_size=1000
done
python -m trainers.collect_results --dataset=mnist --output_dir=${OUTPUT_DIR:-docs/results/mnist_paper_budget} \
  --row=madry=$RUNS/mnist_madry_paper_s0 --row=madry_aad=$RUNS/mnist_madry_aad_paper_s0 \
  --row=madry_aad_screen_best=$RUNS/mnist_madry_aad_screen_best_paper_s0
