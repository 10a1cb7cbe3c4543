"""What reading one streamed token costs the bot's event loop, by HTTP client.

    python -m bench.sse_read [--chunks 5000] [--interval 0.0005]

A provider in a child process streams `--chunks` OpenAI-style SSE chunks (one token each, chunked transfer
encoding, `--interval` apart so each arrives in its own read, as with a real provider); this process reads them
and reports its own CPU time per chunk (the server's work is in the other process). Compared: what the bot does
(httpx + httpx-sse + json), httpx bytes with a minimal SSE split, aiohttp's reader, and a bare asyncio
connection (the floor: a loop wake-up and a read per chunk). At 500 answers of
30 tokens/s the loop reads 15 000 chunks a second, so microseconds here are a share of a core there.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import resource
import socket
from collections.abc import AsyncIterator, Awaitable, Callable

import aiohttp
import httpx
from aiohttp import web
from httpx_sse import EventSource

CHUNK = ("data: " + json.dumps({"id": "chatcmpl-1", "object": "chat.completion.chunk", "model": "gpt-4o-mini",
                                "choices": [{"index": 0, "delta": {"content": " word"}, "finish_reason": None}]})
         + "\n\n").encode()


def serve(port: int, chunks: int, interval: float) -> None:
    async def stream(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        for _ in range(chunks):
            await response.write(CHUNK)
            await asyncio.sleep(interval)
        await response.write(b"data: [DONE]\n\n")
        return response

    app = web.Application()
    app.router.add_get("/stream", stream)
    web.run_app(app, host="127.0.0.1", port=port, print=None)


async def with_httpx_sse(url: str) -> int:
    async with httpx.AsyncClient() as client, client.stream("GET", url) as response:
        return await _count(event.data async for event in EventSource(response).aiter_sse())


async def with_httpx_bytes(url: str) -> int:
    async with httpx.AsyncClient() as client, client.stream("GET", url) as response:
        return await _count(_split_events(response.aiter_raw()))


async def with_aiohttp(url: str) -> int:
    async with aiohttp.ClientSession() as session, session.get(url) as response:
        return await _count(line.removeprefix(b"data: ").strip() async for line in response.content
                            if line.startswith(b"data: "))


async def with_asyncio_stream(url: str) -> int:
    """The floor: a bare asyncio connection (no HTTP parsing), still one loop wake-up per chunk."""
    host, port = url.removeprefix("http://").split("/")[0].split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    writer.write(f"GET /stream HTTP/1.1\r\nHost: {host}\r\n\r\n".encode())

    async def reads() -> AsyncIterator[bytes]:
        while data := await reader.read(65536):
            yield data
            if b"[DONE]" in data:
                return

    try:
        # Chunked transfer encoding puts a size line before each event: keep what follows "data: ".
        return await _count(event.partition(b"data: ")[2] async for event in _split_events(reads())
                            if b"data: " in event)
    finally:
        writer.close()


async def _split_events(chunks: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
    pending = b""
    async for chunk in chunks:
        *events, pending = (pending + chunk).split(b"\n\n")
        for event in events:
            yield event.removeprefix(b"data: ")


async def _count(payloads: AsyncIterator[str | bytes]) -> int:
    count = 0
    async for payload in payloads:
        if payload not in ("[DONE]", b"[DONE]"):
            json.loads(payload)
            count += 1
    return count


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


async def measure(name: str, read: Callable[[str], Awaitable[int]], url: str, rounds: int) -> None:
    per_chunk = []
    for _ in range(rounds):
        started = cpu_seconds()
        count = await read(url)
        per_chunk.append((cpu_seconds() - started) / count * 1e6)
    print(f"{name:32s} {min(per_chunk):6.1f} us of CPU per chunk (best of {rounds}, {count} chunks each)")


async def wait_listening(port: int) -> None:
    for _ in range(100):
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.1).close()
        except OSError:
            await asyncio.sleep(0.05)
        else:
            return
    raise RuntimeError("the streaming server did not start")


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--chunks", type=int, default=5000)
    parser.add_argument("--interval", type=float, default=0.0005, help="seconds between chunks")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = multiprocessing.Process(target=serve, args=(port, args.chunks, args.interval), daemon=True)
    server.start()
    try:
        await wait_listening(port)
        url = f"http://127.0.0.1:{port}/stream"
        await measure("httpx + httpx-sse (the bot)", with_httpx_sse, url, args.rounds)
        await measure("httpx, bytes split by hand", with_httpx_bytes, url, args.rounds)
        await measure("aiohttp, line reader", with_aiohttp, url, args.rounds)
        await measure("asyncio stream, no HTTP (floor)", with_asyncio_stream, url, args.rounds)
    finally:
        server.terminate()
        server.join()


if __name__ == "__main__":
    asyncio.run(main())
