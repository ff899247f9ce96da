"""Rendering of ``mo-rl compare``'s tables: cells, sections, rich tables split to a width, markdown.

A ``Section`` is one table as strings; the table format splits a section's value columns over as many tables as
it takes to stay within the width (the identifying columns repeated), so no cell is ever cut.
"""

from __future__ import annotations

import math
import re
import textwrap
from dataclasses import dataclass

import pandas as pd

from mo_rl.analysis.paired import strata_keys

NUMERIC = re.compile(r"^([-+]?[\d.]+|-|inf|\[)")  # right-justified cells


def _num(x: float) -> str:
    """Compact number: fewer decimals for large magnitudes."""
    if x is None or math.isnan(x):
        return "-"
    if math.isinf(x):
        return "inf"
    if float(x).is_integer():
        return f"{x:.0f}"
    ax = abs(x)
    return f"{x:.0f}" if ax >= 1000 else f"{x:.1f}" if ax >= 100 else f"{x:.3f}"


def _signed(x: float) -> str:
    return _num(x) if not math.isfinite(x) or x <= 0 else "+" + _num(x)


def _cell(rec: pd.Series, col: str) -> str:
    """ "mean [lo, hi]" ("mean" without an interval), " (m)" when only m of the group's runs have a value."""
    n = int(rec.get(f"{col}_n", 0) or 0)
    if n == 0:
        return "-"
    lo, hi = rec.get(f"{col}_lo", math.nan), rec.get(f"{col}_hi", math.nan)
    point = _num(lo) == _num(hi) == _num(rec[col])  # every value equal: the interval is the point itself
    text = _num(rec[col]) + ("" if point else f" {_interval(lo, hi)}".replace(" -", ""))
    return text if n == rec["n_runs"] else f"{text} ({n})"


@dataclass
class Section:
    """One table to render: a title, the header, rows of strings; the first ``ident`` columns name the row."""

    title: str
    head: list[str]
    rows: list[list[str]]
    ident: int


def group_sections(agg: pd.DataFrame, by: list[str], parts: list[tuple[str, list[str]]]) -> list[Section]:
    """The groups table as one section per (title, columns) of ``parts``, the first with status and n; columns
    no group has (they would only print "-") dropped; ``*_vs_base`` columns print as signed differences."""
    out = []
    for name, cols in parts:
        cols = [c for c in cols if (agg[c].notna().any() if c.endswith("_vs_base") else (agg[f"{c}_n"] > 0).any())]
        if not cols:
            continue
        first = not out
        rows = [[str(rec[k]) for k in by] + ([str(rec["status"]), str(rec["n_runs"])] if first else [])
                + [_signed(rec[c]) if c.endswith("_vs_base") else _cell(rec, c) for c in cols]
                for _, rec in agg.iterrows()]
        head = [c.removesuffix("_vs_base") for c in cols]  # the section's title says what they are
        out.append(Section(name, [*by, *(("status", "n") if first else ()), *head], rows,
                           len(by) + (2 if first else 0)))
    return out


def paired_sections(paired: pd.DataFrame, iqm: pd.DataFrame, by: list[str], baseline: str) -> list[Section]:
    """The paired table (one row per stratum, metric, method) and the IQM tables (one row per metric)."""
    out = []
    if len(paired):
        keys = strata_keys(by)
        head = [*keys, "metric", "method", f"{baseline}", "mean", "diff", "95% CI", "n", "pairing",
                "verdict", "P(X>Y)", "seeds needed (normal)"]
        rows = [[str(r[k]) for k in keys] + [r["metric"], r["method"], _num(r["baseline"]), _num(r["value"]),
                                             _signed(r["diff"]), _interval(r["diff_lo"], r["diff_hi"]),
                                             str(r["n"]), r["pairing"], r["verdict"], _num(r["p_better"]),
                                             _num(r["seeds_needed"])] for _, r in paired.iterrows()]
        out.append(Section(f"paired against {baseline}: diff = method - {baseline} over shared seeds; verdict: "
                           "the 95% CI excludes 0 (steps_to_threshold: lower is better); P(X>Y): rliable's "
                           "probability of improvement over all pairs of runs; seeds needed (unresolved only): "
                           "normal approximation ceil((1.96 sd / |diff|)^2)", head, rows, len(keys) + 2))
    if len(iqm):
        methods = sorted(iqm["method"].unique())
        table = iqm.set_index(["metric", "method"])
        metrics = list(dict.fromkeys(iqm["metric"]))
        rows = [[m] + [_interval_cell(table, m, meth) for meth in methods] for m in metrics]
        n = int(iqm["strata"].iloc[0])
        out.append(Section(f"IQM across the {n} strata (rliable's interquartile mean of the runs pooled over "
                           "them) [stratified bootstrap 95% CI]", ["metric", *methods], rows, 1))
        p = iqm[iqm["p_better"].notna()]
        if len(p):
            others = sorted(p["method"].unique())
            rows = [[m] + [_num(table.loc[(m, o), "p_better"]) if (m, o) in table.index else "-" for o in others]
                    for m in metrics]
            out.append(Section(f"P(X>Y) against {baseline}, the mean over the {n} strata", ["metric", *others],
                               rows, 1))
    return out


