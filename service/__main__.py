"""``python -m service``: serve the configured model with uvicorn (settings from POSE_* variables)."""

import uvicorn

from service.app import create_app
from service.cpus import configure_threads
from service.logs import configure_logging
from service.settings import Settings


def main() -> None:
    settings = Settings()
    configure_logging(settings.log_format)
    configure_threads(settings.threads)
    uvicorn.run(
        create_app(settings),
        host=settings.host,
        port=settings.port,
        timeout_graceful_shutdown=int(settings.drain_timeout_s),
        log_config=None,  # configure_logging's handler, with request ids
        access_log=False,  # the request middleware logs each request once, with its id
    )


if __name__ == "__main__":
    main()
