"""The leaderboard as a static site: an index and one page per task and threat model.

The index shows, per task, the defense x attack matrix of every threat family (worst case, tiers,
flags) and links every table. Each table page has a sortable table of every metric with its n and
95% interval, the threat model's constraints in words, the rows' sanity flags, and two plots drawn
as inline SVG: the accuracy-robustness trade-off (clean against robust accuracy, one point per
defense, its name in a column beside the plot) and certified accuracy against radius (one curve per
certifying defense, as in Cohen et al. 2019). The pages render from benchmark/templates/; nothing is
fetched: they open from disk in any browser, without a server.
"""
from __future__ import annotations

import json
import math
import re
from pathlib import Path

from benchmark.files import write_text
from benchmark.leaderboard import (TEMPLATES, data_text, flagged, format_audit, machine,
                                   matrix_columns, rank_interval, ranked_by_text, run_history,
                                   table_columns, table_title, unfinished_line)
from benchmark.metrics import MATRIX, metric
from benchmark.reproduction import rule_text, verdict_counts

GENERATOR = "rbench leaderboard --html"
# Colour-blind-safe palette (Okabe & Ito), then darker repeats.
PALETTE = ["#0072B2", "#D55E00", "#009E73", "#CC79A7", "#E69F00", "#56B4E9", "#000000", "#7F3C8D",
           "#11A579", "#3969AC", "#F2B701", "#E73F74"]
LABEL_GAP = 15    # px between the baselines of two plot labels (12 px text)
LABEL_CHARS = 28  # longer names are cut in plot labels (the tooltip and the table give them whole)


def slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", text)


def page_name(table: dict) -> str:
    return f"{slug(table['task'])}--{slug(table['threat_id'])}.html"


# Plots -----------------------------------------------------------------------------------------
def nice_ticks(high: float, count: int = 5) -> list[float]:
    """Round tick positions from 0 to at least `high`."""
    if not high > 0 or not math.isfinite(high):
        return [0.0, 1.0]
    raw = high / count
    magnitude = 10 ** math.floor(math.log10(raw))
    step = next(m * magnitude for m in (1, 2, 2.5, 5, 10) if m * magnitude >= raw)
    return [round(i * step, 10) for i in range(int(math.ceil(high / step - 1e-9)) + 1)]


class Axes:
    """A plot area mapping data coordinates to SVG pixels; a column of `labels` px on its right
    holds the names of what is drawn. The plot grows taller when the names need the room."""

    PLOT_WIDTH, PLOT_HEIGHT = 460, 330
    LEFT, RIGHT, TOP, BOTTOM = 60, 20, 20, 50

    def __init__(self, x_ticks: list[float], y_ticks: list[float], x_label: str, y_label: str,
                 labels: int = 0):
        self.x_ticks, self.y_ticks = x_ticks, y_ticks
        self.x_label, self.y_label = x_label, y_label
        self.x_max, self.y_max = x_ticks[-1], y_ticks[-1]
        self.plot_height = max(self.PLOT_HEIGHT, LABEL_GAP * (labels + 1))
        self.width = self.LEFT + self.PLOT_WIDTH + self.RIGHT + (label_width() if labels else 0)
        self.height = self.TOP + self.plot_height + self.BOTTOM

    def x(self, value: float) -> float:
        return round(self.LEFT + self.PLOT_WIDTH * value / self.x_max, 2)

    def y(self, value: float) -> float:
        return round(self.TOP + self.plot_height * (1 - value / self.y_max), 2)

    @property
    def label_x(self) -> float:
        return self.LEFT + self.PLOT_WIDTH + self.RIGHT + 14


def label_width() -> int:
    return 14 + 7 * (LABEL_CHARS + 8)  # the name and an "(n=...)" or a little slack


def short(name: str) -> str:
    return name if len(name) <= LABEL_CHARS else name[:LABEL_CHARS - 1] + "\u2026"


def spread(wanted: list[float], low: float, high: float) -> list[float]:
    """Label baselines as near the `wanted` ones (ascending) as they can be while LABEL_GAP apart
    and within [low, high]: pushed down past their neighbours above, then back up from the end."""
    placed: list[float] = []
    for y in wanted:
        placed.append(max(y, low) if not placed else max(y, placed[-1] + LABEL_GAP))
    for i in reversed(range(len(placed))):
        placed[i] = min(placed[i], high if i == len(placed) - 1 else placed[i + 1] - LABEL_GAP)
    return placed


