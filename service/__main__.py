"""``python -m service``: serve the configured model with uvicorn (settings from POSE_* variables).

Shutdown is one drain: SIGTERM turns readiness off and starts the batcher's drain at once; requests not
answered within ``POSE_DRAIN_TIMEOUT_S`` get a JSON 503, and uvicorn, which waits a little longer so those
answers are written, then exits with status 0. SIGTERM to exit takes at most
``POSE_DRAIN_TIMEOUT_S + SHUTDOWN_MARGIN_S``; the Helm chart derives the pod's grace period from it.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import signal
from collections.abc import Callable, Iterator
from types import FrameType

import uvicorn

from service.app import create_app, start_drain
from service.cpus import configure_threads
from service.logs import configure_logging
from service.settings import Settings

SHUTDOWN_MARGIN_S = 5  # after the drain: writing the last answers and closing connections


class Server(uvicorn.Server):
    """uvicorn whose exit signal starts the service's drain, and which exits cleanly once it is done."""

    def __init__(self, config: uvicorn.Config, on_exit: Callable[[], None]) -> None:
        super().__init__(config)
        self.on_exit = on_exit

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        super().handle_exit(sig, frame)
        asyncio.get_running_loop().call_soon_threadsafe(self.on_exit)

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        # uvicorn's own version raises the signal again after a graceful shutdown, so the process ends
        # "killed by SIGTERM" (status 143) even when every request was answered.
        previous = {sig: signal.signal(sig, self.handle_exit) for sig in (signal.SIGINT, signal.SIGTERM)}
        try:
            yield
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)


def main() -> None:
    settings = Settings()
    configure_logging(settings.log_format)
    configure_threads(settings.threads)
    app = create_app(settings)
    config = uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        timeout_graceful_shutdown=math.ceil(settings.drain_timeout_s) + SHUTDOWN_MARGIN_S,
        log_config=None,  # configure_logging's handler, with request ids
        access_log=False,  # the request middleware logs each request once, with its id
    )
    Server(config, on_exit=lambda: start_drain(app)).run()


if __name__ == "__main__":
    main()
