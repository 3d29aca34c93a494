"""``side4video serve``: a local web page to search a folder of videos by text and to classify a clip.

    app = create_app(["runs/msrvtt/best.pt", "runs/k400/best.pt"], videos="~/clips")
    serve(app, port=8000)  # http://127.0.0.1:8000/

Needs the ``web`` extra (``pip install -e ".[web]"``: Starlette and uvicorn).
"""

from .app import create_app, serve

__all__ = ["create_app", "serve"]
