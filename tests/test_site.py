"""The static leaderboard site in a real browser: headless Chromium (Debian's package) through
Playwright loads the pages from disk, and the tests check the tables, both plots, sorting, escaping
and that the console stays clean. The store is filled by hand, so no model is trained."""
import os

import numpy as np
import pytest

from benchmark.leaderboard import build_leaderboard, certified_curve, render_markdown
from benchmark.site import GENERATOR, nice_ticks, write_site
from benchmark.specs import AttackSpec, Cell, DefenseSpec, ModelSpec, Protocol, TaskSpec
from benchmark.store import Store

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
PGD = AttackSpec.make("pgd", {"norm": "linf", "eps": 0.1, "steps": 10})
N = 100
# defense: (clean accuracy, robust accuracy, certified radii or None)
DEFENSES = {"vanilla": (0.98, 0.05, None), "smooth-0.25": (0.90, 0.40, 0.3),
            "smooth-0.50": (0.80, 0.55, 0.6), "<b>sneaky</b><script>window.pwned=1</script>": (0.5, 0.5, None)}


def fill_store(path, suite="mini") -> Store:
    """A store with one clean and one PGD cell per defense; two defenses certify (unit l2)."""
    store = Store(path)
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 10, N)
    for name, (clean, robust, radius_scale) in DEFENSES.items():
        defense = DefenseSpec.make("vanilla", {"tag": name})
        for attack in (None, PGD):
            cell = Cell(TaskSpec.make("digits"), ModelSpec.make("smallcnn"), defense, attack,
                        Protocol(n_examples=N), "digits", name, attack and "pgd-linf")
            store.open_cell(suite, cell, 1, "PGD-10, linf eps=0.1" if attack else "no attack (clean inputs)",
                            "l2" if radius_scale else None)
            correct = np.arange(N) < round(clean * N)
            outcomes = []
            for i in range(N):
                row = {"example_index": i, "label": int(labels[i]),
                       "clean_prediction": int(labels[i] if correct[i] else (labels[i] + 1) % 10)}
                if attack:
                    still = i < round(robust * N)
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


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    root = tmp_path_factory.mktemp("site")
    store = fill_store(root / "store.sqlite")
    # the suite was measured in two runs, the second from a modified checkout
    store.add_run("mini", "2026-11-01T10:00:00+00:00", {"git_commit": "a" * 40, "git_dirty": False,
                                                        "device": "cpu (2 cores)"})
    store.add_run("mini", "2026-11-02T11:30:00+00:00", {"git_commit": "b" * 40, "git_dirty": True,
                                                        "device": "cpu (2 cores)"})
    board = build_leaderboard(store, "mini")
    pgd = next(t for t in board["tables"] if t["threat_id"] == PGD.threat_id)
    # Sanity flags come from another part of the suite; the page renders whatever rows carry.
    pgd["rows"][0]["flags"] = ["iterative attack weaker than single-step",
                               {"name": "above-chance", "detail": "unbounded budget leaves 40% accuracy"}]
    write_site(board, root)
    return root, board


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
    page = browser.new_page()
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
    assert links.count() == len(board["tables"]) == 2
    header = page.locator("p.small.muted").all_inner_texts()
    assert "Measured at commit " + "b" * 40 in header[0]
    assert ("Measured over 2 runs sharing this store (resumed or concurrent), at commits aaaaaaa, "
            "bbbbbbb (dirty); the commit above is the latest run's") in header[1]
    assert header[1] in render_markdown(board)  # leaderboard.md says the same
    links.filter(has_text="pgd").click()
    assert page.url.endswith(f"digits--{PGD.threat_id}.html")
    assert "PGD-10, linf eps=0.1" in page.locator(".constraints").inner_text()
    assert "eps" in page.locator("dl.params").inner_text()


def test_attack_page_table_tradeoff_plot_and_flags(site, page):
    root, _ = site
    page.goto((root / f"digits--{PGD.threat_id}.html").as_uri())
    table = page.locator("table.leaderboard")
    assert table.locator("tbody tr").count() == len(DEFENSES)
    headers = table.locator("thead th").all_inner_texts()
    for column in ("clean acc %", "acc under attack %", "attack success %", "avg queries",
                   "avg perturbation", "sanity flags"):
        assert any(column in h for h in headers), (column, headers)
    first = table.locator("tbody tr").first
    assert "[" in first.inner_text() and f"n={N}" in first.inner_text()  # interval and n
    assert table.locator("tr.flagged .flag").count() == 2
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
    # vanilla (98% clean, 5% robust) sits right of and below smooth-0.50 (80%, 55%).
    vanilla = plot.locator('g.point[data-defense="vanilla"] circle').bounding_box()
    smooth = plot.locator('g.point[data-defense="smooth-0.50"] circle').bounding_box()
    assert vanilla["x"] > smooth["x"] and vanilla["y"] > smooth["y"]


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
    assert sorted(curves.evaluate_all("cs => cs.map(c => c.dataset.defense)")) == ["smooth-0.25", "smooth-0.50"]
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
    assert names == ["digits--clean.html", f"digits--{PGD.threat_id}.html", "index.html", "notes.html"]


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
