"""`captioner serve`: captions over HTTP, a thin Starlette app over the Python API
(captioner.inference.api.Captioner).

    GET  /              a page: choose or drop photos, see each with its caption
    POST /api/caption   photos (multipart field `file`, repeatable, or one image as the body)
                        -> {"captions": [{"file", "caption", "score"}], "decoding", "seconds"}
                        ?attention=1 (a model with attention): each caption also has
                        "attention": {"words", "grid": [rows, columns], "weights" (words,
                        rows, columns)}, the weights each word was predicted with
    GET  /api/health    the model, the limits, the batching and what was served

The model is loaded once, before the server starts. Every model call runs on the batcher's one
thread (captioner.serving.batcher), so TensorFlow never blocks the event loop, and photos of
requests that arrive together share one encoder call and one decoder call. Uploads stay in memory:
counted as they arrive and cut off at the size limit, decoded from bytes, only in the formats
captioner reads, after their header's pixel count is checked; nothing a client sends names a
file. Bad input is a 4xx answer with {"error": one line}, never a 500.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import time
import warnings
from concurrent.futures import ThreadPoolExecutor
from importlib.resources import files

import numpy as np
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.formparsers import MultiPartException, MultiPartParser
from starlette.requests import ClientDisconnect, Request
from starlette.responses import HTMLResponse, JSONResponse
from starlette.routing import Route

from captioner.config import DECODE_RANGES, ServeConfig
from captioner.data.images import IMAGE_FORMATS, decode_image
from captioner.errors import ConfigError, ImageError, ImageTooLarge
from captioner.inference.api import Captioner
from captioner.inference.attention_maps import words_of
from captioner.serving.batcher import Batcher

# Decoding options as query parameters: name -> (type, what a value must be).
QUERY_OPTIONS = {
    name: (int, "a whole number") if isinstance(low, int) else (float, "a number")
    for name, (_, low, _high) in DECODE_RANGES.items()
}  # the decoding settings, their types read from their ranges (config.DECODE_RANGES)
# Query parameters that are not decoding settings: name -> what it asks for.
QUERY_FLAGS = {"attention": "each word's attention weights (0 or 1)"}
# Digits kept of each attention weight in the JSON: maps to draw, not to compute with.
WEIGHT_DIGITS = 4
# Threads that decode uploaded photos (Pillow releases the GIL): a few, so that many
# concurrent uploads of large photos cannot hold many decoded photos in memory at once.
DECODE_THREADS = 2
NAME_CHARACTERS = 120  # a client's file name is only echoed back, shortened to this


class BadRequest(Exception):
    """Answered as {"error": message} with its status (400, 413, 415)."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


def create_app(captioner: Captioner, settings: ServeConfig | None = None) -> Starlette:
    """The ASGI app over a loaded Captioner: what uvicorn runs, and what tests call in-process
    (run its lifespan, e.g. `with TestClient(app)`: it starts and stops the batcher)."""
    settings = settings or ServeConfig()
    service = _Service(captioner, settings)
    routes = [
        Route("/", service.page, methods=["GET"]),
        Route("/api/caption", service.caption, methods=["POST"]),
        Route("/api/health", service.health, methods=["GET"]),
    ]
    handlers = {BadRequest: _bad_request, HTTPException: _http_error}
    return Starlette(routes=routes, exception_handlers=handlers, lifespan=service.lifespan)


def serve(run_dirs=(), host: str = "127.0.0.1", port: int = 8000, settings=None) -> None:
    """Loads the model (a run, an ensemble, or the shipped model when `run_dirs` is empty),
    compiles it, then serves until interrupted (Ctrl-C or SIGTERM)."""
    import uvicorn
    from PIL import Image

    settings = settings or ServeConfig()
    Image.MAX_IMAGE_PIXELS = settings.max_pixels
    warnings.simplefilter("error", Image.DecompressionBombWarning)  # refuse, not just warn
    captioner = Captioner.load(*run_dirs)
    captioner.warm_up(settings.max_batch)
    app = create_app(captioner, settings)
    # uvicorn stops gracefully on Ctrl-C or SIGTERM, then raises that signal again: Ctrl-C is
    # how a server is meant to stop, so it ends this call normally.
    with contextlib.suppress(KeyboardInterrupt):
        uvicorn.run(app, host=host, port=port, log_level="info", timeout_graceful_shutdown=5)


