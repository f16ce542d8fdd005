"""The report opens on the headline figure: mitigation and utility drop per threat and method, with intervals."""

from __future__ import annotations

import io
import math
import re

import pytest

from report_synthetic import synthetic_results


def _pixels(png: bytes):
    from matplotlib.image import imread

    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    return imread(io.BytesIO(png), format="png")


def test_threats_and_methods_in_study_order():
    from deltaguard.report.plots import headline_methods, headline_threats

    results = synthetic_results()
    results["audits"] = {t: results["audits"][t] for t in ("benign", "targeted", "harmful", "backdoor")}
    results["audits"]["extra"] = results["audits"]["harmful"]
    assert headline_threats(results) == ["harmful", "backdoor", "targeted", "benign", "extra"]
    assert headline_methods(results) == ["bitdelta-k2-nodistill", "bitdelta-nodistill", "bitdelta"]  # no base/full


@pytest.mark.parametrize("record,expected", [
    ({"value": 12.0, "low": 2.0, "high": 30.0}, (12.0, 2.0, 30.0)),
    ({"value": 12.0, "low": None, "high": 30.0}, (12.0, math.nan, math.nan)),      # half an interval: no bar
    ({"value": 12.0, "low": float("nan"), "high": 30.0}, (12.0, math.nan, math.nan)),
    ({"value": 12.0, "low": 20.0, "high": 30.0}, (12.0, math.nan, math.nan)),      # does not bracket the value
    ({"value": None, "low": None, "high": None}, (math.nan, math.nan, math.nan)),
    ({"value": float("inf"), "low": 0.0, "high": 1.0}, (math.nan, math.nan, math.nan)),
    ({"value": "12", "low": 0, "high": 20}, (math.nan, math.nan, math.nan)),
    (None, (math.nan, math.nan, math.nan)),
    ("garbage", (math.nan, math.nan, math.nan)),
])
def test_interval_triplet_turns_missing_or_broken_intervals_into_nan(record, expected):
    from deltaguard.report.plots import interval_triplet

    got = interval_triplet(record)
    assert all((math.isnan(a) and math.isnan(b)) or a == b for a, b in zip(got, expected)), got


def test_headline_draws_complete_and_gappy_results():
    from deltaguard.report.plots import headline

    for gaps in (False, True):
        image = _pixels(headline(synthetic_results(gaps=gaps)))
        height, width = image.shape[:2]
        assert 600 < height < 800 and 700 < width < 2000, image.shape
        assert image[..., :3].std() > 0.05   # not blank
    results = synthetic_results()
    for audit in results["audits"].values():   # every interval missing: still a figure, with n/a slots
        for row in audit["rows"]:
            row["mitigation_pct"] = row["utility_drop_pct"] = None
        audit["audit_config"] = {}
    assert _pixels(headline(results)).shape[0] > 0
    assert headline({"audits": {}}) is None
    only_reference_rows = synthetic_results()
    for audit in only_reference_rows["audits"].values():
        audit["rows"] = [r for r in audit["rows"] if r["label"] in ("base", "finetuned", "full")]
    assert headline(only_reference_rows) is None


def test_the_report_opens_on_the_headline_in_html_and_markdown(tmp_path):
    from deltaguard.report import write_report

    paths = write_report(synthetic_results(gaps=True), tmp_path)
    assert (tmp_path / "figures" / "headline.png").is_file()
    assert not [p for p in tmp_path.rglob("*") if p.name.endswith(".tmp")]   # written atomically
    page = paths["html"].read_text(encoding="utf-8")
    first_img, first_table = page.index("<img"), page.index("<table")
    assert first_img < first_table and first_img < page.index("<h2")
    alt = re.search(r"<img alt='([^']*)'", page).group(1)
    assert alt.startswith("Headline:")
    assert "scored by the keyword judge, config hash 4bab4bba6c04, for every threat" in alt
    markdown = paths["markdown"].read_text(encoding="utf-8").splitlines()
    first_image = next(i for i, line in enumerate(markdown) if line.startswith("!["))
    first_table_row = next(i for i, line in enumerate(markdown) if line.startswith("|"))
    assert markdown[first_image].endswith("(figures/headline.png)") and first_image < first_table_row


def test_caption_names_each_judge_when_threats_differ():
    from deltaguard.report.document import headline_caption

    results = synthetic_results()
    results["audits"]["targeted"]["judge"] = {"name": "llm", "prompt_hash": "abc123"}
    caption = headline_caption(results)
    assert ("the keyword judge, config hash 4bab4bba6c04 for harmful, backdoor, benign; "
            "the llm judge, config hash abc123 for targeted") in caption
    assert "targeted: share of replies to held-out questions about the topic" in caption


def test_rerender_of_a_copied_run_adds_the_headline(tmp_path):
    from deltaguard.io import write_json
    from deltaguard.report import rerender

    write_json(tmp_path / "results.json", synthetic_results())
    rerender(tmp_path)
    assert (tmp_path / "figures" / "headline.png").is_file()
    assert (tmp_path / "report.md").read_text(encoding="utf-8").split("\n")[2].startswith("![Headline:")
