#!/usr/bin/env bash
# Reproduce the bundled weights from the CDVAE-layout CSVs (docs/training.md has the details).
#   bash scripts/train_models.sh [preprocess|dao-g|finetune|dao-p|labels|block2|evaluate|families|evaluate-families|continue-base|block7|presets|all]
# dao-g: DAO-G Stage I on the Materials Project corpus in three blocks chained by weights-only
# warm restarts (as trained, 2026-12-02); finetune: per-family models from the second block;
# dao-p: DAO-P (2026-11-24 recipe). Runs are cut by the recorded step counts, so the schedule
# is the shipped one on any GPU; the three runs of `finetune` share one GPU.
# Many GPUs: DAO_LAUNCH="torchrun --standalone --nproc_per_node 4 -m" (then scale the batch).
set -euo pipefail
DATA=${DAO_DATASETS:-../shared/datasets}
RUNS=${DAO_RUNS:-runs}
LAUNCH=${DAO_LAUNCH:-python -m}
DAO="$LAUNCH dao_flows.cli"
SPLIT=docs/data/split-mp2025-seed0.json
PRE=$RUNS/preprocessed
G="--model dao-g --batch-size 512 --eval-every 1000 --split $SPLIT"
stage=${1:-all}

preprocess() {
    mkdir -p "$PRE"
    python -m dao_flows.cli preprocess "$DATA/mp_2025/le20.csv.gz" --out "$PRE/le20.npz"
    python -m dao_flows.cli preprocess "$DATA/perov_5/val.csv" --out "$PRE/perov5.npz"
    python -m dao_flows.cli preprocess "$DATA/carbon_24/val.csv" --out "$PRE/carbon24.npz"
    # 21-100 atoms (65,965; 26.8 MiB): not in any shipped model yet (docs/training.md).
    python -m dao_flows.cli preprocess "$DATA/mp_2025/21to100.csv.gz" --out "$PRE/gt20.npz"
}

dao_g() {
    local data=$PRE/le20.npz,$PRE/perov5.npz,$PRE/carbon24.npz
    $DAO train $G --data "$data" --out "$RUNS/g1" --steps 6587 --lr 1e-3 --warmup 300 \
        --sample-steps 100
    $DAO train $G --data "$data" --out "$RUNS/g2" --steps 7516 --lr 5e-4 --warmup 200 \
        --init "$RUNS/g1/final"
    $DAO train $G --data "$data" --out "$RUNS/g3" --steps 3653 --lr 3e-4 --warmup 200 \
        --init "$RUNS/g2/final"  # -> dao-g-base
}

finetune() {
    # All weights at a small learning rate (authors: 2e-5, wd 1e-5) from the second block;
    # each family model saves the sampler settings chosen on its validation split.
    local ft="$G --init $RUNS/g2/final --lr 1e-4 --weight-decay 1e-5 --warmup 100"
    $DAO train $ft --data "$PRE/perov5.npz" --out "$RUNS/dao-g-perov5" --steps 3746 \
        --step-lr 5e-7 --temperature 1.0 &
    $DAO train $ft --data "$PRE/carbon24.npz" --out "$RUNS/dao-g-carbon24" --steps 3771 \
        --step-lr 5e-7 --temperature 0.5 &
    wait -n && wait -n
}

labels() {
    # Uniform DAO-P label: CHGNet formation energy per atom (scripts/label_chgnet.py; about
    # 40 structures/s on one CPU core), then compact labelled records for the GPU machine.
    local l=$RUNS/labels p=chgnet_formation_energy_per_atom
    python scripts/label_chgnet.py "$l" "$DATA/mp_2025/le20.csv.gz" "$DATA/perov_5/val.csv" \
        "$DATA/carbon_24/val.csv" "$DATA/mp_20_slice/val.csv"
    python -m dao_flows.cli preprocess "$l/mp_2025-le20.csv.gz:$p" --out "$PRE/le20-chgnet.npz"
    python -m dao_flows.cli preprocess "$l/perov_5-val.csv.gz:$p" --out "$PRE/perov5-chgnet.npz"
    python -m dao_flows.cli preprocess "$l/carbon_24-val.csv.gz:$p" --out "$PRE/carbon24-chgnet.npz"
}

