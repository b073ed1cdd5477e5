"""The fetcher's address-policy proxy as its own supervised process (issue 15): under the stack's
supervisor (aria2c, policy proxy and the fetcher as children), kill -9 of the fetcher in the
middle of a slow download leaves the download on its connection: the restarted fetcher adopts
it, the origin saw ONE request and no Range resend, and the cached bytes are the origin's.
Then kill -9 of the proxy: the supervisor starts it again on the same port."""

from __future__ import annotations

import hashlib
import os
import signal
import time

from pydantic import SecretStr

from heatcache.netutil import free_port
from heatcache.probe import probe_policy_proxy
from heatcache.settings import Settings
from heatcache.stack import Stack
from tests.fetcher.origin import Route, TestOrigin
from tests.fetcher.test_app import hot, publish, wait_events


def _wait(cond: object, what: str, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():  # type: ignore[operator]
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def test_a_download_survives_kill9_of_the_fetcher(kafka_settings: Settings) -> None:
    origin = TestOrigin().start()
    body = os.urandom(1_500_000)
    origin.routes["/long.bin"] = Route(body, rate=400_000)  # ~4 s
    settings = kafka_settings.model_copy(update={
        "aria2_rpc_port": free_port(), "aria2_secret": SecretStr("s3cret-proxy"), "allow_private_origins": True,
        "upstream_dns": ("127.0.0.1:9",), "fetch_retry_base_s": 0.2, "metrics_port": 0, "metrics_interval_s": 0})
    url = origin.url("/long.bin")
    stack = Stack(settings, stages=["fetch"], console=None).start()
    try:
        assert stack.proxy is not None and "policy-proxy" in stack.record.children
        publish(settings, (url.encode(), hot(url)))
        _wait(lambda: origin.sent["/long.bin"] > 100_000, "the download to start")
        os.kill(stack.children["fetch"].proc.pid, signal.SIGKILL)
        assert origin.sent["/long.bin"] < len(body)  # killed in the middle of the download
        _wait(lambda: "fetch restarted" in stack.events, "the supervisor to restart the fetcher")
        events = wait_events(settings, {url})
        assert events[url].state == "cached" and events[url].sha256 == hashlib.sha256(body).hexdigest()
        assert (settings.cache_root / events[url].path).read_bytes() == body
        # the download went on on its connection: one GET, never resumed with a Range
        log = (settings.state_dir / "logs" / "fetch.log").read_text()
        assert origin.gets["/long.bin"] == 1 and origin.ranges["/long.bin"] == [""], (origin.ranges, log[-4000:])

        port = stack.proxy.port
        os.kill(stack.proxy.proc.pid, signal.SIGKILL)  # type: ignore[union-attr]
        _wait(lambda: "policy-proxy restarted" in stack.events, "the supervisor to restart the proxy")
        assert stack.proxy.port == port and probe_policy_proxy(settings.model_copy(update={"policy_proxy_port": port}))
    finally:
        stack.stop()
        origin.stop()
