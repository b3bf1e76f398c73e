#!/usr/bin/env bash
# Set everything up (see setup.sh) and run the main job on the built-in sample data:
# write the synthetic U2OS project, show its summary, train a small CNN on the labelled images
# (CPU, about a minute), predict the unlabelled ones (checked against ground_truth.csv, uncertain
# ones marked), print the evaluation with its calibration (files in DIR_evaluation), export the model
# as a BioImage Model Zoo package and predict with it; then, when a display is present (and not in CI), open napari on the project
# with the labelling, training and metrics widgets. The project lands in ./demo_project
# (override: DEMO_DIR=...; DEMO_GUI=0 skips napari).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export PYTHONUNBUFFERED=1
DEMO_DIR="${DEMO_DIR:-demo_project}"
CLI=.venv/bin/napari-cellclass
if [ -e "$DEMO_DIR" ]; then
  if [ -f "$DEMO_DIR/cellclass.json" ] && [ -f "$DEMO_DIR/ground_truth.csv" ]; then
    echo "demo: removing the previous sample project $DEMO_DIR"
    rm -rf "$DEMO_DIR"
  else
    echo "demo: $DEMO_DIR exists and is not a sample project; choose another DEMO_DIR" >&2
    exit 1
  fi
fi
echo "demo: writing the sample project to $DEMO_DIR"
$CLI sample "$DEMO_DIR"
echo
$CLI info "$DEMO_DIR"
MODEL="$DEMO_DIR/cellclass_models/demo"
echo
echo "demo: training on the labelled images (default settings: mobilenetv3_small_100 at 96 px)"
$CLI train "$DEMO_DIR" --out "$MODEL"
echo
echo "demo: predicting the unlabelled images (stored in $DEMO_DIR/cellclass_predictions.csv; labels untouched;"
echo "      below confidence 0.9 the verdict is 'uncertain')"
$CLI predict "$DEMO_DIR" --model "$MODEL" --truth "$DEMO_DIR/ground_truth.csv" --min-confidence 0.9
echo
echo "demo: evaluating (calibration, coverage; files and the reliability diagram in ${DEMO_DIR}_evaluation)"
$CLI evaluate "$DEMO_DIR" --model "$MODEL" --out "${DEMO_DIR}_evaluation"
echo
echo "demo: exporting the model as a BioImage Model Zoo package (checked by bioimageio.core) and predicting with it"
$CLI export "$MODEL" --format bioimageio
$CLI predict "$DEMO_DIR" --model "$DEMO_DIR/cellclass_exports/demo.bioimageio.zip" --truth "$DEMO_DIR/ground_truth.csv" \
  --min-confidence 0.9
echo
echo "demo: which unlabelled images to label next (the model's least certain, kept diverse)"
$CLI suggest "$DEMO_DIR" --model "$MODEL" --n 5
echo
echo "demo: labelled images that look mislabelled (cross-validated, cleanlab)"
$CLI check-labels "$DEMO_DIR"
if [ "${DEMO_GUI:-1}" != 0 ] && [ -z "${CI:-}" ] && { [ -n "${DISPLAY:-}" ] || [ -n "${WAYLAND_DISPLAY:-}" ] || [ "$(uname)" = Darwin ]; }; then
  echo
  echo "demo: opening napari on $DEMO_DIR (close the window to finish)"
  $CLI gui "$DEMO_DIR"
fi
