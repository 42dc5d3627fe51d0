"""Prometheus metrics of the service, one registry per app (histograms, so quantiles aggregate)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from service.schemas import RuntimeInfo

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 10.0, 30.0)


class Metrics:
    """Every series the service exports, prefixed ``pose_``."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter("pose_requests", "Pose requests by HTTP status", ["status"], registry=r)
        self.images = Counter("pose_images", "Images processed", registry=r)
        self.request_seconds = Histogram(
            "pose_request_duration_seconds", "End-to-end latency of POST /v1/pose", buckets=LATENCY_BUCKETS, registry=r
        )
        self.queue_seconds = Histogram(
            "pose_queue_seconds", "Time a request waited for its batch to start", buckets=LATENCY_BUCKETS, registry=r
        )
        self.inference_seconds = Histogram(
            "pose_inference_seconds", "Preprocessing + network forward per batch", buckets=LATENCY_BUCKETS, registry=r
        )
        self.postprocess_seconds = Histogram(
            "pose_postprocess_seconds", "Grouping and scoring per batch", buckets=LATENCY_BUCKETS, registry=r
        )
        self.batch_size = Histogram(
            "pose_batch_size", "Images per batch", buckets=(1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 64, 128), registry=r
        )
        self.persons = Histogram(
            "pose_persons_per_image", "Poses returned per image", buckets=(0, 1, 2, 3, 5, 10, 20, 30), registry=r
        )
        self.videos = Counter("pose_videos", "Videos accepted by POST /v1/pose/video", registry=r)
        self.video_frames = Counter("pose_video_frames", "Video frames run and streamed back", registry=r)
        self.queue_depth = Gauge("pose_queue_depth", "Requests waiting for a batch", registry=r)
        self.inflight = Gauge("pose_inflight_requests", "Requests being handled", registry=r)
        self.inflight_pixels = Gauge(
            "pose_inflight_pixels", "Decoded pixels admitted and not yet answered (the in-flight budget)", registry=r
        )
        self.streams_open = Gauge("pose_streams_open", "WebSocket pose streams open now", registry=r)
        self.stream_frames = Counter(
            "pose_stream_frames",
            "Stream frames by outcome: received, answered, dropped (overload) or failed (bad frame)",
            ["outcome"],
            registry=r,
        )
        self.stream_frame_seconds = Histogram(
            "pose_stream_frame_latency_seconds",
            "Stream frame received to its poses sent (frames that were dropped are not observed)",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.shed = Counter(
            "pose_shed_requests",
            "Requests refused before any work was spent on them: queue_full (queue limit), deadline (could not be "
            "answered in time, refused on arrival), expired (shed while waiting), pixels (in-flight pixel budget)",
            ["reason"],
            registry=r,
        )
        self.delivered_images = Counter(
            "pose_delivered_images",
            "Images whose poses reached the client, by whether that was before the request's deadline "
            "(goodput: rate of deadline=met)",
            ["deadline"],
            registry=r,
        )
        self.wasted_images = Counter(
            "pose_wasted_images",
            "Images computed whose poses nobody received: client_gone (the client left or timed out), shutdown "
            "(answered 503 by the drain while computing)",
            ["reason"],
            registry=r,
        )
        self.batch_cost = Gauge(
            "pose_batch_cost_seconds",
            "The batch-time estimate behind admission: fixed seconds per batch and seconds per unit of work "
            "(one scale-1 pass over a square input)",
            ["part"],
            registry=r,
        )
        self.gpu_memory = Gauge("pose_gpu_memory_bytes", "CUDA memory allocated by the model's process", registry=r)
        self.backend_info = Gauge(
            "pose_backend_info",
            "What the backend runs (1 on the combination in use); adaptive_conv_fallback=true: the fused kernel "
            "failed its start-up check; precision_fallback=true: POSE_PRECISION=int8 was asked and float32 runs",
            [
                "backend",
                "device",
                "precision",
                "precision_fallback",
                "adaptive_conv",
                "adaptive_conv_fallback",
                "cuda_graphs",
            ],
            registry=r,
        )
        self.cuda_graphs = Gauge("pose_cuda_graphs", "CUDA graphs held (batch bucket x input shape)", registry=r)
        self.cuda_graph_memory = Gauge("pose_cuda_graph_memory_bytes", "Device memory the CUDA graphs hold", registry=r)
        self.cuda_graph_budget = Gauge(
            "pose_cuda_graph_memory_budget_bytes", "Device memory the CUDA graphs may hold", registry=r
        )

        for reason in ("queue_full", "deadline", "expired", "pixels"):  # every series exists from the start
            self.shed.labels(reason=reason)
        for met in ("met", "missed"):
            self.delivered_images.labels(deadline=met)
        for reason in ("client_gone", "shutdown"):
            self.wasted_images.labels(reason=reason)

    def record_runtime(self, backend: str, device: str, runtime: RuntimeInfo) -> None:
        """Publish what the backend runs and what its CUDA graphs hold (after start-up and each batch)."""
        self.backend_info.clear()
        self.backend_info.labels(
            backend=backend,
            device=device,
            precision=runtime.precision,
            precision_fallback=str(runtime.precision_fallback is not None).lower(),
            adaptive_conv=runtime.adaptive_conv or "",
            adaptive_conv_fallback=str(runtime.adaptive_conv_fallback is not None).lower(),
            cuda_graphs=str(runtime.cuda_graphs).lower(),
        ).set(1)
        self.cuda_graphs.set(runtime.cuda_graphs_recorded)
        self.cuda_graph_memory.set(runtime.cuda_graph_memory_bytes)
        self.cuda_graph_budget.set(runtime.cuda_graph_memory_budget_bytes)
