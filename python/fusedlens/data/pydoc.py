"""Real English text that ships with Python (pydoc_data.topics): the default corpus, no download."""
from __future__ import annotations

import functools


@functools.lru_cache(maxsize=1)
def pydoc_text() -> str:
    """The pydoc help topics, in a fixed order (about 600 KB)."""
    from pydoc_data.topics import topics

    return "\n\n".join(topics[key] for key in sorted(topics))
