"""Bytes to an RGB image, refusing what should not be decoded before decoding it.

The type is sniffed from magic bytes (the client's Content-Type is not trusted), the size is read from
the header and capped before any pixel is allocated (decompression bombs), truncated JPEGs are refused
rather than half-decoded, and EXIF orientation is applied so a phone photo comes out upright. Pillow only
reads headers here (its own bomb limit stays in force); OpenCV decodes the pixels.
"""

from __future__ import annotations

import io
import warnings
from dataclasses import dataclass

import cv2
import numpy as np
from PIL import Image, UnidentifiedImageError

from service.errors import ImageTooLargeError, InvalidImageError, UnsupportedMediaTypeError

__all__ = [
    "SUPPORTED_TYPES",
    "ImageHeader",
    "decode_image",
    "decode_pixels",
    "jpeg_has_end",
    "read_header",
    "sniff_type",
]

SUPPORTED_TYPES = ("image/jpeg", "image/png", "image/webp", "image/bmp")
_PIL_FORMATS = {"image/jpeg": "JPEG", "image/png": "PNG", "image/webp": "WEBP", "image/bmp": "BMP"}


def sniff_type(data: bytes) -> str:
    """The image type from its magic bytes."""
    if data.startswith(b"\xff\xd8\xff"):
        return "image/jpeg"
    if data.startswith(b"\x89PNG\r\n\x1a\n"):
        return "image/png"
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "image/webp"
    if data.startswith(b"BM"):
        return "image/bmp"
    raise UnsupportedMediaTypeError("not a JPEG, PNG, WebP or BMP image (checked from the file's bytes)")


def _header_size(data: bytes, kind: str) -> tuple[int, int]:
    name = kind.split("/")[1].upper()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # our cap is checked next
            with Image.open(io.BytesIO(data), formats=[_PIL_FORMATS[kind]]) as im:
                return im.size
    except Image.DecompressionBombError:
        raise ImageTooLargeError(f"the {name} header claims more pixels than any image this service decodes") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError):
        # Pillow's messages name its file object (a repr with an address): say what went wrong instead.
        raise InvalidImageError(f"corrupt {name} header: its size cannot be read") from None


@dataclass(frozen=True)
class ImageHeader:
    """What an image's header says, read before any pixel is decoded."""

    kind: str  # MIME type sniffed from the bytes
    width: int
    height: int

    @property
    def pixels(self) -> int:
        return self.width * self.height


def read_header(data: bytes, max_pixels: int, min_side: int = 1, max_aspect: float = 8.0) -> ImageHeader:
    """Type and size from the header, refusing what should not be decoded.

    The aspect ratio is capped because the network input keeps the short side fixed: a 1x10000 strip would
    need a 512x5 million canvas.
    """
    if not data:
        raise InvalidImageError("empty image")
    kind = sniff_type(data)
    width, height = _header_size(data, kind)
    if width * height > max_pixels:
        raise ImageTooLargeError(f"image is {width}x{height} = {width * height} pixels; the limit is {max_pixels}")
    if min(width, height) < min_side:
        raise InvalidImageError(f"image is {width}x{height}; both sides must be at least {min_side} pixels")
    if max(width, height) > max_aspect * min(width, height):
        raise InvalidImageError(
            f"image is {width}x{height}; the long side may be at most {max_aspect:g}x the short one"
        )
    if kind == "image/jpeg" and not jpeg_has_end(data):
        raise InvalidImageError("truncated JPEG: no end-of-image marker after its image data")
    return ImageHeader(kind, width, height)


_STANDALONE_MARKERS = frozenset({0x01, *range(0xD0, 0xD8)})  # TEM and RST0-7 carry no length


def jpeg_has_end(data: bytes) -> bool:
    """The JPEG's end-of-image marker follows its first scan: it is complete, whatever comes after it.

    Phones and editors append data after the end marker (trailers, a motion photo's video), so the end of
    the file proves nothing. The segments before the first scan are walked by their lengths (an EXIF
    thumbnail inside APP1 has an end marker of its own); inside scan data the byte pair FF D9 can only be
    the end marker, since JPEG stuffs every other FF with 00.
    """
    pos, size = 2, len(data)
    while pos + 4 <= size:
        if data[pos] != 0xFF:
            return False
        marker = data[pos + 1]
        if marker == 0xFF:  # fill byte before a marker
            pos += 1
            continue
        if marker in _STANDALONE_MARKERS:
            pos += 2
            continue
        if marker == 0xD9:  # an end before any scan: no image data
            return False
        length = int.from_bytes(data[pos + 2 : pos + 4], "big")
        if length < 2:
            return False
        if marker == 0xDA:  # start of scan: the image data runs to the end marker
            return data.find(b"\xff\xd9", pos + 2 + length) >= 0
        pos += 2 + length
    return False


def decode_pixels(data: bytes, header: ImageHeader) -> np.ndarray:
    """Decode bytes whose header passed :func:`read_header` to an upright HWC uint8 RGB array.

    Grayscale, palette, RGBA and 16-bit images become 8-bit RGB (alpha dropped).
    """
    image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)  # applies EXIF orientation
    if image is None or image.size == 0:
        raise InvalidImageError(f"cannot decode the {header.kind.split('/')[1].upper()} data (corrupt or truncated)")
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)


def decode_image(data: bytes, max_pixels: int, min_side: int = 1, max_aspect: float = 8.0) -> np.ndarray:
    """:func:`read_header` then :func:`decode_pixels`."""
    return decode_pixels(data, read_header(data, max_pixels, min_side, max_aspect))