def tradeoff_plot(table: dict, colours: dict) -> dict | None:
    """Clean against robust accuracy under this threat model, one point per defense, with both
    95% intervals as error bars; the dashed diagonal is robust = clean. Each point is joined to
    its name in the column on the right, names in the points' vertical order and never on top of
    each other."""
    rows = [row for row in table["rows"]
            if row["metrics"].get("clean_accuracy", {}).get("value") is not None
            and row["metrics"].get("robust_accuracy", {}).get("value") is not None]
    if not rows:
        return None
    axes = Axes(nice_ticks(100), nice_ticks(100), "clean accuracy (%)", "accuracy under attack (%)",
                labels=len(rows))
    points = []
    for row in rows:
        clean, robust = row["metrics"]["clean_accuracy"], row["metrics"]["robust_accuracy"]
        tip = (f"{row['defense']}: clean {100 * clean['value']:.1f}% [{100 * clean['low']:.1f}, "
               f"{100 * clean['high']:.1f}], under attack {100 * robust['value']:.1f}% "
               f"[{100 * robust['low']:.1f}, {100 * robust['high']:.1f}], n={robust['n']}")
        points.append({"defense": row["defense"], "label": short(row["defense"]), "tip": tip,
                       "colour": colours[row["defense"]],
                       "x": axes.x(100 * clean["value"]), "y": axes.y(100 * robust["value"]),
                       "x_low": axes.x(100 * clean["low"]), "x_high": axes.x(100 * clean["high"]),
                       "y_low": axes.y(100 * robust["low"]), "y_high": axes.y(100 * robust["high"])})
    points.sort(key=lambda p: (p["y"], p["x"]))
    for point, y in zip(points, spread([p["y"] + 4 for p in points], axes.TOP + 12,
                                       axes.TOP + axes.plot_height)):
        point.update(label_x=axes.label_x, label_y=round(y, 2))
    return {"axes": axes, "points": points,
            "title": f"Accuracy-robustness trade-off, {table['task']}, {table_title(table)}"}


def certified_plots(table: dict, colours: dict) -> list[dict]:
    """Certified accuracy against radius, one step curve per certifying defense; one plot per
    certificate unit, since radii in different units share no axis."""
    by_unit: dict[str, list[dict]] = {}
    for row in table["rows"]:
        if row.get("certified_curve"):
            by_unit.setdefault(row.get("certificate_unit") or "radius", []).append(row)
    plots = []
    for unit, rows in sorted(by_unit.items()):
        top = max(max(row["certified_curve"]["radius"]) for row in rows)
        axes = Axes(nice_ticks(top * 1.05 if top > 0 else 1.0), nice_ticks(100),
                    f"radius ({unit})", "certified accuracy (%)", labels=len(rows))
        curves = []
        for index, row in enumerate(rows):
            curve = row["certified_curve"]
            radius, accuracy = curve["radius"], curve["accuracy"]
            # acc(r) holds on (radius[i-1], radius[i]]; after the largest radius nothing is certified.
            path = [f"M{axes.x(radius[0])},{axes.y(100 * accuracy[0])}"]
            for i in range(1, len(radius)):
                path.append(f"L{axes.x(radius[i - 1])},{axes.y(100 * accuracy[i])}")
                path.append(f"L{axes.x(radius[i])},{axes.y(100 * accuracy[i])}")
            path.append(f"L{axes.x(radius[-1])},{axes.y(0)}")
            curves.append({"defense": row["defense"], "colour": colours[row["defense"]],
                           "path": " ".join(path), "label": f"{short(row['defense'])} (n={curve['n']})",
                           "tip": f"{row['defense']}: certified accuracy {100 * accuracy[0]:.1f}% "
                                  f"at radius 0, n={curve['n']}",
                           "label_x": axes.label_x + 26, "label_y": axes.TOP + 12 + LABEL_GAP * index})
        plots.append({"axes": axes, "curves": curves,
                      "title": f"Certified accuracy against radius ({unit}), {table['task']}"})
    return plots


# Pages -----------------------------------------------------------------------------------------
def render(template: str, title: str, **context) -> str:
    return TEMPLATES.get_template(template).render(generator=GENERATOR, title=title, shown=shown,
                                                   **context)


def shown(value: dict | None, rate: bool) -> dict:
    """A metric as a cell shows it: the value (a rate in %), its interval or sd, n, sort key."""
    if value is None or value.get("value") is None:
        return {"value": "n/a", "interval": "", "n": None if value is None else value["n"], "sort": ""}
    number = value["value"]
    if rate:
        return {"value": f"{100 * number:.1f}", "n": value["n"], "sort": repr(number),
                "interval": f"[{100 * value['low']:.1f}, {100 * value['high']:.1f}]"}
    if "low" in value:  # a median with its interval; None is N/A (-infinity)
        low, high = ("N/A" if v is None else f"{v:.3g}" for v in (value["low"], value["high"]))
        interval = f"[{low}, {high}]"
    elif value.get("sd") is not None:
        sd = value["sd"]
        if sd <= 1e-9 * max(1.0, abs(number)):
            sd = 0.0  # a constant, up to floating-point rounding
        interval = f"sd {sd:.3g}"
    else:
        interval = ""
    return {"value": f"{number:.3g}", "interval": interval, "n": value["n"], "sort": repr(number)}