block2() {
    # Block 4 (2026-12-06, one H100, BUDGET=1100): DAO-G continued from the 2026-12-02
    # dao-g-base at batch 2048 (training at 512 was launch-bound) and DAO-P on the uniform
    # label from the same backbone, side by side on one GPU; BUDGET seconds each. To rerun it
    # from today's weights, start from a copy of that commit's dao-g-base.
    local data=$PRE/le20-chgnet.npz,$PRE/perov5-chgnet.npz,$PRE/carbon24-chgnet.npz
    local common="--data $data --split $SPLIT --steps 10000000 --time-budget ${BUDGET:-1200}"
    $DAO train --model dao-g --init dao-g-base $common --out "$RUNS/g4" --batch-size 2048 \
        --lr 6e-4 --warmup 300 --eval-every 500 &
    $DAO train --model dao-p --init dao-g-base $common --out "$RUNS/p1" --batch-size 1024 \
        --lr 3e-4 --warmup 300 --eval-every 500 &
    wait -n && wait -n
}

export_fp16() {
    # The shipped form of a checkpoint: the same config and record, float16 weights.
    python - "$1" "$2" <<'EOF'
import sys

import torch

from dao_core.checkpoint import load_model, read_config, save_model

src, dst = sys.argv[1:]
save_model(load_model(src, device="cpu"), dst, read_config(src)["record"], dtype=torch.float16)
EOF
}

evaluate() {
    # Match rates of block 2's DAO-G (fp16, as shipped) on every recorded validation set at the
    # model's sampler and at temperature 0.7: @1 on the whole sets, @20 on 400
    # mp20like crystals, then the shipped dao-g-base @1 on the same machine.
    local g=$RUNS/g4-fp16 le=$PRE/le20-chgnet.npz out=$RUNS/validation.csv
    export_fp16 "$RUNS/g4/final" "$g"
    export_fp16 "$RUNS/p1/final" "$RUNS/p1-fp16"
    local v="python benchmarks/validation_suite.py --split $SPLIT --out $out"
    local sets="--set mp20like=$le:mp20like --set mp_other=$le:mp_other
        --set mp20val=$PRE/mp20val-chgnet.npz:mp20_slice_val --set perov5=$PRE/perov5-chgnet.npz
        --set carbon24=$PRE/carbon24-chgnet.npz"
    local samplers="--sampler default --sampler temperature=0.7"
    $v --model "block2=$g" $samplers $sets
    $v --model "block2=$g" $samplers --set "mp20like=$le:mp20like" --samples 20 --limit 400
    $v --model shipped=dao-g-base $samplers $sets
}

families() {
    # Per-family fine-tunes from the shipped dao-g-base, all weights, at two learning rates
    # each (LRS="1e-4" runs one); the four runs share one GPU. The weights' moving average is
    # the final model, as in block 8. Block 5 (2026-12-07, one H100, BUDGET=210, from block 4)
    # and the perov-5 run from block 8 (2026-12-08, CPU): not shipped, no better than the
    # fine-tunes from block 2 (docs/training.md).
    local ft="--model dao-g --init dao-g-base --batch-size 512 --eval-every 500 --split $SPLIT
        --weight-decay 1e-5 --warmup 100 --steps 10000000 --time-budget ${BUDGET:-360}
        --ema-decay 0.999"
    for lr in ${LRS:-1e-4 3e-4}; do
        $DAO train $ft --data "$PRE/perov5.npz" --out "$RUNS/perov5-lr$lr" --lr $lr \
            --step-lr 5e-7 --temperature 1.0 &
        $DAO train $ft --data "$PRE/carbon24.npz" --out "$RUNS/carbon24-lr$lr" --lr $lr \
            --step-lr 5e-7 --temperature 0.5 &
    done
    wait
}

