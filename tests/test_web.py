"""``side4video serve``: the page driven in a headless Chromium (search, classify an upload, a bad upload),
and the server's safety rules over plain HTTP (nothing outside the video folder, upload size limit)."""

from __future__ import annotations

import http.client
import json
import shutil
import socket
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from side4video import load_model
from side4video.atomic import atomic_save
from side4video.backbones.tokenizer import load_tokenizer
from side4video.cli import main
from side4video.data.synthetic import motion_clip, write_video
from side4video.data.synthetic_captions import make_captioned_dataset, paraphrases, write_caption_tokenizer
from side4video.engine.checkpoint import make_checkpoint
from side4video.engine.config import TrainConfig, make_config
from side4video.engine.predict import predict_videos
from side4video.models import create_model
from side4video.search import encode_videos, find_videos, search, video_dataset

uvicorn = pytest.importorskip("uvicorn", reason="the web extra is not installed")
from side4video.web import create_app  # noqa: E402 (needs the web extra)
from side4video.web.jobs import Job, JobQueue  # noqa: E402
from side4video.web.served import load_served  # noqa: E402

FRAMES, IMAGE = 4, 32
COLOURS = ("red", "green", "blue", "yellow")
LABELS = ("left", "right", "up", "down")
MAX_UPLOAD_MB = 0.25


def save_checkpoint(model: torch.nn.Module, cfg: TrainConfig, path: Path, steps: int) -> str:
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.0)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
    atomic_save(make_checkpoint(model, cfg.model.name, optimizer, scheduler, None, 1, steps, None, cfg, {}), path)
    return str(path)


def fit_retrieval(videos: list[str], tokenizer: str, out: Path) -> str:
    """CLIP4Clip (frozen tiny ViT) whose text tower learns the four clips' captions: 20 fixed-seed steps."""
    torch.manual_seed(0)
    cfg = make_config(model="clip4clip-frozen-tiny", frames=FRAMES, image_size=IMAGE, tokenizer=tokenizer)
    model = create_model(cfg.model.name, num_frames=FRAMES, image_size=IMAGE)
    model.text.token_embedding.weight.requires_grad_(False)  # random word vectors suffice; keeps steps cheap
    clips = video_dataset(cfg, videos)
    with torch.no_grad():
        video_emb = model.encode_video(torch.stack([clips[i]["video"] for i in range(len(videos))]))  # (4, E)
    colours = [Path(v).name.split("_")[0] for v in videos]
    tok = load_tokenizer(tokenizer)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=3e-3, weight_decay=0.0)
    labels = torch.arange(len(videos))
    for step in range(20):
        ids, mask = tok.tokenize([paraphrases(c, "square", "left")[step % 3] for c in colours],
                                 context_length=model.cfg.text_length)
        logits = model.similarity(video_emb, model.encode_text(ids, mask), mask) * 20  # (texts, videos)
        loss = (F.cross_entropy(logits, labels) + F.cross_entropy(logits.t(), labels)) / 2
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return save_checkpoint(model, cfg, out, steps=20)


@pytest.fixture(scope="module")
def library(tmp_path_factory):
    """A folder of four captioned clips (one per colour, a square moving left), a broken video and a
    symbolic link out of the folder; a retrieval and a recognition checkpoint; files to upload."""
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("serve")
    synthetic = make_captioned_dataset(root / "captions", num_frames=8, size=32, shapes=("square",),
                                       directions=("left",))
    tokenizer = write_caption_tokenizer(root / "tokenizer.json")
    folder = Path(synthetic.root) / "videos" / "train"  # served; its sibling "test" is outside it
    clips = find_videos(folder)
    retrieval = fit_retrieval(clips, tokenizer, root / "retrieval.pt")

    names = root / "labels.txt"
    names.write_text("\n".join(LABELS) + "\n")
    cfg = make_config(model="side4video-tiny", num_classes=len(LABELS), frames=FRAMES, image_size=IMAGE,
                      label_names=str(names), test_crops=1, test_clips=2)
    recognition = save_checkpoint(create_model(cfg.model.name, num_classes=4, num_frames=FRAMES, image_size=IMAGE),
                                  cfg, root / "recognition.pt", steps=0)

    (folder / "broken.mp4").write_bytes(b"\x00" * 100)
    outside = Path(synthetic.root) / "videos" / "test" / "red_square_left_000.mp4"
    (folder / "link.mp4").symlink_to(outside)
    upload = root / "uploads" / "my clip.mp4"
    write_video(upload, motion_clip("up", 8, 32, np.random.default_rng(0)))
    text = root / "uploads" / "notes.txt"
    text.write_text("not a video\n")
    return {"folder": folder, "clips": clips, "outside": outside, "retrieval": retrieval,
            "recognition": recognition, "upload": upload, "text": text}


