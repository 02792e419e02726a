"""The demo page, driven in headless Chromium (Debian's ``chromium`` via Playwright)."""

import shutil
import tempfile
from pathlib import Path
from typing import Iterator

import pytest

pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")

from spacy_distill.serving.app import create_app  # noqa: E402
from spacy_distill.serving.settings import ServeSettings  # noqa: E402

from .serving_harness import LABELS, LiveServer, save_test_pipeline  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
CHROMIUM = shutil.which("chromium") or ("/usr/bin/chromium" if Path("/usr/bin/chromium").exists() else None)
TOKEN = "demo-token"
# Keep the browser quiet and local: no sandbox (CI containers), no GPU, no
# background traffic to Google services, a fresh profile per run.
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

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (apt-get install chromium)"),
]


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    root = tmp_path_factory.mktemp("browser_models")
    student = save_test_pipeline(root / "student")
    baseline = save_test_pipeline(root / "baseline", "bow")
    app = create_app({"student": str(student), "baseline": str(baseline)}, ServeSettings(token=TOKEN))
    with LiveServer(app) as server:
        yield server


def test_demo_page_scores_side_by_side(live: LiveServer) -> None:
    sync_api = pytest.importorskip("playwright.sync_api")
    out_dir = REPO / "test-output"
    out_dir.mkdir(exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="chromium-profile-") as profile, sync_api.sync_playwright() as p:
        context = p.chromium.launch_persistent_context(
            profile,
            executable_path=CHROMIUM,
            headless=True,
            args=CHROMIUM_ARGS,
            viewport={"width": 1200, "height": 700},
        )
        try:
            page = context.new_page()
            page.set_default_timeout(20_000)
            page.goto(live.url + "/")
            assert page.is_visible("#token")  # the server has a token, so the page asks for it
            page.fill("#texts", "I love this blender, it works great\nTerrible, it broke after one day")
            page.fill("#token", TOKEN)
            page.click("#classify")
            page.wait_for_selector("#results:not([hidden])")
            headers = page.locator("#results-head th").all_inner_texts()
            assert headers == ["Review", "student", "baseline"]
            rows = page.locator("#results-body tr")
            assert rows.count() == 2
            first_row = rows.nth(0).inner_text()
            assert "I love this blender" in first_row
            assert any(label in first_row for label in LABELS)
            timings = page.locator("#timings .timing").all_inner_texts()
            assert len(timings) == 2 and all("ms server" in t for t in timings)
            page.screenshot(path=str(out_dir / "demo.png"), full_page=True)

            # Without the token the page shows the server's 401 message instead of scores.
            page.fill("#token", "")
            page.click("#classify")
            page.wait_for_function("document.getElementById('message').textContent.includes('401')")
        finally:
            context.close()
    assert (out_dir / "demo.png").stat().st_size > 1000


def test_demo_page_cuts_splits_and_clears(tmp_path: Path) -> None:
    """Long reviews are cut with a note, many lines go in several requests, and a
    validation message clears the old results."""
    sync_api = pytest.importorskip("playwright.sync_api")
    student = save_test_pipeline(tmp_path / "student")
    settings = ServeSettings(max_chars=40, max_texts=2, inference="thread")
    with LiveServer(create_app({"student": str(student)}, settings)) as server, tempfile.TemporaryDirectory(
        prefix="chromium-profile-"
    ) as profile, sync_api.sync_playwright() as p:
        context = p.chromium.launch_persistent_context(
            profile, executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS
        )
        try:
            page = context.new_page()
            page.set_default_timeout(20_000)
            page.goto(server.url + "/")
            long_review = "This blender is great and it crushes ice in seconds, really"
            page.fill("#texts", f"good\n{long_review}\nawful")
            page.click("#classify")
            page.wait_for_selector("#results:not([hidden])")
            rows = page.locator("#results-body tr")
            assert rows.count() == 3
            assert "(cut from 59 to 40 characters)" in rows.nth(1).inner_text()
            assert all(any(label in rows.nth(i).inner_text() for label in LABELS) for i in range(3))
            assert "(2 requests)" in page.locator("#timings").inner_text()
            assert "cut to the server's limit of 40" in page.locator("#message").inner_text()
            page.fill("#texts", "   ")
            page.click("#classify")
            page.wait_for_selector("#results", state="hidden")
            assert page.locator("#results-body tr").count() == 0
            assert page.locator("#message").inner_text() == "Type at least one review."
        finally:
            context.close()
