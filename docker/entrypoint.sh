#!/bin/sh
# Container entry point. With the TensorRT backend, the engine is a per-GPU build output: it is built here
# when missing or stale (POSE_ENGINE_BUILD=if-stale, the default) or must already exist (never; the Helm
# chart builds it in an init container and sets never).
set -eu
if [ "${POSE_BACKEND:-torch}" = "tensorrt" ] && [ "${POSE_ENGINE_BUILD:-if-stale}" = "if-stale" ]; then
    /usr/local/bin/prepare-engine.sh
fi
exec "$@"
