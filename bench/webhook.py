"""Webhook delivery for the benchmark: the fake Telegram *pushes* each update to the bot.

`tests.fakes.telegram_server.FakeTelegram` serves getUpdates and records `setWebhook`, but does not deliver
anything to a webhook (the tests POST updates themselves, `tests/test_replicas.py`'s `LoadBalancer`). This is
that push for the benchmark: Telegram's side of a webhook plus the load balancer in front of several replicas.
Each update is POSTed as JSON with the `X-Telegram-Bot-Api-Secret-Token` header to the next replica in turn
(round robin); a replica that does not answer 200 has the update sent to the next one, as nginx's
`proxy_next_upstream` does and as Telegram retries. At most `max_connections` requests per replica are open at
once (Telegram's `setWebhook` default is 40).

"Update received" for the overhead figure is the moment the POST is handed to the HTTP client (the body is
serialised before the clock is read), recorded in `delivered` like the polling mode's getUpdates answer.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import time
from dataclasses import dataclass, field
from typing import Any

import aiohttp

from tests.fakes.telegram_server import FakeTelegram

Json = dict[str, Any]
SECRET = "bench-webhook-secret"
SECRET_HEADER = "X-Telegram-Bot-Api-Secret-Token"
PATH = "/bench/hook"
PUBLIC_URL = "https://bench.example.com" + PATH  # what the bot registers with setWebhook; never called
RETRY_PAUSE = 0.1  # before offering a refused update to the next replica


@dataclass
class Delivery:
    update_id: int
    replica: int  # the replica that answered 200 (-1: none did)
    sent: float
    answered: float
    attempts: int
    statuses: list[int] = field(default_factory=list)  # 0: no HTTP answer (connection refused or reset)


class WebhookPusher:
    """POSTs updates to the replicas' webhook URLs, round robin, and records when each left and was answered."""

    def __init__(self, telegram: FakeTelegram, urls: list[str], delivered: dict[int, float], *,
                 max_connections: int = 40, timeout: float = 60.0, max_attempts: int = 10) -> None:
        self.telegram = telegram
        self.urls = urls
        self.delivered = delivered
        self.max_connections = max_connections
        self.timeout = timeout
        self.max_attempts = max_attempts
        self.deliveries: list[Delivery] = []
        self.pushed = 0
        self._turn = itertools.count()
        self._update_ids = itertools.count(1)
        self._session: aiohttp.ClientSession | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        connector = aiohttp.TCPConnector(limit=0, limit_per_host=self.max_connections)
        self._session = aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=self.timeout))

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._session is not None:
            await self._session.close()

    def push(self, update_fields: Json) -> int:
        """Schedules the delivery of a new update (like `FakeTelegram.push_update`); returns its update_id."""
        update_id = next(self._update_ids)
        self.pushed += 1
        self.telegram.know(update_fields)  # the chat and message, for the bot's replies to them
        body = json.dumps({"update_id": update_id, **update_fields}).encode()
        task = asyncio.create_task(self._deliver(update_id, body), name=f"webhook:{update_id}")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return update_id

    async def _deliver(self, update_id: int, body: bytes) -> None:
        if self._session is None:
            raise RuntimeError("WebhookPusher.start() has not been awaited")
        first = next(self._turn)
        headers = {SECRET_HEADER: SECRET, "Content-Type": "application/json"}
        statuses: list[int] = []
        sent = time.monotonic()
        self.delivered.setdefault(update_id, sent)
        for attempt in range(self.max_attempts):
            replica = (first + attempt) % len(self.urls)
            if attempt:
                await asyncio.sleep(RETRY_PAUSE)
            try:
                async with self._session.post(self.urls[replica], data=body, headers=headers) as response:
                    await response.read()
                    statuses.append(response.status)
            except (aiohttp.ClientError, TimeoutError):
                statuses.append(0)
            if statuses[-1] == 200:
                self.deliveries.append(Delivery(update_id, replica, sent, time.monotonic(), attempt + 1, statuses))
                return
        self.deliveries.append(Delivery(update_id, -1, sent, time.monotonic(), self.max_attempts, statuses))

    def summary(self) -> Json:
        """How the deliveries went: answered by whom, how fast the bot answered 200, what was refused."""
        answered = [delivery for delivery in self.deliveries if delivery.replica >= 0]
        per_replica = [sum(delivery.replica == index for delivery in answered) for index in range(len(self.urls))]
        refused = [status for delivery in self.deliveries for status in delivery.statuses if status != 200]
        return {
            "updates_pushed": self.pushed,
            "updates_accepted": len(answered),
            "accepted_per_replica": per_replica,
            "answer_200_ms": sorted(delivery.answered - delivery.sent for delivery in answered),
            "retries": sum(delivery.attempts - 1 for delivery in self.deliveries),
            "refusals_by_status": {str(status): refused.count(status) for status in sorted(set(refused))},
            "undelivered": sum(delivery.replica < 0 for delivery in self.deliveries),
        }
