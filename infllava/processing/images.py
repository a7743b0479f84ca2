"""Images in: open any image source as 8-bit RGB, and the geometry of LLaVA's padding.

`load_image` opens a path / bytes / file object / PIL image into an 8-bit RGB PIL image, with clear errors
(`ImageLoadError`) for unreadable, truncated or oversized files, EXIF orientation applied, and every common
PIL mode (palette, alpha, CMYK, 16-bit, float, 1-bit) mapped to RGB. `expand_to_aspect` / `expand2square`
pad with the mean colour as LLaVA's `expand2square` does.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import os
import stat
import warnings
from collections.abc import Sequence
from typing import Any, Union

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

#: Default pixel budget of `load_image` (width * height), checked from the header before decoding.
DEFAULT_MAX_PIXELS = 100_000_000

ImageInput = Union[str, os.PathLike, bytes, bytearray, Image.Image]

_SIXTEEN_BIT_MODES = ("I;16", "I;16L", "I;16B", "I;16N")
_ALPHA_OR_PALETTE_MODES = ("LA", "La", "PA", "RGBA", "RGBa", "P")


# --------------------------------------------------------------------------------------------
# Image loading
# --------------------------------------------------------------------------------------------


class ImageLoadError(ValueError):
    """An image could not be loaded: unreadable, not an image, truncated, too large, odd mode."""


def _describe_source(src: Any) -> str:
    """Human-readable name of an image source for error messages."""
    if isinstance(src, (str, os.PathLike)):
        return str(src)
    if isinstance(src, (bytes, bytearray)):
        return f"<{len(src)} bytes>"
    if isinstance(src, Image.Image):
        return f"<PIL image {src.mode} {src.size[0]}x{src.size[1]}>"
    if _is_array(src):
        return f"<{type(src).__name__} {tuple(src.shape)}>"
    name = getattr(src, "name", None)
    return str(name) if isinstance(name, str) else f"<{type(src).__name__}>"


def _check_pixels(width: int, height: int, max_pixels: int | None, name: str) -> None:
    if max_pixels is not None and width * height > max_pixels:
        raise ImageLoadError(
            f"cannot load {name}: it is {width}x{height} = {width * height:,} pixels, above the limit "
            f"max_pixels={max_pixels:,}. If the image is trusted, pass a larger `max_pixels` "
            f"(or max_pixels=None to disable the check) to load_image / InfLlavaImageProcessor."
        )


def _bomb_error(name: str, exc: Exception) -> ImageLoadError:
    return ImageLoadError(
        f"cannot load {name}: {exc} This is Pillow's own limit (PIL.Image.MAX_IMAGE_PIXELS = "
        f"{Image.MAX_IMAGE_PIXELS}). If the image is trusted, raise both the `max_pixels` argument "
        f"of load_image / InfLlavaImageProcessor and PIL.Image.MAX_IMAGE_PIXELS."
    )


def _high_bit_depth_to_l(img: Image.Image) -> Image.Image:
    """16-bit ('I;16*', 'I') and float ('F') grayscale -> 8-bit 'L' by scaling, not clipping.

    * 16-bit modes: value / 257, rounded (65535 -> 255, 257*k -> k).
    * 'I' (32-bit signed): interpreted as 16-bit data (what PNG/TIFF 16-bit grayscale holds), scaled
      the same way; values outside [0, 65535] saturate.
    * 'F': Pillow's own convention for float images (the same scale as 'L', 0..255), rounded,
      NaN -> 0, saturated outside [0, 255]. No data-dependent rescaling: equal pixels always give
      equal outputs.
    """
    arr = np.asarray(img)
    if img.mode == "F":
        out = np.nan_to_num(arr.astype(np.float32), nan=0.0, posinf=255.0, neginf=0.0)
        out = np.clip(np.rint(out), 0, 255)
    else:
        # exact integer rounding of x / 257 (x / 257 is never exactly k + 1/2: 257 is odd)
        out = (np.clip(arr, 0, 65535).astype(np.int32) + 128) // 257
    return Image.fromarray(out.astype(np.uint8))


def _to_rgb(img: Image.Image, name: str = "<image>") -> Image.Image:
    """Convert any PIL mode to 8-bit RGB (always a new image)."""
    mode = img.mode
    try:
        if mode == "RGB":
            return img.copy()
        if mode in _SIXTEEN_BIT_MODES or mode in ("I", "F"):
            return _high_bit_depth_to_l(img).convert("RGB")
        if mode in _ALPHA_OR_PALETTE_MODES:
            # Alpha is dropped, not composited: the colour under a transparent pixel is kept, exactly
            # as the official LLaVA loading `Image.open(f).convert('RGB')` does. Going through RGBA
            # first resolves palettes / transparency uniformly (and avoids Pillow's
            # palette-transparency warning). Premultiplied modes (La, RGBa) are un-premultiplied.
            if mode == "La":
                img = img.convert("LA")
            return img.convert("RGBA").convert("RGB")
        return img.convert("RGB")
    except (ValueError, OSError) as exc:
        raise ImageLoadError(f"cannot load {name}: unsupported image mode {mode!r} ({exc})") from exc


def load_image(src: ImageInput | Any, max_pixels: int | None = DEFAULT_MAX_PIXELS) -> Image.Image:
    """Load an image as an 8-bit RGB PIL image.

    Args:
        src: a path (str / os.PathLike) of a regular file, the encoded file as bytes, an open binary file
            object, a PIL image, or an array (numpy or torch; HWC or CHW, uint8, or float in [0, 1]).
        max_pixels: reject images with more than this many pixels (width * height), checked from the
            header before any pixel is decoded; None disables the check (Pillow's own
            `PIL.Image.MAX_IMAGE_PIXELS` decompression-bomb limit still applies).

    Behaviour:
        * the image is fully decoded (`Image.load()`), so a truncated file fails here, not later;
        * the EXIF orientation is applied (`ImageOps.exif_transpose`);
        * modes map to RGB: L / 1 / CMYK / YCbCr via Pillow; P, PA, LA, RGBA drop alpha (no
          compositing, as the official `convert('RGB')`); 16-bit (I;16, I;16B, I) scaled by 1/257;
          F on Pillow's 0..255 scale. Multi-frame files give their first frame.
        * a PIL image input is never modified; a new image is returned.

    Raises:
        ImageLoadError: naming the source and the reason (missing / unreadable file, not an image,
            truncated or corrupt data, too many pixels, unsupported mode).
    """
    name = _describe_source(src)
    if _is_array(src):
        src = _array_to_pil(src, name)
    if isinstance(src, Image.Image):
        img = src
        _check_pixels(img.width, img.height, max_pixels, name)
        try:
            img.load()
        except (OSError, SyntaxError, ValueError) as exc:
            raise ImageLoadError(f"cannot load {name}: decoding failed ({exc})") from exc
        return _finish(img, name)

    if isinstance(src, (bytes, bytearray)):
        fp: Any = io.BytesIO(bytes(src))
    elif isinstance(src, (str, os.PathLike)):
        fp = os.fspath(src)
        try:
            st = os.stat(fp)
        except FileNotFoundError as exc:
            raise ImageLoadError(f"cannot load {name}: file not found") from exc
        except OSError as exc:
            raise ImageLoadError(f"cannot load {name}: {exc.strerror or exc}") from exc
        if stat.S_ISDIR(st.st_mode):
            raise ImageLoadError(f"cannot load {name}: it is a directory")
        if not stat.S_ISREG(st.st_mode):  # a FIFO or a device would block or never end
            raise ImageLoadError(f"cannot load {name}: not a regular file (a pipe, socket or device)")
    elif hasattr(src, "read"):
        fp = src
    else:
        raise TypeError(
            f"load_image expects a path, bytes, a binary file object or a PIL image, got {type(src).__name__}"
        )

    try:
        # Our own `max_pixels` check governs: Pillow's decompression-bomb *warning* zone (above
        # PIL.Image.MAX_IMAGE_PIXELS, below twice that) is silenced when max_pixels allows such sizes.
        pil_limit = Image.MAX_IMAGE_PIXELS
        silence = max_pixels is not None and pil_limit is not None and max_pixels > pil_limit
        with warnings.catch_warnings() if silence else contextlib.nullcontext():
            if silence:
                warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            img = Image.open(fp)
            try:
                _check_pixels(img.width, img.height, max_pixels, name)
                img.load()  # full decode: catches truncation and corrupt data now
                return _finish(img, name)
            finally:
                if fp is not src:  # we opened it (path / bytes); a caller's file object stays open
                    img.close()
    except ImageLoadError:
        raise
    except Image.DecompressionBombError as exc:
        raise _bomb_error(name, exc) from exc
    except FileNotFoundError as exc:
        raise ImageLoadError(f"cannot load {name}: file not found") from exc
    except IsADirectoryError as exc:
        raise ImageLoadError(f"cannot load {name}: it is a directory") from exc
    except PermissionError as exc:
        raise ImageLoadError(f"cannot load {name}: permission denied") from exc
    except UnidentifiedImageError as exc:
        raise ImageLoadError(f"cannot load {name}: not a recognised image file") from exc
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        # Pillow reports truncated / corrupt data as OSError ("image file is truncated", ...).
        raise ImageLoadError(f"cannot load {name}: the file is truncated or corrupt ({exc})") from exc


def _finish(img: Image.Image, name: str) -> Image.Image:
    """Apply the EXIF orientation, then convert to RGB (always returns a new, detached image)."""
    try:
        img = ImageOps.exif_transpose(img)
    except Exception as exc:  # noqa: BLE001 - a broken EXIF block must not make the pixels unusable
        warnings.warn(f"{name}: could not apply the EXIF orientation ({exc}); using the stored orientation")
    return _to_rgb(img, name)


# --------------------------------------------------------------------------------------------
# Geometry
# --------------------------------------------------------------------------------------------


def mean_fill_color(image_mean: Sequence[float]) -> tuple[int, int, int]:
    """Pad colour of LLaVA's expand2square: `int(m * 255)` per channel ((122, 116, 104) for CLIP)."""
    if len(image_mean) != 3:
        raise ValueError(f"image_mean must have 3 values, got {list(image_mean)}")
    return tuple(int(m * 255) for m in image_mean)  # type: ignore[return-value]


