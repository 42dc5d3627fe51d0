"""HTTP service: POST /v1/pose with dynamic batching, Prometheus metrics and health endpoints."""
