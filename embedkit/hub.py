"""Whether the Hugging Face hub can be asked anything, and what its local cache already holds.

Names shaped like ``org/name`` may be hub models or datasets. Offline, the hub's clients retry a lookup for a
minute or more before they fail; embedkit asks once, with a short timeout, so that a missing file or an
unreachable hub is a one-line error at once, and a cached model loads without the hub.
"""

from __future__ import annotations

import urllib.error
import urllib.request
from pathlib import Path


def hub_reachable(timeout: float = 5.0) -> bool:
    """Whether the Hugging Face hub answers (``HF_HUB_OFFLINE=1`` says no without asking)."""
    from huggingface_hub import constants

    if constants.HF_HUB_OFFLINE:
        return False
    try:
        urllib.request.urlopen(urllib.request.Request(constants.ENDPOINT, method="HEAD"), timeout=timeout).close()
    except urllib.error.HTTPError:
        return True  # it answered, if only with an error status
    except OSError:  # no route, no name resolution, a timeout (URLError is an OSError)
        return False
    return True


def cached_hub_file(name: str, filename: str) -> Path | None:
    """The local Hugging Face cache's copy of ``filename`` of the hub repository ``name`` (``org/name``), or
    ``None`` when the cache holds none (or ``name`` is no valid repository id)."""
    from huggingface_hub import try_to_load_from_cache
    from huggingface_hub.errors import HFValidationError

    try:
        cached = try_to_load_from_cache(name, filename)
    except HFValidationError:  # not a valid repository id: nothing of that name can be cached
        return None
    return Path(cached) if isinstance(cached, str) else None


def hub_model_cached(name: str) -> bool:
    """Whether the hub model ``name`` (``org/name``) is in the local Hugging Face cache."""
    return cached_hub_file(name, "config.json") is not None
