"""Kafka client security (TLS in k8s): the pure config helpers, and a guard that every Kafka client
the stages and tools construct carries the settings' security config (the k8s listener is
TLS-only: one client built without it is a stage that cannot start there)."""

from __future__ import annotations

import re
import ssl
from pathlib import Path

import pytest

from heatcache.kafkautil import client_config, ssl_context
from heatcache.settings import load_settings

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("heatcache", "sniffer", "streams", "fetcher", "dns_redirect", "console", "replay", "cachestore", "ops")
# what carries the security settings into a client's config dict
CARRIERS = ("client_config(", "kafka_client_config(", "**(config or {})", "config=config")
# built before any settings exist: the embedded broker's own readiness probe (PLAINTEXT listener)
ALLOWED = {("heatcache/services/kafka.py", "AdminClient({\"bootstrap.servers\": self.bootstrap})")}


def test_plaintext_is_empty_and_ssl_names_the_files(tmp_path: Path) -> None:
    assert client_config(None) == {}
    plain = load_settings(state_dir=tmp_path, lab_mode=True)
    assert client_config(plain) == {} and ssl_context(plain) is None
    tls = plain.model_copy(update={"kafka_security_protocol": "SSL", "kafka_ssl_ca": tmp_path / "ca.pem",
                                   "kafka_ssl_cert": tmp_path / "c.pem", "kafka_ssl_key": tmp_path / "k.pem"})
    assert client_config(tls) == {"security.protocol": "SSL", "ssl.ca.location": str(tmp_path / "ca.pem"),
                                  "ssl.certificate.location": str(tmp_path / "c.pem"),
                                  "ssl.key.location": str(tmp_path / "k.pem")}


def test_ssl_context_verifies_the_broker_and_loads_the_client_cert(tmp_path: Path) -> None:
    from heatcache.services.kafka import make_pki

    pki = make_pki(tmp_path / "pki")
    s = load_settings(state_dir=tmp_path, lab_mode=True).model_copy(update={
        "kafka_security_protocol": "SSL", "kafka_ssl_ca": pki.ca, "kafka_ssl_cert": pki.client_cert,
        "kafka_ssl_key": pki.client_key})
    ctx = ssl_context(s)
    assert ctx is not None and ctx.verify_mode == ssl.CERT_REQUIRED and ctx.check_hostname
    with pytest.raises(ssl.SSLError):
        ssl_context(s.model_copy(update={"kafka_ssl_key": pki.ca}))  # a CA cert is no private key


def _client_calls(text: str) -> list[tuple[int, str]]:
    """(line, the call's text up to its closing parenthesis) of every Kafka client construction."""
    out = []
    # kafkautil.Follower and its subclasses (super().__init__(bootstrap, ...)) take config= too
    for m in re.finditer(r"\b(Producer|Consumer|AdminClient|\w*Follower)\(|super\(\)\.__init__\(bootstrap", text):
        if text[max(0, m.start() - 11):m.start()].endswith(("isinstance(", "class ")):
            continue
        depth, i = 0, text.index("(", m.start() + (len("super()") if m.group(0).startswith("super") else 0))
        while i < len(text):
            depth += {"(": 1, ")": -1}.get(text[i], 0)
            if depth == 0:
                break
            i += 1
        out.append((text.count("\n", 0, m.start()) + 1, text[m.start():i + 1]))
    return out


def test_every_kafka_client_gets_the_security_config() -> None:
    missing = []
    for pkg in PACKAGES:
        for path in sorted((ROOT / pkg).rglob("*.py")):
            rel = str(path.relative_to(ROOT))
            for line, call in _client_calls(path.read_text()):
                if call.startswith(("Producer(config)", "Consumer(config)")):  # kafkautil's own builders
                    continue
                if (rel, call) in ALLOWED or any(c in call for c in CARRIERS):
                    continue
                missing.append(f"{rel}:{line}: {call[:100]}")
    assert not missing, ("Kafka clients built without kafkautil.client_config(settings) (TLS in k8s):\n"
                         + "\n".join(missing))
