"""The policy proxy as its own process, the pure parts and the fetcher's side of it: the
refusal query, the password both sides derive from the aria2 secret, when an adopted download's
proxy options must change, and RemoteProxy against a running proxy (the reason of a refused
request asked once; wrong credentials refused; the k8s probe's 407)."""

from __future__ import annotations

import base64
import http.client
import socket

from pydantic import SecretStr

from fetcher.policyproxy import (
    PolicyProxy,
    RemoteProxy,
    options_differ,
    proxy_for,
    proxy_password,
    refusal_query,
)
from heatcache.probe import probe_policy_proxy
from heatcache.safety import ForbiddenAddress
from heatcache.settings import load_settings


def _auth(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


def test_refusal_query_and_options() -> None:
    head = f"GET /.heatcache/refused/ab%2Fc HTTP/1.1\r\nProxy-Authorization: {_auth('f', 'pw')}\r\n\r\n"
    assert refusal_query(head.encode()) == ("ab/c", "pw")
    assert refusal_query(b"GET /.heatcache/refused/x HTTP/1.1\r\n\r\n") == ("x", "")
    assert refusal_query(b"GET http://a.test/.heatcache/refused/x HTTP/1.1\r\n\r\n") is None  # a proxied one
    assert refusal_query(b"CONNECT a.test:443 HTTP/1.1\r\n\r\n") is None
    wanted = {"all-proxy": "http://127.0.0.1:6801", "all-proxy-user": "job", "all-proxy-passwd": "pw"}
    # as aria2's getOption reports them (all-proxy with a trailing slash)
    assert not options_differ({"all-proxy": "http://127.0.0.1:6801/", "all-proxy-user": "job", "dir": "/x"}, wanted)
    assert options_differ({"all-proxy": "http://127.0.0.1:40000", "all-proxy-user": "job"}, wanted)
    assert options_differ({}, wanted)


def test_password_and_which_proxy(tmp_path: object) -> None:
    s = load_settings(lab_mode=True, aria2_secret="one")
    assert proxy_password(s) == proxy_password(s.model_copy()) and len(proxy_password(s)) == 32
    assert proxy_password(s) != proxy_password(s.model_copy(update={"aria2_secret": SecretStr("two")}))
    assert "one" not in proxy_password(s)

    async def check(host: str) -> str:
        return host

    assert isinstance(proxy_for(s, check), PolicyProxy)  # port 0: inside the fetcher
    remote = proxy_for(s.model_copy(update={"policy_proxy_port": 6801}), check)
    assert isinstance(remote, RemoteProxy)
    assert remote.options("job") == {"all-proxy": "http://127.0.0.1:6801", "all-proxy-user": "job",
                                     "all-proxy-passwd": proxy_password(s)}


def test_remote_proxy_reads_each_refusal_once() -> None:
    async def check(host: str) -> str:
        raise ForbiddenAddress(f"{host} is not a public address")

    proxy = PolicyProxy(check, password="pw")
    proxy.start()
    try:
        conn = http.client.HTTPConnection("127.0.0.1", proxy.port, timeout=10)
        conn.request("GET", "http://127.0.0.1:9/secret", headers={"Proxy-Authorization": _auth("job1", "pw")})
        assert conn.getresponse().status == 403
        conn.close()
        assert RemoteProxy(proxy.port, "wrong").refused("job1") == ""  # 407: nothing told
        remote = RemoteProxy(proxy.port, "pw")
        assert "127.0.0.1 is not a public address" in remote.refused("job1")
        assert remote.refused("job1") == "" and remote.refused("job2") == ""
        assert probe_policy_proxy(load_settings(lab_mode=True, policy_proxy_port=proxy.port))
    finally:
        proxy.stop()
    assert RemoteProxy(proxy.port, "pw", timeout=0.5).refused("job1") == ""  # proxy gone: aria2c's error says why


def test_alive_says_why_a_proxy_does_not_serve() -> None:
    """The fetcher's health reads alive(): "" while the proxy serves, the reason once it's gone."""
    async def check(host: str) -> str:
        return ""

    proxy = PolicyProxy(check, password="pw")
    assert proxy.alive() == "the policy proxy is not serving"  # not started yet
    proxy.start()
    try:
        assert proxy.alive() == ""
    finally:
        proxy.stop()
    assert proxy.alive() == "the policy proxy is not serving"
    # the process's side: a port that accepts (a bare listener: no proxy to race its own stop), then not
    with socket.create_server(("127.0.0.1", 0)) as listener:
        port = listener.getsockname()[1]
        assert RemoteProxy(port, "pw", timeout=0.5).alive() == ""
    assert RemoteProxy(port, "pw", timeout=0.5).alive().startswith(
        f"the policy proxy on 127.0.0.1:{port} does not answer:")
