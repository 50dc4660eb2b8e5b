"""A real browser on `make lab`: headless Chromium opens notebooks, sets the smoke profile in the
parameters cell, runs all cells from the Run menu, and checks what a reader sees.

Works on copies of the notebooks in a temporary folder (JupyterLab autosaves; the real notebooks
must stay as committed), with results and caches in temporary folders too. Needs Debian's
`chromium` (`apt-get install chromium`; `.ci/run` installs it) and Playwright from PyPI (the test
extra); skips with a one-line reason when either is missing. Screenshots go to the test's tmp dir.
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest

from lab_helpers import ROOT, free_port, http_status, make_lab, start_server, stop_server

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
NOTEBOOKS = ("00_environment.ipynb", "02_cmpm_derivation.ipynb")
TOKEN = "browser-test-token"
ACTIVE = ".jp-NotebookPanel:not(.lm-mod-hidden)"  # the notebook in the visible tab

sync_api = pytest.importorskip("playwright.sync_api", reason="Playwright is not installed (pip install playwright)")
if not CHROMIUM.is_file():
    pytest.skip(f"no Chromium browser at {CHROMIUM} (apt-get install chromium)", allow_module_level=True)

pytestmark = pytest.mark.slow

# JavaScript run in the page
ALL_CELLS_RAN = f"""() => {{
    const prompts = [...document.querySelectorAll('{ACTIVE} .jp-CodeCell .jp-InputArea-prompt')].map(e => e.textContent);
    return prompts.length > 0 && prompts.every(text => /\\[\\d+\\]/.test(text));
}}"""
MARKDOWN_TEXT_OUTSIDE_CODE_AND_MATH = f"""() => [...document.querySelectorAll('{ACTIVE} .jp-MarkdownOutput')].map(node => {{
    const copy = node.cloneNode(true);
    copy.querySelectorAll('code, pre, mjx-container').forEach(e => e.remove());
    return copy.textContent;
}}).join('\\n')"""


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    """`make lab` serving copies of the notebooks; yields (port, work folder)."""
    work = tmp_path_factory.mktemp("lab")
    (work / "notebooks").mkdir()
    for name in NOTEBOOKS:
        shutil.copy(ROOT / "notebooks" / name, work / "notebooks" / name)
    port = free_port()
    environment = {"CMP_RESULTS_DIR": str(work / "results"), "CMP_CACHE_DIR": str(work / "cache")}
    server = start_server(make_lab(port, TOKEN), port, TOKEN, work / "lab.log", cwd=work, env=environment)
    try:
        yield port, work
    finally:
        stop_server(server)


@pytest.fixture(scope="module")
def browser():
    with sync_api.sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            yield chromium
        finally:
            chromium.close()


def test_the_server_refuses_requests_without_the_token(lab):
    port, _ = lab
    assert http_status(f"http://127.0.0.1:{port}/api/contents") == 403
    assert http_status(f"http://127.0.0.1:{port}/api/contents", token="wrong-token") == 403
    assert http_status(f"http://127.0.0.1:{port}/lab") in (302, 303)  # to the login page
    assert http_status(f"http://127.0.0.1:{port}/api/contents", token=TOKEN) == 200


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_notebook_runs_in_the_browser_with_the_smoke_profile(lab, browser, name, tmp_path):
    port, work = lab
    real_notebook = (ROOT / "notebooks" / name).read_bytes()
    page = browser.new_context(viewport={"width": 1400, "height": 1000}).new_page()
    page.set_default_timeout(60_000)
    page.goto(f"http://127.0.0.1:{port}/lab/tree/{name}?reset&token={TOKEN}")
    page.wait_for_selector(f"{ACTIVE} .jp-Cell")
    # the project kernel is chosen from the notebook's metadata, no kernel dialog
    page.wait_for_function(
        "() => (document.querySelector('.jp-KernelName') || {}).textContent === 'Python (cmp-repro)'"
    )
    assert page.locator(".jp-Dialog").count() == 0
    page.screenshot(path=str(tmp_path / f"{name}_opened.png"))

    panel = page.locator(ACTIVE)
    parameters = panel.locator(".jp-CodeCell").filter(has=page.locator(".cm-content", has_text="profile: str"))
    assert parameters.count() == 1
    editor = parameters.locator(".cm-content")
    source = editor.inner_text()
    assert 'profile: str = "quick"' in source
    editor.click()
    page.keyboard.press("Control+a")
    page.keyboard.insert_text(source.replace('profile: str = "quick"', 'profile: str = "smoke"'))
    assert 'profile: str = "smoke"' in editor.inner_text()

    page.locator(".lm-MenuBar-itemLabel", has_text="Run").first.click()
    page.locator(".lm-Menu-itemLabel", has_text="Run All Cells").first.click()
    page.wait_for_function(ALL_CELLS_RAN, timeout=180_000)
    page.screenshot(path=str(tmp_path / f"{name}_ran.png"), full_page=True)

    assert page.locator(".jp-Dialog").count() == 0
    errors = panel.locator('.jp-OutputArea-output[data-mime-type="application/vnd.jupyter.error"]').all_text_contents()
    stderr = panel.locator('.jp-OutputArea-output[data-mime-type="application/vnd.jupyter.stderr"]').all_text_contents()
    assert errors == [] and stderr == [], (errors + stderr)[0][:2000]
    outputs = " ".join(panel.locator(".jp-OutputArea-output").all_text_contents())
    assert "smoke" in outputs  # the edited parameter is the one that ran

    # every figure rendered: one loaded <img> per image output, at least the PNG figures it writes
    widths = panel.locator(".jp-OutputArea-output img").evaluate_all("images => images.map(i => i.naturalWidth)")
    assert all(width > 0 for width in widths), widths
    assert len(widths) == panel.locator(".jp-RenderedImage").count()
    produces = json.loads(real_notebook)["metadata"]["cmp_repro"]["produces"]
    figures = [path for path in produces if path.endswith(".png")]
    assert len(widths) >= len(figures), f"{len(widths)} images shown, {len(figures)} figures written"
    for figure in figures:
        assert (work / "results" / figure.format(profile="smoke")).is_file(), figure

    # formulas typeset by MathJax, no raw $...$ left in the rendered Markdown
    text = page.evaluate(MARKDOWN_TEXT_OUTSIDE_CODE_AND_MATH)
    assert not re.search(r"\$[^$\n]+\$", text), re.search(r"\$[^$\n]+\$", text).group(0)
    markdown = "\n".join(
        "".join(cell["source"]) for cell in json.loads(real_notebook)["cells"] if cell["cell_type"] == "markdown"
    )
    if re.search(r"\$[^$\n]+\$", re.sub(r"`[^`]*`", "", markdown)):  # the notebook has formulas
        assert panel.locator(".jp-MarkdownOutput mjx-container").count() > 0

    page.context.close()
    assert (ROOT / "notebooks" / name).read_bytes() == real_notebook  # the real notebook was never touched
