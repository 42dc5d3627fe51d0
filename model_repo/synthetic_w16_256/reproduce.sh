#!/usr/bin/env bash
# Reproduce model_repo/synthetic_w16_256/1/{model,rescore}.pth from nothing, on CPU: about 13 h on 2 cores,
# of which 12 h 40 min is training and the rest data generation, averaging, rescoring and evaluation.
# Run from the repository root after `pip install torch==2.13.0 && pip install -e ".[training]"`.
set -euo pipefail
cd "$(dirname "$0")/../.."
scene=(--max-people 4 --min-height 0.3 --occluder-prob 0.25 --size 256)
# The 400 images with nobody in them follow the 4000 scenes and leave them unchanged; legs 1-8 skip them
# (keep_empty_images is off by default), the ninth trains on them.
pose synth data/synthetic/train --images 4000 --seed 1 --negatives 400 "${scene[@]}"
pose synth data/synthetic/val --images 300 --seed 2 "${scene[@]}"
# The shipped weights were trained in eight legs and a fine-tune; --resume replays each leg from the last one's
# checkpoint.
run=(pose train model_repo/synthetic_w16_256/train.yaml --set validate_every=2)
fast=(--set lr=0.001)  # legs 1-4; train.yaml holds the last three legs' 5e-4
# 1. epochs 1-10: 1e-3, x0.1 at epochs 8 and 10 (milestones 7 and 9), the authors' 32^2 small-person rule
"${run[@]}" "${fast[@]}" --set epochs=10 --set "milestones=[7,9]" --set min_center_area=1024
# 2. epoch 11: a warm restart at 1e-3, still with the 32^2 rule
"${run[@]}" --resume "${fast[@]}" --set epochs=11 --set min_center_area=1024
# 3. epochs 12-19: every person gets a center (as from here on); x0.1 at epochs 17 and 19
"${run[@]}" --resume "${fast[@]}" --set epochs=19 --set "milestones=[16,18]"
# 4. epochs 20-33: a warm restart at 1e-3, x0.1 at epoch 32
"${run[@]}" --resume "${fast[@]}" --set epochs=33 --set "milestones=[31]"
# 5. epochs 34-46: a warm restart at 5e-4, x0.1 at epoch 44
"${run[@]}" --resume --set epochs=46 --set "milestones=[43]"
# 6. epochs 47-60: a warm restart at 5e-4, x0.1 at epoch 57
"${run[@]}" --resume --set epochs=60 --set "milestones=[56]"
# 7. epochs 61-73: a warm restart at 5e-4, x0.1 at epoch 70
"${run[@]}" --resume --set epochs=73 --set "milestones=[69]"
# 8. epochs 74-83 as train.yaml says: 5e-4 throughout, each epoch's weights kept; their mean is shipped
"${run[@]}" --resume
mkdir -p model_repo/synthetic_w16_256/1
epochs=runs/synthetic_w16_256/epochs
pose average-weights $epochs/epoch_0{74..83}.pth --model model_repo/synthetic_w16_256 \
    --bn-annotations data/synthetic/train/annotations.json --bn-images data/synthetic/train/images \
    --out model_repo/synthetic_w16_256/1/model.pth
# 9. two epochs at a constant 1e-4 from the averaged weights with the images of nobody, then batch-norm
# statistics measured again on scenes and empty images alike
pose train model_repo/synthetic_w16_256/train.yaml --set epochs=2 --set lr=0.0001 --set keep_empty_images=true \
    --set init_weights=model_repo/synthetic_w16_256/1/model.pth --set output=runs/synthetic_w16_256_negatives \
    --set val_annotations=null --set val_images=null
pose average-weights runs/synthetic_w16_256_negatives/epochs/epoch_002.pth --model model_repo/synthetic_w16_256 \
    --bn-annotations data/synthetic/train/annotations.json --bn-images data/synthetic/train/images --bn-keep-empty \
    --out model_repo/synthetic_w16_256/1/model.pth
# the scoring net learns from every training image, the empty ones included (target OKS 0)
pose train-rescore --model model_repo/synthetic_w16_256 \
    --annotations data/synthetic/train/annotations.json --images data/synthetic/train/images \
    --out model_repo/synthetic_w16_256/1/rescore.pth
pose evaluate data/synthetic/val/annotations.json data/synthetic/val/images --model model_repo/synthetic_w16_256
