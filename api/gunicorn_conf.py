"""gunicorn settings of the API, one file for every way it is served: `gunicorn -c python:api.gunicorn_conf api.wsgi:app`.

Slow or idle clients must not starve the workers. A sync worker serves one connection at a time and a
gthread worker gives each connection a thread as soon as its first byte arrives, so as many clients
sending headers a byte a second as there are workers (or threads) left /health unanswered. gevent
workers read every connection in a greenlet of its own: a dribbling client costs a greenlet, not a
worker, and gunicorn bounds the reading of each request's headers by `keepalive` seconds, after which
the connection is closed (idle keep-alive connections likewise). The app's blocking calls cooperate:
gevent patches sockets and threads, tritonclient's HTTP client is gevent's own, and psycopg2 waits
through psycogreen. In production a buffering proxy (nginx) still goes in front (README, Reliability).
Command-line flags (`--bind`, `--workers`) override these values.
"""

from __future__ import annotations

from typing import Any

from settings import Settings, configure_logging

_settings = Settings.from_env()

bind = f"127.0.0.1:{_settings.api_port}"
worker_class = "gevent"
workers = _settings.api_workers
# Connections one worker holds at once (slow ones included); past it the worker stops accepting.
worker_connections = _settings.api_worker_connections
# Seconds a client gets to send a request's headers, and that an idle keep-alive connection stays open.
keepalive = _settings.api_header_timeout_s
# A worker whose event loop is blocked this long is restarted (a request stuck in CPU or a C call).
timeout = 60
graceful_timeout = 30
# Header limits (gunicorn's defaults, stated): a request line, a header count, a header's size.
limit_request_line = 4094
limit_request_fields = 100
limit_request_field_size = 8190
# Several servers run on one machine (tests, the benchmark, the demo); gunicorn >= 25's control socket
# has one default path per user, so it is off.
control_socket_disable = True


def post_worker_init(worker: Any) -> None:
    """Per worker, after the app is loaded and before it accepts: app logging, torch and BLAS threads,
    cooperative psycopg2, warm-up."""
    configure_logging()  # the app's own loggers (gunicorn configures only its own)
    from serving.request_path import limit_compute_threads

    limit_compute_threads(_settings.api_compute_threads)
    if type(worker).__name__.startswith("Gevent"):  # not when --worker-class picks another on the command line
        from psycogreen.gevent import patch_psycopg

        patch_psycopg()
    from api import warm_up

    warm_up(worker.wsgi)
