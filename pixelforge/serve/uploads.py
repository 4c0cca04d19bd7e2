"""Images sent with a job (a sketch, an image to edit, a mask, a colour reference): base64 text in the JSON
body, checked and decoded here with the server's limits before any job is queued.

A field holds a PNG or JPEG file as base64, or as a data: URL (`data:image/png;base64,...`, what a page's
canvas gives). The text is bounded before it is decoded, the bytes after, and the picture's width x height
is read from its header before its pixels are: the decoding itself is data.folder.check_bytes, the checks
data folders and `pixelforge edit` files pass (truncated, not an image, decompression bomb), with only the
PNG and JPEG decoders tried. An audio clip (`audio`) is a WAV file as base64 or a data:audio/wav URL, bounded
the same way and read by condition.audio.read_wav (RIFF/WAVE, PCM or float samples, not truncated) before a job
is queued.
"""

from __future__ import annotations

import base64
import binascii
import re
from dataclasses import dataclass

from PIL import Image

from ..data.folder import NOT_IMAGE, TOO_LARGE, check_bytes
from .limits import ServerLimits

FORMATS = ("PNG", "JPEG")  # Pillow's names of the decoders an upload may use
FIELDS = ("sketch", "image", "mask", "color_reference")
_DATA_URL = re.compile(r"data:image/(png|jpeg|jpg);base64,", re.IGNORECASE)
_AUDIO_URL = re.compile(r"data:audio/(wav|wave|x-wav|vnd\.wave);base64,", re.IGNORECASE)
_SPACE = re.compile(rb"[ \t\r\n]+")  # base64 tools wrap lines; the alphabet has no white space


class UploadError(ValueError):
    """An upload that cannot be used; `field` names it (sketch, image, mask, color_reference)."""

    def __init__(self, field: str, msg: str):
        super().__init__(msg)
        self.field = field


@dataclass(frozen=True)
class Upload:
    """A decoded upload: the file's bytes (hashed in each image's settings as its file would be, never kept
    in the PNG) and the picture (mode "RGB" or "L")."""

    data: bytes
    image: Image.Image


def base64_length(n_bytes: int) -> int:
    """The length of n_bytes as (padded) base64."""
    return 4 * ((n_bytes + 2) // 3)


def decode_upload(field: str, text: str, limits: ServerLimits) -> Upload:
    """One field's base64 text (or data: URL) -> Upload, or an UploadError naming the field and what is wrong:
    not base64, over max_upload_bytes, over max_upload_pixels, not a PNG or JPEG, truncated or corrupt."""
    data = _upload_bytes(field, text, limits, _DATA_URL, "data:image/png;base64,... or data:image/jpeg;base64,...")
    im, reason = check_bytes(data, max_pixels=limits.max_upload_pixels, formats=FORMATS)
    if im is None:
        if reason == NOT_IMAGE:
            reason += " (send a PNG or JPEG file)"
        elif reason.startswith(TOO_LARGE):
            reason += " (--max-upload-pixels)"
        raise UploadError(field, f"the {field}: {reason}")
    return Upload(data=data, image=im)


def decode_audio_upload(field: str, text: str, limits: ServerLimits) -> bytes:
    """An audio field's base64 text (or data:audio/wav URL) -> the WAV file's bytes, or an UploadError naming the
    field: not base64, over max_upload_bytes, not a RIFF/WAVE file, truncated, no samples, too long."""
    from ..condition.audio import read_wav

    data = _upload_bytes(field, text, limits, _AUDIO_URL, "data:audio/wav;base64,...")
    try:
        read_wav(data, f"the {field}")
    except ValueError as e:
        raise UploadError(field, f"{e} (send a WAV file)") from None
    return data


def _upload_bytes(field: str, text: str, limits: ServerLimits, data_url: re.Pattern, kinds: str) -> bytes:
    """A field's base64 text, or a data: URL data_url matches, -> its bytes, bounded by max_upload_bytes before
    and after decoding; an UploadError naming the field otherwise."""
    if text.startswith("data:"):
        match = data_url.match(text)
        if match is None:
            raise UploadError(field, f"the {field} is a data: URL of another kind than {kinds}")
        text = text[match.end():]
    raw = _SPACE.sub(b"", text.encode("ascii", "replace"))  # a non-ASCII character becomes "?": not base64
    most = limits.max_upload_bytes
    if len(raw) > base64_length(most):  # before decoding: no buffer the size of whatever was sent
        size = len(raw) * 3 // 4 - (len(raw) - len(raw.rstrip(b"=")))  # exact for valid base64
        raise UploadError(field, f"the {field} is about {size} bytes, over this server's limit of "
                          f"{most} bytes (--max-upload-bytes)")
    try:
        data = base64.b64decode(raw, validate=True)
    except binascii.Error as e:
        raise UploadError(field, f"the {field} is not valid base64 ({e})") from None
    if len(data) > most:
        raise UploadError(field, f"the {field} is {len(data)} bytes, over this server's limit of {most} bytes "
                          "(--max-upload-bytes)")
    return data
