"""The leaderboard as a static site: an index and one page per task and threat model.

Each page has a sortable table of every metric with its n and 95% interval, the threat model's
constraints in words, the rows' sanity flags, and two plots drawn as inline SVG here in Python: the
accuracy-robustness trade-off (clean against robust accuracy, one point per defense) and certified
accuracy against radius (one curve per certifying defense, as in Cohen et al. 2019). Nothing is
fetched: the pages open from disk in any browser, without a server.
"""
from __future__ import annotations

import html
import json
import math
import re
from pathlib import Path

from benchmark.files import write_text
from benchmark.leaderboard import COLUMNS, run_history, table_columns
from benchmark.reproduction import rule_text, verdict_counts

GENERATOR = "rbench leaderboard --html"
RATE_METRICS = {"clean_accuracy", "robust_accuracy", "attack_success_rate", "certified_accuracy",
                "abstain_rate"}
METRIC_HELP = {
    "clean_accuracy": "share of the n sampled test examples classified correctly without attack",
    "robust_accuracy": "share of the n examples still classified correctly after the attack",
    "attack_success_rate": "share of the correctly classified examples the attack turned wrong",
    "mean_queries": "average model queries the attack spent per correctly classified example",
    "mean_perturbation": "average size of the successful perturbations, in the attack's norm",
    "certified_accuracy": "share of the n examples certified correct by the defense's certificate",
    "abstain_rate": "share of the examples on which the certifier abstained",
    "median_certified_radius": "median certified radius (0 where not certified), in the unit shown",
    "mcb": "RanMASK's median certified robustness: the median certified number of words, a wrong "
           "or abstained example counting as -infinity (N/A when half of them are)",
    "mcr": "RanMASK's median certified rate: MCB relative to each text's length",
    "benign_accuracy": "share of the n clean test examples the defense trained on poisoned data "
                       "classifies correctly",
}
# Backdoor tables read two metrics differently.
BACKDOOR_HELP = {
    "attack_success_rate": "share of the triggered test examples (true label not the target) "
                           "classified as the target",
    "certified_accuracy": "share of the triggered test examples certified with their true label",
}


def metric_help(table: dict, name: str) -> str:
    if table.get("kind") == "backdoor" and name in BACKDOOR_HELP:
        return BACKDOOR_HELP[name]
    return METRIC_HELP[name]


# Colour-blind-safe palette (Okabe & Ito), then darker repeats.
PALETTE = ["#0072B2", "#D55E00", "#009E73", "#CC79A7", "#E69F00", "#56B4E9", "#000000", "#7F3C8D",
           "#11A579", "#3969AC", "#F2B701", "#E73F74"]

CSS = """
body { font: 15px/1.45 system-ui, -apple-system, "Segoe UI", sans-serif; margin: 0 auto;
       max-width: 1200px; padding: 0 1.2em 3em; color: #1d1d1f; }
a { color: #0b5cad; }
h1 { margin-bottom: .2em; } h2 { margin-top: 1.6em; border-bottom: 1px solid #ddd; }
.muted { color: #666; } .small { font-size: 85%; }
nav { margin: 1em 0; font-size: 90%; }
table { border-collapse: collapse; margin: .6em 0 1.2em; font-variant-numeric: tabular-nums; }
th, td { border-bottom: 1px solid #e3e3e3; padding: .35em .6em; text-align: left; vertical-align: top; }
table.sortable th { cursor: pointer; user-select: none; background: #f5f5f7; white-space: nowrap; }
table.sortable th::after { content: " \\2195"; color: #aaa; }
table.sortable th[aria-sort=ascending]::after { content: " \\2191"; color: #000; }
table.sortable th[aria-sort=descending]::after { content: " \\2193"; color: #000; }
td.num { text-align: right; white-space: nowrap; }
.ci, .n { display: block; color: #666; font-size: 80%; }
tr.flagged { background: #fff4e5; } td.flags { min-width: 16em; }
.flag { display: inline-block; background: #b45309; color: #fff; border-radius: 3px; padding: 0 .4em;
        margin: 0 .2em .2em 0; font-size: 80%; }
.badge { display: inline-block; border: 1px solid #0b5cad; color: #0b5cad; border-radius: 3px;
         padding: 0 .35em; font-size: 75%; margin-left: .3em; }
.constraints { background: #f7f7f9; border-left: 4px solid #0b5cad; padding: .5em 1em; }
.plots { display: flex; flex-wrap: wrap; gap: 1.5em; }
figure { margin: 0; } figcaption { font-size: 85%; color: #444; max-width: 520px; }
svg.plot text { font: 12px system-ui, sans-serif; fill: #333; }
svg.plot .grid { stroke: #e5e5e5; } svg.plot .axis { stroke: #333; }
dl.params { display: grid; grid-template-columns: max-content auto; gap: .1em 1em; margin: .4em 0; }
dl.params dt { font-family: monospace; } dl.params dd { margin: 0; font-family: monospace; }
"""

