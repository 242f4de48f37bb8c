"""Where tokens come from: corpus sources on disk (packed into sequences), in-memory token windows,
padding and batching, and the pydoc text. Knows tokenizers, not models."""
