"""The console against a running stack (the lab origin and clients, every stage, the console
as `heatcache up` starts it): headless Chromium on the page, `heatcache status --json`, and
`heatcache status` rendered in an 80-column pseudo-terminal.

One stack for the module. The origin trickles bodies at ~1 MB/s so a prefetch takes about two
seconds and its progress is visible on the page.
"""

from __future__ import annotations

import fcntl
import json
import os
import pty
import re
import select
import signal
import struct
import subprocess
import sys
import termios
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from cachestore.catalog import open_catalog
from heatcache import contract
from heatcache.contract import CacheEvent, FetchProgress
from heatcache.kafkautil import read_topic
from heatcache.lab import (
    NODE_IP,
    ORIGIN_IP,
    Origin,
    Reply,
    client_get,
    client_sources,
    lab_settings,
    make_sample_files,
    resolve_via,
    shared_port,
)
from heatcache.services.dnsmasq import Dnsmasq
from heatcache.settings import Settings, load_settings
from heatcache.stack import Stack, settings_env
from tests.faults.stackproc import wait_for

if TYPE_CHECKING:
    from playwright.sync_api import Page

pytestmark = pytest.mark.integration

HOST = "origin.console.test"
OTHER = "other.console.test"  # same origin, never steered before the pause test
FILES = {"video.bin": 2_000_000, "notes.bin": 60_000}
EXTRA = {"extra.bin": 300_000}
ARTIFACTS = Path(os.environ.get("HEATCACHE_TEST_ARTIFACTS", "test-artifacts")) / "console"
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync", "--no-first-run"]


@dataclass
class Running:
    settings: Settings
    stack: Stack
    origin: Origin
    files: dict[str, bytes]
    port: int

    def get(self, client: int, path: str, host: str = HOST) -> Reply:
        src = client_sources(client + 1)[client]
        return client_get(src, (self.settings.dns_host, self.settings.dns_port), host, self.port, path)

    @property
    def url(self) -> str:
        return f"http://{self.settings.console_host}:{self.settings.console_port}/"

    def key(self, name: str, host: str = HOST) -> str:
        return f"http://{host}:{self.port}/{name}"


@pytest.fixture(scope="module")
def running(kafka: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Running]:
    tmp = tmp_path_factory.mktemp("console")
    port = shared_port()
    files = make_sample_files(tmp / "www", {**FILES, **EXTRA})
    origin = Origin(tmp / "www", ORIGIN_IP, port, rate_bps=1_000_000).start()
    dns = Dnsmasq({HOST: ORIGIN_IP, OTHER: ORIGIN_IP})
    dns.start()
    base = load_settings(state_dir=tmp / "state", topic_prefix=f"t{uuid.uuid4().hex[:10]}-",
                         client_id_secret="test-secret", kafka_bootstrap=kafka)
    settings = lab_settings(base, tmp / "state", port, dns.upstream, purge_token="purge-secret",
                            console_refresh_s=0.3, console_networks=("lab-clients=127.0.1.0/24",))
    stack = Stack(settings, console=None)
    try:
        stack.start()
        yield Running(settings, stack, origin, files, port)
    finally:
        stack.stop()
        dns.stop()
        origin.stop()


def _wait(what: str, cond: Callable[[], object], stack: Stack, timeout: float = 60.0) -> None:
    """wait_for, failing at once when a stage of the stack died."""
    def alive_and() -> object:
        assert not stack.failed(), f"stage(s) died: {stack.failed()}"
        return cond()
    wait_for(alive_and, timeout, what, poll=0.2)


