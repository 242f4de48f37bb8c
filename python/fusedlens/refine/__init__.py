"""Guess-then-refine (Gupta et al. 2025): corpus token frequencies and their rank buckets, and the per-site sums of
a lens's top-1 predictions and probability mass by bucket, refine rates and depth to the correct answer."""
from .aggregate import RefineSums, changes_later, depth_to_correct
from .frequency import DEFAULT_BUCKETS, TokenCounts, bucket_names, check_buckets, parse_buckets

__all__ = ["DEFAULT_BUCKETS", "RefineSums", "TokenCounts", "bucket_names", "changes_later", "check_buckets",
           "depth_to_correct", "parse_buckets"]
