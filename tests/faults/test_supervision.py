"""Supervision under `heatcache up`, on real processes: kill -9 of a stage and of the embedded
broker (restarted with back-off, the other stages keep serving), kill -9 of `up` itself (nothing
left behind, the next `up` starts cleanly), a configuration error (reported, not restarted), a
foreign process on the aria2 or Kafka port, and the shipped default secrets (refused)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from heatcache.lab import lab_settings, resolve_via
from heatcache.netutil import free_port
from heatcache.runner import EX_CONFIG
from heatcache.services.aria2 import Aria2Daemon, Aria2SetupError
from heatcache.services.dnsmasq import Dnsmasq
from heatcache.settings import Settings
from heatcache.stack import Stack, StageProcess, after_exit, restart_delay
from tests.faults.stackproc import Proc, alive, edge_healthy, wait_for

# kafka, dns and edge only
SERVING = ("--without", "streams", "--without", "fetch", "--without", "sniff", "--without", "console")


def serving(settings: Settings) -> bool:
    """DNS answers (forwarded to the lab upstream) and the edge's health endpoint answers."""
    try:
        dns_ok = resolve_via((settings.dns_host, settings.dns_port), "origin.lab.test") == ["127.0.0.2"]
    except OSError:
        return False
    return dns_ok and edge_healthy(settings)


def test_back_off_and_exit_policy() -> None:
    assert [restart_delay(n) for n in range(8)] == [0.5, 1, 2, 4, 8, 16, 30, 30]
    assert after_exit(EX_CONFIG, 0) == ("config", 0.0)
    assert after_exit(0, 3) == ("done", 0.0)
    assert after_exit(-9, 2) == ("restart", 2.0)


def test_stage_and_broker_kill_then_up_kill(base_settings: Settings, dnsmasq: Dnsmasq, tmp_path: Path) -> None:
    settings = lab_settings(base_settings, tmp_path / "state", free_port("127.0.0.3"), dnsmasq.upstream,
                            kafka_bootstrap="", metrics_interval_s=1.0)
    up = Proc(settings, "up", *SERVING)
    try:
        up.wait_line("heatcache up: Kafka")
        assert serving(settings)
        before = up.children()
        assert set(before) == {"kafka", "dns", "edge"}

        # kill -9 of a stage: restarted; the edge kept serving meanwhile
        os.kill(before["dns"], signal.SIGKILL)
        up.wait_line("dns exited with status -9; restarting")
        assert edge_healthy(settings, timeout=5)
        wait_for(lambda: up.count("heatcache-ready dns") >= 2, 60, "dns ready again")
        wait_for(lambda: serving(settings), 30, "dns answering again")
        assert up.children()["dns"] != before["dns"] and up.children()["edge"] == before["edge"]

        # kill -9 of the embedded broker: restarted; DNS and edge never stopped answering
        os.kill(before["kafka"], signal.SIGKILL)
        up.wait_line("kafka exited with status -9; restarting")
        assert serving(settings)
        up.wait_line("kafka restarted", 120)
        assert serving(settings)
        assert alive(up.children()["dns"]) and alive(up.children()["edge"])

        # kill -9 of `up` itself: every child follows it, nothing orphaned
        children = up.children()
        up.proc.kill()
        up.finish()
        wait_for(lambda: not any(alive(pid) for pid in children.values()), 30, "the children to exit with up")
    finally:
        up.finish()

    # ... and the next `up` on the same state directory (same ports) starts cleanly
    again = Proc(settings, "up", *SERVING)
    try:
        again.wait_line("heatcache up: Kafka")
        assert serving(settings)
    finally:
        assert again.finish() == 0
    assert not (settings.state_dir / "stack.pids.json").exists()


