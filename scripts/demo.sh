#!/usr/bin/env bash
# The demo: embedded stack with its S3 server, synthetic faces ingested into S3,
# a 2-worker DCGAN trained by Ray Train, the generator registered in MLflow, a grid.
set -euo pipefail
OUT=${GANRAY_DEMO_DIR:-ganray-demo}
mkdir -p "$OUT"
start=$(date +%s)
ganray local up --s3
ganray data synth "$OUT/data" --n 2000 --resolution 32 --seed 0
ganray data ingest "$OUT/data" s3://ganray/data/demo-faces --labels "$OUT/data/labels.csv"
ganray run examples/demo.yaml --summary-json "$OUT/summary.json" > /dev/null
MODEL_URI=$(python -c 'import json,sys; print(json.load(open(sys.argv[1]))["model_uri"])' "$OUT/summary.json")
ganray generate "$MODEL_URI" --n 64 --seed 0 --out "$OUT/grid.png" 2>/dev/null
MLFLOW=$(python -c 'import json,os; from trainers.data.storage import read_profile; print(read_profile()["mlflow_uri"])')
cat "$OUT/summary.json"
echo
echo "demo finished in $(( $(date +%s) - start )) s"
echo "  MLflow UI:     $MLFLOW  (experiment 'ganray', model $MODEL_URI)"
echo "  sample grid:   $OUT/grid.png"
echo "  summary:       $OUT/summary.json"
echo "  stop the stack: $(dirname "$(command -v ganray)")/ganray local down"
