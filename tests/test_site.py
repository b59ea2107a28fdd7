"""The static leaderboard site in a real browser: headless Chromium (Debian's package) through
Playwright loads the pages from disk, and the tests check the defense x attack matrix, the tables,
both plots, sorting, escaping and that the console stays clean. The store is filled by hand with
per-example outcomes (nothing is trained), and every row comes from build_leaderboard on it."""
import itertools
import os

import numpy as np
import pytest

from benchmark.leaderboard import (build_leaderboard, certified_curve, render_markdown,
                                   threat_family, unfinished_line, write_leaderboard)
from benchmark.site import GENERATOR, nice_ticks, write_site
from benchmark.specs import AttackSpec, Cell, DefenseSpec, ModelSpec, Protocol, TaskSpec
from benchmark.store import Store

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
PGD = AttackSpec.make("pgd", {"norm": "linf", "eps": 0.1, "steps": 10})
# Square (black-box, within AutoAttack) at PGD's budget: the same threat family.
SQUARE = AttackSpec.make("autoattack", {"attacks": ["square"], "norm": "linf", "eps": 0.1})
ATTACKS = {"pgd-linf": PGD, "square": SQUARE}
N = 100
LOCAL_DATA = "/work/shared/data/digits"  # a machine path: it must never reach a published page
# defense: (clean accuracy, accuracy under PGD, accuracy under Square, certified radii or None).
# Example i is right when i < rate * N, so rows are nested and their differences are discordant
# pairs. "bit-depth" masks gradients (issue 18): 97% under PGD, 2% under Square, flagged.
DEFENSES = {"vanilla": (0.78, 0.05, 0.06, None), "ibp": (0.83, 0.40, 0.42, 0.3),
            "smooth-0.50": (0.80, 0.55, 0.56, 0.6), "madry": (0.80, 0.50, 0.52, None),
            "trades": (0.79, 0.49, 0.50, None), "bit-depth": (0.98, 0.97, 0.02, None),
            "mixup": (0.90, 0.10, 0.12, None), "ciiv": (0.88, 0.30, 0.31, None),
            "causaladv-m": (0.81, 0.48, 0.49, None), "causaladv-t": (0.79, 0.47, 0.48, None),
            "<b>sneaky</b><script>window.pwned=1</script>": (0.5, 0.45, 0.45, None)}
MASKED = "bit-depth"


def fill_store(path, suite="mini", defenses=DEFENSES, square_offset=0) -> Store:
    """A store with a clean, a PGD and a Square cell per defense; two defenses certify (unit l2).
    Square's robust examples start at `square_offset` (0: nested inside PGD's)."""
    store = Store(path)
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 10, N)
    for name, (clean, pgd, square, radius_scale) in defenses.items():
        defense = DefenseSpec.make("vanilla", {"tag": name})
        for label, attack in (None, None), *ATTACKS.items():
            robust = {"pgd-linf": pgd, "square": square}.get(label)
            offset = square_offset if label == "square" else 0
            cell = Cell(TaskSpec.make("digits"), ModelSpec.make("smallcnn"), defense, attack,
                        Protocol(n_examples=N), "digits", name, label)
            store.open_cell(suite, cell, 1, f"{label}, linf eps=0.1" if attack else
                            "no attack (clean inputs)", "l2" if radius_scale and not attack else None)
            correct = np.arange(N) < round(clean * N)
            outcomes = []
            for i in range(N):
                row = {"example_index": i, "label": int(labels[i]),
                       "clean_prediction": int(labels[i] if correct[i] else (labels[i] + 1) % 10)}
                if attack:
                    still = offset <= i < offset + round(robust * N)
                    row.update(adversarial_prediction=int(labels[i] if still else (labels[i] + 2) % 10),
                               success=int(correct[i] and not still), queries=10,
                               perturbation=0.1 if correct[i] and not still else 0.0)
                elif radius_scale:
                    row.update(certified=int(correct[i] and i % 4 != 0),
                               radius=float(rng.exponential(radius_scale)), abstained=int(i % 4 == 0),
                               p_lower=0.9)
                outcomes.append(row)
            store.write_batch(cell.id, 0, outcomes)
            store.finish_cell(cell.id)
    return store


