"""Typed, frozen settings for every stage, read once at start-up from ``HEATCACHE_*``.

Build them with :func:`load_settings` in the CLI and pass the object down; no module keeps
configuration of its own. Invalid values fail at start-up with a message naming the variable.
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Annotated, Any

from pydantic import Field, SecretStr, ValidationError, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict


class SettingsError(ValueError):
    """Raised when the environment holds an invalid setting; the message is for humans."""


class Settings(BaseSettings):
    """All of heatcache's knobs. Every field maps to ``HEATCACHE_<FIELD>`` in the environment."""

    model_config = SettingsConfigDict(env_prefix="HEATCACHE_", frozen=True, extra="forbid")

    # -- where state lives (broker data, cache files, catalog, aria2 session, logs)
    state_dir: Path = Path(".state")
    cache_dir: Path | None = None  # defaults to <state_dir>/cache

    # -- Kafka: empty bootstrap means "start the embedded single-node broker"
    kafka_bootstrap: str = ""
    kafka_port: int = Field(default=9092, ge=0, le=65535)  # embedded broker's port (0 = free port)
    kafka_heap_mb: int = Field(default=384, ge=128)
    # embedded broker's JVM tuned for start-up (C1 JIT only + a class-data archive of Kafka's
    # classes beside its jars): about a third of the start-up CPU, lower peak throughput. The
    # test fixtures and `heatcache up` in tests set it; benchmarks and the default do not
    kafka_fast_start: bool = False
    kafka_partitions: int = Field(default=3, ge=1, le=256)
    topic_prefix: str = ""  # prepended to every topic name (tests use one per test)
    topic_requests: str = "requests"
    topic_hot_urls: str = "hot-urls"
    topic_cache_events: str = "cache-events"
    topic_fetch_progress: str = "fetch-progress"
    topic_metrics: str = "metrics"
    topic_dead_letter: str = "dead-letter"
    topic_control: str = "control"  # operator switches (compacted): pins, prefetch pause, steering stop
    topic_host_heat: str = "host-heat"  # HostHeat from streams (per host and partition)
    # -- Kafka client security (ops, k8s/): Strimzi's TLS listener with a client certificate per
    # stage; the files are the KafkaUser's Secret and the cluster CA, mounted by each pod
    kafka_security_protocol: str = Field(default="PLAINTEXT", pattern="^(PLAINTEXT|SSL)$")
    kafka_ssl_ca: Path | None = None
    kafka_ssl_cert: Path | None = None
    kafka_ssl_key: Path | None = None

    # -- sniffer
    sniff_iface: str = "lo"
    sniff_ports: Annotated[tuple[int, ...], NoDecode] = (80, 8080)
    sniff_pcap: Path | None = None  # read a capture file instead of an interface
    sniff_outgoing: bool = False  # also take packets the gateway sends (not needed on a span port)
    sniff_tls_ports: Annotated[tuple[int, ...], NoDecode] = (443,)  # ClientHello SNI -> host-level events
    sniff_netns: str = ""  # open the capture socket inside this network namespace (ip netns name)
    sniff_compiled: bool = True  # the compiled fast path (sniffer/_fastpath.c); false: the Python reference
    ignore_hosts: Annotated[tuple[str, ...], NoDecode] = ()  # hosts (and subdomains) never published
    ignore_paths: Annotated[tuple[str, ...], NoDecode] = ()  # path prefixes never published
    client_id_raw: bool = False  # publish raw client addresses instead of keyed hashes (explicit opt-in)
    metrics_port: int = Field(default=0, ge=0, le=65535)  # Prometheus /metrics; 0 = off
    # -- the stage runner (heatcache/runner.py): metrics snapshots, stop deadline
    metrics_bind: str = "0.0.0.0"  # address /metrics and /health listen on
    metrics_interval_s: float = Field(default=10.0, ge=0)  # `metrics` topic snapshot period; 0 = off
    stop_deadline_s: float = Field(default=10.0, gt=0)  # after SIGTERM, long work is interrupted after this
    # a lab or test machine: the shipped default secrets are accepted (never on a real node)
    lab_mode: bool = False
    client_id_secret: SecretStr = SecretStr("change-me")  # HMAC key for pseudonymous client ids
    client_id_rotation_s: int = Field(default=7 * 86400, ge=60)
    ignore_addresses: Annotated[tuple[str, ...], NoDecode] = ()  # e.g. the cache node itself: no feedback loop
    batch_max_events: int = Field(default=500, ge=1)
    batch_linger_ms: int = Field(default=200, ge=0)
    cache_key_rules: Path | None = None  # JSON file of per-site query rules

    # -- streams (heat rule)
    app_id: str = "heatcache-streams"
    heat_window_s: int = Field(default=24 * 3600, ge=1)
    heat_min_clients: int = Field(default=2, ge=1)  # 1 = cache on first access
    heat_min_requests: int = Field(default=1, ge=1)
    heat_max_tracked_clients: int = Field(default=64, ge=1)  # exact distinct clients up to this, then a sketch
    heat_step_s: int = Field(default=0, ge=0)  # pane of the hopping window (window_s a multiple); 0 = about window/24
    heat_grace_s: int = Field(default=300, ge=0)  # events this far behind the watermark still count
    heat_expiry_s: int = Field(default=0, ge=0)  # state kept behind the watermark; 0 = window + grace
    heat_sketch_p: int = Field(default=10, ge=4, le=18)  # HyperLogLog registers 2^p (3.3% error at 10)
    heat_first_access: bool = False  # admit every key on its first request (costs uplink: see DESIGN)
    heat_rules: Path | None = None  # JSON rules file: overrides per host / path pattern, allow / deny
    heat_retry_base_s: float = Field(default=60.0, gt=0)  # failed fetch: re-emit after base * 2^(n-1)
    heat_retry_max_s: float = Field(default=6 * 3600.0, gt=0)
    heat_flush_interval_s: float = Field(default=5.0, gt=0)  # state made durable (and offsets committed) this often
    heat_store: str = Field(default="memory", pattern="^(memory|rocksdb)$")  # Faust table store
    heat_top_n: int = Field(default=10, ge=0)  # hot keys / hosts in each metrics snapshot
    heat_metrics_interval_s: float = Field(default=10.0, gt=0)
    heat_host_topic: bool = True  # publish HostHeat on `host-heat` each flush
    heat_state_slots: int = Field(default=64, ge=1, le=65536)  # state records per partition (keys hashed over them)
    heat_host_flush_s: float = Field(default=30.0, ge=0)  # host heat made durable this often (reporting only)
    heat_commit_interval_s: float = Field(default=0.0, ge=0)  # offset commits; 0 = the flush interval
    heat_max_ahead_s: int = Field(default=3600, ge=0)  # events this far ahead of the watermark are refused; 0 = off
    heat_fetch_timeout_s: float = Field(default=6 * 3600.0, ge=0)  # admitted, no cache event: admit again; 0 = never
    heat_host_publish_s: float = Field(default=5.0, ge=0)  # HostHeat records at most this often; 0 = each flush
    heat_compiled: bool = True  # the compiled fold (streams/_fold.c); false: the Python reference
    streams_instance_id: str = ""  # Kafka static membership (group.instance.id): a restart rejoins at once
    streams_session_timeout_s: float = Field(default=10.0, ge=6, le=300)  # a dead worker's partitions move on

    # -- fetcher
    aria2_rpc_host: str = "http://127.0.0.1"
    aria2_rpc_port: int = Field(default=6800, ge=0, le=65535)
    aria2_secret: SecretStr = SecretStr("heatcache")
    max_object_bytes: int = Field(default=4 * 1024**3, ge=1)
    fetch_timeout_s: float = Field(default=600.0, gt=0)
    allow_private_origins: bool = False  # only for labs and tests: origins on private addresses
    origin_allow_networks: Annotated[tuple[str, ...], NoDecode] = ()  # private networks allowed as origins anyway
    catalog_url: str = ""  # sqlite:///path or mysql://user:pass@host:port/db; default sqlite in state
    node_name: str = "cache-0"
    outbound_address: str = ""  # source address for the node's own origin traffic (fetcher, edge)
    # the address-policy proxy in front of aria2c (fetcher/policyproxy.py, rel): 0 = inside the
    # fetcher process; a port = its own process on 127.0.0.1 (`heatcache policy-proxy`, started by
    # `heatcache up` and in the k8s cache pod), so a fetcher restart does not cut aria2c's downloads
    policy_proxy_port: int = Field(default=0, ge=0, le=65535)
    # Kafka static membership for the fetcher's consumer (group.instance.id, rel): a restarted
    # fetcher takes its partitions back at once instead of after the session timeout; one id per
    # fetcher process (`heatcache up` sets "<node_name>-fetch"); empty = dynamic membership
    fetch_instance_id: str = ""

    # -- fetcher concurrency, retries, budget (fetcher/app.py)
    # the uplink's share is bounded by the byte budget below, not by counting connections; these
    # bound how much of it origins that limit each connection's rate can fill (docs/cache-store.md)
    fetch_max_concurrent: int = Field(default=16, ge=1, le=256)  # downloads at once, overall
    fetch_max_per_host: int = Field(default=16, ge=1, le=64)  # downloads at once from one origin host
    fetch_max_overall_bps: int = Field(default=0, ge=0)  # aria2c --max-overall-download-limit; 0 = none
    fetch_retries: int = Field(default=3, ge=0, le=20)  # attempts after the first, with exponential back-off
    fetch_retry_base_s: float = Field(default=2.0, gt=0)
    fetch_max_redirects: int = Field(default=5, ge=0, le=20)
    fetch_progress_interval_s: float = Field(default=0.5, gt=0, le=1.0)
    fetch_producer_timeout_ms: int = Field(default=120_000, ge=1000)  # message.timeout.ms (re-sent after it)
    # a key whose fetch failed is not fetched again before base * 2^(failures-1) (at most max; a
    # permanent failure waits max): kept in the catalog (fetcher/admission.py), so across restarts
    fetch_failed_backoff_s: float = Field(default=60.0, ge=0)
    fetch_failed_backoff_max_s: float = Field(default=6 * 3600.0, ge=0)
    # objects of at least this many bytes are downloaded only inside the off-peak hours (UTC,
    # "22-6"; fetcher/budget.py); 0 = no such limit
    fetch_large_object_bytes: int = Field(default=0, ge=0)
    fetch_offpeak_hours: str = Field(default="", pattern=r"^$|^([01]?\d|2[0-3])-([01]?\d|2[0-4])$")

    # -- cache store (cachestore/): quota, eviction, coherence
    cache_max_bytes: int = Field(default=0, ge=0)  # total bytes of cached objects; 0 = no byte quota
    cache_min_free_bytes: int = Field(default=256 * 1024**2, ge=0)  # free-disk floor on the cache's filesystem
    cache_max_object_fraction: float = Field(default=0.25, gt=0, le=1)  # one object's share of the quota at most
    cache_half_life_s: float = Field(default=4 * 3600.0, gt=0)  # eviction: how fast old requests stop counting
    # revalidation of stale objects by the fetcher (fetcher/revalidate.py); 0 concurrent = off
    revalidate_interval_s: float = Field(default=10.0, gt=0)  # how often the catalog is scanned for stale objects
    revalidate_min_s: float = Field(default=60.0, ge=0)  # one object is asked at most once per this
    revalidate_concurrent: int = Field(default=2, ge=0, le=64)  # conditional requests at once
    revalidate_stale_grace_s: float = Field(default=86400.0, ge=0)  # served stale while the origin fails, then evicted

    # -- DNS and edge
    node_address: str = "127.0.0.1"  # what steered names resolve to (the edge's address)
    node_address6: str = ""
    dns_host: str = "127.0.0.1"
    dns_port: int = Field(default=5353, ge=0, le=65535)
    dns_ttl: int = Field(default=30, ge=1)
    upstream_dns: Annotated[tuple[str, ...], NoDecode] = ()  # "ip" or "ip:port"; empty = the system's resolv.conf
    dns_client_networks: Annotated[tuple[str, ...], NoDecode] = (
        "127.0.0.0/8", "10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "100.64.0.0/10", "::1/128", "fc00::/7",
    )  # campus networks allowed to use the resolver; everyone else is REFUSED
    dns_rate_qps: float = Field(default=500.0, ge=0)  # per client address; 0 = unlimited
    dns_rate_burst: float = Field(default=1000.0, ge=1)
    dns_cache_entries: int = Field(default=50_000, ge=0)  # forwarded-answer cache; 0 = off
    dns_fastlane: bool = True  # UDP through the compiled lane (recvmmsg/sendmmsg) when it is built; false = pure Python
    never_steer_hosts: Annotated[tuple[str, ...], NoDecode] = ()  # always resolved normally
    edge_health_url: str = ""  # default http://<node_address>:<edge_port>/.heatcache/health
    dns_health_interval_s: float = Field(default=0.0, ge=0)  # 0 = a third of the steered TTL
    purge_token: SecretStr = SecretStr("")  # bearer token for the edge's purge API; empty = purge disabled
    edge_fill: bool = True  # store cacheable misses of steered hosts as they pass through the edge
    edge_host: str = "127.0.0.1"
    edge_port: int = Field(default=8080, ge=0, le=65535)
    # with nginx in front: hits answer "X-Accel-Redirect: <prefix><object path>" and nginx sends
    # the file from an internal location aliased to the cache's objects; empty = the edge sends
    edge_accel_prefix: str = ""
    # -- switching steering on safely (steer): off entirely, or only for some client networks
    dns_steering: bool = True  # false: no name is steered (the `control` topic cannot turn it on)
    dns_steer_networks: Annotated[tuple[str, ...], NoDecode] = ()  # only these clients are steered; empty = all
    # -- TLS passthrough on the cache node (steer): HTTPS to a steered host is spliced to its
    # origin by the ClientHello's SNI, never terminated; empty = no TLS listener
    edge_tls_ports: Annotated[tuple[int, ...], NoDecode] = (443,)
    edge_tls_hello_timeout_s: float = Field(default=10.0, gt=0)  # a ClientHello must arrive by then
    # the edge also listens on every HEATCACHE_SNIFF_PORTS port; "80:8080" = clients' port 80 reaches
    # the listener on 8080 (a Service or NAT in front: no root needed for 80)
    edge_port_map: Annotated[tuple[str, ...], NoDecode] = ()
    # -- leak detection (steer): requests the sniffer still sees for steered hosts bypassed the node
    bypass_window_s: float = Field(default=300.0, gt=0)  # the bypass ratio's sliding window
    bypass_alert_ratio: float = Field(default=0.2, ge=0, le=1)  # a host above this is "high" (logged, counted)
    bypass_min_requests: int = Field(default=20, ge=1)  # fewer requests in the window say nothing
    # pseudonymous client ids carry the name of their HEATCACHE_CONSOLE_NETWORKS network ("dorms/3f2a..."):
    # per-network bypass and savings without raw addresses (networks smaller than 256 addresses get no label)
    client_id_network: bool = True

    # -- console (the operator's web page and `heatcache status`)
    console_host: str = "127.0.0.1"  # off loopback, every endpoint needs console_token
    console_port: int = Field(default=8090, ge=0, le=65535)
    console_token: SecretStr = SecretStr("")  # bearer/cookie token; required when not bound to loopback
    # client networks named for the savings table: "dorms=10.1.0.0/16|10.9.0.0/16,library=10.2.0.0/16"
    console_networks: Annotated[tuple[str, ...], NoDecode] = ()
    console_refresh_s: float = Field(default=1.0, ge=0.1, le=60)  # live-stream push and catalog/edge poll period

    @field_validator("console_networks", mode="before")
    @classmethod
    def _split_networks(cls, value: Any) -> Any:
        if isinstance(value, str):
            return tuple(p for p in value.replace(" ", "").split(",") if p)
        return value

    @field_validator("console_networks")
    @classmethod
    def _check_named_networks(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        for item in value:
            name, eq, cidrs = item.partition("=")
            if not eq or not name or not cidrs:
                raise ValueError(f"{item!r}: expected name=cidr[|cidr...]")
            for cidr in cidrs.split("|"):
                ipaddress.ip_network(cidr, strict=False)
        return value

    @field_validator("sniff_ports", "sniff_tls_ports", "edge_tls_ports", mode="before")
    @classmethod
    def _split_ports(cls, value: Any) -> Any:
        if isinstance(value, str):
            return tuple(int(p) for p in value.replace(" ", "").split(",") if p)
        return value

    @field_validator("ignore_addresses", "upstream_dns", "ignore_hosts", "ignore_paths", "dns_client_networks",
                     "never_steer_hosts", "origin_allow_networks", "dns_steer_networks", "edge_port_map",
                     mode="before")
    @classmethod
    def _split_list(cls, value: Any) -> Any:
        if isinstance(value, str):
            return tuple(p for p in value.replace(" ", "").split(",") if p)
        return value

    @field_validator("sniff_ports")
    @classmethod
    def _check_ports(cls, value: tuple[int, ...]) -> tuple[int, ...]:
        if not value or any(not 0 < p < 65536 for p in value):
            raise ValueError("needs at least one port, each in 1..65535")
        return value

    @field_validator("sniff_tls_ports", "edge_tls_ports")
    @classmethod
    def _check_tls_ports(cls, value: tuple[int, ...]) -> tuple[int, ...]:
        if any(not 0 < p < 65536 for p in value):
            raise ValueError("each port must be in 1..65535")
        return value

    @field_validator("edge_port_map")
    @classmethod
    def _check_port_map(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        for item in value:
            client, sep, listen = item.partition(":")
            if not (sep and client.isdigit() and listen.isdigit() and 0 < int(client) < 65536
                    and 0 < int(listen) < 65536):
                raise ValueError(f"{item!r} is not CLIENT_PORT:LISTEN_PORT (1..65535 each)")
        return value

    @field_validator("dns_client_networks", "origin_allow_networks", "dns_steer_networks")
    @classmethod
    def _check_networks(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        for item in value:
            ipaddress.ip_network(item, strict=False)
        return value

    @field_validator("ignore_hosts", "never_steer_hosts")
    @classmethod
    def _lower_hosts(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        return tuple(h.lower().rstrip(".") for h in value)

    @field_validator("node_address", "ignore_addresses")
    @classmethod
    def _check_ips(cls, value: Any) -> Any:
        for item in (value,) if isinstance(value, str) else value:
            ipaddress.ip_address(item)
        return value

    @field_validator("edge_accel_prefix")
    @classmethod
    def _check_accel_prefix(cls, value: str) -> str:
        if value and not (value.startswith("/") and value.endswith("/") and value.isascii() and " " not in value):
            raise ValueError("must be a URI path that starts and ends with '/', e.g. /.heatcache/objects/")
        return value

    @field_validator("upstream_dns")
    @classmethod
    def _check_upstreams(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        for item in value:
            parse_hostport(item, 53)
        return value

    @field_validator("catalog_url")
    @classmethod
    def _check_catalog(cls, value: str) -> str:
        if value and not value.startswith(("sqlite:///", "mysql://")):
            raise ValueError("must start with sqlite:/// or mysql://")
        return value

    def model_copy(self, *, update: Mapping[str, Any] | None = None, deep: bool = False) -> Settings:
        """A copy with ``update`` validated like the environment is (pydantic's own copy skips
        validation: a plain string would stand where a SecretStr belongs)."""
        if not update:
            return super().model_copy(deep=deep)
        return type(self).model_validate({**dict(self), **update})

    # -- derived values
    @property
    def cache_root(self) -> Path:
        return self.cache_dir if self.cache_dir is not None else self.state_dir / "cache"

    @property
    def catalog(self) -> str:
        return self.catalog_url or f"sqlite:///{(self.state_dir / 'catalog.sqlite3').resolve()}"

    @property
    def health_url(self) -> str:
        if self.edge_health_url:
            return self.edge_health_url
        host = f"[{self.node_address}]" if ":" in self.node_address else self.node_address
        return f"http://{host}:{self.edge_port}/.heatcache/health"

    @property
    def health_interval(self) -> float:
        return self.dns_health_interval_s or max(0.5, self.dns_ttl / 3)

    @property
    def node_addresses(self) -> frozenset[str]:
        """The cache node's own addresses (steered answers, its origin traffic), normalized as the
        sniffer prints addresses: what the sniffer never counts, configured or not."""
        out: set[str] = set()
        for address in (self.node_address, self.node_address6, self.outbound_address):
            try:
                ip = ipaddress.ip_address(address)
            except ValueError:  # unset ("") or not an address: nothing to ignore
                continue
            family = socket.AF_INET if ip.version == 4 else socket.AF_INET6
            out.add(socket.inet_ntop(family, ip.packed))  # exactly as the sniffer prints a frame's address
        return frozenset(out)

    def kafka_client_config(self) -> dict[str, str]:
        """librdkafka settings for the configured security protocol (merged into every client)."""
        if self.kafka_security_protocol == "PLAINTEXT":
            return {}
        config = {"security.protocol": "SSL"}
        for key, path in (("ssl.ca.location", self.kafka_ssl_ca), ("ssl.certificate.location", self.kafka_ssl_cert),
                          ("ssl.key.location", self.kafka_ssl_key)):
            if path is not None:
                config[key] = str(path)
        return config

    def topic(self, name: str) -> str:
        """Full topic name for a logical one ('requests', 'hot-urls', ...)."""
        field = "topic_" + name.replace("-", "_")
        return self.topic_prefix + str(getattr(self, field))


# Secrets as shipped: a node started with one of these would be keyed like every other install.
DEFAULT_SECRETS = {"client_id_secret": "change-me", "aria2_secret": "heatcache"}


def default_secrets(settings: Settings, names: Iterable[str] = tuple(DEFAULT_SECRETS)) -> list[str]:
    """The HEATCACHE_* variables among ``names`` that still hold the shipped default secret
    (empty in lab mode): start-up refuses them."""
    if settings.lab_mode:
        return []
    return [f"HEATCACHE_{n.upper()}" for n in names
            if getattr(settings, n).get_secret_value() == DEFAULT_SECRETS[n]]


def parse_hostport(text: str, default_port: int) -> tuple[str, int]:
    """Split ``ip``, ``ip:port`` or ``[v6]:port``; raise ValueError on anything else."""
    if text.startswith("["):
        host, _, rest = text[1:].partition("]")
        port = int(rest[1:]) if rest.startswith(":") else default_port
    elif text.count(":") == 1:
        host, port_s = text.split(":")
        port = int(port_s)
    else:
        host, port = text, default_port
    ipaddress.ip_address(host)
    if not 0 < port < 65536:
        raise ValueError(f"bad port in {text!r}")
    return host, port


def load_settings(**overrides: Any) -> Settings:
    """Read the environment once; turn validation errors into one readable SettingsError."""
    try:
        return Settings(**overrides)
    except ValidationError as exc:
        lines = []
        for err in exc.errors():
            name = "HEATCACHE_" + "_".join(str(p) for p in err["loc"]).upper()
            lines.append(f"  {name}: {err['msg']}")
        raise SettingsError("invalid heatcache settings:\n" + "\n".join(lines)) from None
