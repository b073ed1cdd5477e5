"""What a replay shows: a terminal table (rich), CSV, JSON, and a self-contained HTML page with
PNG charts (matplotlib, embedded as data: URIs) stating the recommended setting and the command
that applies it."""

from __future__ import annotations

import base64
import csv
import html
import io
import math
from pathlib import Path
from typing import Any

import orjson

from replay.engine import Result, Setting
from replay.grid import Outcome

COLUMNS = ("setting", "requests", "hit_ratio", "byte_hit_ratio", "net_savings", "bytes_requested", "bytes_local",
           "bytes_prefetched", "bytes_filled", "prefetches", "prefetches_never_hit", "median_first_hit_s",
           "hosts_steered", "evictions", "fetch_failures", "refused", "label")


def rows(outcome: Outcome) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for r in outcome.results:
        out.append({**r.row(), "label": "setting"})
    for o in outcome.oracle:
        out.append({**o.row(), "label": "oracle prefetcher"})
    for b in outcome.baselines:
        row = b.row()
        row["setting"] = b.name if b.name == "no cache" else f"{b.name} @{_gb(b.capacity)}"
        row["label"] = b.label or "baseline"
        out.append(row)
    return out


def _gb(n: int) -> str:
    return _size(n) if n else "no quota"


def table(outcome: Outcome) -> str:
    """The terminal table, rendered by rich to text."""
    from rich.console import Console
    from rich.table import Table

    t = Table(title="heatcache replay: net savings = (bytes served locally - bytes prefetched) / bytes requested")
    for name in ("setting", "req hit", "byte hit", "net savings", "prefetched", "filled", "never hit",
                 "first hit", "hosts"):
        t.add_column(name, justify="left" if name == "setting" else "right")
    best = outcome.recommended()
    for row in rows(outcome):
        mark = " *" if best is not None and row["setting"] == best.setting else ""
        t.add_row(str(row["setting"]) + mark, f"{row['hit_ratio']:.3f}", f"{row['byte_hit_ratio']:.3f}",
                  f"{row['net_savings']:+.3f}", _size(row.get("bytes_prefetched", 0)),
                  _size(row.get("bytes_filled", 0)), str(row.get("prefetches_never_hit", "")),
                  _hours(row.get("median_first_hit_s")), str(row.get("hosts_steered", "")))
    buf = io.StringIO()
    Console(file=buf, width=160, force_terminal=False, color_system=None).print(t)
    if best is not None:
        buf.write(f"recommended: {best.setting} (net savings {best.net_savings:+.3f})\n")
        buf.write(f"apply with:  {Setting(**best.params).apply_command()}\n")
    return buf.getvalue()


def _size(n: object) -> str:
    """Bytes as the table shows them (1024-based units, "0" for none): a small log's prefetches
    are not all "0.00 GB"."""
    from replay.engine import _bytes

    if not isinstance(n, int):
        return "-"
    return _bytes(n) + ("B" if n >= 1024 else "")


def _hours(seconds: object) -> str:
    """A median time to first local hit as the table shows it ("-": none, or a baseline)."""
    if not isinstance(seconds, (int, float)) or math.isnan(seconds):
        return "-"
    return f"{seconds / 3600:.1f} h"


def write_csv(outcome: Outcome, path: Path) -> None:
    with open(path, "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=COLUMNS, extrasaction="ignore")
        w.writeheader()
        for row in rows(outcome):
            w.writerow({k: row.get(k, "") for k in COLUMNS})


def to_json(outcome: Outcome) -> bytes:
    best = outcome.recommended()
    body = {"trace": outcome.trace, "rows": rows(outcome),
            "series": {r.setting: r.series for r in outcome.results},
            "recommended": None if best is None else {"setting": best.setting, "params": best.params,
                                                      "net_savings": best.net_savings,
                                                      "command": Setting(**best.params).apply_command()}}
    return orjson.dumps(body, option=orjson.OPT_INDENT_2 | orjson.OPT_SERIALIZE_NUMPY, default=str)


# -- charts ---------------------------------------------------------------------------------------


def _png(fig: Any) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90, bbox_inches="tight")
    import matplotlib.pyplot as plt

    plt.close(fig)
    return buf.getvalue()


