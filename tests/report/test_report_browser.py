"""The study report in a real headless Chromium: every plot decodes, nothing is wider than the page, and the
page raises no script or console errors.

The report is rendered from a synthetic ``results.json`` (``report_synthetic``: every section, plus the
holes a real run can have), then a copy of ``report.html`` gets a probe script that, once the page has
loaded, writes what it measured into a ``<pre id=dg-probe>`` node; the test reads it back from the DOM
Chromium dumps. Playwright drives the browser when it is installed and can launch one; otherwise the
``chromium`` binary runs with ``--headless --dump-dom``. Without any Chromium the test installs the
system package once (as root, where ``apt-get`` exists, at most 300 s) and skips, saying why, if that
does not work.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from report_synthetic import synthetic_map, synthetic_results

BINARIES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable", "chrome", "headless_shell")
INSTALL_TIMEOUT_S = 300
VIEWPORTS = ((1280, 900), (760, 900))   # a desktop window and a narrow one

# Registered before anything else on the page; reports once the page (and its data: images) has loaded.
PROBE = r"""<script>
(function () {
  var errors = [];
  window.addEventListener('error', function (e) {
    var t = e.target;
    errors.push(t && t !== window && t.tagName ? 'resource failed: <' + t.tagName.toLowerCase() + '>'
                                               : 'error: ' + e.message);
  }, true);
  window.addEventListener('unhandledrejection', function (e) { errors.push('unhandled rejection: ' + e.reason); });
  ['error', 'warn'].forEach(function (level) {
    var original = console[level];
    console[level] = function () {
      errors.push('console.' + level + ': ' + Array.prototype.join.call(arguments, ' '));
      return original.apply(console, arguments);
    };
  });
  function clipped(el) {   // inside a container that scrolls or clips horizontally: not page overflow
    for (var p = el.parentElement; p && p !== document.body; p = p.parentElement) {
      if (/(auto|scroll|hidden|clip)/.test(getComputedStyle(p).overflowX)) return true;
    }
    return false;
  }
  function describe(el) {
    return el.tagName.toLowerCase() + (el.className ? '.' + el.className : '') + ' "' +
           (el.textContent || el.getAttribute('alt') || '').trim().slice(0, 60) + '"';
  }
  window.addEventListener('load', function () {
    var width = document.documentElement.clientWidth, overflowing = [];
    document.querySelectorAll('body *').forEach(function (el) {
      var r = el.getBoundingClientRect();
      if (r.width && r.right > width + 1 && !clipped(el)) overflowing.push(describe(el) + ' right=' + Math.round(r.right));
    });
    var images = Array.prototype.map.call(document.images, function (img) {
      return {alt: (img.alt || '').slice(0, 60), complete: img.complete, naturalWidth: img.naturalWidth,
              naturalHeight: img.naturalHeight, shownWidth: Math.round(img.getBoundingClientRect().width)};
    });
    var out = document.createElement('pre');
    out.id = 'dg-probe';
    out.textContent = JSON.stringify({
      pageWidth: width, scrollWidth: document.documentElement.scrollWidth, images: images,
      overflowing: overflowing.slice(0, 20), nOverflowing: overflowing.length, errors: errors,
      firstImageBeforeTable: (function () {
        var img = document.querySelector('img'), table = document.querySelector('table');
        return !!img && (!table || !!(img.compareDocumentPosition(table) & Node.DOCUMENT_POSITION_FOLLOWING));
      })()});
    out.style.display = 'none';
    document.body.appendChild(out);
  });
})();
</script>"""

_install_tried: list[str] = []   # once per session, whatever the outcome


def _find_binary() -> str | None:
    return next((path for name in BINARIES if (path := shutil.which(name))), None)


def _install_chromium() -> str:
    """Install Debian's ``chromium`` package once; return why it did not work ('' when it did)."""
    if _install_tried:
        return _install_tried[0]
    reason = ""
    if not hasattr(os, "geteuid") or os.geteuid() != 0:
        reason = "not running as root, so the system package cannot be installed"
    elif shutil.which("apt-get") is None:
        reason = "no apt-get to install it with"
    else:
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        command = ["apt-get", "install", "-y", "--no-install-recommends", "chromium"]
        try:
            done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=INSTALL_TIMEOUT_S)
            if done.returncode != 0:   # stale package lists: refresh once and retry
                subprocess.run(["apt-get", "update"], env=env, capture_output=True, timeout=INSTALL_TIMEOUT_S)
                done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=INSTALL_TIMEOUT_S)
            if done.returncode != 0:
                reason = f"`apt-get install chromium` failed: {done.stderr.strip()[-300:]}"
        except subprocess.TimeoutExpired:
            reason = f"`apt-get install chromium` took over {INSTALL_TIMEOUT_S} s"
        if not reason and _find_binary() is None:
            reason = "the chromium package installed no chromium binary on PATH"
    _install_tried.append(reason)
    return reason