@pytest.fixture(scope="module")
def server(library):
    """The app on a free local port, in a thread; yields its base URL."""
    app = create_app([library["retrieval"], library["recognition"]], library["folder"], max_upload_mb=MAX_UPLOAD_MB)
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    uv = uvicorn.Server(uvicorn.Config(app, log_level="warning"))
    thread = threading.Thread(target=uv.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not uv.started and time.monotonic() < deadline:
        time.sleep(0.02)
    assert uv.started
    yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    uv.should_exit = True
    thread.join(timeout=30)
    sock.close()


def request(base: str, method: str, path: str, body=None, headers=None, chunked=False) -> tuple[int, bytes]:
    """A raw HTTP request: the path is sent exactly as given (no client-side normalisation of ``..``)."""
    host, port = base.removeprefix("http://").split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=30)
    try:
        conn.request(method, path, body=body, headers=headers or {}, encode_chunked=chunked)
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


def post_json(base: str, path: str, data: dict) -> tuple[int, dict]:
    status, body = request(base, "POST", path, json.dumps(data), {"Content-Type": "application/json"})
    return status, json.loads(body)


def wait_for(base: str, job: str) -> dict:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        state = json.loads(request(base, "GET", f"/api/jobs/{job}")[1])
        if state["state"] in ("done", "error"):
            return state
        time.sleep(0.02)
    raise AssertionError(f"job {job} did not finish")


def test_nothing_outside_the_video_folder_is_served(server, library):
    folder, outside = library["folder"], library["outside"]
    status, body = request(server, "GET", "/videos/red_square_left_000.mp4")
    assert status == 200
    assert body == (folder / "red_square_left_000.mp4").read_bytes()
    sibling = "test/red_square_left_000.mp4"  # exists, next to the served folder
    for path in (f"/videos/../{sibling}", f"/videos/%2e%2e/{sibling}", "/videos/..%2ftest%2fred_square_left_000.mp4",
                 f"/videos/{outside}", f"/videos/{outside.as_posix().lstrip('/')}", "/videos/link.mp4",
                 "/videos/.side4video_embeddings.pt", "/videos/%00.mp4"):
        status, body = request(server, "GET", path)
        assert status == 404, path
        assert outside.read_bytes() not in body
    for video in (f"../{sibling}", str(outside), "link.mp4"):
        status, reply = post_json(server, "/api/classify", {"video": video})
        assert status == 404, video
        assert "no video" in reply["error"]
    listed = json.loads(request(server, "GET", "/api/videos")[1])["videos"]
    assert listed == sorted([Path(p).name for p in library["clips"]] + ["broken.mp4"])  # no link.mp4


def test_uploads_are_size_limited(server):
    big = b"\x00" * int(MAX_UPLOAD_MB * 1024**2 + 1)
    status, body = request(server, "POST", "/api/upload?name=big.mp4", big)
    assert status == 413
    assert json.loads(body)["error"] == f"big.mp4 is larger than the upload limit of {MAX_UPLOAD_MB:g} MB"
    chunks = (big[i : i + 65536] for i in range(0, len(big), 65536))  # chunked: no declared length
    status, body = request(server, "POST", "/api/upload?name=big.mp4", chunks, {"Transfer-Encoding": "chunked"},
                           chunked=True)
    assert status == 413


