"""report.html in a real browser: Debian's Chromium, headless, driven by Playwright, opening the
page from file:// after a run with four failures and three results.

Marked `browser` and left out of `make test` (which must pass on a machine without Chromium):
`make browser-test` installs what it needs and runs it (CI too; see `.ci/browser-test`). Set
REPORT_SCREENSHOT=path to keep the screenshot (`make screenshot` refreshes the one in docs/).
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio
import av
import pytest

from pipeline.htmlreport import MAX_PICTURES, build_page
from pipeline.thumbs import THUMBS, target, thumbnail
from tests.pagecheck import mixed_run

pytestmark = pytest.mark.browser

CHROMIUM = os.environ.get("CHROMIUM", "/usr/bin/chromium")
ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
WAIT_MS = 15_000  # a ceiling for a loaded machine, not a measurement


@dataclass
class Tab:
    page: Any  # playwright.sync_api.Page
    problems: list[str] = field(default_factory=list)  # console errors, uncaught exceptions

    def shown(self) -> list[tuple[str, str]]:
        """(id, state) of the cards on screen, in their order."""
        return [
            (card["id"], card["state"])
            for card in self.page.eval_on_selector_all(
                ".card:not([hidden])",
                "cs => cs.map(c => ({id: c.dataset.id, state: c.dataset.state}))",
            )
        ]


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Any]]:
    """One run for the whole module: its output folder and report.json. (In a thread of its
    own: Playwright's sync API keeps an event loop in this one.)"""
    with ThreadPoolExecutor(1) as pool:
        return pool.submit(anyio.run, mixed_run, tmp_path_factory.mktemp("browser")).result()


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed")
    if not Path(CHROMIUM).exists():
        pytest.skip(f"no Chromium at {CHROMIUM} (apt-get install chromium)")
    with sync_api.sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        yield chromium
        chromium.close()


@pytest.fixture
def tab(browser: Any, run: tuple[Path, dict[str, Any]]) -> Iterator[Tab]:
    yield from _open(browser, run[0] / "report.html")


def _open(browser: Any, path: Path) -> Iterator[Tab]:
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    tab = Tab(page)
    page.on("console", lambda m: tab.problems.append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda error: tab.problems.append(str(error)))
    page.goto(path.as_uri())
    page.wait_for_load_state("load")
    yield tab
    page.close()


def test_the_page_opens_from_file_shows_its_cards_and_logs_no_error(
    tab: Tab, run: tuple[Path, dict[str, Any]], tmp_path: Path
) -> None:
    _, report = run
    assert tab.page.url.startswith("file://")
    assert [job_id for job_id, _ in tab.shown()] == [job["id"] for job in report["jobs"]]
    assert tab.page.locator(".card").first.is_visible()
    # the thumbnails of the first cards have loaded (lazily: those on screen)
    tab.page.wait_for_function(
        "[...document.querySelectorAll('.card img')].slice(0, 2)"
        ".every(i => i.complete && i.naturalWidth > 0)",
        timeout=WAIT_MS,
    )
    shot = Path(os.environ.get("REPORT_SCREENSHOT") or tmp_path / "report.png")
    shot.parent.mkdir(parents=True, exist_ok=True)
    tab.page.screenshot(path=str(shot), full_page=True)
    gray = _gray_levels(shot)
    _, count = gray.most_common(1)[0]
    assert count < 0.85 * sum(gray.values()), "the screenshot is one colour"
    assert len(gray) > 40, "the screenshot has almost no detail"
    assert tab.problems == []


def test_filtering_to_failed_leaves_only_the_failed_cards(
    tab: Tab, run: tuple[Path, dict[str, Any]]
) -> None:
    _, report = run
    failed = [job["id"] for job in report["jobs"] if job["state"] == "failed"]
    tab.page.click("button[data-filter=failed]")
    assert tab.shown() == [(job_id, "failed") for job_id in failed]
    assert tab.page.locator("#shown").inner_text() == f"{len(failed)} of 7 jobs shown"
    tab.page.click("button[data-filter=all]")
    assert len(tab.shown()) == 7
    assert tab.problems == []


def test_a_cards_video_loads_its_result_and_compare_loads_both(
    tab: Tab, run: tuple[Path, dict[str, Any]]
) -> None:
    _, report = run
    done = next(job for job in report["jobs"] if job["id"] == "good")
    card = tab.page.locator(f"#job-{done['id']}")
    card.locator(".play-button").click()
    video = card.locator(".player video")
    assert video.count() == 1
    assert video.get_attribute("src") == f"{done['id']}.mp4"
    video.evaluate(
        "v => new Promise((ok, fail) => v.readyState >= 1 ? ok() :"
        " (v.onloadedmetadata = ok, v.onerror = () => fail(v.error && v.error.message)))"
    )
    assert video.evaluate("v => v.duration") == pytest.approx(done["duration"], abs=0.2)
    card.locator(".compare-button").click()
    both = card.locator(".player.compare video")
    assert both.count() == 2
    tab.page.wait_for_function(
        f"[...document.querySelectorAll('#job-{done['id']} .player video')]"
        ".every(v => v.readyState >= 1 && !v.error)",
        timeout=WAIT_MS,
    )
    assert both.first.evaluate("v => v.muted")  # the source's mouth, the dub's voice
    assert tab.problems == []


def test_search_sort_and_the_keyboard(tab: Tab, run: tuple[Path, dict[str, Any]]) -> None:
    _, report = run
    tab.page.fill("#search", "clip")
    assert [job_id for job_id, _ in tab.shown()] == ["clip-de", "clip-fr"]
    tab.page.fill("#search", "")
    tab.page.select_option("#sort", "cost")
    costs = {job["id"]: job["credits"] for job in report["jobs"]}
    shown = [job_id for job_id, _ in tab.shown()]
    assert [costs[j] for j in shown] == sorted(costs.values(), reverse=True)
    tab.page.select_option("#sort", "state")
    assert tab.shown()[0][1] == "failed"
    tab.page.locator(".card").first.focus()
    tab.page.keyboard.press("ArrowRight")
    focused = tab.page.evaluate("document.activeElement.dataset.id")
    assert focused == tab.shown()[1][0]
    playable = next(job_id for job_id, state in tab.shown() if state in ("done", "suspect"))
    tab.page.locator(f"#job-{playable}").focus()
    tab.page.keyboard.press(" ")
    assert tab.page.locator(f"#job-{playable} .player video").count() == 1
    assert tab.problems == []


def test_a_thousand_cards_filter_and_load_their_thumbnails_lazily(
    browser: Any, run: tuple[Path, dict[str, Any]], tmp_path: Path
) -> None:
    out = tmp_path / "out"
    (out / THUMBS).mkdir(parents=True)
    sample = next(run[0].glob("*.mp4"))
    picture = thumbnail(sample, tmp_path).path
    assert picture is not None
    jobs = []
    for i in range(1000):
        result = out / f"job-{i:04d}.mp4"
        os.link(sample, result)
        # a thumbnail of its own for each (a night's worth, made earlier): a thousand URLs
        os.link(picture, target(result, out / THUMBS))
        state = "failed" if i % 7 == 0 else "done"
        jobs.append({"id": f"job-{i:04d}", "state": state, "output": str(result), "credits": i})
    (out / "report.html").write_text(
        build_page({"run_id": "r", "exit_code": 1, "jobs": jobs}, out), encoding="utf-8"
    )
    loaded = "[...document.images].filter(i => i.complete && i.naturalWidth > 0)"
    # a page shows MAX_PICTURES videos as pictures: the last card with one, and one without
    far = f"#job-job-{MAX_PICTURES - 1:04d}"
    for tab in _open(browser, out / "report.html"):
        assert len(tab.shown()) == 1000
        assert tab.page.locator("#job-job-0999 img").count() == 0
        tab.page.wait_for_function(f"{loaded}.length > 0", timeout=WAIT_MS)
        assert tab.page.evaluate(f"{loaded}.length") < MAX_PICTURES // 2  # far ones wait
        last = tab.page.locator(f"{far} img").first
        assert not last.evaluate("i => i.complete && i.naturalWidth > 0")
        last.scroll_into_view_if_needed()
        tab.page.wait_for_function(
            f"(i => i.complete && i.naturalWidth > 0)(document.querySelector('{far} img'))",
            timeout=WAIT_MS,
        )
        tab.page.click("button[data-filter=failed]")
        assert len(tab.shown()) == len([j for j in jobs if j["state"] == "failed"])
        assert tab.problems == []


def _gray_levels(png: Path) -> Counter[int]:
    """How many pixels of each gray level the screenshot has (PyAV decodes the PNG)."""
    with av.open(str(png)) as container:
        frame = next(container.decode(video=0))
    plane = frame.reformat(format="gray").planes[0]
    data = bytes(plane)
    rows = [
        data[y * plane.line_size : y * plane.line_size + frame.width] for y in range(frame.height)
    ]
    return Counter(b"".join(rows))