def _with_playwright(page_path: Path, binary: str | None, width: int, height: int) -> tuple[str, list[str]] | None:
    """The dumped DOM and console errors through Playwright, or None when it is missing or cannot launch."""
    try:
        from playwright.sync_api import Error, sync_playwright
    except ImportError:
        return None
    errors: list[str] = []
    try:
        with sync_playwright() as p:
            browser = None
            for options in ({}, {"executable_path": binary} if binary else None):
                if options is None:
                    continue
                try:
                    browser = p.chromium.launch(headless=True, args=["--no-sandbox", "--disable-gpu"], **options)
                    break
                except Error:
                    continue
            if browser is None:
                return None
            try:
                page = browser.new_page(viewport={"width": width, "height": height})
                page.on("console", lambda m: errors.append(f"console.{m.type}: {m.text}")
                        if m.type in ("error", "warning") else None)
                page.on("pageerror", lambda e: errors.append(f"page error: {e}"))
                page.goto(page_path.as_uri(), wait_until="load", timeout=30_000)
                page.wait_for_selector("#dg-probe", state="attached", timeout=10_000)
                return page.content(), errors
            finally:
                browser.close()
    except Error:
        return None


def _playwright_launches() -> bool:
    """Whether Playwright is installed and can start its own Chromium."""
    try:
        from playwright.sync_api import Error, sync_playwright
    except ImportError:
        return False
    try:
        with sync_playwright() as p:
            p.chromium.launch(headless=True, args=["--no-sandbox"]).close()
        return True
    except Error:
        return False


def _with_binary(binary: str, page_path: Path, profile: Path, width: int, height: int) -> tuple[str, list[str]]:
    """The dumped DOM from ``chromium --headless --dump-dom``, and the console errors it logged to stderr."""
    command = [binary, "--headless=new", "--disable-gpu", "--no-sandbox", "--disable-dev-shm-usage",
               "--no-first-run", "--no-default-browser-check", "--disable-extensions", "--mute-audio",
               f"--user-data-dir={profile}", f"--window-size={width},{height}", "--virtual-time-budget=5000",
               "--enable-logging=stderr", "--v=0", "--dump-dom", page_path.as_uri()]
    done = subprocess.run(command, capture_output=True, text=True, timeout=90)
    assert done.returncode == 0, f"chromium exited {done.returncode}: {done.stderr[-2000:]}"
    # Chromium logs every console message of the page (at INFO, whatever its level) as
    # ...:CONSOLE:<line>] "text", source: URL (<line>); the report has no scripts, so any of them is unexpected.
    errors = [line for line in done.stderr.splitlines() if ":CONSOLE" in line]
    return done.stdout, errors


@pytest.fixture(scope="module")
def browser() -> dict[str, str | None]:
    binary = _find_binary()
    if binary is None and not _playwright_launches():
        reason = _install_chromium()
        binary = _find_binary()
        if binary is None:
            pytest.skip(f"no headless Chromium: {reason}")
    return {"binary": binary}


