"""``mo-rl compare --html report.html``: the comparison as one self-contained page to attach to a draft or a PR.

The page holds the comparison tables (the same cells as ``--format table``: intervals, the change from base, the
cost apart from the results, and with ``--baseline`` the paired table with its verdicts and the IQM), how they
were computed and the eval settings, the ``--plot`` figures inlined as base64 PNGs, the config keys on which the
runs differ, and for each run a ``mo-rl train`` command that recreates it (its config's differences from the
composed defaults, as Hydra overrides). No scripts, fonts or links outside
the file: it opens offline in any browser.
"""

from __future__ import annotations

import base64
import html
import json
import shlex
import tempfile
import time
from pathlib import Path

import pandas as pd

from mo_rl.results.reader import Run

GROUPS = ("method", "task")  # config groups whose option changes the keys below them: chosen by name
SKIP_PREFIXES = ("objectives.resolved",)  # derived at setup, not settable
PRINT_WIDTH = 150  # characters of table text per table: fits an A4 / letter page at the print font size

CSS = """
body { font-family: -apple-system, "Segoe UI", Helvetica, Arial, sans-serif; margin: 24px 32px; color: #1b1f24;
       max-width: 1400px; }
h1 { font-size: 22px; margin-bottom: 4px; } h2 { font-size: 18px; margin-top: 28px; border-bottom: 1px solid #ddd;
       padding-bottom: 4px; } h3 { font-size: 15px; margin: 18px 0 6px; }
.meta, .caption { color: #57606a; font-size: 13px; }
.scroll { overflow-x: auto; }
table { border-collapse: collapse; font-size: 13px; margin: 6px 0 12px; }
th, td { border: 1px solid #d0d7de; padding: 4px 8px; white-space: nowrap; }
th { background: #f6f8fa; text-align: left; } td.num { text-align: right; font-variant-numeric: tabular-nums; }
tr:nth-child(even) td { background: #fbfbfc; }
figure { margin: 10px 0 24px; } figure img { max-width: 100%; border: 1px solid #eee; }
figcaption { font-size: 13px; color: #57606a; }
@media print { body { margin: 0; max-width: none; } .scroll { overflow: visible; }
  table { font-size: 8px; } th, td { padding: 2px 4px; white-space: normal; } figure { break-inside: avoid; } }
pre { background: #f6f8fa; padding: 8px 10px; font-size: 12px; white-space: pre-wrap; word-break: break-all;
      margin: 4px 0 12px; }
"""


def _esc(x) -> str:
    return html.escape(str(x), quote=True)


def flat_config(config: dict, prefix: str = "") -> dict:
    """Dotted leaves of a config (lists stay values); ``objectives.resolved`` left out."""
    out = {}
    for k, v in config.items():
        key = f"{prefix}{k}"
        if key.startswith(SKIP_PREFIXES):
            continue
        if isinstance(v, dict) and v:
            out.update(flat_config(v, f"{key}."))
        else:
            out[key] = v
    return out


def _hydra_value(v) -> str:
    """A value as Hydra override syntax: null, true/false, numbers, [a,b], {k: v}, quoted strings when needed."""
    if v is None:
        return "null"
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return repr(v)
    if isinstance(v, (list, tuple)):
        return "[" + ",".join(_hydra_value(x) for x in v) + "]"
    if isinstance(v, dict):
        return "{" + ", ".join(f"{k}: {_hydra_value(x)}" for k, x in v.items()) + "}"
    s = str(v)
    plain = s and all(c.isalnum() or c in "_-./:+@" for c in s) and s not in ("null", "true", "false")
    return s if plain else "'" + s.replace("\\", "\\\\").replace("'", "\\'") + "'"


def run_command(config: dict, defaults_cache: dict | None = None) -> str:
    """``mo-rl train ...`` recreating a run: group choices (method=, task=) then every leaf that differs from the
    composed defaults (``+key=`` for keys the defaults lack)."""
    from mo_rl.config import compose, group_options

    cache = {} if defaults_cache is None else defaults_cache
    choices = []
    for g in GROUPS:
        name = (config.get(g) or {}).get("name") if isinstance(config.get(g), dict) else None
        if name and name in group_options(g):
            choices.append(f"{g}={name}")
    key = tuple(choices)
    if key not in cache:
        from omegaconf import OmegaConf

        try:
            cache[key] = flat_config(OmegaConf.to_container(compose(list(choices)), resolve=False))
        except Exception:  # noqa: BLE001 - a config this version cannot compose: spell out every leaf
            cache[key] = {}
    base = cache[key]
    overrides = [f"{'' if k in base else '+'}{k}={_hydra_value(v)}" for k, v in flat_config(config).items()
                 if not (k in base and base[k] == v) and not (k.endswith(".name") and k.split(".")[0] in GROUPS
                                                              and choices)]
    return " ".join(["mo-rl", "train", *choices, *(shlex.quote(o) for o in overrides)])


