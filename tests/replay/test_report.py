"""The report renders: CSV and JSON parse, its PNGs decode, and headless Chromium (Debian's
`chromium`) loads the HTML page and saves a screenshot of it."""

from __future__ import annotations

import csv
import io
import shutil
import subprocess
from pathlib import Path

import orjson
from PIL import Image

from heatcache.settings import Settings
from replay import report
from replay.engine import run
from replay.grid import Outcome, grid, run_baselines
from tests.replay.test_engine import ROWS, hand_trace


def test_report_renders_in_chromium(base_settings: Settings, tmp_path: Path) -> None:
    prep = hand_trace(ROWS)
    settings = grid(windows=(3600, 86400), min_clients=(2, 3), quotas=(0, 300), fills=(True, False))
    results = [run(prep, s, base_settings) for s in settings]
    rows_b, oracles = run_baselines(prep, [0, 300], base_settings)
    outcome = Outcome(results, rows_b, oracles, {"source": "hand", "requests": 6, "objects": 3, "hours": 0.01,
                                                  "bytes_requested": 600})
    text = report.table(outcome)
    best = outcome.recommended()
    assert best is not None and f"recommended: {best.setting}" in text and "apply with:  HEATCACHE_" in text
    paths = report.write_all(outcome, tmp_path / "out")
    with open(paths["csv"]) as fh:
        table = list(csv.DictReader(fh))
    assert len(table) == len(results) + len(oracles) + len(rows_b)
    assert [int(r["refused"]) for r in table[:len(results)]] == [r.refused for r in results]
    body = orjson.loads(paths["json"].read_bytes())
    assert body["recommended"]["setting"] == best.setting and body["recommended"]["command"].startswith("HEATCACHE_")
    for name in ("size", "time", "grid"):
        with Image.open(paths[name]) as img:
            img.load()
            assert img.format == "PNG" and img.width > 300 and img.height > 150
    page = paths["html"].read_text()
    assert page.count("data:image/png;base64,") == 3 and best.setting in page and "src=\"http" not in page
    # every per-setting figure is on the page too: time to first local hit and hosts steered
    best_row = next(line for line in page.splitlines() if line.startswith('<tr class="best">'))  # one per line
    assert f"<td>{report._hours(best.median_first_hit_s)}</td><td>{best.hosts_steered}</td>" in best_row

    chromium = shutil.which("chromium")
    assert chromium, "Debian's chromium is missing: ./dev installs it"
    shot = tmp_path / "shot.png"
    subprocess.run([chromium, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                    "--no-first-run", f"--user-data-dir={tmp_path / 'profile'}", "--window-size=1280,2400",
                    f"--screenshot={shot}", paths["html"].resolve().as_uri()],
                   check=True, capture_output=True, timeout=180)
    with Image.open(io.BytesIO(shot.read_bytes())) as img:
        img.load()
        assert img.size == (1280, 2400)
        colours = img.convert("L").getextrema()
        assert colours[0] < 100 < colours[1]  # text and charts on a light page, not a blank frame


def test_replay_command_on_a_file(tmp_path: Path, monkeypatch: object, capsys: object) -> None:
    import pytest

    from heatcache.cli import main
    from tests.replay import samples

    mp: pytest.MonkeyPatch = monkeypatch  # type: ignore[assignment]
    mp.setenv("HEATCACHE_STATE_DIR", str(tmp_path / "state"))
    log = samples.write("squid", tmp_path / "access.log")
    out = tmp_path / "report"
    assert main(["replay", "--file", str(log), "--windows", "3600", "--min-clients", "1,2", "--quotas", "0,1M",
                 "--jobs", "1", "--out", str(out)]) == 0
    text = capsys.readouterr().out  # type: ignore[attr-defined]
    assert "recommended: " in text and "not replayed: bad-time=1, syntax=1" in text
    assert {p.name for p in out.iterdir()} == {"replay.csv", "replay.json", "report.html", "size.png", "time.png",
                                               "grid.png"}


def test_the_command_of_a_setting_without_prefetch_pauses_it_beside_up() -> None:
    # `heatcache up` runs until stopped: the pause cannot follow it on the same line
    from replay.engine import Setting

    lines = Setting(prefetch=False).apply_command().splitlines()
    assert lines[0].startswith("HEATCACHE_") and lines[0].endswith(" heatcache up")
    assert lines[-1] == "heatcache control prefetch pause"
    assert "\n" not in Setting().apply_command()


def test_a_generated_trace_replays_from_its_csv_as_generated(base_settings: Settings, tmp_path: Path,
                                                             monkeypatch: object, capsys: object) -> None:
    """`heatcache trace generate` writes a named trace that `replay --file` reads back to the
    same figures as the trace itself (docs/tuning.md's defaults table is made this way)."""
    import pytest

    from heatcache.cli import main
    from replay.engine import Setting, prepare
    from replay.gen import make_trace, named_traces
    from replay.trace import batches, read_file

    mp: pytest.MonkeyPatch = monkeypatch  # type: ignore[assignment]
    mp.setenv("HEATCACHE_STATE_DIR", str(tmp_path / "state"))
    mp.delenv("HEATCACHE_KAFKA_BOOTSTRAP", raising=False)  # no broker needed
    path = tmp_path / "one-timers.csv"
    assert main(["trace", "generate", "one-timers", str(path), "--requests", "3000"]) == 0
    assert "3000 requests" in capsys.readouterr().out  # type: ignore[attr-defined]
    named = named_traces(3000)[1]
    direct = make_trace(named.params, named.clients, 1)
    read, fmt = read_file(path, base_settings)
    assert fmt == "csv" and not read.bad and [e.cache_key for e in read.events] == [e.cache_key for e in direct.events]
    setting = Setting(window_s=86400, min_clients=2, quota_bytes=sum(set(direct.sizes)) // 10)
    a, b = (run(prepare(list(batches(t, base_settings.kafka_partitions))), setting, base_settings)
            for t in (direct, read))
    assert (a.hits, a.bytes_local, a.prefetches, a.bytes_prefetched, a.fills, a.evictions) == (
        b.hits, b.bytes_local, b.prefetches, b.bytes_prefetched, b.fills, b.evictions)


def test_byte_figures_read_at_any_scale() -> None:
    # a small log's prefetches are not all "0.00 GB"
    assert [report._size(n) for n in (0, 900, 3 * 1024**2, int(1.5 * 1024**4), None)] == [
        "0", "900", "3MB", "1.5TB", "-"]
