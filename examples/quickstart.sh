#!/usr/bin/env bash
# Quickstart: install, make a small synthetic BraTS-like dataset, and run nnU-Net's whole pipeline with the
# multi-encoder trainer: plan_and_preprocess -> nnunetv2_ext plans -> nnUNetv2_train -> nnUNetv2_predict ->
# nnUNetv2_evaluate_folder. About 5 minutes on a 2-core CPU. Work folder: $QUICKSTART_DIR (default ./quickstart).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh
. "${NNUNETV2_EXT_VENV:-.venv}/bin/activate"

WORK=$(realpath -m "${QUICKSTART_DIR:-quickstart}")
DATASET=${QUICKSTART_DATASET_ID:-991}
TRAINER=${QUICKSTART_TRAINER:-nnUNetTrainerMultiEncoder_debug}   # 3 short epochs; nnUNetTrainerMultiEncoder for real
DEVICE=$(python -c "import torch; print('cuda' if torch.cuda.is_available() else 'cpu')")
export nnUNet_raw="$WORK/nnUNet_raw" nnUNet_preprocessed="$WORK/nnUNet_preprocessed" nnUNet_results="$WORK/nnUNet_results"
export nnUNet_extTrainer=$(nnunetv2_ext trainer-path)
export nnUNet_def_n_proc=${nnUNet_def_n_proc:-1} nnUNet_n_proc_DA=${nnUNet_n_proc_DA:-1}
export NNUNETV2_EXT_OVERWRITE=1   # a rerun of the quickstart trains its example model again
mkdir -p "$nnUNet_raw" "$nnUNet_preprocessed" "$nnUNet_results"

RAW=$(ls -d "$nnUNet_raw"/Dataset${DATASET}_* 2>/dev/null | head -n 1 || true)
if [ -z "$RAW" ]; then
    nnunetv2_ext example-data --raw "$nnUNet_raw" --dataset-id "$DATASET" --n-train 8 --n-test 2 --shape 48 48 48
    RAW=$(ls -d "$nnUNet_raw"/Dataset${DATASET}_* | head -n 1)
fi
nnUNetv2_plan_and_preprocess -d "$DATASET" -c 3d_fullres -np 1 -npfp 1
nnunetv2_ext plans "$DATASET" --arch multi_encoder --overwrite
nnUNetv2_train "$DATASET" 3d_fullres 0 -tr "$TRAINER" -p nnUNetPlans_MultiEncoder -device "$DEVICE"
nnUNetv2_predict -i "$RAW/imagesTs" -o "$WORK/predictions" -d "$DATASET" -c 3d_fullres -f 0 -tr "$TRAINER" \
    -p nnUNetPlans_MultiEncoder -device "$DEVICE" -npp 1 -nps 1
MODEL="$nnUNet_results/$(basename "$RAW")/${TRAINER}__nnUNetPlans_MultiEncoder__3d_fullres"
nnUNetv2_evaluate_folder "$RAW/labelsTs" "$WORK/predictions" -djfile "$MODEL/dataset.json" -pfile "$MODEL/plans.json" -np 1
python - "$WORK/predictions/summary.json" <<'PY'
import json, sys
summary = json.load(open(sys.argv[1]))
names = {"(1, 2, 3)": "whole tumour", "(2, 3)": "tumour core", "(3,)": "enhancing tumour"}
for region, metrics in summary["mean"].items():
    print(f"{names.get(region, region):>17}: Dice {metrics['Dice']:.3f}")
PY
echo "Done. Training log and progress.png: $MODEL/fold_0"
