"""vitrt.Engine inside your own web service: FastAPI, the in-process batcher and the asyncio API.

    VITRT_ARTIFACT=artifacts uvicorn examples.fastapi_app:app --host 127.0.0.1 --port 8080
    curl -F file=@cat.jpg 'localhost:8080/predict?embedding=1'

POST /predict (multipart field ``file``) -> {"predictions": [{"index", "label", "prob"}, ...]} (top 5),
plus "embedding" with ?embedding=1; GET /healthz. A bad image is 400 with vitrt's message, a full queue
503, a body over VITRT_MAX_BODY_BYTES 413. Not for the open network as it is: no TLS, no authentication
(docs/serving.md, "Security": the gateway to put in front).
"""

from __future__ import annotations

import asyncio
import os
from contextlib import asynccontextmanager

from fastapi import FastAPI, HTTPException, Request, UploadFile
from fastapi.responses import JSONResponse

import vitrt
from vitrt.serving.repository import MAX_IMAGE_BYTES

#: The largest request body accepted (VITRT_MAX_BODY_BYTES): by default vitrt serve's measured per-image
#: cap (docs/benchmarks.md, "Image bytes").
MAX_BODY_BYTES = int(os.environ.get("VITRT_MAX_BODY_BYTES") or MAX_IMAGE_BYTES)
engine: vitrt.Engine | None = None


@asynccontextmanager
async def lifespan(app: FastAPI):
    global engine
    engine = vitrt.Engine(os.environ.get("VITRT_ARTIFACT", "artifacts"), batching=True)
    yield
    engine.close()  # drains the requests already accepted


app = FastAPI(title="vitrt", lifespan=lifespan)


@app.middleware("http")
async def limit_body(request: Request, call_next):
    """413 before the body is read when its declared size is over the limit; 411 for a POST without one."""
    length = request.headers.get("content-length")
    if request.method == "POST" and (length is None or not length.isdigit() or int(length) > MAX_BODY_BYTES):
        return JSONResponse({"detail": f"request body of {length or 'undeclared'} bytes; expected a Content-Length "
                                       f"of at most {MAX_BODY_BYTES} bytes"}, status_code=413 if length else 411)
    return await call_next(request)


@app.get("/healthz")
async def healthz():
    return {"status": "ok", "artifact": engine.path.name}


@app.post("/predict")
async def predict(file: UploadFile, embedding: bool = False):
    data = await file.read()
    try:
        crop = await asyncio.to_thread(engine.preprocess, data)  # decoding off the event loop
        out = await engine.ainfer(crop[None])  # coalesced with other requests' images by the batcher
    except vitrt.Overloaded as exc:
        raise HTTPException(503, str(exc)) from None
    except (vitrt.ImageError, vitrt.InputError) as exc:
        raise HTTPException(400, str(exc)) from None
    body = {"predictions": [p._asdict() for p in engine.top_k(out["logits"][0], 5)]}
    if embedding:
        body["embedding"] = out["embedding"][0].tolist()
    return body