def test_jobs_run_in_the_background_one_at_a_time():
    """A submitted job returns at once; the next waits for it; a failure becomes the job's error message."""
    queue, release, cleaned = JobQueue(), threading.Event(), []

    def slow(job: Job) -> str:
        job.progress("working", 1, 2)
        release.wait(10)
        return "slow done"

    def failing(job: Job) -> None:
        raise ValueError("clip.mp4 is not a video this model can read")

    first = queue.submit("slow", slow)
    second = queue.submit("fail", failing, cleanup=lambda: cleaned.append("fail"))
    deadline = time.monotonic() + 10
    while first.state != "running" and time.monotonic() < deadline:
        time.sleep(0.005)
    assert (first.state, first.message, first.done, first.total) == ("running", "working", 1, 2)
    assert second.state == "queued"
    release.set()
    while second.state != "error" and time.monotonic() < deadline:
        time.sleep(0.005)
    queue.shutdown()
    assert (first.state, first.result) == ("done", "slow done")
    assert (second.state, second.error) == ("error", "clip.mp4 is not a video this model can read")
    assert cleaned == ["fail"]
    assert queue.get(second.id) is second


def test_serve_command_binds_this_machine_only_by_default(library, monkeypatch, capsys):
    import side4video.web

    served = {}
    monkeypatch.setattr(side4video.web, "serve", lambda app, host, port: served.update(app=app, host=host, port=port))
    assert main(["serve", "--checkpoint", library["recognition"], "--device", "cpu"]) == 0
    assert (served["host"], served["port"]) == ("127.0.0.1", 8000)
    assert main(["serve", "--checkpoint", library["retrieval"], "--device", "cpu"]) == 1
    assert "is a retrieval model (clip4clip-frozen-tiny): searching needs --videos DIR" in capsys.readouterr().err


def test_a_video_named_with_spaces_is_classified(library):
    classifier = load_served(library["recognition"])
    spaced = classifier.classify(Job("classify"), library["upload"], "my clip.mp4")  # .../uploads/my clip.mp4
    plain = classifier.classify(Job("classify"), library["clips"][0], "plain")
    same = shutil.copy(library["upload"], library["upload"].with_name("same.mp4"))
    assert spaced["top"] == classifier.classify(Job("classify"), same, "same")["top"] != plain["top"]


class RecordedJob(Job):
    def progress(self, message: str, done: int = 0, total: int = 0) -> None:
        self.seen = [*getattr(self, "seen", []), (message, done, total)]


def test_indexing_reports_progress_and_reuses_the_cache(library, tmp_path):
    folder = tmp_path / "videos"
    folder.mkdir()
    for clip in library["clips"][:3]:
        shutil.copy(clip, folder)
    shutil.copy(library["folder"] / "broken.mp4", folder)
    searcher = load_served(library["retrieval"], videos=str(folder))
    job = RecordedJob("index")
    searcher.index(job)
    encoding = [s for s in job.seen if s[0].startswith("indexing")]
    assert encoding == [("indexing: 0 of 4 new or changed videos encoded", 0, 4),
                        ("indexing: 4 of 4 new or changed videos encoded", 4, 4)]  # one batch of 8
    assert job.seen[-1] == ("3 videos indexed, 1 unreadable", 4, 4)
    again = RecordedJob("index")
    load_served(library["retrieval"], videos=str(folder)).index(again)  # a new server: the cache on disk
    assert [s for s in again.seen if s[0].startswith("indexing")] == [
        ("indexing: 0 of 0 new or changed videos encoded", 0, 0)]


def test_search_and_classify_match_the_library(server, library):
    """The page's numbers are the command line's: ``search`` ranking and ``predict`` probabilities."""
    model, cfg = load_model(library["retrieval"], with_config=True)
    index = encode_videos(model, cfg, library["clips"])
    query = paraphrases("blue", "square", "left")[0]
    expected = search(model, load_tokenizer(cfg.data.tokenizer), index, query, topk=3)
    status, reply = post_json(server, "/api/search", {"query": query, "topk": 3})
    result = wait_for(server, reply["job"])["result"]
    assert [r["name"] for r in result["results"]] == [Path(h["path"]).name for h in expected]
    assert [r["score"] for r in result["results"]] == pytest.approx([h["score"] for h in expected], abs=1e-5)
    assert list(result["errors"]) == ["broken.mp4"]

    model, cfg = load_model(library["recognition"], with_config=True)
    video = library["clips"][0]
    (expected,) = predict_videos(model, cfg, [video], topk=5, label_names=list(LABELS))
    status, reply = post_json(server, "/api/classify", {"video": Path(video).name})
    result = wait_for(server, reply["job"])["result"]
    assert [c["name"] for c in result["top"]] == [c["name"] for c in expected["top"]]
    assert [c["prob"] for c in result["top"]] == pytest.approx([c["prob"] for c in expected["top"]], abs=1e-6)
    assert result["views"] == 2