def charts(outcome: Outcome) -> dict[str, bytes]:
    """name -> PNG bytes: savings and byte hit ratio vs cache size, savings over time, grid map."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out: dict[str, bytes] = {}
    # 1. net savings and byte hit ratio against cache size, one line per policy (rule x eviction x fill)
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.2))
    lines: dict[str, list[tuple[int, float, float]]] = {}
    for r in outcome.results + outcome.oracle:
        s = Setting(**r.params)
        label = s.name.replace(f"@{_q(s.quota_bytes)}", "")
        lines.setdefault(label, []).append((s.quota_bytes, r.net_savings, r.byte_hit_ratio))
    for b in outcome.baselines:
        if b.name != "no cache":
            # the ceiling is Belady, PFOO-U or "every re-request" depending on the size: one line
            label = "offline ceiling (optimum or bound)" if b.name.startswith("offline") else b.name
            lines.setdefault(label, []).append((b.capacity, b.net_savings, b.byte_hit_ratio))
    quotas = sorted({q for pts in lines.values() for q, _, _ in pts})
    xpos = {q: i for i, q in enumerate(quotas)}
    for label, pts in sorted(lines.items()):
        pts.sort()
        style = "--" if label.startswith("offline") else "-"
        axes[0].plot([xpos[p[0]] for p in pts], [p[1] for p in pts], style, marker="o", label=label)
        axes[1].plot([xpos[p[0]] for p in pts], [p[2] for p in pts], style, marker="o", label=label)
    for ax, title in ((axes[0], "net savings"), (axes[1], "byte hit ratio")):
        ax.set_xticks(range(len(quotas)), [_gb(q) for q in quotas])
        ax.set_xlabel("cache size (HEATCACHE_CACHE_MAX_BYTES)")
        ax.set_title(title)
        ax.axhline(0, color="grey", linewidth=0.8)
        ax.grid(alpha=0.3)
    axes[1].legend(fontsize=6, loc="center left", bbox_to_anchor=(1.0, 0.5))
    out["size"] = _png(fig)

    # 2. savings over time: the recommended setting and the two next best
    fig, ax = plt.subplots(figsize=(10, 3.6))
    ranked = sorted(outcome.results, key=lambda r: -r.net_savings)[:3]
    for r in ranked:
        xs = [(t - r.series[0][0]) / 3600 for t, *_ in r.series]
        ys = [(local - pf) / req if req else 0.0 for _t, req, local, pf in r.series]
        ax.plot(xs, ys, label=r.setting)
    ax.set_xlabel("hours into the trace")
    ax.set_ylabel("net savings in the interval")
    ax.axhline(0, color="grey", linewidth=0.8)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    out["time"] = _png(fig)

    # 3. the grid as a heat map: admission rule (rows) x cache configuration (columns)
    rules = sorted({_rule(Setting(**r.params)) for r in outcome.results})
    confs = sorted({_conf(Setting(**r.params)) for r in outcome.results})
    grid = [[math.nan] * len(confs) for _ in rules]
    for r in outcome.results:
        s = Setting(**r.params)
        grid[rules.index(_rule(s))][confs.index(_conf(s))] = r.net_savings
    fig, ax = plt.subplots(figsize=(max(5, 1.3 * len(confs) + 3), max(2.5, 0.45 * len(rules) + 1.5)))
    im = ax.imshow(grid, cmap="RdYlGn", vmin=-max(0.05, max(abs(v) for row in grid for v in row if v == v)),
                   vmax=max(0.05, max(abs(v) for row in grid for v in row if v == v)), aspect="auto")
    ax.set_xticks(range(len(confs)), confs, rotation=30, ha="right", fontsize=7)
    ax.set_yticks(range(len(rules)), rules, fontsize=7)
    for i, row in enumerate(grid):
        for j, v in enumerate(row):
            if v == v:
                ax.text(j, i, f"{v:+.3f}", ha="center", va="center", fontsize=7)
    fig.colorbar(im, ax=ax, label="net savings")
    ax.set_title("net savings over the grid")
    out["grid"] = _png(fig)
    return out


def _q(n: int) -> str:
    from replay.engine import _bytes

    return _bytes(n) if n else "inf"


def _rule(s: Setting) -> str:
    return "first access" if s.first_access else f"{s.min_clients} clients / {s.window_s / 3600:g} h"


def _conf(s: Setting) -> str:
    return f"{s.policy}@{_q(s.quota_bytes)} fill={'on' if s.fill else 'off'} pf={'on' if s.prefetch else 'off'}"


def write_html(outcome: Outcome, path: Path, pngs: dict[str, bytes] | None = None) -> dict[str, bytes]:
    """The report page (PNGs inside it, nothing else to fetch); the PNGs are returned too."""
    pngs = pngs if pngs is not None else charts(outcome)
    best = outcome.recommended()
    img = {k: "data:image/png;base64," + base64.b64encode(v).decode() for k, v in pngs.items()}
    esc = html.escape
    rows_html = []
    for row in rows(outcome):
        cls = ' class="best"' if best is not None and row["setting"] == best.setting else ""
        rows_html.append(
            f"<tr{cls}><td>{esc(str(row['setting']))}</td><td>{row['hit_ratio']:.3f}</td>"
            f"<td>{row['byte_hit_ratio']:.3f}</td><td>{row['net_savings']:+.3f}</td>"
            f"<td>{_size(row.get('bytes_prefetched', 0))}</td><td>{_size(row.get('bytes_filled', 0))}</td>"
            f"<td>{row.get('prefetches_never_hit', '')}</td><td>{_hours(row.get('median_first_hit_s'))}</td>"
            f"<td>{row.get('hosts_steered', '')}</td><td>{esc(str(row.get('label', '')))}</td></tr>")
    if best is not None:
        rec = (f"<p class='rec'>Recommended: <b>{esc(best.setting)}</b> &mdash; net savings "
               f"<b>{best.net_savings:+.1%}</b> of the bytes requested (byte hit ratio {best.byte_hit_ratio:.1%}, "
               f"{_size(best.bytes_prefetched)} prefetched).</p>"
               f"<p>Apply it with:</p><pre>{esc(Setting(**best.params).apply_command())}</pre>")
    else:
        rec = "<p class='rec'>No applicable setting in this grid.</p>"
    tr = outcome.trace
    table_rows = "\n".join(rows_html)  # a row per line
    page = f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>heatcache replay report</title>
<style>
body {{ font-family: sans-serif; margin: 2em; color: #222; }}
table {{ border-collapse: collapse; font-size: 13px; }} td, th {{ border: 1px solid #ccc; padding: 3px 8px; }}
td:not(:first-child) {{ text-align: right; }} tr.best {{ background: #dfd; font-weight: bold; }}
.rec {{ font-size: 18px; }} pre {{ background: #f4f4f4; padding: 8px; white-space: pre-wrap; }}
img {{ max-width: 100%; }}
</style></head><body>
<h1>heatcache replay</h1>
<p>Trace: {esc(str(tr.get('source', '')))} &mdash; {tr.get('requests', 0)} requests,
{_size(tr.get('bytes_requested', 0))} requested, {tr.get('objects', 0)} objects,
{tr.get('hours', 0):.1f} hours.</p>
{rec}
<p><b>Net savings</b> = (bytes served locally &minus; bytes prefetched) / bytes requested: every prefetch is a
second download of bytes a client already pulled through the uplink, so hit ratios alone overstate what a
setting saves.</p>
<h2>Savings and byte hit ratio against cache size</h2><img alt="savings against cache size" src="{img['size']}">
<h2>Savings over time</h2><img alt="savings over time" src="{img['time']}">
<h2>The grid</h2><img alt="grid heat map" src="{img['grid']}">
<h2>Every setting and baseline</h2>
<table><tr><th>setting</th><th>request hit</th><th>byte hit</th><th>net savings</th><th>prefetched</th>
<th>filled</th><th>prefetches never hit</th><th>first local hit (median)</th><th>hosts steered</th>
<th>kind</th></tr>
{table_rows}
</table>
</body></html>
"""
    path.write_text(page)
    return pngs


def write_all(outcome: Outcome, out_dir: Path) -> dict[str, Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {"csv": out_dir / "replay.csv", "json": out_dir / "replay.json", "html": out_dir / "report.html"}
    write_csv(outcome, paths["csv"])
    paths["json"].write_bytes(to_json(outcome))
    pngs = write_html(outcome, paths["html"])
    for name, data in pngs.items():
        p = out_dir / f"{name}.png"
        p.write_bytes(data)
        paths[name] = p
    return paths


def describe(result_list: list[Result]) -> str:
    return ", ".join(f"{r.setting}: {r.net_savings:+.3f}" for r in result_list)