class _Service:
    """The endpoints, and what they share: the model, the batcher, the decoding threads."""

    def __init__(self, captioner: Captioner, settings: ServeConfig):
        self.captioner, self.settings = captioner, settings
        self.batcher = Batcher(self._run_batch, settings.max_batch, settings.batch_wait_ms / 1000)
        self.decoders: ThreadPoolExecutor | None = None
        self.requests = 0
        self.page_html = (files("captioner.serving") / "page.html").read_text(encoding="utf-8")

    @contextlib.asynccontextmanager
    async def lifespan(self, app):
        self.decoders = ThreadPoolExecutor(DECODE_THREADS, thread_name_prefix="captioner-decode")
        await self.batcher.start()
        try:
            yield
        finally:
            await self.batcher.stop()
            self.decoders.shutdown(wait=False)

    def _run_batch(self, key, images: list) -> list[tuple]:
        """One batch on the model thread: one encoder call, one decoder call. key: (decoding
        settings, attention), so that a batch never mixes searches."""
        decoding, attention = key
        return self.captioner.caption_batch(np.stack(images), decoding, attention)

    async def page(self, request: Request) -> HTMLResponse:
        return HTMLResponse(self.page_html)

    async def health(self, request: Request) -> JSONResponse:
        from captioner.version import __version__

        s = self.settings
        limits = {"max_upload_mb": s.max_upload_mb, "max_files": s.max_files}
        limits |= {"max_megapixels": s.max_megapixels, "formats": list(IMAGE_FORMATS)}
        batcher = self.batcher
        served = {"requests": self.requests, "photos": batcher.items, "batches": batcher.batches}
        return JSONResponse(
            {
                "status": "ok",
                "version": __version__,
                **self.captioner.describe(),
                "limits": limits,
                "batching": {"max_batch": s.max_batch, "batch_wait_ms": s.batch_wait_ms},
                "served": served,
            }
        )

    async def caption(self, request: Request) -> JSONResponse:
        start = time.perf_counter()
        decoding = _decoding(self.captioner, request)
        attention = _attention(self.captioner, request)
        uploads = await _uploads(request, self.settings)
        images = await self._decode(uploads)
        results = await self.batcher.submit((decoding, attention), images)
        self.requests += 1
        captions = [_caption_json(name, *result) for (name, _), result in zip(uploads, results)]
        return JSONResponse(
            {
                "captions": captions,
                "decoding": dataclasses.asdict(decoding),
                "seconds": round(time.perf_counter() - start, 4),
            }
        )

    async def _decode(self, uploads: list[tuple[str, bytes]]) -> list:
        loop = asyncio.get_running_loop()
        size, max_pixels = self.captioner.input_size, self.settings.max_pixels
        jobs = [
            loop.run_in_executor(self.decoders, decode_image, data, size, max_pixels, name)
            for name, data in uploads
        ]
        try:
            return list(await asyncio.gather(*jobs))
        except ImageTooLarge as error:
            raise BadRequest(413, str(error)) from None
        except ImageError as error:
            raise BadRequest(400, str(error)) from None


def _caption_json(name: str, caption: str, score: float, weights=None) -> dict:
    answer = {"file": name, "caption": caption, "score": round(score, 4)}
    if weights is not None:
        answer["attention"] = {
            "words": words_of(caption, len(weights)),  # "一只狗": three words
            "grid": list(weights.shape[1:]),
            "weights": np.round(weights.astype(float), WEIGHT_DIGITS).tolist(),
        }
    return answer


def _attention(captioner: Captioner, request: Request) -> bool:
    """?attention=1: the weights too, for a model that attends (400 in one line otherwise)."""
    text = request.query_params.get("attention", "0")
    if text not in ("0", "1"):
        raise BadRequest(400, f"attention: {text[:40]!r} is not 0 or 1")
    if text == "1":
        try:
            captioner.attention_grid("attention=1")
        except ConfigError as error:
            raise BadRequest(400, str(error)) from None
    return text == "1"


