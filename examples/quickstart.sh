#!/usr/bin/env bash
# Quickstart: install, make a small synthetic BraTS-like dataset, and run nnU-Net's whole pipeline with the
# multi-encoder trainer: plan_and_preprocess -> nnunetv2_ext plans -> nnUNetv2_train -> nnUNetv2_predict ->
# nnUNetv2_evaluate_folder, then draw quickstart/overview.png. The trainer, nnUNetTrainerMultiEncoder_quickstart,
# is the multi-encoder at a CPU size (patch 32^3, widths 8..64, 500 steps): it segments the example data in a few
# minutes on a 2-core CPU (README: the Dice and time measured). Work folder: $QUICKSTART_DIR (default ./quickstart).
set -euo pipefail
cd "$(dirname "$0")/.."
START=$SECONDS
bash scripts/install.sh
. "${NNUNETV2_EXT_VENV:-.venv}/bin/activate"
INSTALLED=$SECONDS

WORK=$(realpath -m "${QUICKSTART_DIR:-quickstart}")
DATASET=${QUICKSTART_DATASET_ID:-991}
TRAINER=${QUICKSTART_TRAINER:-nnUNetTrainerMultiEncoder_quickstart}   # nnUNetTrainerMultiEncoder for the real schedule
DEVICE=$(python -c "import torch; print('cuda' if torch.cuda.is_available() else 'cpu')")
export nnUNet_raw="$WORK/nnUNet_raw" nnUNet_preprocessed="$WORK/nnUNet_preprocessed" nnUNet_results="$WORK/nnUNet_results"
export nnUNet_extTrainer=$(nnunetv2_ext trainer-path)
export nnUNet_def_n_proc=${nnUNet_def_n_proc:-1} nnUNet_n_proc_DA=${nnUNet_n_proc_DA:-1}
export NNUNETV2_EXT_OVERWRITE=1   # a rerun of the quickstart trains its example model again
mkdir -p "$nnUNet_raw" "$nnUNet_preprocessed" "$nnUNet_results"

RAW=$(ls -d "$nnUNet_raw"/Dataset${DATASET}_* 2>/dev/null | head -n 1 || true)
if [ -z "$RAW" ]; then
    nnunetv2_ext example-data --raw "$nnUNet_raw" --dataset-id "$DATASET" --n-train 16 --n-test 6 --shape 48 48 48
    RAW=$(ls -d "$nnUNet_raw"/Dataset${DATASET}_* | head -n 1)
fi
nnUNetv2_plan_and_preprocess -d "$DATASET" -c 3d_fullres -np 1 -npfp 1
nnunetv2_ext plans "$DATASET" --arch multi_encoder --overwrite
PREPARED=$SECONDS
nnUNetv2_train "$DATASET" 3d_fullres 0 -tr "$TRAINER" -p nnUNetPlans_MultiEncoder -device "$DEVICE"
TRAINED=$SECONDS
rm -rf "$WORK/predictions"
nnUNetv2_predict -i "$RAW/imagesTs" -o "$WORK/predictions" -d "$DATASET" -c 3d_fullres -f 0 -tr "$TRAINER" \
    -p nnUNetPlans_MultiEncoder -device "$DEVICE" -npp 1 -nps 1
MODEL="$nnUNet_results/$(basename "$RAW")/${TRAINER}__nnUNetPlans_MultiEncoder__3d_fullres"
nnUNetv2_evaluate_folder "$RAW/labelsTs" "$WORK/predictions" -djfile "$MODEL/dataset.json" -pfile "$MODEL/plans.json" -np 1
nnunetv2_ext overview -i "$RAW/imagesTs" --ref "$RAW/labelsTs" --pred "$WORK/predictions" -m "$MODEL" -f 0 \
    -o "$WORK/overview.png" --overwrite
python - "$WORK/predictions/summary.json" <<'PY'
import json, sys
summary = json.load(open(sys.argv[1]))
names = {"(1, 2, 3)": "whole tumour (WT)", "(2, 3)": "tumour core (TC)", "(3,)": "enhancing tumour (ET)"}
for region, metrics in summary["mean"].items():
    print(f"{names.get(region, region):>22}: Dice {metrics['Dice']:.3f}  (test cases)")
PY
echo "Time: install $((INSTALLED - START)) s, data + planning + preprocessing $((PREPARED - INSTALLED)) s," \
     "training $((TRAINED - PREPARED)) s, prediction + evaluation $((SECONDS - TRAINED)) s; total $((SECONDS - START)) s"
echo "Done. Picture: $WORK/overview.png; training log and progress.png: $MODEL/fold_0"
