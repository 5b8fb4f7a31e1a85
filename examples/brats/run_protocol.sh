#!/usr/bin/env bash
# The seeds' BraTS protocol with nnU-Net's native training for every model:
#   convert -> plan_and_preprocess -> multi-encoder plans -> (MONAI folds) -> few-shot folds -> train every trainer
#   on every fold -> seed-style tables and the few-shot curve.
#
# Real BraTS (GPU):   BRATS_DIR=/data/BraTS2021_Training_Data [FOLDS_JSON=brats21_folds.json] bash examples/brats/run_protocol.sh
# Dry run (CPU, synthetic data, short trainers, ~10 min):   bash examples/brats/run_protocol.sh --dry-run
#
# Settings (environment): DATASET_ID (137), TRAINERS (space-separated), FOLDS ("0 1 2 3 4"), FRACTIONS
# ("0.05,0.1,0.2,0.4", Cox et al. 2024 (BrainSegFounder) Figure 5), REPEATS (5), DEVICE (cuda),
# WORK (./brats_protocol): nnUNet_raw, nnUNet_preprocessed and nnUNet_results default to folders inside WORK unless
# already exported.
set -euo pipefail
cd "$(dirname "$0")/../.."
DRY_RUN=0
[ "${1:-}" = "--dry-run" ] && DRY_RUN=1
if [ -n "${VIRTUAL_ENV:-}" ] || python -c "import nnunetv2_ext" 2>/dev/null; then :; else
    bash scripts/install.sh && . "${NNUNETV2_EXT_VENV:-.venv}/bin/activate"
fi

WORK=$(realpath -m "${WORK:-brats_protocol}")
export nnUNet_raw=${nnUNet_raw:-$WORK/nnUNet_raw} nnUNet_preprocessed=${nnUNet_preprocessed:-$WORK/nnUNet_preprocessed}
export nnUNet_results=${nnUNet_results:-$WORK/nnUNet_results}
export nnUNet_extTrainer=$(nnunetv2_ext trainer-path)
mkdir -p "$nnUNet_raw" "$nnUNet_preprocessed" "$nnUNet_results"

if [ "$DRY_RUN" = 1 ]; then
    DATASET_ID=${DATASET_ID:-981}
    TRAINERS=${TRAINERS:-"nnUNetTrainerVanilla_debug nnUNetTrainerMultiEncoder_debug"}
    FOLDS=${FOLDS:-"0"}
    FRACTIONS=${FRACTIONS:-"0.5,1.0"}
    REPEATS=${REPEATS:-2}
    DEVICE=${DEVICE:-cpu}
    export nnUNet_def_n_proc=1 nnUNet_n_proc_DA=1
    NP="-np 1 -npfp 1"
    ls -d "$nnUNet_raw"/Dataset${DATASET_ID}_* >/dev/null 2>&1 || \
        nnunetv2_ext example-data --raw "$nnUNet_raw" --dataset-id "$DATASET_ID" --name SyntheticProtocol \
            --n-train 10 --n-test 2 --shape 40 40 40
else
    : "${BRATS_DIR:?set BRATS_DIR to the BraTS training folder (or pass --dry-run)}"
    DATASET_ID=${DATASET_ID:-137}
    TRAINERS=${TRAINERS:-"nnUNetTrainer nnUNetTrainerMultiEncoder"}
    FOLDS=${FOLDS:-"0 1 2 3 4"}
    FRACTIONS=${FRACTIONS:-"0.05,0.1,0.2,0.4"}
    REPEATS=${REPEATS:-5}
    DEVICE=${DEVICE:-cuda}
    NP=""
    ls -d "$nnUNet_raw"/Dataset${DATASET_ID}_* >/dev/null 2>&1 || \
        nnunetv2_ext brats convert --input "$BRATS_DIR" --dataset-id "$DATASET_ID" --np 8
fi

nnUNetv2_plan_and_preprocess -d "$DATASET_ID" -c 3d_fullres $NP
PLANS_ME=nnUNetPlans_MultiEncoder
[ -f "$nnUNet_preprocessed"/Dataset${DATASET_ID}_*/$PLANS_ME.json ] || nnunetv2_ext plans "$DATASET_ID"
if [ ! -f "$nnUNet_preprocessed"/Dataset${DATASET_ID}_*/splits_final.json ]; then
    if [ -n "${FOLDS_JSON:-}" ]; then
        nnunetv2_ext splits monai --dataset "$DATASET_ID" --folds-json "$FOLDS_JSON"
    else
        nnunetv2_ext splits default --dataset "$DATASET_ID"     # nnU-Net's own 5-fold split
    fi
fi
[ -f "$nnUNet_preprocessed"/Dataset${DATASET_ID}_*/few_shot_index.json ] || \
    nnunetv2_ext splits few-shot --dataset "$DATASET_ID" --fractions "$FRACTIONS" --repeats "$REPEATS" --seed 0 --base-fold 0
FEW_SHOT_FOLDS=$(python -c "import json,glob; print(' '.join(str(e['fold']) for e in json.load(open(glob.glob('$nnUNet_preprocessed/Dataset${DATASET_ID}_*/few_shot_index.json')[0]))))")

for trainer in $TRAINERS; do
    case "$trainer" in *MultiEncoder*|*VolumeFusion*) plans=$PLANS_ME ;; *) plans=nnUNetPlans ;; esac
    for fold in $FOLDS $FEW_SHOT_FOLDS; do
        out=$(ls -d "$nnUNet_results"/Dataset${DATASET_ID}_*/${trainer}__${plans}__3d_fullres/fold_$fold 2>/dev/null || true)
        if [ -n "$out" ] && [ -f "$out/checkpoint_final.pth" ]; then continue; fi
        cont=""; [ -n "$out" ] && [ -f "$out/checkpoint_latest.pth" ] && cont="--c"
        nnUNetv2_train "$DATASET_ID" 3d_fullres "$fold" -tr "$trainer" -p "$plans" -device "$DEVICE" $cont
    done
done

RESULTS=$(ls -d "$nnUNet_results"/Dataset${DATASET_ID}_*)
nnunetv2_ext report --results "$RESULTS" --trainers "$(echo $TRAINERS | tr ' ' ',')" -o "$WORK/report" --overwrite
echo "Tables and plot: $WORK/report"
