"""What differs between the transformers releases mulfree supports, in one place.

transformers 5.24 renamed the cache argument and output field `past_key_values` (and
`cache_params`) to `cache`; the old names still work there but log a deprecation warning, and
`generate()` hands models the new name only. Our models accept both names, and every caller in
mulfree passes and reads the one the installed release uses (`CACHE`), so no warning reaches a
user and both old and new releases decode through the cache.
"""

from __future__ import annotations

from typing import Any

from transformers.modeling_outputs import CausalLMOutputWithPast

#: The installed transformers' name for the cache, as a forward() keyword and an output field.
CACHE: str = (
    "cache" if "cache" in CausalLMOutputWithPast.__dataclass_fields__ else "past_key_values"
)
#: Every name a caller may use for the cache (the current one first).
CACHE_NAMES: tuple[str, ...] = ("cache", "past_key_values", "cache_params")


def cache_kwargs(cache: Any) -> dict[str, Any]:
    """`{name: cache}` under the installed release's name: `model(ids, **cache_kwargs(c))`."""
    return {CACHE: cache}


def output_cache(out: Any) -> Any:
    """The cache a model output carries (under either name), without a deprecation warning."""
    if isinstance(out, dict):  # ModelOutput is an OrderedDict
        for name in CACHE_NAMES:
            if name in out.keys():
                return dict.get(out, name)
        return None
    return getattr(out, CACHE, None)


def one_cache(**named: Any) -> Any:
    """The cache a forward() was given under any of its names (`cache=`, `past_key_values=`...).

    Passing it under two names at once is an error, as it is in transformers.
    """
    given = {name: c for name, c in named.items() if c is not None}
    if len(given) > 1:
        raise TypeError(f"pass the cache once, not as {' and '.join(map(repr, given))}")
    return next(iter(given.values()), None)
