"""The Coordinator's two implementations: the same behaviour in-process and in Redis, and Redis shared by replicas.

Redis tests use the real server (`redis_url`), each under its own key prefix (deleted afterwards); two
`RedisCoordinator`s on one prefix stand in for two replicas, and a killed child process for a replica that dies.
"""

from __future__ import annotations

import asyncio
import inspect
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from redis.asyncio import Redis

from bot.coordination import Coordinator, LocalCoordinator
from bot.coordination.redis import RedisCoordinator
from bot.services.pacing import Priority, UpdatePacer
from bot.telegram_limits import SendRate
from tests.redis_keys import delete_keys, unique_prefix

ROOT = Path(__file__).resolve().parent.parent
LEASE = 0.6
Connect = Callable[..., Awaitable[RedisCoordinator]]


@pytest.fixture
def prefix(redis_prefix: str) -> str:
    """A key prefix of this test's own; whatever is left under it is deleted afterwards."""
    return redis_prefix


@pytest.fixture
async def replicas(redis_url: str, prefix: str) -> AsyncIterator[Connect]:
    """`await replicas(**options)`: one more replica on this test's prefix (closed after the test)."""
    made: list[RedisCoordinator] = []

    async def connect(**options: Any) -> RedisCoordinator:
        coordinator = await RedisCoordinator.connect(redis_url, **({"key_prefix": prefix, "lease_seconds": LEASE}
                                                                    | options))
        made.append(coordinator)
        return coordinator

    yield connect
    for coordinator in made:
        await coordinator.close()


@pytest.fixture(params=["local", "redis"])
async def coordinator(request: pytest.FixtureRequest) -> AsyncIterator[Coordinator]:
    """Either implementation; the Redis one on a prefix of its own (the in-process one needs no Redis)."""
    if request.param == "local":
        local = LocalCoordinator()
        yield local
        await local.close()
        return
    redis_url: str = request.getfixturevalue("redis_url")
    prefix = unique_prefix()
    shared = await RedisCoordinator.connect(redis_url, key_prefix=prefix, lease_seconds=LEASE)
    yield shared
    await shared.close()
    await delete_keys(redis_url, prefix)


async def eventually(check: Callable[[], Awaitable[bool] | bool], within: float) -> float:
    """Seconds until `check` held (polled every 20 ms); fails after `within`."""
    started = time.monotonic()
    async with asyncio.timeout(within):
        while True:
            if await _value(check()):
                return time.monotonic() - started
            await asyncio.sleep(0.02)


async def _value(result: Awaitable[bool] | bool) -> bool:
    return await result if inspect.isawaitable(result) else result


async def pass_turn(coordinator: Coordinator, chat_id: int, update_id: int) -> None:
    """Wait for the chat's turn and hand it straight on (as a task: done once the turn came)."""
    async with coordinator.chat_turn(chat_id, update_id):
        pass


async def run_turns(chat_id: int, requests: list[tuple[Coordinator, int]], blocker: Coordinator) -> list[int]:
    """Hold the chat, ask for turns in the order given (50 ms apart), let go; the order they were granted in."""
    granted: list[int] = []
    inside = 0

    async def handle(coordinator: Coordinator, update_id: int) -> None:
        nonlocal inside
        async with coordinator.chat_turn(chat_id, update_id):
            inside += 1
            assert inside == 1, "two holders of one chat's turn"
            granted.append(update_id)
            await asyncio.sleep(0.02)
            inside -= 1

    async with blocker.chat_turn(chat_id, 1):
        tasks = []
        for coordinator, update_id in requests:
            tasks.append(asyncio.create_task(handle(coordinator, update_id)))
            await asyncio.sleep(0.05)
        assert granted == []
    async with asyncio.timeout(5):
        await asyncio.gather(*tasks)
    return granted


# Shared behaviour


async def test_shared_only_in_redis(coordinator: Coordinator) -> None:
    assert coordinator.shared is isinstance(coordinator, RedisCoordinator)


async def test_chat_turns_are_exclusive_and_granted_in_update_order(coordinator: Coordinator) -> None:
    requests: list[tuple[Coordinator, int]] = [(coordinator, update_id) for update_id in (5, 3, 4, 2)]
    assert await run_turns(7, requests, coordinator) == [2, 3, 4, 5]


