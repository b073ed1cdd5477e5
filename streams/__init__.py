"""The streams stage: windowed heat per cache key on Faust, emitting HotUrl on admission."""