def expand_to_aspect(img: Image.Image, aspect: tuple[int, int], fill: Sequence[int]) -> Image.Image:
    """Pad `img` with `fill` to the aspect ratio width:height = aspect[0]:aspect[1], centred.

    Only one side grows: a too-wide image gets rows added (pasted at y = (new_h - h) // 2), a
    too-tall one gets columns (pasted at x = (new_w - w) // 2). The grown side is rounded to the
    nearest pixel. For aspect (1, 1) this is exactly `expand2square`. Returns `img` itself when the
    ratio already matches.
    """
    aw, ah = int(aspect[0]), int(aspect[1])
    if aw < 1 or ah < 1:
        raise ValueError(f"aspect must be two positive integers, got {aspect!r}")
    if img.mode != "RGB":
        img = _to_rgb(img)
    fill = tuple(int(c) for c in fill)
    if len(fill) != 3:
        raise ValueError(f"fill must be an RGB triple, got {fill!r}")
    w, h = img.size
    if w * ah == h * aw:
        return img
    if w * ah > h * aw:  # too wide: add rows
        new_w, new_h = w, (2 * w * ah + aw) // (2 * aw)
        offset = (0, (new_h - h) // 2)
    else:  # too tall: add columns
        new_w, new_h = (2 * h * aw + ah) // (2 * ah), h
        offset = ((new_w - w) // 2, 0)
    out = Image.new("RGB", (new_w, new_h), fill)
    out.paste(img, offset)
    return out


def expand2square(img: Image.Image, fill: Sequence[int]) -> Image.Image:
    """Pad to a square of side max(w, h) with `fill`, centred as LLaVA does.

    w > h: pasted at (0, (w - h) // 2); h > w: pasted at ((h - w) // 2, 0); square: returned as is.
    """
    return expand_to_aspect(img, (1, 1), fill)


def is_single_image(x: Any) -> bool:
    """True for one image source (path, bytes, PIL image, file object, a 2-D or 3-D array), False for a
    sequence of them (a 4-D array is a batch)."""
    if _is_array(x):
        return len(x.shape) in (2, 3)
    return isinstance(x, (str, os.PathLike, bytes, bytearray, Image.Image)) or hasattr(x, "read")


def _is_array(x: Any) -> bool:
    return isinstance(x, np.ndarray) or type(x).__module__.startswith("torch") and hasattr(x, "shape")


def _array_to_pil(arr: Any, name: str) -> Image.Image:
    """An HWC / CHW / HW array (numpy or torch), uint8 or float in [0, 1], as a PIL image."""
    if not isinstance(arr, np.ndarray):
        arr = arr.detach().cpu().numpy()
    if arr.ndim == 3 and arr.shape[0] in (1, 3, 4) and arr.shape[-1] not in (1, 3, 4):
        arr = arr.transpose(1, 2, 0)  # CHW -> HWC
    if arr.ndim == 3 and arr.shape[-1] == 1:
        arr = arr[..., 0]
    if arr.ndim not in (2, 3) or (arr.ndim == 3 and arr.shape[-1] not in (3, 4)) or arr.size == 0:
        raise ImageLoadError(f"cannot load {name}: an image array must be HxW, HxWx3/4 or 3/4xHxW, "
                             f"got shape {tuple(arr.shape)}")
    if arr.dtype != np.uint8:
        if not np.issubdtype(arr.dtype, np.floating) and not np.issubdtype(arr.dtype, np.integer):
            raise ImageLoadError(f"cannot load {name}: unsupported array dtype {arr.dtype}")
        values = arr.astype(np.float64)
        if np.issubdtype(arr.dtype, np.floating):
            values = np.nan_to_num(values, nan=0.0) * 255.0  # floats are in [0, 1]
        arr = np.clip(np.rint(values), 0, 255).astype(np.uint8)
    return Image.fromarray(np.ascontiguousarray(arr))


def image_key(image: Image.Image) -> str:
    """The identity of an image for the caches of visual tokens (serving, lmms-eval): a digest of its size,
    mode and pixels."""
    h = hashlib.blake2b(digest_size=16)
    h.update(f"{image.size}{image.mode}".encode())
    h.update(image.tobytes())
    return h.hexdigest()
