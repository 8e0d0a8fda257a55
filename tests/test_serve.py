"""`captioner serve`: the app in-process (Starlette's TestClient, no socket) for every endpoint
and every kind of bad upload, the batcher alone, and one real server on a socket."""

from __future__ import annotations

import asyncio
import builtins
import io
import json
import os
import re
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
import urllib.request
import zlib

import numpy as np
import pytest
from PIL import Image
from starlette.testclient import TestClient  # needs httpx2 (the dev extra)

from captioner.config import ServeConfig
from captioner.serving.app import create_app
from captioner.serving.batcher import Batcher
from tests.conftest import CHELSEA

PHOTO = CHELSEA.read_bytes()  # 16 kB, 224 x 224


@pytest.fixture(scope="module")
def client(shipped_captioner):
    with TestClient(create_app(shipped_captioner)) as client:
        yield client


# Small limits, for the bad uploads: 50 kB, 3 files, 0.1 MP (the cat photo is 0.05 MP).
STRICT = ServeConfig(max_upload_mb=0.05, max_files=3, max_megapixels=0.1)


@pytest.fixture(scope="module")
def strict(shipped_captioner):
    with TestClient(create_app(shipped_captioner, STRICT)) as client:
        yield client


def files(*photos, field="file"):
    return [(field, (name, data, "image/jpeg")) for name, data in photos]


