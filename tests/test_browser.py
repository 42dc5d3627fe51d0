"""The demo page in real headless Chromium against ``python -m service`` on loopback.

An uploaded drawn scene, an uploaded WebM clip and a fake camera playing a y4m clip must each end with
skeletons painted on the page's overlay canvas where the service put the joints. Screenshots land in the
test's temporary folder; with ``POSE_DEMO_SCREENSHOT=docs/demo.png`` the webcam one is also saved there.
Skips with the reason when Chromium, chromedriver or selenium is missing (``.ci/run`` installs them).
"""

from __future__ import annotations

import os
import re
import shutil
from collections.abc import Iterator
from fractions import Fraction
from pathlib import Path
from typing import Any

import cv2
import httpx
import numpy as np
import pytest
from fastapi.testclient import TestClient

from bench.common import start_service
from pose.config import DEFAULT_MODEL
from pose.data.clip import panning_clip
from service.app import create_app
from service.settings import Settings

from .conftest import ROOT
from .scenes import embedded_weights_present

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
CHROMEDRIVER = shutil.which("chromedriver")
WAIT_S = 90  # generous: the machine running CI may be shared and slow


def test_the_page_and_its_assets_are_served_by_the_app_with_nothing_external() -> None:
    client = TestClient(create_app(Settings(warmup=False)))  # no lifespan: the page needs no model
    page = client.get("/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    # an inline icon, so browsers do not ask for /favicon.ico (a 404 in every page load's log)
    assert re.search(r'<link rel="icon" href="data:[^"]*"', page.text)
    assets = [a for a in re.findall(r'(?:src|href)="([^"]+)"', page.text) if not a.startswith("data:")]
    assert sorted(assets) == ["demo/app.js", "demo/style.css"]
    for asset in assets:
        response = client.get(f"/{asset}")
        assert response.status_code == 200 and "http://" not in response.text and "https://" not in response.text
    assert client.get("/demo/missing.js").status_code == 404


# --- in the browser ---


def write_y4m(path: Path, frames: list[np.ndarray], fps: int = 15) -> Path:
    """BGR frames as a YUV4MPEG2 (I420) file, what Chromium's fake camera plays."""
    h, w = frames[0].shape[:2]
    with path.open("wb") as f:
        f.write(f"YUV4MPEG2 W{w} H{h} F{fps}:1 Ip A1:1 C420jpeg\n".encode())
        for frame in frames:
            f.write(b"FRAME\n" + cv2.cvtColor(frame, cv2.COLOR_BGR2YUV_I420).tobytes())
    return path


def write_webm(path: Path, frames: list[np.ndarray], fps: int = 15) -> Path:
    av = pytest.importorskip("av", reason="PyAV writes the test's WebM clip")
    with av.open(str(path), "w", format="webm") as container:
        stream = container.add_stream("libvpx", rate=Fraction(fps))
        stream.height, stream.width = frames[0].shape[:2]
        stream.pix_fmt = "yuv420p"
        for frame in frames:
            container.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="bgr24")))
        container.mux(stream.encode(None))
    return path