async def test_other_chats_go_on_while_one_is_held(coordinator: Coordinator) -> None:
    async with coordinator.chat_turn(1, 1), asyncio.timeout(1), coordinator.chat_turn(2, 2):
        pass


async def test_a_waiter_cancelled_before_its_turn_holds_nobody_up(coordinator: Coordinator) -> None:
    async with coordinator.chat_turn(3, 1):
        cancelled = asyncio.create_task(pass_turn(coordinator, 3, 2))
        later = asyncio.create_task(pass_turn(coordinator, 3, 3))
        await asyncio.sleep(0.1)
        cancelled.cancel()
        await asyncio.gather(cancelled, return_exceptions=True)
    async with asyncio.timeout(1):
        await later
        await pass_turn(coordinator, 3, 4)


async def test_album_items_come_back_in_update_order_and_the_album_closes(coordinator: Coordinator) -> None:
    assert await coordinator.album_add("a1", 12, "b") is True
    assert await coordinator.album_add("a1", 11, "a") is False

    async def add_late() -> None:
        await asyncio.sleep(0.1)
        assert await coordinator.album_add("a1", 13, "c") is False

    late = asyncio.create_task(add_late())
    items = await coordinator.album_collect("a1", quiet=0.3, longest=2.0)
    await late
    assert items == [(11, "a"), (12, "b"), (13, "c")]
    assert await coordinator.album_add("a1", 14, "d") is True  # a new album under the same key
    assert await coordinator.album_collect("a1", quiet=0.05, longest=1.0) == [(14, "d")]


async def test_the_opening_update_handled_again_still_collects(coordinator: Coordinator) -> None:
    assert await coordinator.album_add("a2", 1, "x") is True
    assert await coordinator.album_add("a2", 2, "y") is False
    assert await coordinator.album_add("a2", 1, "x") is True
    assert await coordinator.album_collect("a2", quiet=0.05, longest=1.0) == [(1, "x"), (2, "y")]


async def test_album_collection_ends_after_longest(coordinator: Coordinator) -> None:
    assert await coordinator.album_add("a3", 0, "0")

    async def keep_adding() -> None:
        for update_id in range(1, 30):
            await asyncio.sleep(0.1)
            await coordinator.album_add("a3", update_id, str(update_id))

    adding = asyncio.create_task(keep_adding())
    started = time.monotonic()
    items = await coordinator.album_collect("a3", quiet=0.3, longest=0.8)
    assert 0.75 < time.monotonic() - started < 1.2
    assert 6 <= len(items) <= 10
    adding.cancel()
    await asyncio.gather(adding, return_exceptions=True)


async def test_send_slots_space_chats_groups_and_the_bot(replicas: Connect) -> None:
    coordinator = await replicas()
    chats = (42, 42, 42, 42, 43, -100, -100, -100, -100)
    waits = [await coordinator.send_slot(chat_id) for chat_id in chats]
    # a chat's burst goes at the bot's pace (one chat's spacing holds back no other) but for the slack its last send
    # keeps, then one a second; 43 takes the bot's next free moment; a group's sends wait 3.6 s once its burst is spent
    for wait, expected in zip(waits, [0.0, 0.04, 0.25, 1.25, 0.08, 0.12, 0.16, 0.37, 3.97], strict=True):
        assert expected - 0.03 <= wait <= expected + 0.001


async def test_progress_keeps_one_send_of_the_burst_and_typing_never_waits(replicas: Connect) -> None:
    coordinator = await replicas()
    assert await coordinator.send_slot(44, needs=2) == 0
    assert await coordinator.send_slot(44, needs=2, max_wait=0.1) is None  # the next is 0.25 s away: refused
    assert 0 < (await coordinator.send_slot(44) or 0) <= 0.04  # an urgent send goes at once (the bot's gap)
    assert await coordinator.send_slot(44, max_wait=0.1) is None  # nothing reserved when refused ...
    assert 0.2 <= (await coordinator.send_slot(44) or 0) <= 0.25  # ... so the burst's last send is still there


async def test_pause_holds_a_chat_or_the_whole_bot(replicas: Connect) -> None:
    coordinator = await replicas()
    await coordinator.pause(51, 0.5)
    assert 0.47 <= await coordinator.send_slot(51) <= 0.5
    await coordinator.pause(0, 0.7, whole_bot=True)
    assert 0.67 <= await coordinator.send_slot(52) <= 0.7


