"""The page's view of the evidence store: the latest anomalous frames as thumbnails that open full size with
their masks (routes ``/api/evidence`` and ``/evidence/<id>/thumb.jpg|image.jpg|mask.png``).

Faces do not import the store (edge.stores is on the same floor): the daemon hands in an
:class:`EvidenceReader` (edge.service.web_evidence) that reads the store's index read-only. Every route is
behind the same login as the rest of the page. Files are only ever named by the reader, never by the request;
thumbnails are made on first request and kept (a stored frame never changes).
"""

from __future__ import annotations

import collections
import datetime
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Protocol

import cv2
import numpy as np
from aiohttp import web

from edge.faces.web.live import JPEG_QUALITY, overlay_png

LIMIT = 12  # thumbnails on the page
THUMB_WIDTH = 160
THUMBS_KEPT = 64
TINT_BGR = (0, 0, 255)


@dataclass(frozen=True)
class EvidenceEntry:
    """One anomalous frame kept by the evidence store; ``image`` and ``mask`` are checked paths inside it."""

    id: int
    camera: str
    ts: float
    score: float
    threshold: float
    frame_id: int
    width: int
    height: int
    image: Path
    mask: Optional[Path]

    def to_json(self) -> Dict[str, Any]:
        base = f"/evidence/{self.id}"
        when = datetime.datetime.fromtimestamp(self.ts, datetime.timezone.utc).isoformat(timespec="seconds")
        return {
            "id": self.id, "camera": self.camera, "ts": self.ts, "time": when.replace("+00:00", "Z"),
            "score": self.score, "threshold": self.threshold, "frame_id": self.frame_id,
            "width": self.width, "height": self.height, "boxes": [],
            "thumb": base + "/thumb.jpg", "image": base + "/image.jpg",
            "mask": base + "/mask.png" if self.mask is not None else None,
        }  # fmt: skip


class EvidenceReader(Protocol):
    """What the page needs from the evidence store."""

    def latest(self, limit: int) -> List[EvidenceEntry]:
        """The newest anomalous frames, newest first ([] when the store holds none yet)."""

    def entry(self, item_id: int) -> Optional[EvidenceEntry]:
        """One frame of the last listing, or None."""


class EvidencePages:
    """The routes, over ``reader`` (None: the store is off, and the page hides the section)."""

    def __init__(self, reader: Optional[EvidenceReader]) -> None:
        self.reader = reader
        self._thumbs: collections.OrderedDict[int, bytes] = collections.OrderedDict()

    def add_routes(self, app: web.Application) -> None:
        app.router.add_get("/api/evidence", self.listing)
        app.router.add_get("/evidence/{id:\\d+}/thumb.jpg", self.thumb)
        app.router.add_get("/evidence/{id:\\d+}/image.jpg", self.image)
        app.router.add_get("/evidence/{id:\\d+}/mask.png", self.mask)

    async def listing(self, request: web.Request) -> web.StreamResponse:
        items = [] if self.reader is None else [e.to_json() for e in self.reader.latest(LIMIT)]
        return web.json_response(
            {"enabled": self.reader is not None, "items": items}, headers={"Cache-Control": "no-store"}
        )

    def _entry(self, request: web.Request) -> Optional[EvidenceEntry]:
        return None if self.reader is None else self.reader.entry(int(request.match_info["id"]))

    async def thumb(self, request: web.Request) -> web.StreamResponse:
        entry = self._entry(request)
        if entry is None:
            return _gone()
        data = self._thumbs.get(entry.id)
        if data is None:
            data = thumbnail(entry)
            if data is None:
                return _gone()
            self._thumbs[entry.id] = data
            while len(self._thumbs) > THUMBS_KEPT:
                self._thumbs.popitem(last=False)
        return _body(data, "image/jpeg")

    async def image(self, request: web.Request) -> web.StreamResponse:
        entry = self._entry(request)
        if entry is None or not entry.image.is_file():
            return _gone()
        return _body(entry.image.read_bytes(), "image/jpeg")

    async def mask(self, request: web.Request) -> web.StreamResponse:
        entry = self._entry(request)
        mask = None if entry is None or entry.mask is None else _read_mask(entry.mask)
        data = None if mask is None or entry is None else overlay_png(mask, (entry.width, entry.height))
        return _gone() if data is None else _body(data, "image/png")


def thumbnail(entry: EvidenceEntry) -> Optional[bytes]:
    """The stored frame THUMB_WIDTH wide with its mask tinted red; None when the files are gone."""
    image = cv2.imread(str(entry.image), cv2.IMREAD_COLOR)
    if image is None:
        return None
    mask = _read_mask(entry.mask) if entry.mask is not None else None
    h, w = image.shape[:2]
    size = (THUMB_WIDTH, max(1, int(round(h * THUMB_WIDTH / w))))
    small = cv2.resize(image, size, interpolation=cv2.INTER_AREA)
    if mask is not None:
        on = cv2.resize(mask, size, interpolation=cv2.INTER_NEAREST) > 0
        small[on] = (0.4 * small[on] + 0.6 * np.array(TINT_BGR)).astype(np.uint8)
    ok, buf = cv2.imencode(".jpg", small, [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY])
    return bytes(buf) if ok else None


def _read_mask(path: Path) -> Optional[np.ndarray]:
    return cv2.imread(str(path), cv2.IMREAD_GRAYSCALE)


def _gone() -> web.Response:
    return web.json_response(
        {"error": "no such evidence frame (evicted, or not among the latest)"},
        status=404,
        headers={"Cache-Control": "no-store"},
    )


def _body(data: bytes, content_type: str) -> web.Response:
    return web.Response(body=data, content_type=content_type, headers={"Cache-Control": "no-store"})
