"""Posting a job to a test client of the server and waiting for it: shared by the server tests."""

from __future__ import annotations

import base64
import io
import time


def run_job(client, body: dict, timeout: float = 120.0) -> dict:
    """POST `body` to /api/v1/jobs, poll until the job ends, and return it; fails unless it is done."""
    r = client.post("/api/v1/jobs", json=body)
    assert r.status_code == 202, r.json()
    deadline = time.monotonic() + timeout
    job = None
    while time.monotonic() < deadline:
        job = client.get(r.json()["url"]).json()
        if job["status"] in ("done", "failed", "cancelled"):
            assert job["status"] == "done", job
            return job
        time.sleep(0.05)
    raise AssertionError(f"job never finished: {job}")


def chunk_bytes(png_data: bytes, kind: bytes) -> int:
    """The bytes a PNG's chunks of one type take (length, type, data and CRC); b"caBX" is the C2PA manifest."""
    total, i = 0, 8
    while i < len(png_data):
        n = int.from_bytes(png_data[i:i + 4], "big")
        total += 12 + n if png_data[i + 4:i + 8] == kind else 0
        i += 12 + n
    return total


def b64(data: bytes) -> str:
    """A file's bytes as the base64 text a job's upload field takes."""
    return base64.b64encode(data).decode()


def encoded(im, fmt: str = "PNG") -> bytes:
    """A PIL image as the bytes of a file of that format."""
    buf = io.BytesIO()
    im.save(buf, fmt)
    return buf.getvalue()
