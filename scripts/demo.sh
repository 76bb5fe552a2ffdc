#!/usr/bin/env bash
# The demo: the embedded stack with its S3 server; synthetic tagged faces ingested into S3; a
# 2-worker tag-conditional DCGAN trained by Ray Train and logged to MLflow; its generator
# registered, promoted to `champion` through a metric gate, drawn one row per tag set, and
# served with its page. The stack (and the served model) keep running until `ganray local down`.
# MLflow runs with authentication (the default of `ganray local up`); every ganray command uses its login.
set -euo pipefail
OUT=${GANRAY_DEMO_DIR:-ganray-demo}
MODEL=demo-faces
mkdir -p "$OUT"
start=$(date +%s)
ganray local up --s3
ganray data synth "$OUT/data" --n 2000 --resolution 32 --seed 0
ganray data ingest "$OUT/data" s3://ganray/data/demo-faces --labels "$OUT/data/labels.csv"
ganray run examples/demo.yaml --quiet --summary-json "$OUT/summary.json" > /dev/null
VERSION=$(python -c 'import json,sys; print(json.load(open(sys.argv[1]))["version"])' "$OUT/summary.json")
ganray promote "$MODEL" --version "$VERSION" --alias champion --require "tag_accuracy>=0.8"
python scripts/demo_grid.py "models:/$MODEL@champion" "$OUT" --n 8 \
  --row "blonde hair, blue eyes" --row "pink hair, green eyes, hat" --row "black hair, red eyes, glasses" \
  --row "silver hair, purple eyes, ribbon" --row "blue hair, blush, sky background" \
  --row "red hair, dark background"
URL=$(ganray serve "$MODEL@champion" | tail -n 1)
MLFLOW=$(python -c 'from trainers.settings import read_profile; print(read_profile()["mlflow_uri"])')
LOGIN=$(python -c 'from trainers.settings import ganray_home, read_profile; print("user ganray, its password is mlflow_password in %s" % (ganray_home() / "credentials.json") if read_profile().get("mlflow_auth") else "none: MLflow runs without authentication")')
cat "$OUT/summary.json"
echo
echo "demo finished in $(( $(date +%s) - start )) s"
echo "  page (pick tags, press Generate): $URL"
echo "  MLflow UI:      $MLFLOW  (experiment 'ganray', model $MODEL, alias champion = version $VERSION)"
echo "  MLflow login:   $LOGIN"
echo "  sample grid:    $OUT/grid.png  (one row per tag set; the tags in $OUT/grid.txt)"
echo "  summary:        $OUT/summary.json"
echo "  stop serving:   $(dirname "$(command -v ganray)")/ganray serve --stop $MODEL"
echo "  stop the stack: $(dirname "$(command -v ganray)")/ganray local down"