evaluate_families() {
    # Each fine-tune (fp16, as shipped) on its family's held-out split, seeds 0-2, at its saved
    # sampler and at neighbouring temperatures; the four evaluations run side by side.
    local v="python benchmarks/validation_suite.py --split $SPLIT --seeds 0,1,2"
    for lr in ${LRS:-1e-4 3e-4}; do
        export_fp16 "$RUNS/perov5-lr$lr/final" "$RUNS/perov5-lr$lr-fp16"
        export_fp16 "$RUNS/carbon24-lr$lr/final" "$RUNS/carbon24-lr$lr-fp16"
        $v --model "perov5-lr$lr=$RUNS/perov5-lr$lr-fp16" --set "perov5=$PRE/perov5.npz" \
            --sampler default --sampler temperature=0.7 --out "$RUNS/families-perov5-$lr.csv" &
        $v --model "carbon24-lr$lr=$RUNS/carbon24-lr$lr-fp16" --set "carbon24=$PRE/carbon24.npz" \
            --sampler default --sampler temperature=0.3 --sampler temperature=0.7 \
            --out "$RUNS/families-carbon24-$lr.csv" &
    done
    wait
}

continue_base() {
    # Blocks 6 and 8: DAO-G continued from the shipped dao-g-base on the same corpus and batch,
    # cosine over BUDGET seconds, with an exponential moving average of the weights as "final".
    # LIMIT (seconds) stops this call early with a checkpoint; rerunning resumes the schedule
    # (work left in the background of a device call does not survive it). Once the run is
    # done: fp16 export and mp20like @1 over seeds 0-2 beside the shipped model, @20 on 400.
    local run=${RUN:-g5} data=$PRE/le20.npz,$PRE/perov5.npz,$PRE/carbon24.npz  # no label
    $DAO train --model dao-g --init dao-g-base --data "$data" --split $SPLIT --steps 10000000 \
        --time-budget "${BUDGET:-420}" ${LIMIT:+--time-limit "$LIMIT"} --out "$RUNS/$run" \
        --batch-size 2048 --lr 3e-4 --warmup 200 --eval-every 500 --ema-decay 0.999
    [ -d "$RUNS/$run/final" ] || { echo "$run stopped at LIMIT: rerun to resume"; return; }
    export_fp16 "$RUNS/$run/final" "$RUNS/$run-fp16"
    local v="python benchmarks/validation_suite.py --split $SPLIT --set mp20like=$PRE/le20.npz:mp20like"
    $v --model "$run=$RUNS/$run-fp16" --model shipped=dao-g-base --sampler default --seeds 0,1,2 \
        --set "mp20like_novel=$PRE/le20.npz:mp20like_novel" --out "$RUNS/validation-$run.csv"
    $v --model "$run=$RUNS/$run-fp16" --sampler default --samples 20 --limit 400 \
        --out "$RUNS/validation-$run-at20.csv"
}

presets() {
    # Issue 11's preset question at an equal budget: `base` (5.6 M) and `paper` (25.3 M) from
    # scratch on the corpus, side by side on one GPU for BUDGET seconds each (LIMIT stops a
    # call early, rerunning resumes), then both (fp16) on mp20like (and its twin-free part),
    # perov-5 and carbon-24 @1, seed 0 (VAL_LIMIT: the first N crystals per set, for a dry
    # run). Sampling cost per preset on the 2-core CPU: 518 vs 136 structures/s (training.md).
    local data=$PRE/le20.npz,$PRE/perov5.npz,$PRE/carbon24.npz
    for preset in base paper; do
        $DAO train --model dao-g --preset $preset --data "$data" --split $SPLIT \
            --steps 10000000 --time-budget "${BUDGET:-600}" ${LIMIT:+--time-limit "$LIMIT"} \
            --out "$RUNS/preset-$preset" --batch-size 2048 --lr 5e-4 --warmup 300 \
            --eval-every 500 --ema-decay 0.999 --temperature 0.7 --sample-steps 100 &
    done
    wait
    local v=(python benchmarks/validation_suite.py --split $SPLIT --sampler default
        --set "mp20like=$PRE/le20.npz:mp20like" --set "mp20like_novel=$PRE/le20.npz:mp20like_novel"
        --set "perov5=$PRE/perov5.npz" --set "carbon24=$PRE/carbon24.npz"
        --out "$RUNS/validation-presets.csv")
    for preset in base paper; do
        [ -d "$RUNS/preset-$preset/final" ] || { echo "stopped at LIMIT: rerun to resume"; return; }
    done
    for preset in base paper; do
        export_fp16 "$RUNS/preset-$preset/final" "$RUNS/preset-$preset-fp16"
        v+=(--model "$preset=$RUNS/preset-$preset-fp16")
    done
    "${v[@]}" ${VAL_LIMIT:+--limit "$VAL_LIMIT"}
}