def test_leftovers_of_a_killed_up_are_reaped(base_settings: Settings, tmp_path: Path) -> None:
    """Even a child that outlived its `up` (no parent-death signal) is stopped by the next start."""
    settings = base_settings.model_copy(update={"state_dir": tmp_path / "state"})
    orphan = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"], start_new_session=True)
    try:
        stack = Stack(settings, stages=(), console=None)
        stack.record.claim()
        stack.record.add("edge", orphan.pid)
        stack.record.path.write_text(stack.record.path.read_text().replace(f"[{os.getpid()},", "[1,"))  # a dead `up`
        fresh = Stack(settings, stages=(), console=None)
        assert [r.split(" ")[0] for r in fresh.record.claim()] == ["edge"]
        assert orphan.wait(20) == -signal.SIGTERM
    finally:
        orphan.kill()
        orphan.wait()


def test_config_error_is_reported_not_restarted(base_settings: Settings, tmp_path: Path) -> None:
    settings = base_settings.model_copy(update={"state_dir": tmp_path / "state", "kafka_bootstrap": "127.0.0.1:9",
                                                "lab_mode": False})
    stack = Stack(settings, stages=(), console=None, supervise=False)
    (tmp_path / "state" / "logs").mkdir(parents=True)
    env = {**os.environ, "HEATCACHE_KAFKA_BOOTSTRAP": "127.0.0.1:9", "HEATCACHE_STATE_DIR": str(tmp_path / "state"),
           "HEATCACHE_LAB_MODE": "false", "HEATCACHE_CLIENT_ID_SECRET": "change-me"}
    stack._env = env
    child = stack._start_stage("sniff")  # the shipped client-id secret: the runner exits 78
    assert child.proc.wait(60) == EX_CONFIG
    stack.check()
    stack.check()
    assert stack.failed() == ["sniff"] and stack.children["sniff"] is child  # not started again
    assert any("configuration error" in e and "not restarting" in e for e in stack.events)
    child.close()
    assert "HEATCACHE_CLIENT_ID_SECRET" in (tmp_path / "state" / "logs" / "sniff.log").read_text()
    assert isinstance(child, StageProcess)


def test_foreign_process_on_the_aria2_port(base_settings: Settings, tmp_path: Path) -> None:
    foreign = Aria2Daemon(tmp_path / "foreign", secret="not-ours")
    port = foreign.start()
    try:
        with pytest.raises(Aria2SetupError, match=rf"port {port} is held by pid {foreign.proc.pid} \(.*aria2c"):
            Aria2Daemon(tmp_path / "ours", secret="ours", port=port).start()
        settings = base_settings.model_copy(update={"state_dir": tmp_path / "state", "aria2_rpc_port": port,
                                                    "kafka_bootstrap": "127.0.0.1:9"})
        up = Proc(settings, "up", "--without", "streams", "--without", "dns", "--without", "edge",
                  "--without", "sniff", "--without", "console")
        assert up.exit_code(60) == 1
        up.finish()
        assert f"port {port} for HEATCACHE_ARIA2_RPC_PORT (aria2c) is held by pid {foreign.proc.pid}" in up.output
    finally:
        foreign.stop()


def test_foreign_process_on_the_kafka_port(tmp_path: Path) -> None:
    """The embedded broker refuses a port another process listens on, naming it (it never
    answers for a foreign broker or a stray listener)."""
    from heatcache.services.kafka import EmbeddedKafka, KafkaSetupError

    port = free_port()
    holder = socket.create_server(("127.0.0.1", port))
    try:
        with pytest.raises(KafkaSetupError, match=rf"Kafka port {port} is held by pid {os.getpid()} "):
            EmbeddedKafka(tmp_path / "kafka", port=port).start()
    finally:
        holder.close()


@pytest.mark.parametrize("command", [["up"], ["sniff"], ["fetch"]])
def test_default_secrets_are_refused(command: list[str], base_settings: Settings, tmp_path: Path) -> None:
    settings = base_settings.model_copy(update={"state_dir": tmp_path / "state", "lab_mode": False,
                                                "kafka_bootstrap": "127.0.0.1:9"})
    env = {"HEATCACHE_CLIENT_ID_SECRET": "change-me", "HEATCACHE_ARIA2_SECRET": "heatcache"}
    proc = Proc(settings, *command, env=env)
    assert proc.exit_code(60) == EX_CONFIG
    proc.finish()
    assert "shipped default secret" in proc.output
    assert "change-me" not in proc.output and "heatcache\n" not in proc.output  # never the secret itself