@pytest.fixture(scope="module")
def report(tmp_path_factory) -> Path:
    from deltaguard.report import write_report

    out = tmp_path_factory.mktemp("report")
    write_report(synthetic_results(gaps=True), out)
    return out


@pytest.mark.parametrize("width,height", VIEWPORTS, ids=[f"{w}px" for w, _ in VIEWPORTS])
def test_report_renders_cleanly_in_headless_chromium(browser, report, tmp_path, width, height):
    source = (report / "report.html").read_text(encoding="utf-8")
    assert source.count("<head>") == 1
    page = tmp_path / "report-probed.html"
    page.write_text(source.replace("<head>", "<head>" + PROBE, 1), encoding="utf-8")
    result, route = _with_playwright(page, browser["binary"], width, height), "Playwright"
    if result is None:
        if browser["binary"] is None:
            pytest.skip("Playwright is installed but cannot launch a browser, and no chromium binary is on PATH")
        result, route = _with_binary(browser["binary"], page, tmp_path / "profile", width, height), "--dump-dom"
    dom, logged = result
    match = re.search(r'<pre id="dg-probe"[^>]*>(.*?)</pre>', dom, re.S)
    assert match, "the probe did not report: the page's load event never fired\n" + dom[-1000:]
    import html

    probe = json.loads(html.unescape(match.group(1)))
    images = probe["images"]
    expected = len(list((report / "figures").glob("*.png")))
    assert len(images) == expected >= 5, (len(images), expected)
    broken = [img for img in images if not (img["complete"] and img["naturalWidth"] > 0 and img["naturalHeight"] > 0)]
    assert not broken, f"plots that did not decode: {broken}"
    assert all(0 < img["shownWidth"] <= probe["pageWidth"] for img in images), images
    assert images[0]["alt"].startswith("Headline:") and probe["firstImageBeforeTable"]
    assert probe["nOverflowing"] == 0 and probe["scrollWidth"] <= probe["pageWidth"], (
        f"wider than the {probe['pageWidth']}px page (scrollWidth {probe['scrollWidth']}): {probe['overflowing']}")
    assert not probe["errors"] and not logged, probe["errors"] + logged
    print(f"{width}px: {len(images)} images decoded (via {route}, chromium {browser['binary']})", file=sys.stderr)


@pytest.mark.parametrize("width,height", VIEWPORTS, ids=[f"{w}px" for w, _ in VIEWPORTS])
@pytest.mark.parametrize("partial", [False, True], ids=["complete", "partial"])
def test_the_mitigation_map_renders_cleanly_in_headless_chromium(browser, tmp_path, partial, width, height):
    from deltaguard.mitigation.summary import write_map_report

    source = write_map_report(synthetic_map(partial=partial), tmp_path)["html"].read_text(encoding="utf-8")
    page = tmp_path / "map-probed.html"
    page.write_text(source.replace("<head>", "<head>" + PROBE, 1), encoding="utf-8")
    result = _with_playwright(page, browser["binary"], width, height)
    if result is None:
        if browser["binary"] is None:
            pytest.skip("Playwright is installed but cannot launch a browser, and no chromium binary is on PATH")
        result = _with_binary(browser["binary"], page, tmp_path / "profile", width, height)
    dom, logged = result
    match = re.search(r'<pre id="dg-probe"[^>]*>(.*?)</pre>', dom, re.S)
    assert match, "the probe did not report: the page's load event never fired\n" + dom[-1000:]
    import html

    probe = json.loads(html.unescape(match.group(1)))
    images = probe["images"]
    assert len(images) == 2 * 2 + 1    # a heatmap per family and threat, and the norm-ratio scatter
    assert all(img["complete"] and img["naturalWidth"] > 0 for img in images), images
    assert probe["nOverflowing"] == 0 and probe["scrollWidth"] <= probe["pageWidth"], probe["overflowing"]
    assert not probe["errors"] and not logged, probe["errors"] + logged
