"""heatcache: a stream-processing cache accelerator for narrow campus uplinks.

This package holds the contract shared by every stage (events, topics, cache keys, settings),
the CLI and the local stack launcher.
"""

__version__ = "0.1.0"
