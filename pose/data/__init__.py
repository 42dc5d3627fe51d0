"""Training data: COCO-format keypoint datasets, real or synthetic."""
