#!/usr/bin/env bash
# Reproduce model_repo/synthetic_w16_256/1/{model,rescore}.pth from nothing, on CPU (about 1 hour on 2 cores).
# Run from the repository root after `pip install torch==2.13.0 && pip install -e ".[training]"`.
set -euo pipefail
cd "$(dirname "$0")/../.."
scene=(--max-people 4 --min-height 0.3 --occluder-prob 0.25 --size 256)
pose synth data/synthetic/train --images 4000 --seed 1 "${scene[@]}"
pose synth data/synthetic/val --images 300 --seed 2 "${scene[@]}"
pose train model_repo/synthetic_w16_256/train.yaml --set validate_every=2
mkdir -p model_repo/synthetic_w16_256/1
cp runs/synthetic_w16_256/model.pth model_repo/synthetic_w16_256/1/model.pth
pose train-rescore --model model_repo/synthetic_w16_256 --weights runs/synthetic_w16_256/model.pth \
    --annotations data/synthetic/train/annotations.json --images data/synthetic/train/images \
    --max-images 2000 --out model_repo/synthetic_w16_256/1/rescore.pth
pose evaluate data/synthetic/val/annotations.json data/synthetic/val/images --model model_repo/synthetic_w16_256