SORT_JS = """
(function () {
  function key(cell, numeric) {
    var raw = cell.getAttribute("data-sort");
    if (raw === null) raw = cell.textContent.trim();
    if (!numeric) return raw.toLowerCase();
    return raw === "" ? null : parseFloat(raw);
  }
  function sortBy(table, header, column) {
    var numeric = header.getAttribute("data-type") === "number";
    var ascending = header.getAttribute("aria-sort") !== "ascending";
    Array.prototype.forEach.call(table.tHead.rows[0].cells, function (other) {
      other.setAttribute("aria-sort", "none");
    });
    header.setAttribute("aria-sort", ascending ? "ascending" : "descending");
    var body = table.tBodies[0];
    var rows = Array.prototype.slice.call(body.rows);
    rows.sort(function (a, b) {
      var x = key(a.cells[column], numeric), y = key(b.cells[column], numeric);
      if (x === null || y === null) return (x === null) - (y === null);  // missing values last
      var order = x < y ? -1 : x > y ? 1 : 0;
      return ascending ? order : -order;
    });
    rows.forEach(function (row) { body.appendChild(row); });
  }
  Array.prototype.forEach.call(document.querySelectorAll("table.sortable"), function (table) {
    Array.prototype.forEach.call(table.tHead.rows[0].cells, function (header, column) {
      header.tabIndex = 0;
      header.addEventListener("click", function () { sortBy(table, header, column); });
      header.addEventListener("keydown", function (event) {
        if (event.key === "Enter" || event.key === " ") { event.preventDefault(); sortBy(table, header, column); }
      });
    });
  });
})();
"""


def esc(value) -> str:
    return html.escape(str(value), quote=True)


def slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", text)


def page_name(table: dict) -> str:
    return f"{slug(table['task'])}--{slug(table['threat_id'])}.html"


def table_title(table: dict) -> str:
    return "clean inputs" if table["threat_id"] == "clean" else f"{table['attack']} ({table['threat_id']})"


def page(title: str, body: str) -> str:
    return (f'<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
            f'<meta name="generator" content="{esc(GENERATOR)}">\n'
            f'<meta name="viewport" content="width=device-width, initial-scale=1">\n'
            f'<link rel="icon" href="data:,">\n<title>{esc(title)}</title>\n<style>{CSS}</style>\n'
            f'</head>\n<body>\n{body}\n<script>{SORT_JS}</script>\n</body>\n</html>\n')


# Plots -----------------------------------------------------------------------------------------
def nice_ticks(high: float, count: int = 5) -> list[float]:
    """Round tick positions from 0 to at least `high`."""
    if not high > 0 or not math.isfinite(high):
        return [0.0, 1.0]
    raw = high / count
    magnitude = 10 ** math.floor(math.log10(raw))
    step = next(m * magnitude for m in (1, 2, 2.5, 5, 10) if m * magnitude >= raw)
    return [round(i * step, 10) for i in range(int(math.ceil(high / step - 1e-9)) + 1)]


def _tick_label(value: float) -> str:
    return f"{value:g}"


