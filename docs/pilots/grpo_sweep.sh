#!/usr/bin/env bash
# P-GRPO pilot on a finished demo run, greedy-evaluated on its 500 test problems every
# SAVE steps. usage: grpo_sweep.sh NAME DEMO_DIR STEPS SAVE [extra recipes/grpo.py flags]
#   DEMO_DIR holds models/sft_parallel/final and data/{grpo.train,test}.jsonl (runs/demo)
set -e
NAME=$1; DEMO=$2; STEPS=$3; SAVE=$4; shift 4
cd "$(dirname "$0")/../.."; export PYTHONPATH=$PWD OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 TOKENIZERS_PARALLELISM=false WANDB_MODE=offline
P=.venv/bin/python; D=${PILOTS:-runs/pilots}/$NAME; mkdir -p $D
$P recipes/grpo.py --config configs/grpo/countdown_tiny.yaml --model_name_or_path $DEMO/models/sft_parallel/final \
  --parallel true --train_data $DEMO/data/grpo.train.jsonl --eval_data none --generate_data none --output_dir $D/grpo \
  --max_steps $STEPS --num_generations 8 --prompts_per_step 8 --generation_batch_size 8 --max_new_tokens 256 \
  --micro_batch_size 16 --temperature 0.7 --learning_rate 1e-4 --acceleration_factor 1.0 --save_steps $SAVE \
  --save_total_limit 100 --num_samples_to_log 1 --seed 0 "$@" > $D/grpo.log 2>&1
for ck in $D/grpo/checkpoint-* $D/grpo/final; do
  s=$(basename $ck); [ -d $D/eval_$s ] || $P -m eval.benchmark --model $ck --task countdown --data $DEMO/data/test.jsonl \
    --mode parallel --n 500 --out $D/eval_$s --batch-size 32 --max-new-tokens 256 --no-progress > $D/eval_$s.log 2>&1
  echo "$NAME $s $($P -c "import json; s=json.load(open('$D/eval_$s/summary.json')); print({k: round(s[k],3) for k in ('accuracy','speedup_mean_of_ratios','critical_path_mean','blocks_mean') if k in s})")" | tee -a ${PILOTS:-runs/pilots}/grpo_sweep.txt
done
