"""The ``side4video serve`` web app (Starlette): one static page and a small JSON API.

    GET  /                     the page (static/index.html, static/app.js, static/style.css)
    GET  /api/info             the loaded models, the video folder, the upload limit, the indexing job
    GET  /api/videos           the video files of the folder (paths relative to it)
    POST /api/search           {"query", "topk"?}                                        -> {"job"}
    POST /api/classify         {"video": a path relative to the folder}                  -> {"job"}
    POST /api/upload?name=F    the raw bytes of a video file, classified                 -> {"job"}
    GET  /api/jobs/ID          state, progress, result or error of a job
    GET  /api/jobs/ID/images/NAME.jpg   a frame strip of a job's result
    GET  /videos/PATH          a video of the folder (the play links)

Safe by default: only files under the video folder with a video extension are ever served or read by
name; uploads are limited in size, written to a private temporary folder, read with the training
reader, and deleted after classification.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path

import torch
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from ..data import VIDEO_EXTENSIONS
from .jobs import JobQueue
from .served import Classifier, Searcher, load_served, videos_in

STATIC = Path(__file__).parent / "static"
MAX_QUERY_CHARS = 1000


def video_under(root: Path, relative: str) -> Path:
    """The video file ``root/relative``, refusing (404) anything that is not a video file inside ``root``
    once resolved (``..``, absolute paths, symbolic links pointing out)."""
    try:
        path = (root / relative).resolve()
    except (OSError, ValueError):  # e.g. a NUL byte in the name
        path = root
    if not path.is_relative_to(root) or not path.is_file() or path.suffix.lower() not in VIDEO_EXTENSIONS:
        raise HTTPException(404, f"no video {relative!r} in the video folder")
    return path


def error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status)


async def json_body(request: Request) -> dict:
    try:
        body = await request.json()
    except ValueError:
        raise HTTPException(400, "the request body is not JSON") from None
    if not isinstance(body, dict):
        raise HTTPException(400, "the request body must be a JSON object")
    return body


def create_app(
    checkpoints: Sequence[str],
    videos: str | os.PathLike | None = None,
    *,
    device: str | torch.device = "cpu",
    tokenizer: str | None = None,
    labels: str | None = None,
    max_upload_mb: float = 200.0,
    topk: int = 5,
) -> Starlette:
    """The app serving ``checkpoints`` (at most one retrieval and one recognition model) over the folder
    ``videos``, showing ``topk`` results and classes; the models are loaded here, before it is returned."""
    root = Path(videos).resolve() if videos is not None else None
    if root is not None and not root.is_dir():
        raise FileNotFoundError(f"video folder {videos} does not exist")
    searcher: Searcher | None = None
    classifier: Classifier | None = None
    for checkpoint in checkpoints:
        served = load_served(checkpoint, device, videos=videos, tokenizer=tokenizer, labels=labels)
        if (searcher if isinstance(served, Searcher) else classifier) is not None:
            raise ValueError(f"{checkpoint}: a second {served.info.task} model; serve one of each task at most")
        if isinstance(served, Searcher):
            searcher = served
        else:
            classifier = served
    max_upload = int(max_upload_mb * 1024**2)
    jobs = JobQueue()
    state: dict = {"index_job": None, "uploads": None}  # set while the app runs

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette):
        state["uploads"] = tempfile.mkdtemp(prefix="side4video-uploads-")
        if searcher is not None:
            state["index_job"] = jobs.submit("index", searcher.index_summary).id  # searches then find it encoded
        try:
            yield
        finally:
            jobs.shutdown()
            shutil.rmtree(state["uploads"], ignore_errors=True)

    async def index_page(request: Request) -> Response:
        return FileResponse(STATIC / "index.html")

    async def info(request: Request) -> Response:
        models = {m.info.task: vars(m.info) for m in (searcher, classifier) if m is not None}
        return JSONResponse({"models": models, "videos": str(root) if root else None,
                             "max_upload_mb": max_upload_mb, "index_job": state["index_job"]})

    def list_videos(request: Request) -> Response:  # sync: Starlette runs it in its thread pool
        paths = videos_in(root) if root is not None else []
        return JSONResponse({"videos": [Path(p).relative_to(root).as_posix() for p in paths]})

    async def search(request: Request) -> Response:
        if searcher is None:
            return error(404, "no retrieval model is loaded: serve a retrieval checkpoint to search")
        body = await json_body(request)
        query, k = body.get("query"), body.get("topk", topk)
        if not isinstance(query, str) or not query.strip() or len(query) > MAX_QUERY_CHARS:
            return error(400, f"the query must be a non-empty text of at most {MAX_QUERY_CHARS} characters")
        if not isinstance(k, int) or not 1 <= k <= 100:
            return error(400, "topk must be an integer from 1 to 100")
        job = jobs.submit("search", lambda job: searcher.search(job, query.strip(), k))
        return JSONResponse({"job": job.id})

    async def classify(request: Request) -> Response:
        if classifier is None:
            return error(404, "no recognition model is loaded: serve a recognition checkpoint to classify")
        if root is None:
            return error(404, "no video folder: start the server with --videos DIR, or upload a file")
        relative = (await json_body(request)).get("video")
        if not isinstance(relative, str):
            return error(400, "give the video as a path relative to the video folder")
        path = video_under(root, relative)
        job = jobs.submit("classify", lambda job: classifier.classify(job, path, relative, topk))
        return JSONResponse({"job": job.id})

    async def upload(request: Request) -> Response:
        if classifier is None:
            return error(404, "no recognition model is loaded: serve a recognition checkpoint to classify")
        name = Path(request.query_params.get("name", "upload")).name or "upload"
        too_large = f"{name} is larger than the upload limit of {max_upload_mb:g} MB"
        declared = request.headers.get("content-length", "")
        if declared.isdigit() and int(declared) > max_upload:
            return error(413, too_large)
        suffix = Path(name).suffix.lower()
        fd, path = tempfile.mkstemp(suffix=suffix if suffix in VIDEO_EXTENSIONS else ".upload", dir=state["uploads"])
        size = 0
        with os.fdopen(fd, "wb") as f:
            async for chunk in request.stream():
                size += len(chunk)
                if size > max_upload:  # a body longer than it declared, or sent without a length
                    break
                f.write(chunk)
        if size > max_upload:
            os.unlink(path)
            return error(413, too_large)
        job = jobs.submit("classify", lambda job: classifier.classify(job, path, name, topk),
                          cleanup=lambda: os.unlink(path))
        return JSONResponse({"job": job.id})

    async def job_status(request: Request) -> Response:
        job = jobs.get(request.path_params["job"])
        if job is None:
            return error(404, "no such job (finished jobs are forgotten after a while)")
        return JSONResponse(job.to_dict())

    async def job_image(request: Request) -> Response:
        job = jobs.get(request.path_params["job"])
        jpeg = job.images.get(request.path_params["name"]) if job is not None else None
        if jpeg is None:
            return error(404, "no such image")
        return Response(jpeg, media_type="image/jpeg")

    def video_file(request: Request) -> Response:
        if root is None:
            return error(404, "no video folder is served")
        return FileResponse(video_under(root, request.path_params["path"]))

    async def http_error(request: Request, exc: HTTPException) -> Response:
        return error(exc.status_code, exc.detail)

    routes = [
        Route("/", index_page),
        Route("/api/info", info),
        Route("/api/videos", list_videos),
        Route("/api/search", search, methods=["POST"]),
        Route("/api/classify", classify, methods=["POST"]),
        Route("/api/upload", upload, methods=["POST"]),
        Route("/api/jobs/{job}", job_status),
        Route("/api/jobs/{job}/images/{name}.jpg", job_image),
        Route("/videos/{path:path}", video_file),
        Mount("/static", StaticFiles(directory=STATIC), name="static"),
    ]
    return Starlette(routes=routes, lifespan=lifespan, exception_handlers={HTTPException: http_error})


def serve(app: Starlette, host: str = "127.0.0.1", port: int = 8000) -> None:
    """Run ``app`` with uvicorn until interrupted."""
    import uvicorn

    print(f"side4video serve: http://{host}:{port}/ (Ctrl+C stops)")
    uvicorn.run(app, host=host, port=port, log_level="warning")
