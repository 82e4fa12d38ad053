#!/usr/bin/env bash
# Offline end-to-end demo (what `make train` runs): prepare -> train -> evaluate -> predict.
#   DATA   raw Sentiment140 CSV            (default: ../shared/data/sentiment140_sample.csv)
#   MODEL  hub id or local model directory (default: a tiny BERT built here, no hub needed)
#   RUN    where everything goes           (default: runs/demo, or runs/demo-<model name> for MODEL)
set -euo pipefail
DATA=${DATA:-../shared/data/sentiment140_sample.csv}
if [ -z "${MODEL:-}" ]; then
  RUN=${RUN:-runs/demo}
  MODEL=$RUN/tiny-bert
  PRESET=configs/cpu_demo.cfg
  [ -f "$MODEL/tf_model.h5" ] || python -m trainer.cli.tiny_bert --output_dir="$MODEL" --texts="$DATA"
else
  RUN=${RUN:-runs/demo-$(basename "${MODEL%/}")}
  PRESET=configs/cpu_finetune.cfg   # a real pretrained model wants a small learning rate
fi
set -x
trainer-prepare --input="$DATA" --format=sentiment140 --model="$MODEL" --max_length=64 --output_dir="$RUN/data"
trainer-train --flagfile="$PRESET" --data_dir="$RUN/data" --model="$MODEL" --output_dir="$RUN/train" \
  --overwrite_output_dir
trainer-evaluate --model_dir="$RUN/train/export" --data_dir="$RUN/data" --split=test \
  --output="$RUN/test_metrics.json"
trainer-predict --model_dir="$RUN/train/export" "I don't love this weather so much" "What a lovely day with friends"