async def test_rate_slot_is_a_sliding_window_per_user(coordinator: Coordinator) -> None:
    assert await coordinator.rate_slot(8, 2, 0.5) is None
    await asyncio.sleep(0.2)
    assert await coordinator.rate_slot(8, 2, 0.5) is None
    wait = await coordinator.rate_slot(8, 2, 0.5)
    assert wait is not None
    assert 0.25 <= wait <= 0.3  # until the first request leaves the window
    assert await coordinator.rate_slot(9, 2, 0.5) is None
    await asyncio.sleep(wait + 0.02)
    assert await coordinator.rate_slot(8, 2, 0.5) is None
    assert await coordinator.rate_slot(8, 2, 0.5) is not None


async def test_streams_are_announced_and_forgotten(coordinator: Coordinator) -> None:
    await coordinator.announce_stream(5, -100, 7)
    await coordinator.announce_stream(6, 42, None)
    assert await coordinator.stream_owner(5) == (-100, 7)
    assert await coordinator.stream_owner(6) == (42, None)
    await coordinator.forget_stream(5)
    assert await coordinator.stream_owner(5) is None
    assert await coordinator.stream_owner(99) is None


async def test_a_published_stop_reaches_the_listeners(coordinator: Coordinator) -> None:
    heard: list[int] = []
    coordinator.on_stop(heard.append)
    await coordinator.publish_stop(9)
    await eventually(lambda: heard == [9], within=2)


async def test_an_update_is_held_once_until_released(coordinator: Coordinator) -> None:
    assert await coordinator.hold_update(77) is True
    assert await coordinator.hold_update(77) is False
    await coordinator.release_update(77)
    assert await coordinator.hold_update(77) is True
    await coordinator.release_update(78)  # never held: nothing happens


async def test_offered_updates_are_taken_once_oldest_first(coordinator: Coordinator) -> None:
    for update_id in (5, 6, 7):
        await coordinator.offer(update_id)

    assert [await coordinator.take(1.0) for _ in range(3)] == [5, 6, 7]
    started = time.monotonic()
    assert await coordinator.take(0.3) is None
    assert time.monotonic() - started >= 0.25


async def test_offers_from_one_replica_are_shared_by_both(replicas: Connect) -> None:
    one, two = await replicas(), await replicas()
    for update_id in range(1, 11):
        await one.offer(update_id)

    taken = await asyncio.gather(*(replica.take(1.0) for replica in (one, two) * 5))

    assert sorted(taken) == list(range(1, 11))


async def test_the_poll_lease_is_kept_by_its_holder(coordinator: Coordinator) -> None:
    assert await coordinator.poll_lease() is True
    assert await coordinator.poll_lease() is True


async def test_local_chat_turns_leave_nothing_behind() -> None:
    local = LocalCoordinator()
    await run_turns(7, [(local, 3), (local, 2)], local)
    assert local._lines == {}


# Redis replicas


async def test_turns_are_exclusive_across_replicas_and_in_update_order(replicas: Connect, redis_url: str,
                                                                       prefix: str) -> None:
    one, two = await replicas(), await replicas()
    assert await run_turns(7, [(two, 5), (one, 3), (two, 4), (one, 2)], one) == [2, 3, 4, 5]
    client = Redis.from_url(redis_url)
    try:
        assert [key async for key in client.scan_iter(match=f"{prefix}turn:*")] == []
    finally:
        await client.aclose()


async def test_a_held_turn_outlives_its_lease_while_renewed(replicas: Connect) -> None:
    one, two = await replicas(), await replicas()
    async with one.chat_turn(4, 1):
        waiter = asyncio.create_task(pass_turn(two, 4, 2))
        await asyncio.sleep(LEASE * 2.5)
        assert not waiter.done()
    async with asyncio.timeout(1):
        await waiter


async def test_album_items_through_both_replicas_are_collected_by_the_opener(replicas: Connect) -> None:
    one, two = await replicas(), await replicas()
    assert await one.album_add("g", 3, "c") is True
    assert await two.album_add("g", 1, "a") is False
    assert await one.album_add("g", 2, "b") is False
    assert await two.album_add("g", 4, "d") is False
    assert await one.album_collect("g", quiet=0.1, longest=1.0) == [(1, "a"), (2, "b"), (3, "c"), (4, "d")]