def config_differences(runs: list[Run]) -> pd.DataFrame:
    """Config keys whose values differ between runs: one row per key, one column per run (its folder name)."""
    flats = [flat_config(r.config) for r in runs]
    keys = sorted({k for f in flats for k in f})
    missing = object()
    diff = [k for k in keys if len({json.dumps(f.get(k, missing) if f.get(k, missing) is not missing else "<unset>",
                                               sort_keys=True, default=str) for f in flats}) > 1]
    names = [r.path.name for r in runs]
    if len(set(names)) < len(names):  # sweeps repeat folder names across experiments
        names = [str(r.path) for r in runs]
    return pd.DataFrame({n: [f.get(k, "-") for k in diff] for n, f in zip(names, flats)}, index=diff)


def _table(head: list[str], rows: list[list[str]], numeric_from: int) -> str:
    """An HTML table; columns from ``numeric_from`` on whose every cell reads as a number are right-aligned."""
    from mo_rl.analysis.tables import NUMERIC

    num = [i >= numeric_from and all(NUMERIC.match(str(r[i])) for r in rows) for i in range(len(head))]
    out = ["<div class='scroll'><table><tr>", *(f"<th>{_esc(h)}</th>" for h in head), "</tr>"]
    for row in rows:
        cells = [f"<td{' class=num' if num[i] else ''}>{_esc(c)}</td>" for i, c in enumerate(row)]
        out.append("<tr>" + "".join(cells) + "</tr>")
    return "".join(out) + "</table></div>"


def _sections_html(sections: list) -> str:
    """Each section as a table (split like the terminal's, at PRINT_WIDTH characters, so that a printed page
    keeps every column); the paired and IQM tables among them when there is a baseline."""
    from mo_rl.analysis.tables import chunks

    parts = []
    for sec in (c for s in sections for c in chunks(s, PRINT_WIDTH)):
        parts.append(f"<h3>{_esc(sec.title)}</h3>" + _table(sec.head, sec.rows, sec.ident))
    return "".join(parts)


def _figures_html(runs: list[Run], by: list[str], last_frac: float) -> str:
    from mo_rl.analysis.plots import plot_runs

    with tempfile.TemporaryDirectory(prefix="mo-rl-report-") as tmp:
        parts = []
        for png in plot_runs(runs, tmp, by, last_frac=last_frac):
            data = base64.b64encode(Path(png).read_bytes()).decode("ascii")
            parts.append(f"<figure><img alt='{_esc(png.name)}' src='data:image/png;base64,{data}'>"
                         f"<figcaption>{_esc(png.name)}</figcaption></figure>")
    return "".join(parts)


def write_html(path: str | Path, runs: list[Run], sections: list, by: list[str], caption: str,
               last_frac: float) -> Path:
    """Write the self-contained report to ``path`` -> the path. ``sections``: ``tables.Section`` objects (the
    terminal's tables, cost apart from the results); ``caption``: how the cells were computed."""
    diffs = config_differences(runs)
    cache: dict = {}
    run_rows = [f"<h3>{_esc(r.path.name)} <span class='meta'>({_esc(r.status)}; {_esc(r.path)})</span></h3>"
                f"<pre>{_esc(run_command(r.config, cache))}</pre>" for r in runs]
    diff_html = (_table(["config key", *diffs.columns], [[k, *(json.dumps(v) if not isinstance(v, str) else v
                                                                 for v in row)] for k, row in diffs.iterrows()], 1)
                 if len(diffs) else "<p class='caption'>The runs' configs are identical.</p>")
    page = f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>mo-rl comparison</title><style>{CSS}</style></head>
<body>
<h1>mo-rl comparison</h1>
<p class="meta">{len(runs)} runs, grouped by {_esc(', '.join(by))}; written {_esc(time.strftime('%Y-%m-%d %H:%M'))}
 by <code>mo-rl compare --html</code>.</p>
<h2>Results</h2>
<p class="caption">Cells: mean [95% interval] over the group's n runs, (m) when only m have a value; how each
 interval and column was computed, and the eval settings:</p>
<p class="caption">{'<br>'.join(_esc(line) for line in caption.splitlines())}</p>
{_sections_html([s for s in sections if not s.title.startswith("cost")])}
<h2>Cost</h2>
<p class="caption">Wall time and tokens/s measure the machine (its load, its other jobs) as much as the method:
 compare them only between runs on the same, otherwise idle, machine.</p>
{_sections_html([s for s in sections if s.title.startswith("cost")])}
<h2>Figures</h2>
{_figures_html(runs, by, last_frac)}
<h2>Config differences</h2>
{diff_html}
<h2>Runs and the commands that recreate them</h2>
{''.join(run_rows)}
</body></html>
"""
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(page, encoding="utf-8")
    return out
