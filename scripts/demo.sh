#!/usr/bin/env bash
# Offline end-to-end demo (what `make train` runs): prepare -> train -> evaluate -> predict.
#   DATA   raw Sentiment140 CSV            (default: ../shared/data/sentiment140_sample.csv)
#   MODEL  hub id or local model directory (default: a tiny BERT built here, no hub needed)
#   RUN    where everything goes           (default: runs/demo)
set -euo pipefail
DATA=${DATA:-../shared/data/sentiment140_sample.csv}
RUN=${RUN:-runs/demo}
PRESET=configs/cpu_demo.cfg
if [ -z "${MODEL:-}" ]; then
  MODEL=$RUN/tiny-bert
  [ -f "$MODEL/tf_model.h5" ] || python -m trainer.cli.tiny_bert --output_dir="$MODEL" --texts="$DATA"
else
  PRESET=configs/cpu_finetune.cfg   # a real pretrained model wants a small learning rate
fi
set -x
trainer-prepare --input="$DATA" --format=sentiment140 --model="$MODEL" --max_length=64 --output_dir="$RUN/data"
trainer-train --flagfile="$PRESET" --data_dir="$RUN/data" --model="$MODEL" --output_dir="$RUN/train" \
  --overwrite_output_dir
trainer-evaluate --model_dir="$RUN/train/export" --data_dir="$RUN/data" --split=test \
  --output="$RUN/test_metrics.json"
trainer-predict --model_dir="$RUN/train/export" "I don't love this weather so much" "What a lovely day with friends"