async def test_a_private_chat_gets_its_burst_then_one_slot_a_second_across_replicas(replicas: Connect) -> None:
    one, two = await replicas(), await replicas()
    waits = [await replica.send_slot(42) for replica in (one, two, one, two, one)]
    for wait, expected in zip(waits, [0.0, 0.04, 0.25, 1.25, 2.25], strict=True):
        assert expected - 0.05 <= wait <= expected + 0.001


async def test_the_bot_budget_spreads_many_chats_across_replicas(replicas: Connect) -> None:
    one, two = await replicas(), await replicas()
    started = time.monotonic()
    spread = sorted(await asyncio.gather(*(
        (one if chat_id % 2 else two).send_slot(chat_id) for chat_id in range(1000, 1100))))
    elapsed = time.monotonic() - started
    gap = 1 / 25
    for index, wait in enumerate(spread):  # the k-th slot is at least k gaps after the first
        assert wait >= index * gap - elapsed - 0.001
    assert spread[-1] <= 99 * gap + 0.05  # and they are packed, not spread wider


async def test_a_pause_on_one_replica_holds_the_other(replicas: Connect) -> None:
    one, two = await replicas(), await replicas()
    await one.pause(61, 0.5)
    assert 0.45 <= await two.send_slot(61) <= 0.5
    await two.pause(0, 0.7, whole_bot=True)
    assert 0.65 <= await one.send_slot(62) <= 0.7


async def test_rate_slots_count_every_replica(replicas: Connect) -> None:
    one, two = await replicas(), await replicas()
    assert await one.rate_slot(8, 3, 5) is None
    assert await two.rate_slot(8, 3, 5) is None
    assert await one.rate_slot(8, 3, 5) is None
    assert await two.rate_slot(8, 3, 5) is not None


async def test_a_stop_on_one_replica_reaches_both(replicas: Connect) -> None:
    one, two = await replicas(), await replicas()
    heard: list[tuple[str, int]] = []
    one.on_stop(lambda stream_id: heard.append(("one", stream_id)))
    two.on_stop(lambda stream_id: heard.append(("two", stream_id)))
    await one.announce_stream(31, 42, 7)
    assert await two.stream_owner(31) == (42, 7)
    await two.publish_stop(31)
    await eventually(lambda: sorted(heard) == [("one", 31), ("two", 31)], within=2)


async def test_stops_are_heard_again_after_the_subscription_drops(replicas: Connect, redis_url: str,
                                                                  prefix: str) -> None:
    one, two = await replicas(replica_id="one"), await replicas()
    heard: list[int] = []
    one.on_stop(heard.append)
    admin = Redis.from_url(redis_url, decode_responses=True)
    try:
        listening = [client for client in await admin.client_list(_type="pubsub") if client["name"] == f"{prefix}one"]
        assert len(listening) == 1
        await admin.client_kill_filter(_id=listening[0]["id"])
    finally:
        await admin.aclose()

    async def heard_again() -> bool:
        await two.publish_stop(8)
        await asyncio.sleep(0.05)
        return 8 in heard

    await eventually(heard_again, within=3)


async def test_an_update_and_polling_belong_to_one_replica(replicas: Connect) -> None:
    one, two = await replicas(), await replicas()
    assert await one.hold_update(77) is True
    assert await one.poll_lease() is True
    for _ in range(4):  # the update's lease is renewed in the background, polling's by asking again
        await asyncio.sleep(LEASE / 2)
        assert await one.poll_lease() is True
        assert await two.hold_update(77) is False
        assert await two.poll_lease() is False
    await one.release_update(77)
    assert await two.hold_update(77) is True
    assert await eventually(two.poll_lease, within=LEASE + 0.3) > LEASE / 4  # one stopped asking: it lapses
    assert await one.poll_lease() is False


async def test_a_closing_replica_hands_on_at_once(replicas: Connect) -> None:
    one, two = await replicas(), await replicas()
    assert await one.hold_update(5) is True
    assert await one.poll_lease() is True
    await one.close()
    assert await two.hold_update(5) is True
    assert await two.poll_lease() is True