class Axes:
    """A plot area mapping data coordinates to SVG pixels, with its grid, ticks and labels."""

    WIDTH, HEIGHT = 520, 400
    LEFT, RIGHT, TOP, BOTTOM = 60, 20, 20, 50

    def __init__(self, x_ticks: list[float], y_ticks: list[float], x_label: str, y_label: str):
        self.x_ticks, self.y_ticks = x_ticks, y_ticks
        self.x_label, self.y_label = x_label, y_label
        self.x_max, self.y_max = x_ticks[-1], y_ticks[-1]

    def x(self, value: float) -> float:
        span = self.WIDTH - self.LEFT - self.RIGHT
        return round(self.LEFT + span * value / self.x_max, 2)

    def y(self, value: float) -> float:
        span = self.HEIGHT - self.TOP - self.BOTTOM
        return round(self.HEIGHT - self.BOTTOM - span * value / self.y_max, 2)

    def frame(self) -> str:
        parts = []
        for t in self.x_ticks:
            parts.append(f'<line class="grid" x1="{self.x(t)}" x2="{self.x(t)}" y1="{self.y(0)}" '
                         f'y2="{self.y(self.y_max)}"/>')
            parts.append(f'<text x="{self.x(t)}" y="{self.y(0) + 16}" text-anchor="middle">'
                         f'{_tick_label(t)}</text>')
        for t in self.y_ticks:
            parts.append(f'<line class="grid" x1="{self.x(0)}" x2="{self.x(self.x_max)}" '
                         f'y1="{self.y(t)}" y2="{self.y(t)}"/>')
            parts.append(f'<text x="{self.x(0) - 6}" y="{self.y(t) + 4}" text-anchor="end">'
                         f'{_tick_label(t)}</text>')
        parts.append(f'<line class="axis" x1="{self.x(0)}" x2="{self.x(self.x_max)}" y1="{self.y(0)}" '
                     f'y2="{self.y(0)}"/>')
        parts.append(f'<line class="axis" x1="{self.x(0)}" x2="{self.x(0)}" y1="{self.y(0)}" '
                     f'y2="{self.y(self.y_max)}"/>')
        middle_x = (self.x(0) + self.x(self.x_max)) / 2
        middle_y = (self.y(0) + self.y(self.y_max)) / 2
        parts.append(f'<text x="{middle_x}" y="{self.HEIGHT - 10}" text-anchor="middle">'
                     f'{esc(self.x_label)}</text>')
        parts.append(f'<text transform="translate(16 {middle_y}) rotate(-90)" text-anchor="middle">'
                     f'{esc(self.y_label)}</text>')
        return "\n".join(parts)

    def svg(self, kind: str, title: str, content: str) -> str:
        return (f'<svg class="plot {kind}" xmlns="http://www.w3.org/2000/svg" role="img" '
                f'width="{self.WIDTH}" height="{self.HEIGHT}" viewBox="0 0 {self.WIDTH} {self.HEIGHT}">'
                f'<title>{esc(title)}</title>\n{self.frame()}\n{content}\n</svg>')


def tradeoff_plot(table: dict, colours: dict) -> str | None:
    """Clean against robust accuracy under this threat model, one point per defense, with both
    95% intervals as error bars; the dashed diagonal is robust = clean."""
    points = [row for row in table["rows"]
              if row["metrics"].get("clean_accuracy", {}).get("value") is not None
              and row["metrics"].get("robust_accuracy", {}).get("value") is not None]
    if not points:
        return None
    axes = Axes(nice_ticks(100), nice_ticks(100), "clean accuracy (%)", "accuracy under attack (%)")
    parts = [f'<line x1="{axes.x(0)}" y1="{axes.y(0)}" x2="{axes.x(100)}" y2="{axes.y(100)}" '
             f'stroke="#999" stroke-dasharray="4 4"/>']
    for row in points:
        clean, robust = row["metrics"]["clean_accuracy"], row["metrics"]["robust_accuracy"]
        x, y = axes.x(100 * clean["value"]), axes.y(100 * robust["value"])
        colour = colours[row["defense"]]
        label = row["defense"]
        # Labels of points in the right half go to their left, so they stay inside the plot.
        side, anchor = (-1, "end") if clean["value"] > 0.5 else (1, "start")
        tip = (f"{label}: clean {100 * clean['value']:.1f}% [{100 * clean['low']:.1f}, "
               f"{100 * clean['high']:.1f}], under attack {100 * robust['value']:.1f}% "
               f"[{100 * robust['low']:.1f}, {100 * robust['high']:.1f}], n={robust['n']}")
        parts.append(
            f'<g class="point" data-defense="{esc(row["defense"])}" stroke="{colour}" fill="{colour}">'
            f'<title>{esc(tip)}</title>'
            f'<line x1="{axes.x(100 * clean["low"])}" x2="{axes.x(100 * clean["high"])}" y1="{y}" y2="{y}"/>'
            f'<line x1="{x}" x2="{x}" y1="{axes.y(100 * robust["low"])}" y2="{axes.y(100 * robust["high"])}"/>'
            f'<circle cx="{x}" cy="{y}" r="5"/>'
            f'<text x="{x + 7 * side}" y="{y - 7}" text-anchor="{anchor}" stroke="none" '
            f'fill="{colour}">{esc(label)}</text></g>')
    return axes.svg("tradeoff", f"Accuracy-robustness trade-off, {table['task']}, "
                    f"{table_title(table)}", "\n".join(parts))


