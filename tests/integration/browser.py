"""Headless Chromium (Debian's `chromium`, installed by scripts/setup) for the
tests that look at rendered pages: a screenshot and the DOM after scripts ran,
each from a fresh profile. The flags keep Chromium off the network (this
machine's closed network refuses its background connections) and out of the
sandbox it cannot set up as root.

png_pixels() decodes the screenshot with zlib only (8-bit RGB/RGBA, the five
PNG filters), so "not blank" is checked on real pixels."""

from __future__ import annotations

import shutil
import struct
import subprocess
import tempfile
import zlib
from collections import Counter
from pathlib import Path
from html.parser import HTMLParser

import pytest

FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--hide-scrollbars"]


def _binary() -> str:
    for name in ("chromium", "chromium-browser"):
        path = shutil.which(name)
        if path:
            return path
    pytest.fail("chromium is not installed: run scripts/setup", pytrace=False)


def chromium(url: str, *, screenshot: Path | None = None, size: str = "900,700",
             budget_ms: int = 0) -> str:
    """Loads url; with `screenshot` writes the PNG there, else returns the
    serialised DOM (--dump-dom). budget_ms: virtual time for scripts and their
    fetches to settle (a single-page app)."""
    with tempfile.TemporaryDirectory(prefix="sd-chromium-") as profile:
        args = [_binary(), *FLAGS, f"--user-data-dir={profile}", f"--window-size={size}"]
        if budget_ms:
            args.append(f"--virtual-time-budget={budget_ms}")
        args += [f"--screenshot={screenshot}"] if screenshot else ["--dump-dom"]
        cp = subprocess.run([*args, url], capture_output=True, text=True, timeout=90,
                            stdin=subprocess.DEVNULL)
    if screenshot:
        assert screenshot.is_file(), f"chromium wrote no screenshot of {url}:\n{cp.stderr[-2000:]}"
        return ""
    assert cp.returncode == 0 and cp.stdout.strip(), f"chromium --dump-dom {url}:\n{cp.stderr[-2000:]}"
    return cp.stdout


def png_pixels(path: Path) -> tuple[int, int, list[bytes]]:
    """(width, height, rows of RGB(A) bytes) of an 8-bit, non-interlaced PNG."""
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", f"{path} is not a PNG"
    pos, idat, head = 8, b"", None
    while pos < len(data):
        n, kind = struct.unpack(">I4s", data[pos:pos + 8])
        body = data[pos + 8:pos + 8 + n]
        if kind == b"IHDR":
            head = struct.unpack(">IIBBBBB", body)
        elif kind == b"IDAT":
            idat += body
        pos += 12 + n
    w, h, depth, ctype, _, _, interlace = head
    assert depth == 8 and ctype in (2, 6) and interlace == 0, f"{path}: unexpected PNG {head}"
    bpp = 4 if ctype == 6 else 3
    raw = zlib.decompress(idat)
    stride = w * bpp
    rows, prev = [], bytearray(stride)
    for y in range(h):
        f = raw[y * (stride + 1)]
        line = bytearray(raw[y * (stride + 1) + 1:(y + 1) * (stride + 1)])
        if f == 1:
            for i in range(bpp, stride):
                line[i] = (line[i] + line[i - bpp]) & 0xFF
        elif f == 2:
            line = bytearray((a + b) & 0xFF for a, b in zip(line, prev))
        elif f == 3:
            for i in range(stride):
                left = line[i - bpp] if i >= bpp else 0
                line[i] = (line[i] + ((left + prev[i]) >> 1)) & 0xFF
        elif f == 4:
            for i in range(stride):
                a = line[i - bpp] if i >= bpp else 0
                b = prev[i]
                c = prev[i - bpp] if i >= bpp else 0
                p = a + b - c
                pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
                pred = a if pa <= pb and pa <= pc else b if pb <= pc else c
                line[i] = (line[i] + pred) & 0xFF
        rows.append(bytes(line))
        prev = line
    if bpp == 4:  # drop alpha: a screenshot is opaque
        rows = [b"".join(r[i:i + 3] for i in range(0, stride, 4)) for r in rows]
    return w, h, rows


def assert_not_blank(path: Path, min_colors: int = 8, min_ink: float = 0.005):
    """The screenshot shows something: several colours, and more than a
    sliver of pixels unlike the background (the most common colour)."""
    w, h, rows = png_pixels(path)
    counts = Counter()
    for r in rows:
        for i in range(0, len(r), 3):
            counts[r[i:i + 3]] += 1
    background, n_bg = counts.most_common(1)[0]
    ink = 1 - n_bg / (w * h)
    assert len(counts) >= min_colors and ink >= min_ink, \
        f"{path} looks blank: {len(counts)} colours, {ink:.2%} not background {background.hex()}"
    return len(counts), ink


class Dom(HTMLParser):
    """Elements by tag (with their attributes) and the visible text of a DOM dump."""

    def __init__(self, html: str):
        super().__init__(convert_charrefs=True)
        self.tags: list[tuple[str, dict]] = []
        self.parts: list[str] = []
        self._skip = 0
        self.feed(html)
        self.text = " ".join(" ".join(self.parts).split())

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))
        if tag in ("script", "style", "title"):
            self._skip += 1

    def handle_endtag(self, tag):
        if tag in ("script", "style", "title") and self._skip:
            self._skip -= 1

    def handle_data(self, data):
        if not self._skip:
            self.parts.append(data)

    def elements(self, tag: str) -> list[dict]:
        return [a for t, a in self.tags if t == tag]
