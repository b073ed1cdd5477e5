"""Replay: import recorded traffic into `requests` and run the production decision code over it
to tune admission, eviction, in-path fill and steering (docs/tuning.md)."""
