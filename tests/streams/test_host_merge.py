"""Host heat over partitions: distinct clients merge through the records' sketches (pure)."""

from __future__ import annotations

from heatcache import contract
from heatcache.contract import HostHeat, RequestEvent
from heatcache.hostheat import encode_sketch, merge
from streams.heat import PartitionHeat
from streams.rules import Rules
from streams.windows import WindowSpec


def record(ph: PartitionHeat, host: str) -> HostHeat:
    spec = ph.spec
    st = ph.host_stats(host)
    regs = ph.hosts[host].window_registers(spec.first_pane(ph.watermark, spec.window_s), spec.sketch_p)
    return HostHeat(host=host, partition=ph.partition, requests=st.requests, tls=st.tls, clients=st.clients,
                    window_s=st.window_s, ts=ph.watermark, sketch=encode_sketch(regs))


def fold_clients(ph: PartitionHeat, clients: list[str], key: str, ts: float = 100.0, method: str = "GET") -> None:
    evs = [RequestEvent(ts, c, method, "h.example", "/x", key, key) for c in clients]
    ph.fold(ph.applied + 1, evs)


def test_clients_of_a_host_spanning_partitions_are_merged_not_summed() -> None:
    spec = WindowSpec(window_s=100, step_s=10, client_cap=8)
    p0, p1 = (PartitionHeat(p, Rules.simple(spec)) for p in (0, 1))
    fold_clients(p0, ["a", "b", "c"], "http://h.example/1")
    fold_clients(p1, ["b", "c", "d"], "http://h.example/2")
    fold_clients(p1, ["e"], "https://h.example/", method="TLS")
    recs = [record(p0, "h.example"), record(p1, "h.example")]
    assert [r.clients for r in recs] == [3, 4]
    # through the contract, as the console reads them
    recs = [contract.decode(contract.encode(r), HostHeat) for r in recs]
    total = merge("h.example", recs)
    assert (total.requests, total.tls, total.clients, total.merged) == (7, 1, 5, True)
    assert total.http_share == 6 / 7
    # records without a sketch (older producers): the largest partition's count, not the sum
    bare = [{"requests": r.requests, "tls": r.tls, "clients": r.clients} for r in recs]
    assert merge("h.example", bare).clients == 4 and not merge("h.example", bare).merged


def test_sketched_hosts_merge_within_the_error_bound() -> None:
    spec = WindowSpec(window_s=100, step_s=10, client_cap=8, sketch_p=10)
    p0, p1 = (PartitionHeat(p, Rules.simple(spec)) for p in (0, 1))
    fold_clients(p0, [f"c{i}" for i in range(0, 3000)], "http://h.example/1", ts=95.0)
    fold_clients(p0, [f"c{i}" for i in range(0, 500)], "http://h.example/1", ts=100.0)  # a second pane
    fold_clients(p1, [f"c{i}" for i in range(1500, 4500)], "http://h.example/2")
    assert p0.hosts["h.example"].clients is None  # past the cap: sketches
    total = merge("h.example", [record(p0, "h.example"), record(p1, "h.example")])
    error = 1.04 / 32  # 1.04 / sqrt(2^10)
    assert abs(total.clients - 4500) <= 3 * error * 4500, total
