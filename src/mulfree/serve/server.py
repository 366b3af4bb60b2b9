"""Running the app: `serve(config)` (blocking, what `mulfree serve` calls) and `ServerThread`
(a server on a background thread, for tests, benchmarks and notebooks)."""

from __future__ import annotations

import socket
import threading
import time

from mulfree.errors import MulfreeError
from mulfree.serve.backends import Backend, load_backend
from mulfree.serve.config import ServeConfig


def backend_from_config(config: ServeConfig) -> Backend:
    """The backend for config.model, or for the bundled model when no model is given."""
    model = config.model
    if not model:
        from mulfree.engine.generate import bundled_model

        model = bundled_model()
        if model is None:
            raise MulfreeError(
                "no model given and no bundled model in this install: pass a model directory"
            )
    return load_backend(
        model,
        tokenizer_dir=config.tokenizer,
        model_id=config.model_id,
        kind=config.backend,
        lmul_bits=config.lmul,
        weights=config.weights,
        max_context=config.max_context,
        threads=config.threads,
        kv_dtype=config.kv_cache,
    )


def _bind(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as e:
        sock.close()
        raise MulfreeError(f"cannot listen on {host}:{port}: {e.strerror}") from None
    sock.listen(2048)
    return sock


def _uvicorn_server(app, config: ServeConfig):
    try:
        import uvicorn
    except ImportError:
        raise MulfreeError(
            "serving needs uvicorn and starlette: pip install 'mulfree[serve]'"
        ) from None
    return uvicorn.Server(
        uvicorn.Config(
            app,
            log_level=config.log_level,
            timeout_graceful_shutdown=5,
            timeout_keep_alive=config.keep_alive_s,  # idle keep-alive connections are closed
            access_log=config.log_level == "debug",
        )
    )


def _build_app(config: ServeConfig, backend: Backend, estimate_energy: bool = True):
    try:
        from mulfree.serve.app import build_app
    except ImportError as e:
        raise MulfreeError(
            f"serving needs starlette and uvicorn ({e.name} is missing): pip install 'mulfree[serve]'"
        ) from None
    return build_app(config, backend, estimate_energy=estimate_energy)


def serve(config: ServeConfig, backend: Backend | None = None) -> None:
    """Load the model (unless a backend is given) and serve it until interrupted."""
    backend = backend or backend_from_config(config)
    sock = _bind(config.host, config.port)
    app = _build_app(config, backend)
    server = _uvicorn_server(app, config)
    host, port = sock.getsockname()[:2]
    auth = " (API key required)" if config.api_key else ""
    print(
        f"mulfree serve: {backend.model_id} ({backend.kind} backend, {backend.weights} weights) on http://{host}:{port}{auth}",
        flush=True,
    )
    server.run(sockets=[sock])


class ServerThread:
    """`with ServerThread(config, backend) as s: ... s.url ...` — a live server on a thread.

    config.port 0 picks a free port; `s.port` tells which.
    """

    def __init__(
        self, config: ServeConfig, backend: Backend | None = None, *, estimate_energy: bool = True
    ):
        self.backend = backend or backend_from_config(config)
        self.app = _build_app(config, self.backend, estimate_energy)
        self.sock = _bind(config.host, config.port)
        self.host, self.port = self.sock.getsockname()[:2]
        self.server = _uvicorn_server(self.app, config)
        self.thread = threading.Thread(
            target=self.server.run,
            kwargs={"sockets": [self.sock]},
            name="mulfree-serve",
            daemon=True,
        )

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def state(self):
        """The App object (scheduler, metrics) behind the server."""
        return self.app.state.mulfree

    def start(self, timeout: float = 30.0) -> ServerThread:
        """Start serving (once; a second call returns at once) and wait until it listens."""
        if self.thread.is_alive():
            return self
        self.thread.start()
        t_end = time.monotonic() + timeout
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > t_end:
                raise MulfreeError("the server did not start")
            time.sleep(0.01)
        return self

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=30)
        self.sock.close()

    def __enter__(self) -> ServerThread:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
