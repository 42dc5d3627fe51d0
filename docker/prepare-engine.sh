#!/bin/sh
# Make sure the engine cache (POSE_ENGINE_CACHE) holds a current TensorRT engine for POSE_MODEL on this GPU;
# build it only when missing or stale (see export/engine_cache.py). POSE_HALF=true builds with fp16 kernels.
set -eu
: "${POSE_MODEL:?set POSE_MODEL to a model_repo/<name> folder}"
precision="--no-fp16"
if [ "${POSE_HALF:-false}" = "true" ]; then
    precision="--fp16"
fi
exec pose-export prepare-engine --model "$POSE_MODEL" --cache "${POSE_ENGINE_CACHE:-/var/cache/pose/engines}" \
    --max-batch "${POSE_MAX_BATCH_SIZE:-8}" "$precision"
