"""An OpenAI-compatible HTTP server for mulfree models (`mulfree serve`).

    from mulfree.serve import ServeConfig, serve
    serve(ServeConfig(model="path/to/model_dir"))        # blocks; http://127.0.0.1:8000

Routes: POST /v1/completions, POST /v1/chat/completions, GET /v1/models, GET /health,
GET /metrics (Prometheus), GET / (a web page). MatMul-free models decode all active requests in
one batched step (each with its own recurrent state); other Hugging Face causal LMs decode one
request per step. Needs the `serve` extra (starlette, uvicorn). See docs/serve.md.
"""

from mulfree._lazy import attach

_NAMES = {
    "Backend": "mulfree.serve.backends",
    "GenericBackend": "mulfree.serve.backends",
    "MatMulFreeBackend": "mulfree.serve.backends",
    "load_backend": "mulfree.serve.backends",
    "make_backend": "mulfree.serve.backends",
    "ServeConfig": "mulfree.serve.config",
    "SamplingParams": "mulfree.engine.sampler",
    "ServerThread": "mulfree.serve.server",
    "serve": "mulfree.serve.server",
}
__getattr__, __dir__ = attach(__name__, _NAMES)

__all__ = [
    "Backend",
    "GenericBackend",
    "MatMulFreeBackend",
    "SamplingParams",
    "ServeConfig",
    "ServerThread",
    "load_backend",
    "make_backend",
    "serve",
]
