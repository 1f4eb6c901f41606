#!/usr/bin/env bash
# usage: pilot.sh NAME MODE STEPS "DATAGEN OPTS" "SFT OPTS" "MODEL OPTS"
set -e
NAME=$1; MODE=$2; STEPS=$3; DOPTS=$4; SOPTS=$5; MOPTS=$6
cd "$(dirname "$0")/../.."; export PYTHONPATH=$PWD OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 TOKENIZERS_PARALLELISM=false WANDB_MODE=offline
P=.venv/bin/python; D=${PILOTS:-runs/pilots}/$NAME; mkdir -p $D
TRN=${TRAIN_N:-8000}
[ -f $D/train.jsonl ] || $P -m data_gen.countdown --n $TRN --numbers 3 --seed 0 --split train --mode $MODE --out $D/train.jsonl --no-progress $DOPTS
[ -f $D/val.jsonl ] || $P -m data_gen.countdown --n 200 --numbers 3 --seed 0 --split val --mode $MODE --out $D/val.jsonl --no-progress $DOPTS
[ -f $D/test.jsonl ] || $P -m data_gen.countdown --n 200 --numbers 3 --seed 0 --split test --mode $MODE --out $D/test.jsonl --no-progress $DOPTS
[ -f $D/base/config.json ] || $P recipes/init_tiny_model.py --data $D/train.jsonl --out $D/base $MOPTS
t0=$(date +%s)
$P recipes/sft.py --config configs/sft/countdown_tiny.yaml --model_name_or_path $D/base --mode $MODE --generate_data none --train_data $D/train.jsonl --eval_data $D/val.jsonl --output_dir $D/sft --max_steps $STEPS --eval_steps 100 --save_steps 0 --logging_steps 50 --disable_tqdm true --warmup_ratio 0.03 $SOPTS > $D/sft.log 2>&1
t1=$(date +%s)
$P -m eval.benchmark --model $D/sft/final --task countdown --data $D/test.jsonl --mode $MODE --n 200 --out $D/eval --batch-size 32 --max-new-tokens 320 --no-progress > $D/eval.log 2>&1
t2=$(date +%s)
echo "$NAME sft_s=$((t1-t0)) eval_s=$((t2-t1))" >> $D/times
$P - <<PY >> ${PILOTS:-runs/pilots}/results.txt
import json; s=json.load(open("$D/eval/summary.json"))
keys=[k for k in s if any(w in k for w in ("accuracy","valid","critical_path_mean","total_tokens_mean"))]
import re
ev=[l for l in open("$D/sft.log") if "eval_loss" in l][-1].split("eval_loss=")[1].split()[0]
print("$NAME", "steps=$STEPS", "sft_s=$((t1-t0))", "eval_loss="+ev, {k: (round(s[k],3) if isinstance(s[k], float) else s[k]) for k in keys})
PY
