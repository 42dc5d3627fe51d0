#!/bin/sh
# Build the TensorRT engine for this GPU unless a current one is cached at POSE_ENGINE_PATH.
# The plugin ONNX comes from the model's config.yaml (exported ahead of time, portable across GPUs), or is
# exported into the cache once when the model repository has none.
set -eu
: "${POSE_MODEL:?set POSE_MODEL to a model_repo/<name> folder}"
engine="${POSE_ENGINE_PATH:-/var/cache/pose/engines/model.plan}"
cache="$(dirname "$engine")"
mkdir -p "$cache"
if grep -q "variant: plugin" "$POSE_MODEL/config.yaml" 2>/dev/null; then
    set --
else
    if [ ! -f "$cache/model_plugin.onnx" ]; then
        pose-export onnx --model "$POSE_MODEL" --variant plugin --out "$cache" --no-record
    fi
    set -- --onnx "$cache/model_plugin.onnx"
fi
exec pose-export tensorrt --model "$POSE_MODEL" --out "$engine" --max-batch "${POSE_MAX_BATCH_SIZE:-8}" --if-stale "$@"
