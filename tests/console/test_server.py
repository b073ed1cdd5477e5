"""The console's web security on real sockets: off loopback every endpoint needs the token, the
live stream included; state-changing requests need the same origin and the page's CSRF token.
Accepted actions really reach the `control` topic (session Kafka broker)."""

from __future__ import annotations

import http.client
import json
import time
from collections.abc import Iterator
from dataclasses import dataclass

import pytest
from pydantic import SecretStr

from console.actions import Actions
from console.model import Model, snapshot
from console.server import ConsoleServer, check_bind, is_loopback, same_origin
from heatcache import contract
from heatcache.contract import ControlEvent
from heatcache.kafkautil import producer, read_topic
from heatcache.netutil import free_port
from heatcache.settings import Settings
from tests.loopthread import on_loop_thread

TOKEN = "console-secret"


@dataclass
class Reply:
    status: int
    headers: dict[str, str]
    body: bytes


@dataclass
class Served:
    server: ConsoleServer
    port: int
    settings: Settings

    def request(self, method: str, path: str, body: object = None, **headers: str) -> Reply:
        """One request on its own connection; the live stream's first event only."""
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
        try:
            data = json.dumps(body).encode() if body is not None else None
            conn.request(method, path, body=data, headers={"Content-Type": "application/json", **headers})
            resp = conn.getresponse()
            if path == "/api/stream" and resp.status == 200:
                content = resp.readline()
            else:
                content = resp.read()
            return Reply(resp.status, {k.lower(): v for k, v in resp.getheaders()}, content)
        finally:
            conn.close()

    def good_post(self, body: object, **headers: str) -> Reply:
        return self.request("POST", "/api/action", body, **{"Origin": f"http://127.0.0.1:{self.port}",
                                                             "X-Heatcache-CSRF": self.server.csrf, **headers})


def serve(settings: Settings) -> Iterator[Served]:
    model = Model()
    prod = producer(settings.kafka_bootstrap) if settings.kafka_bootstrap else None
    server = ConsoleServer(settings, lambda: snapshot(model, time.time()), Actions(settings, prod, list), push_s=0.2)
    port = free_port()
    with on_loop_thread(lambda: server.start(settings.console_host, port), server.stop):
        yield Served(server, port, settings)
    if prod is not None:
        prod.flush(5)
        # aiohttp's middleware cache keeps the server's handlers (and so Actions and this producer)
        # alive after the test: close it, or it keeps reconnecting to the broker until exit
        prod.close()


@pytest.fixture
def open_bind(kafka_settings: Settings) -> Iterator[Served]:
    """Bound to every address (not loopback), with a token."""
    yield from serve(kafka_settings.model_copy(update={"console_host": "0.0.0.0",
                                                       "console_token": SecretStr(TOKEN)}))


def control_events(settings: Settings) -> list[ControlEvent]:
    return [contract.decode(m.value(), ControlEvent)
            for m in read_topic(settings.kafka_bootstrap, settings.topic(contract.CONTROL), timeout=10)]


def test_binding_off_loopback_needs_a_token(base_settings: Settings) -> None:
    assert is_loopback("127.0.0.1") and is_loopback("::1") and is_loopback("localhost")
    assert not is_loopback("0.0.0.0") and not is_loopback("10.1.2.3")
    with pytest.raises(ValueError, match="HEATCACHE_CONSOLE_TOKEN"):
        check_bind(base_settings.model_copy(update={"console_host": "0.0.0.0"}))
    check_bind(base_settings)  # loopback: fine without