def _interval(lo: float, hi: float) -> str:
    return f"[{_num(lo)}, {_num(hi)}]" if math.isfinite(lo) and math.isfinite(hi) else "-"


def _interval_cell(table: pd.DataFrame, metric: str, method: str) -> str:
    if (metric, method) not in table.index:
        return "-"
    r = table.loc[(metric, method)]
    ci = _interval(r["iqm_lo"], r["iqm_hi"])
    return _num(r["iqm"]) + ("" if ci == "-" else f" {ci}")


def chunks(sec: Section, width: int) -> list[Section]:
    """Split a section's value columns over several tables, each at most ``width`` characters wide (rich draws a
    column as its text plus 3 characters), the identifying columns repeated in each."""
    widths = [max([len(h), *(len(r[i]) for r in sec.rows)]) + 3 for i, h in enumerate(sec.head)]
    fixed = sum(widths[:sec.ident]) + 1
    chunks, used = [[]], fixed
    for i in range(sec.ident, len(sec.head)):
        if chunks[-1] and used + widths[i] > width:
            chunks.append([])
            used = fixed
        chunks[-1].append(i)
        used += widths[i]
    if len(chunks) == 1:
        return [sec]
    keep = list(range(sec.ident))
    return [Section(f"{sec.title} ({n}/{len(chunks)})", [sec.head[i] for i in keep + idx],
                    [[r[i] for i in keep + idx] for r in sec.rows], sec.ident)
            for n, idx in enumerate(chunks, 1)]


def render_table(sections: list[Section], caption: str, width: int) -> str:
    """Box-drawn tables (rich's heavy-head style, drawn here: rich took seconds for a large sweep), each split to
    fit ``width`` columns; numeric columns right-justified."""
    lines = []
    for sec in (c for s in sections for c in chunks(s, width)):
        widths = [max([len(h), *(len(r[i]) for r in sec.rows)]) for i, h in enumerate(sec.head)]
        right = [i >= sec.ident and all(NUMERIC.match(r[i]) for r in sec.rows) for i in range(len(sec.head))]

        def line(cells, edge="│", sep="│"):
            text = [c.rjust(w) if r else c.ljust(w) for c, w, r in zip(cells, widths, right)]
            return f"{edge} " + f" {sep} ".join(text) + f" {edge}"

        def rule(left, fill, mid, end):
            return left + mid.join(fill * (w + 2) for w in widths) + end

        lines += _wrap(sec.title, max(sum(widths) + 3 * len(widths) + 1, 100))
        lines += [rule("┏", "━", "┳", "┓"), line(sec.head, "┃", "┃"), rule("┡", "━", "╇", "┩")]
        lines += [line(row) for row in sec.rows] + [rule("└", "─", "┴", "┘")]
    return "\n".join(lines + _wrap(caption, width)) + "\n"


def _wrap(text: str, width: int) -> list[str]:
    return [line for part in text.split("\n") for line in textwrap.wrap(part, width) or [""]]


def render_markdown(sections: list[Section], caption: str) -> str:
    """One GitHub-flavoured markdown table per section, every column."""
    out = []
    for sec in sections:
        out += [f"**{sec.title}**", "", "| " + " | ".join(sec.head) + " |", "|" + "---|" * len(sec.head)]
        out += ["| " + " | ".join(row) + " |" for row in sec.rows] + [""]
    return "\n".join(out) + "\n" + caption.replace("\n", "  \n") + "\n"  # markdown hard line breaks