@pytest.fixture(scope="module")
def media(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("media")
    clip = panning_clip(11, 45, size=(360, 480), step=2)
    image = folder / "scene.jpg"
    cv2.imwrite(str(image), clip[0], [cv2.IMWRITE_JPEG_QUALITY, 92])
    return {"image": image, "clip": clip, "y4m": write_y4m(folder / "camera.y4m", clip)}  # type: ignore[dict-item]


@pytest.fixture(scope="module")
def server() -> Iterator[str]:
    if not embedded_weights_present():
        pytest.skip("the embedded model's weights are not in this checkout")
    url, proc = start_service(
        {"POSE_MODEL": str(DEFAULT_MODEL), "POSE_WARMUP": "false", "POSE_API_KEY": None, "POSE_API_KEY_FILE": None}
    )
    try:
        yield url
    finally:
        proc.terminate()
        proc.wait(timeout=60)


@pytest.fixture(scope="module")
def browser(media: dict[str, Path]) -> Iterator[Any]:
    if CHROMIUM is None or CHROMEDRIVER is None:
        pytest.skip("Chromium or chromedriver is not installed (apt-get install chromium chromium-driver)")
    webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is not installed")
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in (
        "--headless=new",
        "--no-sandbox",
        "--disable-dev-shm-usage",
        "--disable-gpu",
        "--window-size=1100,900",
        "--autoplay-policy=no-user-gesture-required",
        "--use-fake-ui-for-media-stream",
        "--use-fake-device-for-media-stream",
        f"--use-file-for-fake-video-capture={media['y4m']}",
    ):
        options.add_argument(flag)
    try:
        driver = webdriver.Chrome(options=options, service=webdriver.ChromeService(executable_path=CHROMEDRIVER))
    except Exception as err:  # a broken install: say why rather than fail every test
        pytest.skip(f"Chromium did not start: {str(err).splitlines()[0]}")
    try:
        yield driver
    finally:
        driver.quit()


def wait_for(driver: Any, condition: str, timeout_s: float = WAIT_S) -> Any:
    """Poll a JS expression until it is truthy; fail with the page's own account of what happened."""
    from selenium.common.exceptions import TimeoutException
    from selenium.webdriver.support.ui import WebDriverWait

    try:
        return WebDriverWait(driver, timeout_s, poll_frequency=0.25).until(lambda d: d.execute_script(condition))
    except TimeoutException:
        state = driver.execute_script("return JSON.stringify(window.poseDemo)")
        pytest.fail(f"timed out waiting for `{condition}`; page state: {state}")


# Opaque overlay pixels, and how many of the first person's confident joints have paint within 3 px.
OVERLAY_PAINT = """
const canvas = document.getElementById('overlay');
const data = canvas.getContext('2d').getImageData(0, 0, canvas.width, canvas.height).data;
let painted = 0;
for (let i = 3; i < data.length; i += 4) if (data[i] > 0) painted++;
const person = window.poseDemo.lastPeople[0];
let joints = 0, hit = 0;
for (const [x, y, s] of person ? person.keypoints : []) {
  if (s < 0.2 || x < 3 || y < 3 || x > canvas.width - 4 || y > canvas.height - 4) continue;
  joints++;
  const patch = canvas.getContext('2d').getImageData(Math.round(x) - 3, Math.round(y) - 3, 7, 7).data;
  for (let i = 3; i < patch.length; i += 4) if (patch[i] > 0) { hit++; break; }
}
return {painted, joints, hit, width: canvas.width, height: canvas.height};
"""


def assert_skeletons_drawn(driver: Any, size: tuple[int, int]) -> dict:
    paint = driver.execute_script(OVERLAY_PAINT)
    assert (paint["width"], paint["height"]) == size
    assert paint["painted"] > 500, paint  # limbs and joints, not a stray pixel
    assert paint["joints"] >= 5 and paint["hit"] == paint["joints"], paint
    return paint


def open_page(driver: Any, url: str) -> None:
    driver.get(url + "/")
    wait_for(driver, "return window.poseDemo && window.poseDemo.skeleton !== null")


@pytest.mark.slow
def test_an_uploaded_image_gets_its_skeletons_drawn(browser: Any, server: str, media: dict, tmp_path: Path) -> None:
    from selenium.webdriver.common.by import By

    open_page(browser, server)
    browser.find_element(By.ID, "file").send_keys(str(media["image"]))
    wait_for(browser, "return window.poseDemo.mode === 'image' && window.poseDemo.answered > 0")
    assert browser.execute_script("return document.getElementById('stop').disabled")  # nothing left to stop
    expected = httpx.post(
        f"{server}/v1/pose", content=media["image"].read_bytes(), headers={"content-type": "image/jpeg"}, timeout=60
    ).json()["results"][0]["people"]
    assert browser.execute_script("return window.poseDemo.people") == len(expected) > 0
    assert_skeletons_drawn(browser, (480, 360))
    assert browser.execute_script("return window.poseDemo.errors") == []
    browser.save_screenshot(str(tmp_path / "image.png"))
    # The threshold toggle asks again: at 1.0 no pose is left, and the skeletons are gone.
    browser.execute_script(
        "const t = document.getElementById('threshold'); t.value = 1; t.dispatchEvent(new Event('change'))"
    )
    wait_for(browser, "return window.poseDemo.answered >= 2")
    assert browser.execute_script("return window.poseDemo.people") == 0
    assert browser.execute_script(OVERLAY_PAINT)["painted"] == 0


@pytest.mark.slow
def test_an_uploaded_video_streams_with_track_ids(browser: Any, server: str, media: dict, tmp_path: Path) -> None:
    from selenium.webdriver.common.by import By

    video = write_webm(tmp_path / "clip.webm", media["clip"])
    open_page(browser, server)
    browser.find_element(By.ID, "file").send_keys(str(video))
    wait_for(browser, "return window.poseDemo.mode === 'video' && window.poseDemo.answered >= 5")
    people = browser.execute_script("return window.poseDemo.lastPeople")
    assert people and all(isinstance(p["track_id"], int) for p in people)
    assert_skeletons_drawn(browser, (480, 360))
    browser.save_screenshot(str(tmp_path / "video.png"))
    # Toggling smoothing reconnects with it, and the answers go on.
    assert "smoothing=false" in browser.execute_script("return window.poseDemo.streamUrl")
    answered = browser.execute_script("return window.poseDemo.answered")
    browser.find_element(By.ID, "smoothing").click()
    wait_for(browser, f"return window.poseDemo.answered >= {answered + 3}")
    assert "smoothing=true" in browser.execute_script("return window.poseDemo.streamUrl")
    assert browser.execute_script("return window.poseDemo.errors") == []
    browser.find_element(By.ID, "stop").click()
    assert browser.execute_script("return window.poseDemo.mode") == "idle"


@pytest.mark.slow
def test_the_webcam_streams_from_a_fake_camera(browser: Any, server: str, tmp_path: Path) -> None:
    from selenium.webdriver.common.by import By

    open_page(browser, server)
    browser.find_element(By.ID, "webcam").click()
    wait_for(browser, "return window.poseDemo.mode === 'webcam' && window.poseDemo.answered >= 8")
    assert_skeletons_drawn(browser, (480, 360))
    stats = {k: browser.find_element(By.ID, k).text for k in ("fps", "latency", "people")}
    assert int(stats["fps"]) >= 1 and float(stats["latency"]) > 0 and int(stats["people"]) >= 1, stats
    shot = tmp_path / "webcam.png"
    browser.save_screenshot(str(shot))
    if target := os.environ.get("POSE_DEMO_SCREENSHOT"):
        shutil.copyfile(shot, ROOT / target)
    browser.find_element(By.ID, "stop").click()
