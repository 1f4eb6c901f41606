#!/usr/bin/env bash
# usage: grpo_pilot.sh NAME SFT_DIR STEPS LR TEMP [extra]
set -e
NAME=$1; SFT=$2; STEPS=$3; LR=$4; TEMP=$5; EXTRA=$6
cd "$(dirname "$0")/../.."; export PYTHONPATH=$PWD OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 TOKENIZERS_PARALLELISM=false WANDB_MODE=offline
P=.venv/bin/python; D=${PILOTS:-runs/pilots}/$NAME; mkdir -p $D
[ -f $D/grpo.train.jsonl ] || $P -m data_gen.countdown --n 1000 --numbers 3 --seed 1 --split train --mode parallel --num-range 1,20 --out $D/grpo.train.jsonl --no-progress
t0=$(date +%s)
$P recipes/grpo.py --config configs/grpo/countdown_tiny.yaml --model_name_or_path $SFT/sft/final --parallel true --train_data $D/grpo.train.jsonl --eval_data none --generate_data none --output_dir $D/grpo --max_steps $STEPS --num_generations 8 --prompts_per_step 8 --generation_batch_size 8 --max_new_tokens 256 --micro_batch_size 16 --temperature $TEMP --learning_rate $LR --save_steps 10 --num_samples_to_log 1 --seed 0 $EXTRA > $D/grpo.log 2>&1
t1=$(date +%s)
$P -m eval.benchmark --model $D/grpo/final --task countdown --data $SFT/test.jsonl --mode parallel --n 200 --out $D/eval --batch-size 32 --max-new-tokens 320 --no-progress > $D/eval.log 2>&1
echo "$NAME grpo_s=$((t1-t0)) $(python3 -c "import json; s=json.load(open('$D/eval/summary.json')); print({k: round(s[k],3) for k in ('accuracy','speedup_mean_of_ratios','critical_path_mean','format_valid_rate')})")" >> ${PILOTS:-runs/pilots}/results.txt
