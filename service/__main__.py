"""``python -m service``: serve the configured model with uvicorn (settings from POSE_* variables).

Shutdown is one drain: SIGTERM turns readiness off and starts the batcher's drain at once; requests not
answered within ``POSE_DRAIN_TIMEOUT_S`` get a JSON 503, and uvicorn, which waits a little longer so those
answers are written, then exits with status 0. SIGTERM to exit takes at most
``POSE_DRAIN_TIMEOUT_S + SHUTDOWN_MARGIN_S`` whatever is running: a batch still computing then is abandoned
(its requests were answered 503), and a watchdog ends the process at that bound if anything else holds it.
The Helm chart derives the pod's grace period from it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import os
import signal
import sys
import threading
from collections.abc import Callable, Iterator
from types import FrameType

import uvicorn

from service.app import create_app, start_drain
from service.cpus import configure_threads
from service.logs import configure_logging
from service.memory import tune_allocator
from service.settings import Settings

SHUTDOWN_MARGIN_S = 5  # after the drain: writing the last answers and closing connections
CLOSE_CONNECTIONS_S = 2  # uvicorn's wait for open connections after the drain, within the margin

log = logging.getLogger("pose.service")


def exit_now(reason: str) -> None:
    """End the process with status 0 at once, logs flushed: the drain already answered every request, and
    a thread still computing (a batch nobody waits for) must not hold the exit past its bound."""
    log.warning("exiting now: %s", reason)
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


class Server(uvicorn.Server):
    """uvicorn whose exit signal starts the service's drain, and which exits within its bound once it is done."""

    def __init__(
        self, config: uvicorn.Config, on_exit: Callable[[], None], exit_within_s: float, failed: Callable[[], bool]
    ) -> None:
        super().__init__(config)
        self.on_exit = on_exit
        self.failed = failed
        self.exit_within_s = exit_within_s
        self._watchdog: threading.Timer | None = None

    async def on_tick(self, counter: int) -> bool:
        if self.failed():  # start-up failed in the background: stop, and exit with status 1
            self.should_exit = True
        return await super().on_tick(counter)

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        super().handle_exit(sig, frame)
        if self._watchdog is None:
            reason = f"shutdown took {self.exit_within_s:g} s (POSE_DRAIN_TIMEOUT_S + {SHUTDOWN_MARGIN_S} s)"
            self._watchdog = threading.Timer(self.exit_within_s, exit_now, args=(reason,))
            self._watchdog.daemon = True
            self._watchdog.start()
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
    tune_allocator()  # before the model loads: large buffers are unmapped when freed (service.memory)
    settings = Settings()
    configure_logging(settings.log_format)
    configure_threads(settings.threads)
    app = create_app(settings, background_start=True)  # the port opens at once; readiness follows the model
    config = uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        timeout_graceful_shutdown=math.ceil(settings.drain_timeout_s) + CLOSE_CONNECTIONS_S,
        log_config=None,  # configure_logging's handler, with request ids
        access_log=False,  # the request middleware logs each request once, with its id
    )
    exit_within_s = settings.drain_timeout_s + SHUTDOWN_MARGIN_S - 0.5  # the watchdog fires inside the bound
    state = app.state.service
    Server(config, lambda: start_drain(app), exit_within_s, failed=lambda: state.failed is not None).run()
    if state.failed is not None:
        sys.exit(1)
    batcher = state.batcher
    if batcher is not None and batcher.busy:  # the interpreter would wait for the batch's thread to finish
        exit_now("a batch was still computing after the drain; it is abandoned")


if __name__ == "__main__":
    main()
