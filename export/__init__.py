"""Checkpoint -> ONNX (portable / plugin) -> TensorRT engine, and the fused adaptive-conv kernel."""