DYING_REPLICA = """
import asyncio, sys
from bot.coordination.redis import RedisCoordinator

async def main(url, prefix, lease):
    replica = await RedisCoordinator.connect(url, key_prefix=prefix, lease_seconds=float(lease))
    held = replica.chat_turn(1, 10)  # referenced: a collected context manager would hand the turn on
    await held.__aenter__()
    waiting = replica.chat_turn(2, 1)
    entering = asyncio.create_task(waiting.__aenter__())  # waits behind the test's update 0
    assert await replica.hold_update(77) and await replica.poll_lease()
    await asyncio.sleep(0.3)
    print("ready", flush=True)
    while await replica.poll_lease():  # as its poller would, before each getUpdates
        await asyncio.sleep(float(lease) / 3)

asyncio.run(main(*sys.argv[1:]))
"""


async def test_a_killed_replica_loses_its_turns_updates_and_polling(replicas: Connect, redis_url: str,
                                                                    prefix: str) -> None:
    one, two = await replicas(), await replicas()
    async with one.chat_turn(2, 0):
        dying = await asyncio.create_subprocess_exec(
            sys.executable, "-c", DYING_REPLICA, redis_url, prefix, str(LEASE),
            cwd=ROOT, stdout=asyncio.subprocess.PIPE)
        try:
            assert dying.stdout is not None
            async with asyncio.timeout(10):
                assert await dying.stdout.readline() == b"ready\n"
            turn = asyncio.create_task(pass_turn(two, 1, 11))
            await asyncio.sleep(LEASE * 1.5)  # alive, it renews: nobody else gets in
            assert not turn.done()
            assert await two.hold_update(77) is False
            assert await two.poll_lease() is False
        finally:
            dying.kill()
            await dying.wait()
    killed = time.monotonic()  # and the test's turn of chat 2 is handed on, to the dead replica's update 1 first
    behind_the_dead = asyncio.create_task(pass_turn(two, 2, 5))
    assert await eventually(two.poll_lease, within=LEASE + 0.5) <= LEASE + 0.3
    assert await eventually(lambda: two.hold_update(77), within=LEASE + 0.5) <= LEASE + 0.3
    async with asyncio.timeout(LEASE + 0.5):
        await asyncio.gather(turn, behind_the_dead)
    assert time.monotonic() - killed <= LEASE + 0.4


async def test_an_urgent_send_on_one_replica_is_not_queued_behind_another_replicas_progress(replicas: Connect) -> None:
    """Progress updates only take shared slots that are free now, so a first text elsewhere finds one at once."""
    bot_rate = SendRate(interval=0.05)
    one, two = await replicas(bot=bot_rate), await replicas(bot=bot_rate)
    busy = UpdatePacer(bot=SendRate(interval=0.01), shared_budget=one)  # as if it were several replicas at once
    other = UpdatePacer(bot=bot_rate, shared_budget=two)
    running = True

    async def stream(chat_id: int) -> None:
        while running:
            await busy.wait_turn(chat_id, Priority.PROGRESS)

    streams = [asyncio.create_task(stream(chat_id)) for chat_id in range(500, 540)]
    try:
        await asyncio.sleep(0.5)  # 40 streams want 40 sends/s of a budget of 20/s
        started = time.monotonic()
        await asyncio.wait_for(other.wait_turn(900, Priority.URGENT), 2.0)
        assert time.monotonic() - started < 0.2  # not after the ~2 s the 40 streams would have booked
    finally:
        running = False
        for task in streams:
            task.cancel()
        await asyncio.gather(*streams, return_exceptions=True)
        await busy.close()
        await other.close()


async def test_a_shared_slot_granted_late_is_booked_again_not_crowded_into_the_next(replicas: Connect) -> None:
    """A stalled event loop would fire a late grant right next to the slot after it; it is booked again instead."""
    bot_rate = SendRate(interval=0.5)
    other = await replicas(bot=bot_rate)
    pacer = UpdatePacer(bot=bot_rate, shared_budget=await replicas(bot=bot_rate))
    try:
        started = time.monotonic()
        assert await other.send_slot(1) == 0  # another replica holds the slots at 0 and 0.5
        assert await other.send_slot(2) == pytest.approx(0.5, abs=0.05)
        turn = asyncio.create_task(pacer.wait_turn(3, Priority.URGENT))  # booked at 1.0
        await asyncio.sleep(0.1)
        time.sleep(1.2)  # noqa: ASYNC251 - the event loop stalls past that slot
        await asyncio.wait_for(turn, 2.0)
        assert time.monotonic() - started >= 1.45  # booked again: the next free slot, a whole gap after 1.0
    finally:
        await pacer.close()