# ---- the page in a real browser ------------------------------------------------------------------------


def find_browser() -> tuple[str, str] | None:
    browser = next(filter(None, map(shutil.which, ("chromium", "chromium-browser", "google-chrome"))), None)
    driver = shutil.which("chromedriver")
    return (browser, driver) if browser and driver else None


@pytest.fixture(scope="module")
def browser():
    found = find_browser()
    if found is None:
        pytest.skip("no Chromium with chromedriver installed (Debian: apt-get install chromium chromium-driver)")
    webdriver = pytest.importorskip("selenium.webdriver")
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = found[0]
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--window-size=1100,900"):
        options.add_argument(arg)
    driver = webdriver.Chrome(options=options, service=Service(found[1]))
    yield driver
    driver.quit()


def test_the_page_searches_classifies_and_reports_a_bad_upload(server, browser, library):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    wait = WebDriverWait(browser, 30, poll_frequency=0.05)
    browser.get(server + "/#search")
    wait.until(lambda d: d.find_element(By.TAG_NAME, "body").get_attribute("data-ready") == "true")
    header = browser.find_element(By.ID, "models").text
    assert "Search: clip4clip-frozen-tiny · backbone tiny · 4 frames at 32 px" in header
    assert "Classify: side4video-tiny · backbone tiny · 4 frames at 32 px · 4 classes" in header
    wait.until(lambda d: "videos indexed" in d.find_element(By.ID, "index-status").text)

    for colour in ("red", "blue"):
        query = browser.find_element(By.ID, "query")
        query.clear()
        query.send_keys(paraphrases(colour, "square", "left")[0])
        browser.find_element(By.ID, "search-button").click()
        wait.until(lambda d: d.find_element(By.ID, "search-button").is_enabled()
                   and d.find_elements(By.CSS_SELECTOR, "#search-results .hit"))
        hits = browser.find_elements(By.CSS_SELECTOR, "#search-results .hit")
        assert len(hits) == 4  # the four readable clips; the broken one is listed as unreadable
        first = hits[0]
        assert first.find_element(By.CLASS_NAME, "name").text == f"{colour}_square_left_000.mp4"
        assert first.find_element(By.CLASS_NAME, "play").get_attribute("href").endswith(
            f"/videos/{colour}_square_left_000.mp4")
        strip = first.find_element(By.CLASS_NAME, "strip")
        wait.until(lambda d, s=strip: d.execute_script("return arguments[0].naturalWidth", s) > 0)
        assert browser.execute_script("return [arguments[0].naturalWidth, arguments[0].naturalHeight]", strip) == [
            FRAMES * IMAGE, IMAGE]
    assert "broken.mp4" in browser.find_element(By.ID, "unreadable").get_attribute("textContent")

    browser.find_element(By.ID, "tab-classify").click()
    model, cfg = load_model(library["recognition"], with_config=True)
    same = shutil.copy(library["upload"], library["upload"].with_name("same.mp4"))  # predict's lists forbid spaces
    (expected,) = predict_videos(model, cfg, [same], topk=5, label_names=list(LABELS))
    browser.find_element(By.ID, "upload").send_keys(str(library["upload"]))
    browser.find_element(By.ID, "upload-button").click()
    wait.until(lambda d: d.find_element(By.ID, "classify-result").is_displayed())
    assert browser.find_element(By.ID, "classify-name").text == "my clip.mp4"
    rows = browser.find_elements(By.CSS_SELECTOR, "#classify-top .bar-row")
    shown = [(r.find_element(By.CLASS_NAME, "label").text, r.find_element(By.CLASS_NAME, "prob").text) for r in rows]
    assert shown == [(c["name"], f"{100 * c['prob']:.1f} %") for c in expected["top"]]  # 4 classes: top-4

    browser.find_element(By.ID, "upload").send_keys(str(library["text"]))
    browser.find_element(By.ID, "upload-button").click()
    wait.until(lambda d: d.find_element(By.ID, "classify-error").is_displayed())
    message = browser.find_element(By.ID, "classify-error").text
    assert message.startswith("notes.txt is not a video this model can read: undecodable")
    assert not browser.find_element(By.ID, "classify-result").is_displayed()
