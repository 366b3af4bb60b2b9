"""Real models obtainable through package registries, cached as safetensors HF folders."""

from mulfree._lazy import attach

_NAMES = {
    "MODELS": "mulfree.hub.registry",
    "get_model": "mulfree.hub.registry",
    "is_cached": "mulfree.hub.registry",
    "model_path": "mulfree.hub.registry",
    "resolve_model": "mulfree.hub.registry",
}
__getattr__, __dir__ = attach(__name__, _NAMES)

__all__ = ["MODELS", "get_model", "is_cached", "model_path", "resolve_model"]
