"""Unit tests for the DNS policy (dns_redirect/policy.py): ACL, rate limits, overrides, cache."""

from __future__ import annotations

from dnslib import QTYPE, RCODE, RR, SOA, A, DNSRecord

from dns_redirect.policy import ClientAcl, RateLimiter, ResponseCache, never_steer


def test_acl() -> None:
    acl = ClientAcl(["10.0.0.0/8", "2001:db8::/32"])
    assert acl.allowed("10.9.8.7") and acl.allowed("2001:db8::5") and acl.allowed("::ffff:10.1.1.1")
    assert not acl.allowed("203.0.113.9") and not acl.allowed("127.0.0.1") and not acl.allowed("fe80::1%eth0")


def test_rate_limiter_buckets_per_client() -> None:
    rl = RateLimiter(rate=10, burst=5)
    assert [rl.allow("a", 0.0) for _ in range(7)] == [True] * 5 + [False] * 2
    assert rl.allow("b", 0.0)  # another client has its own bucket
    assert rl.allow("a", 0.1) and not rl.allow("a", 0.1)  # 0.1 s at 10/s refills one token
    assert RateLimiter(rate=0, burst=1).allow("x", 0.0)  # 0 = unlimited


def test_rate_limiter_forgets_old_clients() -> None:
    rl = RateLimiter(rate=1, burst=1, max_clients=3)
    for c in "abcd":
        rl.allow(c, 0.0)
    assert len(rl._buckets) == 3


def test_never_steer() -> None:
    assert never_steer("login.bank.example", ("bank.example",))
    assert not never_steer("bank.example.org", ("bank.example",))


def answer(name: str, ttl: int, ip: str = "192.0.2.1") -> tuple[DNSRecord, DNSRecord]:
    q = DNSRecord.question(name, "A")
    r = q.reply()
    r.add_answer(RR(name, QTYPE.A, ttl=ttl, rdata=A(ip)))
    return q, r


def test_cache_counts_ttl_down_and_expires() -> None:
    cache = ResponseCache()
    q, r = answer("a.example", 60)
    cache.put(q, r, now=100.0)
    q2 = DNSRecord.question("A.example", "A")
    hit = cache.get(q2, now=130.0)
    assert hit is not None
    parsed = DNSRecord.parse(hit)
    assert parsed.header.id == q2.header.id and parsed.rr[0].ttl == 30 and str(parsed.rr[0].rdata) == "192.0.2.1"
    again = DNSRecord.parse(cache.get(q, now=131.0) or b"")
    assert again.header.id == q.header.id and again.rr[0].ttl == 29  # the stored answer was not altered
    assert cache.get(q, now=160.0) is None and len(cache) == 0


def test_cache_negative_and_uncacheable() -> None:
    cache = ResponseCache(negative_ttl=300)
    q = DNSRecord.question("nope.example", "A")
    nx = q.reply()
    nx.header.rcode = RCODE.NXDOMAIN
    nx.add_auth(RR("example", QTYPE.SOA, ttl=3600, rdata=SOA("ns.example", "h.example", (1, 2, 3, 4, 45))))
    cache.put(q, nx, now=0.0)
    hit = cache.get(q, now=44.0)
    assert hit is not None and DNSRecord.parse(hit).header.rcode == RCODE.NXDOMAIN
    assert cache.get(q, now=45.0) is None  # the SOA minimum bounds negative caching
    sf = q.reply()
    sf.header.rcode = RCODE.SERVFAIL
    cache.put(q, sf, now=0.0)
    tc = answer("t.example", 60)
    tc[1].header.tc = 1
    cache.put(*tc, now=0.0)
    assert len(cache) == 0


def test_cache_is_bounded() -> None:
    cache = ResponseCache(max_entries=2)
    for name in ("a.example", "b.example", "c.example"):
        cache.put(*answer(name, 60), now=0.0)
    assert len(cache) == 2 and cache.get(DNSRecord.question("a.example"), 1.0) is None