def certified_plots(table: dict, colours: dict) -> list[str]:
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
                    f"radius ({unit})", "certified accuracy (%)")
        parts, legend = [], []
        for index, row in enumerate(rows):
            curve, colour = row["certified_curve"], colours[row["defense"]]
            radius, accuracy = curve["radius"], curve["accuracy"]
            # acc(r) holds on (radius[i-1], radius[i]]; after the largest radius nothing is certified.
            path = [f"M{axes.x(radius[0])},{axes.y(100 * accuracy[0])}"]
            for i in range(1, len(radius)):
                path.append(f"L{axes.x(radius[i - 1])},{axes.y(100 * accuracy[i])}")
                path.append(f"L{axes.x(radius[i])},{axes.y(100 * accuracy[i])}")
            path.append(f"L{axes.x(radius[-1])},{axes.y(0)}")
            label = row["defense"]
            parts.append(f'<path class="curve" data-defense="{esc(row["defense"])}" d="{" ".join(path)}" '
                         f'fill="none" stroke="{colour}" stroke-width="2"><title>{esc(label)}: certified '
                         f'accuracy {100 * accuracy[0]:.1f}% at radius 0, n={curve["n"]}</title></path>')
            y = axes.TOP + 14 + 16 * index
            legend.append(f'<g class="legend"><line x1="{axes.WIDTH - 190}" x2="{axes.WIDTH - 170}" '
                          f'y1="{y - 4}" y2="{y - 4}" stroke="{colour}" stroke-width="2"/>'
                          f'<text x="{axes.WIDTH - 164}" y="{y}">{esc(label)} (n={curve["n"]})</text></g>')
        plots.append(axes.svg("certified", f"Certified accuracy against radius ({unit}), "
                              f"{table['task']}", "\n".join(parts + legend)))
    return plots


# Tables ----------------------------------------------------------------------------------------
def format_flag(flag) -> str:
    """A sanity flag as given by the leaderboard: a string, or a mapping with a name and detail."""
    if isinstance(flag, dict):
        name = flag.get("name") or flag.get("flag") or flag.get("code") or flag.get("check") or "flag"
        detail = flag.get("message") or flag.get("detail") or flag.get("reason") or ""
        return f"{name}: {detail}" if detail else str(name)
    return str(flag)


def metric_cell(metric: dict | None, name: str) -> str:
    if metric is None or metric.get("value") is None:
        n = "" if metric is None else f'<span class="n">n={metric["n"]}</span>'
        return f'<td class="num" data-sort="">n/a{n}</td>'
    value = metric["value"]
    if name in RATE_METRICS:
        shown = f"{100 * value:.1f}"
        interval = f'<span class="ci">[{100 * metric["low"]:.1f}, {100 * metric["high"]:.1f}]</span>'
    else:
        shown = f"{value:.3g}"
        sd = metric.get("sd")
        if sd is not None and sd <= 1e-9 * max(1.0, abs(value)):
            sd = 0.0  # a constant, up to floating-point rounding
        interval = f'<span class="ci">sd {sd:.3g}</span>' if sd is not None else ""
    return (f'<td class="num" data-sort="{value!r}">{shown}{interval}'
            f'<span class="n">n={metric["n"]}</span></td>')


def render_table(table: dict) -> str:
    rows = table["rows"]
    present = table_columns(table)
    has_flags = any(row.get("flags") for row in rows)
    units = ", ".join(table["certificate_units"])
    head = ['<th data-type="number" title="rank by the headline metric">rank</th>',
            '<th data-type="text">defense</th>', '<th data-type="text">model</th>']
    for name, label in present:
        if name == "median_certified_radius" and units:
            label = f"{label} ({units})"
        head.append(f'<th data-type="number" data-metric="{name}" title="{esc(metric_help(table, name))}">'
                    f'{esc(label)}</th>')
    if has_flags:
        head.append('<th data-type="text" title="sanity checks this row fails">sanity flags</th>')
    body = []
    for rank, row in enumerate(rows, 1):
        flags = [format_flag(f) for f in row.get("flags") or []]
        defense = esc(row["defense"])
        if row.get("submission"):
            defense += (f' <a class="badge" href="submissions/{esc(slug(row["submission"]))}.json" '
                        f'title="submitted entry: its JSON with results, manifest and hashes">submission</a>')
        cells = [f'<td class="num" data-sort="{rank}">{rank}</td>',
                 f'<td data-sort="{esc(row["defense"])}">{defense}{" &#9888;" if flags else ""}</td>',
                 f'<td>{esc(row["model"])}</td>']
        cells += [metric_cell(row["metrics"].get(name), name) for name, _ in present]
        if has_flags:
            cells.append(f'<td class="flags" data-sort="{len(flags)}">' +
                         "".join(f'<span class="flag">{esc(f)}</span>' for f in flags) + "</td>")
        css = ' class="flagged"' if flags else ""
        body.append(f'<tr{css} data-defense="{esc(row["defense"])}">' + "".join(cells) + "</tr>")
    return (f'<table class="sortable leaderboard">\n<thead><tr>{"".join(head)}</tr></thead>\n'
            f'<tbody>\n' + "\n".join(body) + '\n</tbody>\n</table>')


