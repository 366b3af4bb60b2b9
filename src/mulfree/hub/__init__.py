"""Real models obtainable through package registries, cached as safetensors HF folders."""

from mulfree.hub.registry import MODELS, get_model, is_cached, model_path, resolve_model

__all__ = ["MODELS", "get_model", "is_cached", "model_path", "resolve_model"]