block7() {
    # Block 7 (prepared 2026-12-07): the shipped family models fine-tuned further with an
    # exponential moving average of the weights (--ema-decay 0.999, the average is "final"),
    # at two learning rates each, four runs sharing one GPU for BUDGET seconds; then each
    # average (fp16, as shipped) on its family's held-out split over seeds 0-2 at the saved
    # sampler, beside the shipped model.
    local ft="--model dao-g --batch-size 512 --eval-every 500 --split $SPLIT --weight-decay 1e-5
        --warmup 100 --steps 10000000 --time-budget ${BUDGET:-240} --ema-decay 0.999"
    for lr in 3e-5 1e-4; do
        $DAO train $ft --init dao-g-perov5 --data "$PRE/perov5.npz" --out "$RUNS/perov5-ema$lr" \
            --lr $lr &
        $DAO train $ft --init dao-g-carbon24 --data "$PRE/carbon24.npz" \
            --out "$RUNS/carbon24-ema$lr" --lr $lr &
    done
    wait
    local v="python benchmarks/validation_suite.py --split $SPLIT --seeds 0,1,2 --sampler default"
    local perov=(--model shipped=dao-g-perov5) carbon=(--model shipped=dao-g-carbon24)
    for lr in 3e-5 1e-4; do
        export_fp16 "$RUNS/perov5-ema$lr/final" "$RUNS/perov5-ema$lr-fp16"
        export_fp16 "$RUNS/carbon24-ema$lr/final" "$RUNS/carbon24-ema$lr-fp16"
        perov+=(--model "ema$lr=$RUNS/perov5-ema$lr-fp16")
        carbon+=(--model "ema$lr=$RUNS/carbon24-ema$lr-fp16")
    done
    $v "${perov[@]}" --set "perov5=$PRE/perov5.npz" --out "$RUNS/validation-block7-perov5.csv" &
    $v "${carbon[@]}" --set "carbon24=$PRE/carbon24.npz" \
        --out "$RUNS/validation-block7-carbon24.csv" &
    wait
}

dao_p() {
    # DAO-P on the labelled union, labels standardised per data set (dao-p-base, 2026-11-24).
    $DAO train --model dao-p --preset base --out "$RUNS/dao-p-base" --steps 9692 \
        --batch-size 256 --lr 1e-3 \
        --data "$DATA/mp_20_slice/train.csv:e_above_hull,$DATA/perov_5/val.csv:heat_all,$DATA/carbon_24/val.csv:energy_per_atom"
}

case $stage in
    preprocess) preprocess ;;
    dao-g) dao_g ;;
    finetune) finetune ;;
    dao-p) dao_p ;;
    labels) labels ;;
    block2) block2 ;;
    evaluate) evaluate ;;
    families) families ;;
    continue-base) continue_base ;;
    block7) block7 ;;
    presets) presets ;;
    evaluate-families) evaluate_families ;;
    all) preprocess; dao_g; finetune; dao_p ;;
    *) echo "unknown stage $stage (preprocess|dao-g|finetune|dao-p|labels|block2|evaluate|families|evaluate-families|continue-base|block7|presets|all)" >&2; exit 2 ;;
esac