def constraints(table: dict) -> str:
    if table["threat_id"] == "clean":
        text = ("No attack: clean test inputs. Certifying defenses also report their certificates "
                "here" + (f" (radius unit: {esc(', '.join(table['certificate_units']))})"
                          if table["certificate_units"] else "") + ".")
        return f'<div class="constraints"><p>{text}</p></div>'
    params = table.get("attack_params") or {}
    listing = "".join(f"<dt>{esc(k)}</dt><dd>{esc(json.dumps(v))}</dd>" for k, v in sorted(params.items()))
    return (f'<div class="constraints"><p><strong>Threat model {esc(table["threat_id"])}:</strong> '
            f'{esc(table["description"])}.</p>'
            + (f'<p class="small">Every setting of the attack (its hash is the threat-model id; '
               f'rows are only ranked against rows with the same id):</p><dl class="params">{listing}</dl>'
               if listing else "") + "</div>")


def render_table_page(board: dict, table: dict, colours: dict) -> str:
    title = f"{table['task']}: {table_title(table)}"
    plots = []
    tradeoff = tradeoff_plot(table, colours)
    if tradeoff:
        plots.append(f"<figure>{tradeoff}<figcaption>Accuracy-robustness trade-off: each point is a "
                     f"defense, with its 95% Clopper-Pearson intervals as bars. Points near the "
                     f"dashed diagonal lose little accuracy to this attack.</figcaption></figure>")
    for plot in certified_plots(table, colours):
        plots.append(f"<figure>{plot}<figcaption>Certified accuracy at radius r: the share of the n "
                     f"examples certified correct with a radius of at least r (Cohen et al. "
                     f"2019).</figcaption></figure>")
    legend = "".join(f"<li><strong>{esc(label)}</strong>: {esc(metric_help(table, name))}</li>"
                     for name, label in table_columns(table))
    body = (f'<nav><a href="index.html">&larr; {esc(board["suite"])} leaderboard</a></nav>\n'
            f'<h1>{esc(title)}</h1>\n{constraints(table)}\n'
            f'<h2>Results</h2>\n<p class="small muted">Rates are percentages with their '
            f'{esc(board["interval"])} interval in brackets and the sample count n; click a column '
            f'heading to sort.</p>\n{render_table(table)}\n<ul class="small">{legend}</ul>\n'
            + (f'<h2>Plots</h2>\n<div class="plots">{"".join(plots)}</div>\n' if plots else ""))
    return page(f"{title} · rbench {board['suite']}", body)


def headline(table: dict) -> str:
    for name in ("certified_accuracy", "robust_accuracy", "clean_accuracy"):
        rows = [r for r in table["rows"] if r["metrics"].get(name, {}).get("value") is not None]
        if rows:
            best = max(rows, key=lambda r: r["metrics"][name]["value"])
            label = dict(COLUMNS)[name].rstrip(" %")
            return f"{esc(best['defense'])}: {esc(label)} {100 * best['metrics'][name]['value']:.1f}%"
    return ""