def add_runs(store, suite="mini"):
    """The suite measured in two runs, the second from a modified checkout, on local data."""
    data = {"digits": {"source": LOCAL_DATA, "checksums": {"test": "382daf2abecc78ae",
                                                           "train": "aac4fb48cef8b9c9"}}}
    for day, commit, dirty in (("01", "a", False), ("02", "b", True)):
        store.add_run(suite, f"2026-11-{day}T10:00:00+00:00", {
            "git_commit": commit * 40, "git_dirty": dirty, "device": "cpu (2 cores)", "data": data,
            "cpu": {"model": "Test CPU 9000", "instruction_set": "AVX2"}, "gpu": None})


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    root = tmp_path_factory.mktemp("site")
    store = fill_store(root / "store.sqlite")
    add_runs(store)
    board = write_leaderboard(store, "mini", root)
    write_site(board, root)
    return root, board


def table(board, threat_id):
    return next(t for t in board["tables"] if t["threat_id"] == threat_id)


def matrix(board):
    (found,) = board["matrices"]
    return found


@pytest.fixture(scope="module")
def browser():
    if not os.path.exists(CHROMIUM):
        pytest.skip(f"{CHROMIUM} is not installed (apt-get install chromium; .ci/run does)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield chromium
        chromium.close()


@pytest.fixture
def page(browser):
    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    page.problems = []
    page.on("console", lambda m: page.problems.append(f"console {m.type}: {m.text}")
            if m.type in ("error", "warning") else None)
    page.on("pageerror", lambda e: page.problems.append(f"page error: {e}"))
    page.on("requestfailed", lambda r: page.problems.append(f"request failed: {r.url}"))
    yield page
    assert page.problems == []  # no console error, no script error, nothing failed to load
    page.close()


def test_certified_curve_counts_certified_examples_at_each_radius():
    outcomes = [{"certified": c, "radius": r, "label": 0, "clean_prediction": 0}
                for c, r in ((1, 0.5), (1, 1.0), (0, 2.0), (1, 1.0))]
    curve = certified_curve(outcomes)
    assert curve == {"n": 4, "radius": [0.0, 0.5, 1.0], "accuracy": [0.75, 0.75, 0.5]}
    assert certified_curve([{"certified": None, "radius": None}]) is None


def test_nice_ticks_cover_the_range():
    assert nice_ticks(100) == [0, 20, 40, 60, 80, 100]
    assert nice_ticks(2.3)[-1] >= 2.3 and len(nice_ticks(2.3)) <= 7


def test_index_links_every_table(site, page):
    root, board = site
    page.goto((root / "index.html").as_uri())
    links = page.locator("table.threat-models a")
    assert links.count() == len(board["tables"]) == 3
    header = page.locator("p.small.muted").all_inner_texts()
    assert "Measured at commit " + "b" * 40 in header[0]
    assert "Test CPU 9000" in header[0] and "AVX2" in header[0]  # the machine, from the manifest
    assert ("Measured over 2 runs sharing this store (resumed or concurrent), at commits aaaaaaa, "
            "bbbbbbb (dirty); the commit above is the latest run's") in header[1]
    assert header[1] in render_markdown(board)  # leaderboard.md says the same
    assert "Test CPU 9000" in render_markdown(board)
    links.filter(has_text="pgd").click()
    assert page.url.endswith(f"digits--{PGD.threat_id}.html")
    assert "pgd-linf, linf eps=0.1" in page.locator(".constraints").inner_text()
    assert "eps" in page.locator("dl.params").inner_text()


def test_every_table_ranks_by_one_declared_metric_named_on_the_page(site):
    """A certifying row is ranked by clean accuracy like every other row of the clean table (it
    was ranked by its certified accuracy: vanilla at 78% clean above ibp at 83% clean)."""
    root, board = site
    clean = table(board, "clean")
    assert clean["ranked_by"] == "clean_accuracy"
    order = [r["defense"] for r in clean["rows"]]
    assert order.index("ibp") < order.index("vanilla")
    values = [r["metrics"]["clean_accuracy"]["value"] for r in clean["rows"]]
    assert values == sorted(values, reverse=True)
    assert "Ranked by clean acc %" in (root / "leaderboard.md").read_text()
    assert "Ranked by clean acc %" in (root / "digits--clean.html").read_text()
    assert table(board, PGD.threat_id)["ranked_by"] == "robust_accuracy"


def test_a_flagged_row_is_not_ranked_above_unflagged_rows(site):
    """Issue 18's gradient masking: 97% under PGD, 2% under Square (black-box flag). It is last
    in the matrix (worst case) and below every unflagged row of the PGD table."""
    _, board = site
    pgd = table(board, PGD.threat_id)
    masked = next(r for r in pgd["rows"] if r["defense"] == MASKED)
    assert masked["sanity_summary"] == "FLAG: black-box"
    flagged = [bool(r["sanity_summary"].startswith("FLAG")) for r in pgd["rows"]]
    assert flagged == sorted(flagged)  # every unflagged row first
    rows = matrix(board)["rows"]
    assert rows[-1]["defense"] == MASKED
    worst = [r["cells"]["worst_case_accuracy"]["value"] for r in rows]
    assert worst == sorted(worst, reverse=True)
    assert rows[-1]["cells"]["worst_case_accuracy"]["value"] == pytest.approx(0.02)


def test_worst_case_is_per_example_over_the_threat_family(tmp_path):
    """PGD leaves examples 0-49, Square 25-74: robust to both are 25-49, 25% (not min(50, 50))."""
    store = fill_store(tmp_path / "store.sqlite", defenses={"a": (1.0, 0.5, 0.5, None),
                                                            "b": (1.0, 0.5, 0.5, None)},
                       square_offset=25)
    (found,) = build_leaderboard(store, "mini")["matrices"]
    assert found["family"] == "linf eps=0.1"
    assert [a["label"] for a in found["attacks"]] == ["pgd-linf", "square"]
    cells = found["rows"][0]["cells"]
    assert cells[PGD.threat_id]["value"] == cells[SQUARE.threat_id]["value"] == 0.5
    assert cells["worst_case_accuracy"]["successes"] == 25 and cells["worst_case_accuracy"]["n"] == N


def test_significance_tiers_and_rank_intervals(site):
    """Rows an exact McNemar test (Holm-adjusted) cannot separate from the row above share its
    tier; the rank interval spans the tier."""
    _, board = site
    rows = {r["defense"]: r for r in matrix(board)["rows"]}
    # madry 50% and trades 49% differ on one example: one tier
    assert rows["madry"]["tier"] == rows["trades"]["tier"]
    # ciiv 30% vs mixup 10%: 20 discordant examples, all one way
    assert rows["mixup"]["tier"] > rows["ciiv"]["tier"]
    for row in rows.values():
        members = [i for i, r in enumerate(matrix(board)["rows"], 1) if r["tier"] == row["tier"]]
        assert row["rank"] == [members[0], members[-1]]
    tiers = [r["tier"] for r in matrix(board)["rows"]]
    assert tiers == sorted(tiers) and tiers[0] == 1


def test_tiers_do_not_chain_rows_a_test_separates(tmp_path):
    """Eleven rows 4 points apart: no two neighbours are separable on 100 examples, but the first
    (60%) and the last (20%) are; they must not share a tier (one tier 1-11 would say the whole
    table is noise)."""
    steps = {f"d{i:02d}": (1.0, 0.6 - 0.04 * i, 0.6 - 0.04 * i, None) for i in range(11)}
    (found,) = build_leaderboard(fill_store(tmp_path / "store.sqlite", defenses=steps),
                                 "mini")["matrices"]
    rows = found["rows"]
    assert [r["defense"] for r in rows] == sorted(steps)
    assert rows[0]["tier"] != rows[-1]["tier"]
    assert rows[0]["rank"][1] < len(rows)


def test_threat_families_of_text_attacks():
    """Text attacks share a family when they make the same kind of substitution under the same
    perturbation budget; image attacks when they share norm and budget."""
    textfooler = threat_family("textfooler", {"max_perturbed_fraction": None, "min_cos_sim": 0.5})
    assert textfooler == threat_family("ascc", {"max_perturbed_fraction": None, "steps": 10})
    assert textfooler != threat_family("deepwordbug", {"max_perturbed_fraction": None})
    assert textfooler != threat_family("bert-attack", {"max_perturbed_fraction": 0.4})
    assert threat_family("fgsm", {"eps": 0.1}) == threat_family("pgd", {"norm": "linf", "eps": 0.1})
    assert threat_family("pgd", {"norm": "l2", "eps": 0.1}) != threat_family("fgsm", {"eps": 0.1})


def test_published_pages_name_the_data_source_never_a_local_path(site):
    root, board = site
    published = [root / "leaderboard.md", root / "leaderboard.json", root / "leaderboard.csv",
                 *root.glob("*.html")]
    for path in published:
        assert LOCAL_DATA not in path.read_text(), path
    assert board["manifest"]["data"]["digits"]["source"] == "local copy"
    for path in (root / "leaderboard.md", root / "index.html"):
        text = path.read_text()
        assert "local copy" in text and "382daf2abecc78ae" in text, path


def test_matrix_on_the_index_with_flags_tiers_and_intervals(site, page):
    root, board = site
    page.goto((root / "index.html").as_uri())
    grid = page.locator("table.matrix")
    assert grid.count() == 1
    headers = grid.locator("thead th").all_inner_texts()
    for column in ("tier", "rank", "defense", "clean acc %", "pgd-linf", "square",
                   "certified acc % (l2)", "worst-case acc %"):
        assert any(column in h for h in headers), (column, headers)
    body = grid.locator("tbody tr")
    assert body.count() == len(DEFENSES)
    names = body.evaluate_all("rows => rows.map(r => r.dataset.defense)")
    assert names == [r["defense"] for r in matrix(board)["rows"]] and names[-1] == MASKED
    first = body.first.inner_text()
    assert "[" in first and f"n={N}" in first  # interval and n in every cell
    masked = grid.locator(f'tbody tr[data-defense="{MASKED}"]')
    assert masked.locator("td.flagged .flag").count() >= 1
    assert "black-box" in masked.locator(".flag").first.get_attribute("title")
    tiers = body.evaluate_all("rows => rows.map(r => r.cells[0].textContent.trim())")
    assert tiers[0] == "1" and len(set(tiers)) > 1
    md = (root / "leaderboard.md").read_text()
    assert md.index("worst-case acc %") < md.index("### clean inputs")  # the matrix comes first


def test_attack_page_table_tradeoff_plot_and_flags(site, page):
    root, _ = site
    page.goto((root / f"digits--{PGD.threat_id}.html").as_uri())
    leaderboard = page.locator("table.leaderboard")
    assert leaderboard.locator("tbody tr").count() == len(DEFENSES)
    headers = leaderboard.locator("thead th").all_inner_texts()
    for column in ("clean acc %", "acc under attack %", "attack success %", "avg queries",
                   "avg perturbation", "sanity flags"):
        assert any(column in h for h in headers), (column, headers)
    first = leaderboard.locator("tbody tr").first
    assert "[" in first.inner_text() and f"n={N}" in first.inner_text()  # interval and n
    # the sanity flag the leaderboard computed from the store reaches the page
    flagged = leaderboard.locator("tr.flagged")
    assert flagged.count() == 1 and flagged.get_attribute("data-defense") == MASKED
    assert "black-box" in flagged.locator(".flag").inner_text()
    # The trade-off plot: one point per defense, drawn inside the plot.
    plot = page.locator("svg.plot.tradeoff")
    assert plot.count() == 1
    box = plot.bounding_box()
    assert box["width"] > 300 and box["height"] > 300
    points = plot.locator("g.point circle")
    assert points.count() == len(DEFENSES)
    for i in range(points.count()):
        point = points.nth(i).bounding_box()
        assert box["x"] <= point["x"] <= box["x"] + box["width"]
        assert box["y"] <= point["y"] <= box["y"] + box["height"]
    # vanilla (78% clean, 5% robust) sits left of and below smooth-0.50 (80%, 55%).
    vanilla = plot.locator('g.point[data-defense="vanilla"] circle').bounding_box()
    smooth = plot.locator('g.point[data-defense="smooth-0.50"] circle').bounding_box()
    assert vanilla["x"] < smooth["x"] and vanilla["y"] > smooth["y"]


def test_tradeoff_labels_stay_readable_with_many_rows(site, page):
    """With 11 rows, five of them within a few points of each other, no two labels of the plot
    overlap and every label stays inside it (they piled on top of each other on real-cpu digits)."""
    root, _ = site
    page.goto((root / f"digits--{PGD.threat_id}.html").as_uri())
    plot = page.locator("svg.plot.tradeoff")
    box = plot.bounding_box()
    labels = plot.locator("text.label")
    assert labels.count() == len(DEFENSES)
    boxes = [labels.nth(i).bounding_box() for i in range(labels.count())]
    for one in boxes:
        assert box["x"] <= one["x"] and one["x"] + one["width"] <= box["x"] + box["width"] + 1
        assert box["y"] <= one["y"] and one["y"] + one["height"] <= box["y"] + box["height"] + 1
    for a, b in itertools.combinations(boxes, 2):
        overlap_x = min(a["x"] + a["width"], b["x"] + b["width"]) - max(a["x"], b["x"])
        overlap_y = min(a["y"] + a["height"], b["y"] + b["height"]) - max(a["y"], b["y"])
        assert overlap_x <= 0 or overlap_y <= 0, (a, b)


def test_names_are_escaped(site, page):
    root, _ = site
    page.goto((root / f"digits--{PGD.threat_id}.html").as_uri())
    assert page.evaluate("window.pwned") is None
    assert page.get_by_text("<b>sneaky</b>", exact=False).count() >= 1


def test_certified_accuracy_against_radius_plot(site, page):
    root, _ = site
    page.goto((root / "digits--clean.html").as_uri())
    plot = page.locator("svg.plot.certified")
    assert plot.count() == 1
    assert "radius (l2)" in plot.text_content()
    curves = plot.locator("path.curve")
    assert sorted(curves.evaluate_all("cs => cs.map(c => c.dataset.defense)")) == ["ibp", "smooth-0.50"]
    lengths = curves.evaluate_all("cs => cs.map(c => c.getTotalLength())")
    assert all(length > 100 for length in lengths)
    headers = page.locator("table.leaderboard thead th").all_inner_texts()
    assert any("certified acc %" in h for h in headers) and any("median radius (l2)" in h for h in headers)


def column_values(page, index):
    return page.locator("table.leaderboard tbody tr").evaluate_all(
        f"rows => rows.map(r => r.cells[{index}].getAttribute('data-sort'))")


def test_sorting_by_a_column(site, page):
    root, _ = site
    page.goto((root / f"digits--{PGD.threat_id}.html").as_uri())
    headers = page.locator("table.leaderboard thead th")
    index = next(i for i, text in enumerate(headers.all_inner_texts()) if "acc under attack" in text)
    headers.nth(index).click()
    ascending = [float(v) for v in column_values(page, index)]
    assert ascending == sorted(ascending) and ascending[0] < ascending[-1]
    assert headers.nth(index).get_attribute("aria-sort") == "ascending"
    headers.nth(index).click()
    assert [float(v) for v in column_values(page, index)] == sorted(ascending, reverse=True)
    defense = next(i for i, text in enumerate(headers.all_inner_texts()) if text.startswith("defense"))
    headers.nth(defense).click()
    names = column_values(page, defense)
    assert [n.lower() for n in names] == sorted(n.lower() for n in names)


def test_rewriting_the_site_removes_only_its_own_stale_pages(tmp_path):
    board = build_leaderboard(fill_store(tmp_path / "store.sqlite"), "mini")
    out = tmp_path / "board"
    out.mkdir()
    # A page the site wrote for a table that is gone is removed; a page of someone else's stays.
    (out / "digits--pgd-00000000.html").write_text(
        f'<html><head><meta name="generator" content="{GENERATOR}"></head></html>')
    (out / "notes.html").write_text("<html>hand-written</html>")
    write_site(board, out)
    names = sorted(p.name for p in out.glob("*.html"))
    assert names == sorted(["digits--clean.html", f"digits--{PGD.threat_id}.html",
                            f"digits--{SQUARE.threat_id}.html", "index.html", "notes.html"])


def test_backdoor_and_ranmask_tables_get_their_columns_and_legends(tmp_path):
    """A backdoor table shows benign accuracy and reads ASR as the trigger's success; a words-unit
    certificate shows MCB / MCR with their meaning (the committed mini leaderboard has both)."""
    import json

    from benchmark.paths import REPO_ROOT
    from benchmark.site import defense_colours, render_table_page

    board = json.loads((REPO_ROOT / "leaderboards" / "mini" / "leaderboard.json").read_text())
    backdoor = next(t for t in board["tables"] if t.get("kind") == "backdoor")
    html = render_table_page(board, backdoor, defense_colours(board))
    assert "benign acc" in html and "classified as the target" in html
    words = next(t for t in board["tables"]
                 if any(u.split(" (")[0] == "words" for u in t["certificate_units"]))
    html = render_table_page(board, words, defense_colours(board))
    assert "MCB (words)" in html and "median certified robustness" in html


def test_reproduction_page_is_linked_and_escaped(tmp_path, page):
    """Given the reproduction table, the index links its page, which lists every claim with its
    verdict and escapes what the claims file says."""
    board = build_leaderboard(fill_store(tmp_path / "store.sqlite"), "mini")
    row = {"paper": "P (2024), Table 1", "metric": "accuracy under attack",
           "better": "a on digits, pgd", "worse": "b on digits, pgd", "paper_figure": "+3 points",
           "ours_better": "60.0 [49.7, 69.7] (n=100)", "ours_worse": "5.0 [1.6, 11.3] (n=100)",
           "verdict": "holds", "detail": "one-sided paired McNemar"}
    reproduction = {"suite": "mini", "suite_sha256": "0" * 64, "alpha": 0.05,
                    "counts": {"holds": 1, "does not hold": 1, "not testable here": 0},
                    "rows": [{**row, "statement": "a beats b"},
                             {**row, "statement": "<script>window.pwned=1</script>",
                              "verdict": "does not hold"}]}
    write_site(board, tmp_path, reproduction)
    page.goto((tmp_path / "index.html").as_uri())
    link = page.locator("a", has_text="Reproduction of the seeds' claims")
    assert "1 holds, 1 does not hold, 0 not testable here" in page.locator("body").inner_text()
    link.click()
    assert page.url.endswith("reproduction.html")
    rows = page.locator("table.reproduction tbody tr")
    assert rows.count() == 2
    assert "a beats b" in rows.nth(0).inner_text() and "holds" in rows.nth(0).inner_text()
    assert "<script>window.pwned=1</script>" in rows.nth(1).inner_text()
    assert page.evaluate("window.pwned") is None
    assert "Rule: a claim holds when" in page.locator("p.small.muted").inner_text()


def test_a_board_of_an_unfinished_run_says_how_many_cells_are_missing(tmp_path):
    """A run cut short (a cell opened, not finished) or a suite grown since (a cell not in the
    store): the page says how many of the suite's cells are not measured; a finished one does not."""
    store = fill_store(tmp_path / "s.sqlite", defenses={"vanilla": DEFENSES["vanilla"]})
    finished = {record.cell_id for record in store.cells("mini")}
    assert unfinished_line(build_leaderboard(store, "mini", cell_ids=finished)) is None
    opened = Cell(TaskSpec.make("digits"), ModelSpec.make("smallcnn"),
                  DefenseSpec.make("vanilla", {"tag": "opened"}), None, Protocol(n_examples=N),
                  "digits", "opened")
    store.open_cell("mini", opened, 1, "no attack (clean inputs)", None)
    board = build_leaderboard(store, "mini", cell_ids=finished | {opened.id, "0" * 16})
    assert board["unfinished"] == {"cells": 2, "of": 5}
    assert "Unfinished: 2 of the suite's 5 cells are not measured yet" in render_markdown(board)
    write_site(board, tmp_path / "site")
    assert "Unfinished: 2 of the suite&#39;s 5 cells" in (tmp_path / "site" / "index.html").read_text()
