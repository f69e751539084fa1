"""``serve_load.py``'s peer: the FastAPI endpoint people write by hand around a model.

The same demo bundle, backend and threads as the ``edgemed serve`` it is compared with,
behind the plainest FastAPI route: the whole body with ``await request.body()``, the
call in Starlette's thread pool, the result's JSON back. No queue, no limits, no
metrics: the HTTP cost a user gets without ``edgemed serve``. Started by
``serve_load.py`` as ``python -m uvicorn benchmarks.serve_peer:app`` (uvicorn picks
uvloop and httptools, as it does for ``edgemed serve``); ``EDGEMED_PEER_BACKEND`` and
``EDGEMED_PEER_THREADS`` say which.
"""

from __future__ import annotations

import json
import os

from fastapi import FastAPI, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import Response

import edgemed

pipe = edgemed.Pipeline.from_bundle(
    edgemed.demo_bundle(),
    os.environ.get("EDGEMED_PEER_BACKEND", "onnxruntime"),
    threads=int(os.environ.get("EDGEMED_PEER_THREADS", "2")),
)
app = FastAPI()


@app.post("/v1/infer")
async def infer(request: Request) -> Response:
    body = await request.body()
    result = await run_in_threadpool(pipe, body)
    return Response(json.dumps(result.to_dict()).encode(), media_type="application/json")


@app.get("/readyz")
async def ready() -> Response:
    return Response(b"{}", media_type="application/json")
