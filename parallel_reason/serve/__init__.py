"""OpenAI-compatible HTTP server over the fork/join runner.

``python -m parallel_reason.serve --model DIR`` serves ``/v1/completions``,
``/v1/chat/completions``, ``/v1/models`` and ``/health``. Requests are decoded by one
:class:`Engine` thread with continuous batching: a request that arrives while
others decode joins the running batch at the next step. See ``README.md``
("Serving") and :mod:`.app` for limits and extra fields.
"""

import importlib.util as _util

_missing = [m for m in ("fastapi", "uvicorn") if _util.find_spec(m) is None]
if _missing:  # pragma: no cover
    raise ImportError(f"the server needs the 'serve' extra ({', '.join(_missing)} missing): pip install -e '.[serve]'")

from .app import ServeConfig, create_app  # noqa: E402  (after the check above: a clear message first)
from .engine import Engine, Job, Sampling  # noqa: E402

__all__ = ["Engine", "Job", "Sampling", "ServeConfig", "create_app", "build_server", "main"]


def build_server(
    model, tokenizer, config: ServeConfig | None = None, max_rows: int = 32, admit_wait: int = 8, **runner_kw
):
    """An ASGI app (and its engine) serving ``model``; ``runner_kw`` go to :class:`Runner`."""
    from ..runner import Runner

    runner = Runner(model, tokenizer, **runner_kw)
    engine = Engine(runner, max_rows=max_rows, admit_wait=admit_wait)
    return create_app(engine, config), engine


def main(argv=None) -> int:
    from .cli import main as _main

    return _main(argv)


class ServerThread:
    """Run an ASGI app with uvicorn in a background thread on ``host`` and a free port
    (tests, benchmarks): ``with ServerThread(app) as s: s.url`` is ``http://host:port/v1``."""

    def __init__(self, app, host: str = "127.0.0.1", port: int = 0, log_level: str = "warning"):
        import socket
        import threading

        import uvicorn

        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind((host, port))
        self.host, self.port = self.sock.getsockname()[:2]
        self.url = f"http://{self.host}:{self.port}/v1"
        cfg = uvicorn.Config(app, log_level=log_level, timeout_graceful_shutdown=2)
        self.server = uvicorn.Server(cfg)
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.sock]}, daemon=True)

    def __enter__(self) -> "ServerThread":
        import time

        self.thread.start()
        t0 = time.time()
        while not self.server.started:
            if not self.thread.is_alive() or time.time() - t0 > 30:
                raise RuntimeError("the server did not start")
            time.sleep(0.01)
        return self

    def __exit__(self, *exc) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=30)
        self.sock.close()