@contextmanager
def console_page(running: Running, tmp_path: Path) -> Iterator[Page]:
    """Headless Chromium on the console page, connected to the stack (a fresh profile directory,
    which Playwright passes as --user-data-dir; the confirmation of each action accepted)."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        browser = pw.chromium.launch_persistent_context(
            str(tmp_path / "chromium-profile"), executable_path="/usr/bin/chromium", headless=True,
            args=CHROMIUM_FLAGS, viewport={"width": 1400, "height": 1800})
        try:
            page = browser.new_page()
            page.on("dialog", lambda dialog: dialog.accept())
            page.goto(running.url)
            page.wait_for_selector("#conn.ok", timeout=30_000)
            yield page
        finally:
            browser.close()


def test_browser_download_hits_and_purge(running: Running, tmp_path: Path) -> None:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    s = running.settings
    video = running.key("video.bin")
    with console_page(running, tmp_path) as page:
        assert page.inner_text("#edge-health") == "healthy"

        # Round 1: two clients from the origin -> hot -> a prefetch whose progress shows.
        for client in (0, 1):
            for name in FILES:
                assert running.get(client, f"/{name}").address == ORIGIN_IP
        row = f'#downloads tr[data-key="{video}"]'
        page.wait_for_selector(f'{row}[data-state="running"]', timeout=60_000)
        percent = float(page.eval_on_selector(f"{row} progress", "p => p.value"))
        assert 0 <= percent < 100
        page.screenshot(path=str(ARTIFACTS / "1-downloading.png"), full_page=True)
        page.wait_for_selector(f'{row}[data-state="done"]', timeout=60_000)
        page.wait_for_selector(f'#objects tr[data-key="{video}"]', timeout=30_000)
        page.wait_for_selector(f'#steering tr[data-host="{HOST}"]', timeout=30_000)
        page.screenshot(path=str(ARTIFACTS / "2-cached.png"), full_page=True)

        # Round 2 from the edge: the hit counter and the bytes served rise on the page.
        _wait("steering", lambda: resolve_via((s.dns_host, s.dns_port), HOST) == [NODE_IP], running.stack)
        notes_row = f'#objects tr[data-key="{running.key("notes.bin")}"]'
        page.wait_for_selector(notes_row, timeout=60_000)
        hits_before = int(page.inner_text("#hits-total"))
        saved_before = int(page.get_attribute("#bytes-saved-total", "data-bytes") or 0)
        for client in (2, 3):
            reply = running.get(client, "/video.bin")
            assert reply.headers.get("x-cache") == "HIT" and reply.body == running.files["video.bin"]
        page.wait_for_function(
            f"() => Number(document.getElementById('hits-total').textContent) >= {hits_before + 2}", timeout=30_000)
        # bytes served come from the catalog's hit counts, which the edge writes every few seconds
        page.wait_for_function(
            f"() => Number(document.getElementById('bytes-saved-total').dataset.bytes) >= "
            f"{saved_before + 2 * len(running.files['video.bin'])}", timeout=30_000)
        # the edge counted those bytes under the clients' named network
        page.wait_for_function(
            "() => Number(document.querySelector('#savings-networks tr[data-network=\"lab-clients\"]')"
            f"?.dataset.bytes || 0) >= {2 * len(running.files['video.bin'])}", timeout=30_000)
        page.screenshot(path=str(ARTIFACTS / "3-hits.png"), full_page=True)

        # Purge from the page: file gone, catalog says purged, CacheEvent(purged), next is a MISS.
        cat = open_catalog(s.catalog)
        try:
            entry = cat.get(video)
            assert entry is not None and entry.state == "cached"
            path = s.cache_root / entry.path
            assert path.exists()
            page.click(f'#objects tr[data-key="{video}"] button.purge')
            page.wait_for_selector('#action-result[data-ok="1"]', timeout=30_000)
            assert not path.exists()
            entry = cat.get(video)
            assert entry is not None and entry.state == "purged"
            # the next request, at once (streams may admit the still-hot URL again, and the
            # fetcher refetch it: that takes seconds from the trickling origin)
            after = running.get(4, "/video.bin")
        finally:
            cat.close()
        page.wait_for_selector(f'#cache-recent tr[data-key="{video}"][data-event="purged"]', timeout=30_000)
        page.screenshot(path=str(ARTIFACTS / "4-purged.png"), full_page=True)
    events = [contract.decode(m.value(), CacheEvent)
              for m in read_topic(s.kafka_bootstrap, s.topic(contract.CACHE_EVENTS)) if m.key() == video.encode()]
    assert "purged" in [e.state for e in events]
    assert after.address == NODE_IP and after.headers.get("x-cache") == "MISS"
    assert after.body == running.files["video.bin"]


def test_page_pauses_prefetch_and_stops_steering(running: Running, tmp_path: Path) -> None:
    """The switches on the `control` topic, followed by the fetcher and the DNS at run time."""
    s = running.settings
    dns_addr = (s.dns_host, s.dns_port)
    extra = running.key("extra.bin", OTHER)
    with console_page(running, tmp_path) as page:
        # paused: a new hot URL waits in the fetcher's queue, and the fetcher says why
        page.click("#prefetch-pause")
        page.wait_for_selector("#prefetch-state.warn", timeout=30_000)
        for client in (0, 1):
            assert running.get(client, "/extra.bin", OTHER).address == ORIGIN_IP
        page.wait_for_selector(f'#downloads tr[data-key="{extra}"][data-state="queued"]', timeout=60_000)
        _wait("the fetcher holding the download", lambda: any(
            contract.decode(m.value(), FetchProgress).error == "prefetch paused"
            for m in read_topic(s.kafka_bootstrap, s.topic(contract.FETCH_PROGRESS), timeout=5)
            if m.key() == extra.encode()), running.stack)
        page.screenshot(path=str(ARTIFACTS / "5-paused.png"), full_page=True)
        page.click("#prefetch-resume")
        page.wait_for_selector(f'#downloads tr[data-key="{extra}"][data-state="done"]', timeout=60_000)
        # a host purge from the form: every cached object of that host, in one ObjectStore.purge
        page.wait_for_selector(f'#objects tr[data-key="{extra}"]', timeout=30_000)
        page.select_option("#action-kind", "purge-host")
        page.fill("#action-subject", f"{OTHER}:{running.port}")
        page.evaluate("() => { document.getElementById('action-result').dataset.ok = ''; }")
        page.click("#action-go")
        page.wait_for_selector('#action-result[data-ok="1"]', timeout=30_000)
        cat = open_catalog(s.catalog)
        try:
            entry = cat.get(extra)
            assert entry is not None and entry.state == "purged"
            assert not (s.cache_root / entry.path).exists()
        finally:
            cat.close()
        # announced (acknowledged before the page's answer): the edge's index drops it too
        assert "purged" in [contract.decode(m.value(), CacheEvent).state
                            for m in read_topic(s.kafka_bootstrap, s.topic(contract.CACHE_EVENTS), timeout=10)
                            if m.key() == extra.encode()]
        page.wait_for_selector(f'#cache-recent tr[data-key="{extra}"][data-event="purged"]', timeout=30_000)

        # the kill switch: the DNS answers every name normally, then steers again
        _wait("steering", lambda: resolve_via(dns_addr, HOST) == [NODE_IP], running.stack)
        page.click("#steering-stop")
        page.wait_for_selector("#steering-state.warn", timeout=30_000)
        _wait("steering stopped", lambda: resolve_via(dns_addr, HOST) == [ORIGIN_IP], running.stack, timeout=30)
        assert running.get(2, "/notes.bin").address == ORIGIN_IP
        page.click("#steering-start")
        _wait("steering again", lambda: resolve_via(dns_addr, HOST) == [NODE_IP], running.stack, timeout=30)


def _env(settings: Settings, **extra: str) -> dict[str, str]:
    return {**os.environ, **settings_env(settings), "PYTHONUNBUFFERED": "1", **extra}


def test_status_json_against_the_stack(running: Running) -> None:
    s = running.settings
    for client in (0, 1):  # something to show even when this test runs alone
        running.get(client, "/notes.bin")
    out = subprocess.run([sys.executable, "-m", "heatcache.cli", "status", "--json"], env=_env(s),
                         capture_output=True, timeout=60, check=True)
    snap = json.loads(out.stdout)
    assert snap["source"] == "console"
    assert {r["stage"] for r in snap["stages"]} >= {"streams", "fetcher", "dns", "edge", "sniffer"}
    assert snap["steering"]["edge_healthy"] is True
    assert set(snap["savings"]["windows"]) == {"5m", "1h", "1d"}
    # without a console answering, status builds the same picture from Kafka, the catalog and the edge
    direct = subprocess.run([sys.executable, "-m", "heatcache.cli", "status", "--json"],
                            env=_env(s, HEATCACHE_CONSOLE_PORT="1"), capture_output=True, timeout=60, check=True)
    snap2 = json.loads(direct.stdout)
    assert snap2["source"] == "direct"
    assert _wait_keys(snap2) >= {running.key("notes.bin")}
    assert snap2["steering"]["edge_healthy"] is True


def _wait_keys(snap: dict) -> set[str]:  # type: ignore[type-arg]
    return {h["cache_key"] for h in snap["heat"]["urls"]}


class Terminal:
    """``heatcache ARGS`` in a pseudo-terminal of ``rows`` x 80 columns, its output read as it
    comes (``read_until``), its exit status from ``exit_code``."""

    def __init__(self, settings: Settings, *args: str, rows: int) -> None:
        self.pid, self.fd = pty.fork()
        if self.pid == 0:  # the child
            os.execvpe(sys.executable, [sys.executable, "-m", "heatcache.cli", *args],
                       _env(settings, TERM="xterm-256color", COLUMNS="80", LINES=str(rows)))
        fcntl.ioctl(self.fd, termios.TIOCSWINSZ, struct.pack("HHHH", rows, 80, 0, 0))
        self.chunks: list[bytes] = []
        self.closed = False  # the child closed the terminal

    def read_until(self, cond: Callable[[], bool], timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while not self.closed and time.monotonic() < deadline and not cond():
            ready, _, _ = select.select([self.fd], [], [], 0.5)
            if not ready:
                continue
            try:
                data = os.read(self.fd, 65536)
            except OSError:  # EIO: the child closed the terminal
                data = b""
            if not data:
                self.closed = True
            self.chunks.append(data)
        return cond()

    def text(self, redraws: bool = False) -> str:
        """What was shown, colours gone; ``redraws``: cursor moves/erases (Live's redraw) end a line."""
        raw = b"".join(self.chunks).decode("utf-8", "replace")
        if redraws:
            raw = re.sub(r"\x1b\[[0-9;?]*[ABCDEFGHJK]", "\n", raw)
        return re.sub(r"\x1b\[[0-9;?]*[a-zA-Z]", "", raw)

    def exit_code(self, timeout: float = 10.0) -> int:
        """The child's exit status (killed if it has not ended within ``timeout``)."""
        deadline = time.monotonic() + timeout
        while True:
            done, status = os.waitpid(self.pid, os.WNOHANG)
            if done:
                break
            if time.monotonic() > deadline:
                os.kill(self.pid, signal.SIGKILL)
                _, status = os.waitpid(self.pid, 0)
                break
            time.sleep(0.1)
        os.close(self.fd)
        return os.waitstatus_to_exitcode(status)


def test_status_renders_in_80_columns(running: Running) -> None:
    term = Terminal(running.settings, "status", rows=24)
    try:
        term.read_until(lambda: term.closed, 60)
    finally:
        code = term.exit_code()
    assert code == 0
    text = term.text()
    lines = text.replace("\r", "").split("\n")
    assert max(len(line) for line in lines) <= 80, max(lines, key=len)
    for title in ("stages", "savings", "downloads", "heat: top URLs", "cache:", "steering"):
        assert title in text


def test_status_watch_refreshes_until_ctrl_c(running: Running) -> None:
    """`heatcache status --watch` in a real 80-column terminal: it redraws the picture
    frame after frame (a fresh snapshot every interval) within 80 columns; Ctrl-C ends it with 0."""
    term = Terminal(running.settings, "status", "--watch", "--interval", "0.5", rows=60)

    def frames() -> set[str]:  # each frame is a fresh snapshot stamped with its time
        return set(re.findall(r"heatcache status (\d\d:\d\d:\d\d)", term.text(redraws=True)))

    try:
        assert term.read_until(lambda: "stages" in term.text(redraws=True), 60), term.text(redraws=True)[-2000:]
        assert term.read_until(lambda: len(frames()) >= 3, 60), term.text(redraws=True)[-2000:]
        shown = term.text(redraws=True)  # before the terminal echoes ^C into it
        os.write(term.fd, b"\x03")  # Ctrl-C in the terminal: SIGINT to the foreground process
        term.read_until(lambda: False, 5)
    finally:
        code = term.exit_code()
    assert code == 0
    lines = shown.replace("\r", "").split("\n")
    assert max(len(line) for line in lines) <= 80, max(lines, key=len)
    for title in ("stages", "savings", "downloads", "steering"):
        assert title in shown