def render_reproduction_page(reproduction: dict) -> str:
    """The reproduction table (benchmark/reproduction.py) as a sortable page."""
    rows = "".join(
        f'<tr><td><b>{esc(row["paper"])}</b>: {esc(row["statement"])}</td>'
        f'<td>{esc(row["metric"])}: {esc(row["better"])} vs {esc(row["worse"])}</td>'
        f'<td>{esc(row["paper_figure"])}</td><td>{esc(row["ours_better"] or "")}</td>'
        f'<td>{esc(row["ours_worse"] or "")}</td><td>{esc(row["verdict"])}</td>'
        f'<td>{esc(row["detail"])}</td></tr>' for row in reproduction["rows"])
    body = (f'<h1>Reproduction of the seeds\' claims: suite {esc(reproduction["suite"])}</h1>'
            f'<p><a href="index.html">leaderboard</a> · Verdicts: {esc(verdict_counts(reproduction))}. '
            f'Suite sha256 {esc(reproduction["suite_sha256"][:12])}; files: '
            f'<a href="REPRODUCTION.md">markdown</a>, <a href="reproduction.json">json</a>.</p>'
            f'<p class="small muted">{esc(rule_text(reproduction))}</p>'
            '<table class="sortable reproduction"><thead><tr><th data-type="text">claim</th>'
            '<th data-type="text">compared</th><th data-type="text">paper\'s figure</th>'
            '<th data-type="text">ours: better side</th><th data-type="text">ours: other side</th>'
            '<th data-type="text">verdict</th><th data-type="text">test</th></tr></thead>'
            f'<tbody>{rows}</tbody></table>')
    return page(f"rbench reproduction: {reproduction['suite']}", body)


def render_index(board: dict, reproduction: dict | None = None) -> str:
    manifest = board.get("manifest") or {}
    parts = [f"<h1>Leaderboard: suite {esc(board['suite'])}</h1>",
             f'<p>One page per task and threat model. Every rate carries its sample count n and '
             f'{esc(board["interval"])} interval; rows are ranked only against rows measured under the '
             f'same threat model (the same attack with every constraint).</p>']
    if manifest:
        parts.append(f'<p class="small muted">Measured at commit {esc(manifest.get("git_commit"))} on '
                     f'{esc(manifest.get("device"))}, '
                     f'torch {esc((manifest.get("packages") or {}).get("torch"))}, '
                     f'suite sha256 {esc((manifest.get("suite_sha256") or "")[:12])}. Files: '
                     f'<a href="leaderboard.json">json</a>, <a href="leaderboard.csv">csv</a>, '
                     f'<a href="leaderboard.md">markdown</a>.</p>')
    history = run_history(board)
    if history:
        parts.append(f'<p class="small muted">{esc(history)}</p>')
    if reproduction is not None:
        parts.append(f'<p><a href="reproduction.html">Reproduction of the seeds\' claims</a>: '
                     f'{esc(verdict_counts(reproduction))}.</p>')
    task = None
    for table in board["tables"]:
        if table["task"] != task:
            if task is not None:
                parts.append("</tbody></table>")
            task = table["task"]
            source = ((manifest.get("data") or {}).get(task) or {}).get("source")
            parts.append(f"<h2>{esc(task)}</h2>" + (f'<p class="small muted">Data: {esc(source)}.</p>'
                                                     if source else ""))
            parts.append('<table class="sortable threat-models"><thead><tr><th data-type="text">threat '
                         'model</th><th data-type="text">constraints</th><th data-type="number">rows'
                         '</th><th data-type="text">best</th><th data-type="number">flagged</th>'
                         '</tr></thead><tbody>')
        flagged = sum(1 for r in table["rows"] if r.get("flags"))
        parts.append(f'<tr><td><a href="{esc(page_name(table))}">{esc(table_title(table))}</a></td>'
                     f'<td>{esc(table["description"])}</td><td class="num">{len(table["rows"])}</td>'
                     f'<td>{headline(table)}</td><td class="num">{flagged}</td></tr>')
    if task is not None:
        parts.append("</tbody></table>")
    entries = sorted({r["submission"] for t in board["tables"] for r in t["rows"] if r.get("submission")})
    if entries:
        parts.append("<h2>Submitted entries</h2><ul>" + "".join(
            f'<li><a href="submissions/{esc(slug(e))}.json">{esc(e)}</a></li>' for e in entries) + "</ul>")
    if board.get("not_run"):
        parts.append("<h2>Cells not run</h2><ul>" + "".join(
            f"<li>{esc(c['task'])} / {esc(c['defense'])} / {esc(c['attack'] or 'clean')}: "
            f"{esc(c['status'])}: {esc(c['reason'])}</li>" for c in board["not_run"]) + "</ul>")
    return page(f"rbench leaderboard: {board['suite']}", "\n".join(parts))


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
    marker = f'<meta name="generator" content="{esc(GENERATOR)}">'
    for old in out_dir.glob("*.html"):
        if old.name not in pages and marker in old.read_text(errors="replace")[:1000]:
            old.unlink()
    written = []
    for name, content in pages.items():
        write_text(out_dir / name, content)
        written.append(out_dir / name)
    return written