def _decoding(captioner: Captioner, request: Request):
    """The decoding settings from the query string (?beam=3&length_penalty=0.7...)."""
    query = request.query_params
    for name in query:
        if name not in QUERY_OPTIONS and name not in QUERY_FLAGS:
            valid = ", ".join([*QUERY_OPTIONS, *QUERY_FLAGS])
            raise BadRequest(400, f"unknown parameter {name[:40]!r} (valid: {valid})")
        if len(query.getlist(name)) > 1:
            raise BadRequest(400, f"{name}: given more than once")
    values = {}
    for name, (kind, expected) in QUERY_OPTIONS.items():
        text = query.get(name, "")
        if text:
            try:
                values[name] = kind(text)
            except ValueError:
                raise BadRequest(400, f"{name}: {text[:40]!r} is not {expected}") from None
    try:
        return captioner.decoding(**values)
    except ConfigError as error:
        raise BadRequest(400, str(error)) from None


async def _uploads(request: Request, settings: ServeConfig) -> list[tuple[str, bytes]]:
    """(name, bytes) of each photo: multipart parts named `file`, or the body of an image/*
    request. The body is read whole into memory first, counted against the limit."""
    kind = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if kind != "multipart/form-data" and not kind.startswith("image/"):
        raise BadRequest(
            415, "send photos as multipart/form-data (field 'file') or one image/* body"
        )
    body = await _read_body(request, settings.max_upload_bytes)
    if kind.startswith("image/"):
        uploads = [("image", body)] if body else []
    else:
        uploads = await _multipart_files(request, body, settings.max_files)
    if not uploads:
        raise BadRequest(400, "no photo: send multipart field 'file' or an image/* body")
    if len(uploads) > settings.max_files:
        raise BadRequest(400, f"{len(uploads)} photos: at most {settings.max_files} per request")
    return uploads


async def _read_body(request: Request, limit: int) -> bytes:
    """The whole body, refused (413) once it passes `limit` bytes: by its Content-Length, or,
    for a body without one or lying about it, as soon as the bytes received pass it."""
    too_large = f"upload larger than {limit / 1e6:g} MB"
    declared = request.headers.get("content-length")
    if declared is not None:
        if not declared.isdigit():
            raise BadRequest(400, f"Content-Length {declared[:20]!r} is not a number")
        if int(declared) > limit:
            raise BadRequest(413, too_large)
    body = bytearray()
    try:
        async for chunk in request.stream():
            body += chunk
            if len(body) > limit:
                raise BadRequest(413, too_large)
    except ClientDisconnect:  # nobody to answer; not an error of ours either
        raise BadRequest(400, "the client went away before sending its whole body") from None
    return bytes(body)


class _InMemoryParts(MultiPartParser):
    """Starlette's multipart parser, its files kept in memory (the body is already there,
    counted): no temporary file is ever written."""

    def __init__(self, headers, body: bytes, max_files: int):
        async def once():
            yield body

        super().__init__(headers, once(), max_files=max_files, max_fields=max_files)
        self.spool_max_size = len(body) + 1


async def _multipart_files(request: Request, body: bytes, max_files: int):
    try:
        form = await _InMemoryParts(request.headers, body, max_files).parse()
    except MultiPartException as error:
        raise BadRequest(400, f"multipart body: {error.message}") from None
    uploads = []
    for field, value in form.multi_items():
        if field != "file" or isinstance(value, str):
            raise BadRequest(400, f"unexpected form field {field[:40]!r}: send photos as 'file'")
        uploads.append((_display_name(value.filename), await value.read()))
    await form.close()
    return uploads


def _display_name(filename: str | None) -> str:
    """The client's file name, only ever echoed back: printable and short."""
    name = "".join(c for c in (filename or "photo") if c.isprintable())
    return name[:NAME_CHARACTERS] or "photo"


async def _bad_request(request: Request, error: BadRequest) -> JSONResponse:
    return JSONResponse({"error": str(error)}, status_code=error.status)


async def _http_error(request: Request, error: HTTPException) -> JSONResponse:
    return JSONResponse({"error": error.detail}, status_code=error.status_code)
