"""The map's report read from ``map.json`` alone: verdicts per threat and family, trends, a partial grid, and the
study report's section that links to it."""

from __future__ import annotations

import math

import pytest

from deltaguard.mitigation.summary import build_map_document, finding_text, findings, trend, write_map_report


def _rate(value, low=None, high=None):
    return {"value": value, "low": value - 0.1 if low is None else low, "high": value + 0.1 if high is None else high,
            "n": 64, "k": round(64 * value)}


def _interval(value, low, high):
    return {"value": value, "low": low, "high": high}


def _point(depth, strength, ratio, mitigation, *, clear=True, done=True, drop=(5.0, -5.0, 15.0)):
    rows = [{"label": "base", "rates": {"attack": _rate(0.05), "utility": _rate(0.2)}},
            {"label": "finetuned", "rates": {"attack": _rate(0.9 if clear else 0.06), "utility": _rate(0.3),
                                             "harm": _rate(0.5)}},
            {"label": "full", "rates": {"attack": _rate(0.9)}, "mitigation_pct": _interval(0.0, 0.0, 0.0)},
            {"label": "bitdelta-nodistill", "rates": {"attack": _rate(0.5)}, "mitigation_pct": _interval(*mitigation),
             "harm_mitigation_pct": _interval(10.0, -20.0, 40.0), "utility_drop_pct": _interval(*drop)}]
    return {"family": "fam", "depth": depth, "strength": strength, "threat": "harmful", "attack_clear": clear,
            "norms": {"ratio": ratio}, "rows": rows if done else []}


def _result(points):
    return {"axes": {"families": ["fam"], "depths": ["light", "demo"], "strengths": ["weak", "demo"],
                     "threats": ["harmful"], "methods": ["full", "bitdelta-nodistill"]},
            "points": points, "profile": "custom", "executor": "this process", "seconds": 60.0,
            "families": {"fam": {"responder": None}},
            "config": {"fields": {"align_levels": ["light: epochs=1", "demo:"], "attack_levels": ["weak: epochs=1",
                                                                                                  "demo:"],
                                  "study_profile": "default"}}}


COMPLETE = [_point("light", "weak", 0.2, (60.0, 30.0, 85.0)), _point("light", "demo", 1.0, (10.0, -15.0, 30.0)),
            _point("demo", "weak", 0.1, (70.0, 45.0, 90.0)), _point("demo", "demo", 0.6, (5.0, -20.0, 25.0))]


def test_a_cell_with_an_interval_above_zero_reproduces_the_direction_and_names_its_cost():
    (finding,) = findings(_result(COMPLETE))
    assert finding["reproduced"] and finding["n_attack_clear"] == 4 and finding["n_cells"] == 4
    assert [(c["depth"], c["strength"]) for c in finding["cells"]] == [("light", "weak"), ("demo", "weak")]
    text = finding_text(finding)
    assert "reproduced in 2 of 4 cells" in text and "utility drop 5% [-5, 15]" in text
    assert "norm ratio 0.20" in text


def test_no_interval_above_zero_says_not_reproduced_and_no_clear_attack_says_not_measurable():
    flat = [_point(d, s, r, (10.0, -15.0, 30.0)) for d, s, r in (("light", "weak", 0.2), ("demo", "demo", 0.6))]
    assert "not reproduced in this regime" in finding_text(findings(_result(flat))[0])
    failed = [_point("light", "weak", 0.2, (90.0, 80.0, 99.0), clear=False)]
    text = finding_text(findings(_result(failed))[0])
    assert "not measurable" in text and "reproduced in" not in text


def test_the_trend_is_a_least_squares_line_in_log_ratio():
    fit = trend(_result(COMPLETE), "bitdelta-nodistill")
    xs = [math.log10(r) for r in (0.2, 1.0, 0.1, 0.6)]
    ys = [60.0, 10.0, 70.0, 5.0]
    mean_x, mean_y = sum(xs) / 4, sum(ys) / 4
    slope = sum((x - mean_x) * (y - mean_y) for x, y in zip(xs, ys)) / sum((x - mean_x) ** 2 for x in xs)
    assert fit["slope_per_decade"] == pytest.approx(slope) and fit["slope_per_decade"] < 0 and fit["n"] == 4
    assert trend(_result(COMPLETE[:2]), "bitdelta-nodistill") is None   # two points are not a trend


def test_complete_and_partial_grids_render(tmp_path):
    paths = write_map_report(_result(COMPLETE), tmp_path)
    html = paths["html"].read_text()
    assert "What the map says" in html and html.count("data:image/png;base64,") == 2
    assert (tmp_path / "figures" / "map-fam-harmful.png").read_bytes()[:4] == b"\x89PNG"

    partial = _result([COMPLETE[0], _point("light", "demo", None, (0, 0, 0), done=False)])
    markdown = write_map_report(partial, tmp_path / "partial")["markdown"].read_text()
    assert "only 1 of 2 grid points have finished" in markdown and "not run" in markdown
    nothing = _result([_point("light", "weak", None, (0, 0, 0), done=False)])
    doc = build_map_document(nothing, {})
    assert any("no cell has finished yet" in item for kind, items in doc.blocks if kind == "list" for item in items)


def test_the_study_report_links_the_map_when_one_ran_in_its_directory(tmp_path):
    from deltaguard.report.document import Document, _map_section

    results = {"audits": {"harmful": {}}}
    without = Document("t")
    _map_section(without, results, None)
    assert "deltaguard map -o" in without.markdown()
    with_map = Document("t")
    finished = _result(COMPLETE)
    write_map_report(finished, tmp_path)   # map.json carries its verdicts for the study report
    _map_section(with_map, results, finished)
    assert "[The mitigation map" in with_map.markdown() and "(map.md)" in with_map.markdown()
    assert "href='map.html'" in with_map.html() and "reproduced in 2 of 4 cells" in with_map.html()