def test_the_page_is_one_self_contained_file(client):
    page = client.get("/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    html = page.text
    assert '<input id="files" type="file" accept="image/*" multiple' in html
    for option in ("beam", "length_penalty", "no_repeat_ngram"):
        assert f'name="{option}"' in html
    # No external asset: no src/href/url() pointing anywhere, no @import.
    assert not re.search(r"""(src|href)\s*=\s*["'](?!#)|url\(|@import|//[a-z]""", html), html


def test_health_describes_the_model_and_the_limits(client):
    health = client.get("/api/health").json()
    assert health["status"] == "ok" and health["model"] == "shipped Flickr8k model"
    assert health["encoder"] == "efficientnet_lite1" and len(health["runs"]) == 2
    assert health["decoding"] == {
        "beam_size": 3,
        "max_length": 30,
        "length_penalty": 0.7,
        "no_repeat_ngram": 3,
    }
    assert health["limits"]["max_files"] == 16 and health["batching"]["max_batch"] == 32


def test_captions_are_the_python_apis(client, shipped_captioner):
    expected, score = shipped_captioner.caption(CHELSEA, scores=True)
    answer = client.post("/api/caption", files=files(("cat.jpg", PHOTO), ("again.jpg", PHOTO)))
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert body["captions"] == [
        {"file": "cat.jpg", "caption": expected, "score": round(score, 4)},
        {"file": "again.jpg", "caption": expected, "score": round(score, 4)},
    ]
    assert body["decoding"]["beam_size"] == 3 and body["seconds"] > 0
    # One image as the request body.
    raw = client.post("/api/caption", content=PHOTO, headers={"content-type": "image/jpeg"})
    assert raw.json()["captions"] == [
        {"file": "image", "caption": expected, "score": round(score, 4)}
    ]


def test_decoding_options_are_query_parameters(client, shipped_captioner):
    greedy = client.post("/api/caption?beam=1&max_length=4", files=files(("c.jpg", PHOTO)))
    assert greedy.json()["captions"][0]["caption"] == shipped_captioner.caption(
        CHELSEA, beam=1, max_length=4
    )
    assert greedy.json()["decoding"]["beam_size"] == 1
    options = "beam=2&length_penalty=1.0&no_repeat_ngram=0"
    beam = client.post(f"/api/caption?{options}", files=files(("c.jpg", PHOTO)))
    assert beam.json()["captions"][0]["caption"] == shipped_captioner.caption(
        CHELSEA, beam=2, length_penalty=1.0, no_repeat_ngram=0
    )


@pytest.mark.parametrize(
    ("query", "message"),
    [
        ("beam=0", "beam: 0 is not between 1 and 50"),
        ("beam=three", "beam: 'three' is not a whole number"),
        ("beam=2.5", "beam: '2.5' is not a whole number"),
        ("length_penalty=nan", "length_penalty: nan is not between 0.0 and 10.0"),
        ("length_penalty=1e999", "length_penalty: inf is not between 0.0 and 10.0"),
        ("no_repeat_ngram=-1", "no_repeat_ngram: -1 is not between 0 and 10"),
        ("max_length=1000", "max_length: 1000 is not between 1 and 200"),
        ("beam=1&beam=2", "beam: given more than once"),
        (
            "temperature=2",
            "unknown parameter 'temperature' (valid: beam, max_length, "
            "length_penalty, no_repeat_ngram, attention)",
        ),
    ],
)
def test_bad_decoding_values_are_400(client, query, message):
    answer = client.post(f"/api/caption?{query}", files=files(("c.jpg", PHOTO)))
    assert answer.status_code == 400 and answer.json()["error"].startswith(message)


def png_header(width: int, height: int) -> bytes:
    """A PNG that claims `width` x `height` pixels and holds none: a decompression bomb's
    header, a few dozen bytes."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        crc = struct.pack(">I", zlib.crc32(kind + data))
        return struct.pack(">I", len(data)) + kind + data + crc

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    idat = chunk(b"IDAT", zlib.compress(b""))
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + idat + chunk(b"IEND", b"")


def encoded(image: Image.Image, fmt: str) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt)
    return buffer.getvalue()


def chunks(data: bytes, size: int = 4096):
    """A body sent in pieces without Content-Length (chunked transfer encoding)."""
    for start in range(0, len(data), size):
        yield data[start : start + size]


NOISE = np.random.default_rng(0).integers(0, 256, (300, 400, 3), np.uint8)
BAD_UPLOADS = {
    "too large": ({"files": files(("big.png", encoded(Image.fromarray(NOISE), "PNG")))},
                  413, "upload larger than 0.05 MB"),
    "too large, no length": ({"content": chunks(bytes(60_000)),
                              "headers": {"content-type": "image/png"}},
                             413, "upload larger than 0.05 MB"),
    "too many pixels": ({"files": files(("wide.png", encoded(Image.new("L", (400, 300)), "PNG")))},
                        413, "wide.png: 400 x 300 pixels, more than the 100,000 allowed"),
    "bomb header": ({"files": files(("bomb.png", png_header(20_000, 20_000)))},
                    413, "bomb.png: too many pixels (DecompressionBombError: Image size "),
    "not an image": ({"files": files(("notes.jpg", b"hello, world"))},
                     400, "notes.jpg: not an image in a format captioner reads (JPEG, PNG, BMP, "),
    "other format": ({"files": files(("cat.ppm", encoded(Image.new("RGB", (8, 8)), "PPM")))},
                     400, "cat.ppm: not an image in a format captioner reads"),
    "truncated": ({"files": files(("cut.jpg", PHOTO[: len(PHOTO) // 2]))},
                  400, "cut.jpg: cannot read this image (OSError: image file is truncated"),
    "too many files": ({"files": files(*[("c.jpg", b"x")] * 4)},
                       400, "multipart body: Too many files. Maximum number of files is 3."),
    "other field": ({"files": files(("c.jpg", PHOTO), field="photo")},
                    400, "unexpected form field 'photo': send photos as 'file'"),
    "a field, not a file": ({"data": {"file": "not a file"}, "files": files(("c.jpg", PHOTO))},
                            400, "unexpected form field 'file': send photos as 'file'"),
    "no photo": ({"content": b"", "headers": {"content-type": "image/jpeg"}},
                 400, "no photo: send multipart field 'file' or an image/* body"),
    "no boundary": ({"content": b"--x\r\n", "headers": {"content-type": "multipart/form-data"}},
                    400, "multipart body: Missing boundary in multipart."),
    "wrong type": ({"content": PHOTO, "headers": {"content-type": "application/json"}},
                   415, "send photos as multipart/form-data (field 'file') or one image/* body"),
}  # fmt: skip


@pytest.mark.filterwarnings("ignore::UserWarning:PIL.*")
@pytest.mark.parametrize("case", BAD_UPLOADS)
def test_bad_uploads_get_4xx_with_a_message_and_the_server_goes_on(strict, case):
    request, status, message = BAD_UPLOADS[case]
    answer = strict.post("/api/caption", **request)
    assert answer.status_code == status, answer.text
    assert answer.json()["error"].startswith(message), answer.json()
    assert "\n" not in answer.json()["error"]
    after = strict.post("/api/caption", files=files(("c.jpg", PHOTO)))
    assert after.status_code == 200 and after.json()["captions"][0]["caption"]


async def asgi_post(app, headers: dict, pieces: list[bytes]) -> tuple[int, dict]:
    """POSTs `pieces` to /api/caption through the ASGI interface, headers as given (a client
    that lies about Content-Length, which HTTP clients will not send)."""
    messages = [{"type": "http.request", "body": p, "more_body": True} for p in pieces]
    messages[-1]["more_body"] = False
    sent = []

    async def receive():
        return messages.pop(0) if messages else {"type": "http.disconnect"}

    async def send(message):
        sent.append(message)

    scope = {"type": "http", "method": "POST", "path": "/api/caption", "query_string": b"",
             "headers": [(k.encode(), v.encode()) for k, v in headers.items()],
             "http_version": "1.1", "scheme": "http", "server": ("test", 80)}  # fmt: skip
    await app(scope, receive, send)
    return sent[0]["status"], json.loads(b"".join(m.get("body", b"") for m in sent[1:]))


def test_a_body_longer_than_its_content_length_is_cut_off_at_the_limit(shipped_captioner):
    app = create_app(shipped_captioner, STRICT)
    headers = {"content-type": "image/jpeg", "content-length": "1000"}
    status, body = asyncio.run(asgi_post(app, headers, [bytes(10_000)] * 20))  # 200 kB
    assert (status, body) == (413, {"error": "upload larger than 0.05 MB"})
    status, body = asyncio.run(asgi_post(app, {**headers, "content-length": "12x"}, [b"x"]))
    assert (status, body) == (400, {"error": "Content-Length '12x' is not a number"})


def test_uploads_never_touch_the_filesystem(client, shipped_captioner, monkeypatch):
    """A 1.4 MB photo (Starlette spools parts over 1 MB to a temporary file) with a name that
    climbs out of any folder: no file is opened while the request is answered."""
    noise = np.random.default_rng(1).integers(0, 256, (600, 800, 3), np.uint8)
    big = encoded(Image.fromarray(noise), "PNG")
    assert len(big) > 1_100_000

    def refuse(*args, **kwargs):
        raise AssertionError(f"a file was opened: {args}")

    monkeypatch.setattr(builtins, "open", refuse)
    monkeypatch.setattr(os, "open", refuse)
    answer = client.post("/api/caption", files=files(("../../../etc/passwd", big)))
    monkeypatch.undo()
    assert answer.status_code == 200, answer.text
    assert answer.json()["captions"][0]["file"] == "../../../etc/passwd"


def test_concurrent_requests_share_model_calls(shipped_captioner):
    """Eight one-photo requests at once, with 300 ms to gather: fewer model calls than photos,
    each caption the same as alone."""
    settings = ServeConfig(max_batch=8, batch_wait_ms=300)
    with TestClient(create_app(shipped_captioner, settings)) as client:
        answers = [None] * 8

        def post(i):
            answers[i] = client.post("/api/caption?beam=1", files=files((f"{i}.jpg", PHOTO)))

        threads = [threading.Thread(target=post, args=(i,)) for i in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        served = client.get("/api/health").json()["served"]
    expected = shipped_captioner.caption(CHELSEA, beam=1)
    assert [a.json()["captions"][0]["caption"] for a in answers] == [expected] * 8
    assert served["photos"] == 8 and served["batches"] < 8, served


def test_the_batcher_batches_by_setting_never_past_max_batch():
    calls = []

    def run_batch(key, items):
        calls.append((key, list(items)))
        return [f"{key}{item}" for item in items]

    async def scenario():
        batcher = Batcher(run_batch, max_batch=4, wait_seconds=0.05)
        await batcher.start()
        requests = [batcher.submit("a", [1, 2, 3]), batcher.submit("b", [4]),
                    batcher.submit("a", [5, 6, 7])]  # fmt: skip
        results = await asyncio.gather(*requests)
        alone = Batcher(run_batch, max_batch=1, wait_seconds=0.05)
        await alone.start()
        one_by_one = await alone.submit("c", [8, 9])
        await batcher.stop()
        await alone.stop()
        return results, one_by_one

    results, one_by_one = asyncio.run(scenario())
    assert results == [["a1", "a2", "a3"], ["b4"], ["a5", "a6", "a7"]]
    assert one_by_one == ["c8", "c9"]
    # Oldest first: a's first four, then b's one and a's last two (in the order they came).
    assert calls[0] == ("a", [1, 2, 3, 5]) and calls[3:] == [("c", [8]), ("c", [9])]
    assert sorted(calls[1:3]) == [("a", [6, 7]), ("b", [4])]


# --- a real server, on a socket --------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def multipart(photos: list[tuple[str, bytes]], boundary: str = "captioner-test-x7") -> tuple:
    """(body, content type) of a multipart/form-data upload, fields `file`."""
    body = b"".join(
        f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="{name}"\r\n'
        f"Content-Type: application/octet-stream\r\n\r\n".encode()
        + data
        + b"\r\n"
        for name, data in photos
    )
    return body + f"--{boundary}--\r\n".encode(), f"multipart/form-data; boundary={boundary}"


def post_photo(url: str, name: str, data: bytes, timeout: float = 60) -> dict:
    body, kind = multipart([(name, data)])
    request = urllib.request.Request(url, body, {"Content-Type": kind}, method="POST")
    with urllib.request.urlopen(request, timeout=timeout) as answer:
        return json.loads(answer.read())


def wait_for_health(url: str, process: subprocess.Popen, log, timeout: float = 180) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            pytest.fail(f"the server exited ({process.returncode}): {log.read_text()[-2000:]}")
        try:
            with urllib.request.urlopen(url + "/api/health", timeout=2) as answer:
                return json.loads(answer.read())
        except OSError:
            time.sleep(0.5)
    pytest.fail(f"no answer from {url} in {timeout} s: {log.read_text()[-2000:]}")


@pytest.mark.slow
def test_a_real_server_answers_and_a_stalled_client_does_not_hold_it(
    tmp_path, cli_caption_of_chelsea
):
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    log = tmp_path / "server.log"
    command = [sys.executable, "-m", "captioner", "serve", "--port", str(port)]
    with open(log, "wb") as output:
        process = subprocess.Popen(command, stdout=output, stderr=subprocess.STDOUT)
    try:
        assert wait_for_health(url, process, log)["status"] == "ok"
        answer = post_photo(url + "/api/caption", "chelsea.jpg", PHOTO)
        assert answer["captions"][0]["caption"] == cli_caption_of_chelsea

        # A client sends its headers and half its body, then stalls.
        body, kind = multipart([("slow.jpg", PHOTO)])
        stalled = socket.create_connection(("127.0.0.1", port))
        head = f"POST /api/caption HTTP/1.1\r\nHost: x\r\nContent-Type: {kind}\r\n"
        stalled.sendall(f"{head}Content-Length: {len(body)}\r\n\r\n".encode())
        stalled.sendall(body[: len(body) // 2])
        try:
            for _ in range(3):
                started = time.monotonic()
                answer = post_photo(url + "/api/caption?beam=1", "fast.jpg", PHOTO, timeout=10)
                assert answer["captions"][0]["caption"]
                assert time.monotonic() - started < 5
        finally:
            stalled.close()
        assert wait_for_health(url, process, log)["served"]["requests"] == 4
    finally:
        process.terminate()
        returncode = process.wait(timeout=30)
    # uvicorn shuts down gracefully, then lets SIGTERM end the process as it would have.
    assert returncode in (0, -signal.SIGTERM), log.read_text()[-2000:]
    text = log.read_text()
    assert "Uvicorn running on http://127.0.0.1" in text and "Finished server process" in text
    assert "Traceback" not in text, text


def test_serve_refuses_a_missing_run_in_one_line(tmp_path):
    from click.testing import CliRunner

    from captioner.cli import cli

    result = CliRunner().invoke(cli, ["serve", "--run", str(tmp_path / "nowhere")])
    assert result.exit_code == 1
    assert result.output == f"Error: {tmp_path / 'nowhere'}: run directory not found\n"
