"""Bottom-up multi-person pose estimation: heatmap-guided adaptive keypoint estimates, ranked."""

__version__ = "0.1.0"
