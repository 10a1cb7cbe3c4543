"""The test suite's loopback fakes, with what a benchmark needs on top: latency and timestamps.

`TimedTelegram` is `tests.fakes.telegram_server.FakeTelegram` (flood limits and all) that holds every request
for half the configured round trip before handling it and half after, like a Bot API server across the
internet, and records each exchange as the bot saw it. `PhotoMaker` makes distinct 1280x960 camera-like JPEGs.
"""

from __future__ import annotations

import asyncio
import io
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from aiohttp import web
from PIL import Image, ImageDraw

from tests.fakes.telegram_server import FakeTelegram

Json = dict[str, Any]
CLIENT_GONE = 499  # nginx's code for a request the client abandoned before it was answered


@dataclass(slots=True)
class Exchange:
    """One request to the fake Telegram: a Bot API method, or "download" for a file."""

    method: str
    params: Json
    status: int
    result: Any
    sent: float  # the request arrived (the bot had just written it), time.monotonic()
    answered: float  # the response left, after the whole simulated round trip


class TimedTelegram(FakeTelegram):
    """FakeTelegram with a round-trip delay and a record of when each update reached the bot."""

    def __init__(self, *, rtt: float = 0.0, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.rtt = rtt
        self.exchanges: list[Exchange] = []
        self.delivered: dict[int, float] = {}  # update_id -> when the getUpdates answer carrying it left
        self.observers: list[Callable[[Exchange], None]] = []
        self.polling_started = False  # a getUpdates request arrived: the bot finished starting up

    async def _half_trip(self) -> None:
        if self.rtt > 0:
            await asyncio.sleep(self.rtt / 2)

    async def _handle_api(self, request: web.Request) -> web.Response:
        sent = time.monotonic()
        if request.match_info["method"].lower() == "getupdates":
            self.polling_started = True
        await self._half_trip()
        try:
            response = await super()._handle_api(request)
        except ConnectionResetError:  # the bot gave up on the request (a cancelled typing action, say)
            method = request.match_info["method"]
            self._record(Exchange(method, {}, CLIENT_GONE, None, sent, time.monotonic()))
            return web.Response(status=CLIENT_GONE)
        call = self.calls[-1]  # appended by the base handler right before it returned, with no await between
        await self._half_trip()
        result = call.response.get("result") if call.status == 200 else None
        exchange = Exchange(call.method, call.params, call.status, result, sent, time.monotonic())
        if call.method == "getUpdates" and isinstance(result, list):
            for update in result:
                self.delivered.setdefault(update["update_id"], exchange.answered)
        self._record(exchange)
        return response

    async def _handle_file(self, request: web.Request) -> web.Response:
        sent = time.monotonic()
        await self._half_trip()
        response = await super()._handle_file(request)
        await self._half_trip()
        params = {"file_path": request.match_info["file_path"]}
        self._record(Exchange("download", params, response.status, None, sent, time.monotonic()))
        return response

    def _record(self, exchange: Exchange) -> None:
        self.exchanges.append(exchange)
        for observer in self.observers:
            observer(exchange)


class PhotoMaker:
    """Distinct 1280x960 JPEGs with photo-like entropy (gradients, sensor noise, shapes, text), ~300 KB each.

    Every photo differs in content, so nothing can be served from a cache of prepared images.
    """

    def __init__(self, width: int = 1280, height: int = 960, quality: int = 87) -> None:
        self.size = (width, height)
        self.quality = quality
        gradient = Image.linear_gradient("L")
        base = Image.merge("RGB", (gradient.resize(self.size), gradient.rotate(90).resize(self.size),
                                   Image.effect_noise(self.size, 40)))
        self._base = Image.blend(base, Image.effect_noise(self.size, 30).convert("RGB"), 0.2)

    def photo(self, seed: int) -> bytes:
        rnd = random.Random(seed)
        width, height = self.size
        image = self._base.copy()
        draw = ImageDraw.Draw(image)
        for _ in range(12):
            x, y = rnd.randrange(width), rnd.randrange(height)
            colour = (rnd.randrange(256), rnd.randrange(256), rnd.randrange(256))
            draw.ellipse([x, y, x + rnd.randrange(40, 400), y + rnd.randrange(40, 300)], fill=colour)
        draw.text((rnd.randrange(width - 240), rnd.randrange(height - 60)), f"photo {seed}", fill=(255, 255, 255),
                  font_size=48)
        out = io.BytesIO()
        image.save(out, format="JPEG", quality=self.quality)
        return out.getvalue()