def test_off_loopback_everything_needs_the_token(open_bind: Served) -> None:
    for path in ("/", "/api/state", "/api/stream", "/static/console.js"):
        assert open_bind.request("GET", path).status == 401, path
    # an action without the token is refused, and nothing reaches the control topic
    refused = open_bind.good_post({"action": "steering", "value": "stopped"})
    assert refused.status == 401
    assert open_bind.request("POST", "/api/action", {"action": "steering", "value": "stopped"},
                             Authorization="Bearer wrong").status == 401
    assert open_bind.request("GET", "/api/state", Authorization="Bearer wrong").status == 401
    assert control_events(open_bind.settings) == []

    # the token opens everything; opening /?token=... once sets the cookie the page then uses
    login = open_bind.request("GET", f"/?token={TOKEN}")
    assert login.status == 303 and "HttpOnly" in login.headers.get("set-cookie", "")
    cookie = login.headers["set-cookie"].split(";")[0]
    page = open_bind.request("GET", "/", Cookie=cookie)
    assert page.status == 200 and open_bind.server.csrf in page.body.decode()
    state = open_bind.request("GET", "/api/state", Authorization=f"Bearer {TOKEN}")
    assert state.status == 200 and "stages" in json.loads(state.body)
    stream = open_bind.request("GET", "/api/stream", Authorization=f"Bearer {TOKEN}")
    assert stream.status == 200 and stream.headers["content-type"].startswith("text/event-stream")
    assert stream.body.startswith(b"data: {")


def test_cross_site_actions_are_refused(open_bind: Served) -> None:
    auth = {"Authorization": f"Bearer {TOKEN}"}
    body = {"action": "prefetch", "value": "paused"}
    # the token alone is not enough for a state change: no CSRF token, a foreign or missing Origin
    assert open_bind.request("POST", "/api/action", body, Origin=f"http://127.0.0.1:{open_bind.port}",
                             **auth).status == 403
    assert open_bind.good_post(body, Origin="http://evil.example", **auth).status == 403
    assert open_bind.request("POST", "/api/action", body, **{"X-Heatcache-CSRF": open_bind.server.csrf},
                             **auth).status == 403
    assert control_events(open_bind.settings) == []
    ok = open_bind.good_post(body, **auth)
    assert ok.status == 200 and json.loads(ok.body)["ok"]
    (event,) = control_events(open_bind.settings)
    assert (event.target, event.value) == ("prefetch", "paused") and event.by.startswith("console@")
    bad = open_bind.good_post({"action": "pin-url", "subject": "x", "value": "maybe"}, **auth)
    assert bad.status == 400


def test_loopback_needs_no_token_but_still_csrf(kafka_settings: Settings) -> None:
    for served in serve(kafka_settings):
        assert served.request("GET", "/").status == 200
        assert served.request("POST", "/api/action", {"action": "steering", "value": "stopped"}).status == 403
        assert served.good_post({"action": "steering", "value": "stopped"}).status == 200
        assert [e.value for e in control_events(kafka_settings)] == ["stopped"]


def test_same_origin_rules() -> None:
    from aiohttp.test_utils import make_mocked_request

    def req(**headers: str) -> bool:
        return same_origin(make_mocked_request("POST", "/api/action", headers={"Host": "node:8090", **headers}))

    assert req(Origin="http://node:8090") and req(Referer="http://node:8090/")
    assert not req(Origin="http://node:8091") and not req(Origin="null") and not req()


def test_cli_control_goes_through_the_same_actions(kafka_settings: Settings, monkeypatch: pytest.MonkeyPatch,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    from heatcache.cli import main
    from heatcache.stack import settings_env

    for name, value in settings_env(kafka_settings).items():
        monkeypatch.setenv(name, value)
    assert main(["control", "prefetch", "pause"]) == 0
    assert main(["control", "pin", "Big.Test", "never"]) == 0
    assert main(["control", "pin", "http://big.test/a.iso", "always"]) == 0
    assert main(["control", "steering", "stop"]) == 0
    assert main(["control", "pin", "big.test", "sometimes"]) == 2  # refused with the reason
    assert "value must be one of" in capsys.readouterr().err
    events = [(e.target, e.subject, e.value, e.by.startswith("cli@")) for e in control_events(kafka_settings)]
    assert events == [("prefetch", "", "paused", True), ("host", "big.test", "never", True),
                      ("url", "http://big.test/a.iso", "always", True), ("steering", "", "stopped", True)]
    # purging needs the edge's purge token: a clear refusal, nothing half-done
    assert main(["control", "purge", "http://big.test/a.iso"]) == 2
    assert "HEATCACHE_PURGE_TOKEN" in capsys.readouterr().err
