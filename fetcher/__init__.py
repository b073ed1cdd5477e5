"""The fetcher stage: fetch each hot object once through aria2c, record it, announce it."""