def row_flags(row: dict) -> list[str]:
    """The sanity checks (benchmark/sanity.py) a row's defense fails on its task, as the
    leaderboard computed them."""
    return [f"{c['name']}: {c['detail']}" for c in row.get("sanity", []) if c["status"] == "flag"]


def render_table_page(board: dict, table: dict, colours: dict) -> str:
    heading = f"{table['task']}: {table_title(table)}"
    kind = table.get("kind")
    columns = [(key, label, metric(key).help_in(kind)) for key, label in table_columns(table)]
    rows = [{"row": row, "flags": row_flags(row),
             "audit": format_audit(row.get("audit")) if "certified_accuracy" in row["metrics"] else "",
             "broken": bool((row.get("audit") or {}).get("broken"))} for row in table["rows"]]
    params = [(k, json.dumps(v)) for k, v in sorted((table.get("attack_params") or {}).items())]
    return render("table.html", f"{heading} · rbench {board['suite']}", board=board, table=table,
                  heading=heading, columns=columns, rows=rows, params=params,
                  has_flags=any(r["flags"] for r in rows), has_audit=any(r["audit"] for r in rows),
                  rates={key: metric(key).kind == "rate" for key, _, _ in columns},
                  ranked_by_label=metric(table["ranked_by"]).label_in(kind),
                  ranked_by_text=ranked_by_text, slug=slug,
                  tradeoff=tradeoff_plot(table, colours), certified=certified_plots(table, colours))


def headline(table: dict) -> str:
    """The first row of a table by its ranking metric."""
    if not table["rows"]:
        return ""
    best, declared = table["rows"][0], metric(table["ranked_by"])
    value = best["metrics"].get(table["ranked_by"], {}).get("value")
    if value is None:
        return ""
    return f"{best['defense']}: {declared.label_in(table.get('kind')).rstrip(' %')} {100 * value:.1f}%"


def matrix_columns_help(matrix: dict) -> list[tuple[str, str, str]]:
    helps = {a["threat_id"]: f"accuracy under attack: {a['description']}" for a in matrix["attacks"]}
    return [(key, label, helps.get(key) or metric(key).help_in(MATRIX))
            for key, label in matrix_columns(matrix)]


def render_reproduction_page(reproduction: dict) -> str:
    """The reproduction table (benchmark/reproduction.py) as a sortable page."""
    return render("reproduction.html", f"rbench reproduction: {reproduction['suite']}",
                  reproduction=reproduction, rule_text=rule_text, verdict_counts=verdict_counts)


def render_index(board: dict, reproduction: dict | None = None) -> str:
    manifest = board.get("manifest") or {}
    data = manifest.get("data") or {}
    tasks = []
    for table in board["tables"]:
        if not tasks or tasks[-1]["name"] != table["task"]:
            tasks.append({"name": table["task"], "tables": [],
                          "data": data_text(data[table["task"]]) if table["task"] in data else None,
                          "matrices": [m for m in board.get("matrices", []) if m["task"] == table["task"]]})
        tasks[-1]["tables"].append(table)
    entries = sorted({r["submission"] for t in board["tables"] for r in t["rows"] if r.get("submission")})
    return render("index.html", f"rbench leaderboard: {board['suite']}", board=board,
                  manifest=manifest, machine=machine(manifest), history=run_history(board),
                  unfinished=unfinished_line(board),
                  reproduction=reproduction, tasks=tasks, entries=entries,
                  worst_case_help=f"{metric('worst_case_accuracy').label}: "
                                  f"{metric('worst_case_accuracy').help}.",
                  verdict_counts=verdict_counts, page_name=page_name, table_title=table_title,
                  headline=headline, ranked_by_text=ranked_by_text, rank_interval=rank_interval,
                  matrix_columns_help=matrix_columns_help, slug=slug,
                  flagged_count=lambda table: sum(map(flagged, table["rows"])))


def defense_colours(board: dict) -> dict:
    names = sorted({row["defense"] for table in board["tables"] for row in table["rows"]})
    return {name: PALETTE[i % len(PALETTE)] for i, name in enumerate(names)}


def write_site(board: dict, out_dir: Path, reproduction: dict | None = None) -> list[Path]:
    """Write index.html, a page per table and, given the reproduction table, reproduction.html into
    `out_dir`; pages this command wrote earlier that no longer exist are removed. Returns the paths
    written."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    colours = defense_colours(board)
    pages = {page_name(table): render_table_page(board, table, colours) for table in board["tables"]}
    pages["index.html"] = render_index(board, reproduction)
    if reproduction is not None:
        pages["reproduction.html"] = render_reproduction_page(reproduction)
    marker = f'<meta name="generator" content="{GENERATOR}">'
    for old in out_dir.glob("*.html"):
        if old.name not in pages and marker in old.read_text(errors="replace")[:1000]:
            old.unlink()
    written = []
    for name, content in pages.items():
        write_text(out_dir / name, content)
        written.append(out_dir / name)
    return written
