"""The dns_redirect stage: a DNS server that steers cached hosts to the cache node, and the
edge HTTP server there that serves hits from disk and passes misses through to the origin."""
