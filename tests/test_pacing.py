"""The bot-wide update scheduler on its own: priorities, fairness, per-chat spacing, bot rate, pauses, cancellation.

Real asyncio time with small intervals; a grant is timed when the waiting caller resumes.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import time
from collections.abc import AsyncIterator

import pytest

from bot.services.pacing import Priority, UpdatePacer
from bot.telegram_limits import SendRate

PRIVATE = 0.2
GROUP = 0.5
BOT_PER_SECOND = 50.0
GAP = 1.0 / BOT_PER_SECOND
# Without bursts: every send one interval after the previous (the burst rules have tests of their own below).
SPACED = {"private": SendRate(PRIVATE), "group": SendRate(GROUP), "bot": SendRate(GAP)}
# How late a resumed caller may notice its grant (one or two loop iterations, with room for a busy machine).
TOLERANCE = 0.006


@pytest.fixture
async def pacer() -> AsyncIterator[UpdatePacer]:
    paced = UpdatePacer(**SPACED)
    yield paced
    await paced.close()


class Recorder:
    """Runs callers as tasks and notes, in grant order, which chat got a turn and when."""

    def __init__(self, pacer: UpdatePacer) -> None:
        self.pacer = pacer
        self.grants: list[tuple[int, float]] = []
        self.tasks: list[asyncio.Task[None]] = []

    def ask(self, chat_id: int, priority: Priority = Priority.PROGRESS) -> asyncio.Task[None]:
        task = asyncio.create_task(self._turn(chat_id, priority))
        self.tasks.append(task)
        return task

    async def _turn(self, chat_id: int, priority: Priority) -> None:
        await self.pacer.wait_turn(chat_id, priority)
        self.grants.append((chat_id, time.monotonic()))

    @property
    def order(self) -> list[int]:
        return [chat for chat, _ in self.grants]

    def times(self, chat_id: int) -> list[float]:
        return [at for chat, at in self.grants if chat == chat_id]

    async def done(self, timeout: float = 5.0) -> None:  # noqa: ASYNC109
        await asyncio.wait_for(asyncio.gather(*self.tasks), timeout)


async def granted_within(pacer: UpdatePacer, chat_id: int, limit: float,
                         priority: Priority = Priority.PROGRESS) -> float:
    """Seconds until `chat_id` got its turn; fails the test when that takes longer than `limit`."""
    started = time.monotonic()
    await asyncio.wait_for(pacer.wait_turn(chat_id, priority), limit)
    return time.monotonic() - started


# --- priorities and fairness ------------------------------------------------------------------------------


async def test_urgent_requests_go_before_progress_ones_waiting_at_the_same_time(pacer: UpdatePacer) -> None:
    await pacer.wait_turn(100, Priority.URGENT)  # the bot-wide gap now holds everyone who asks next
    recorder = Recorder(pacer)
    recorder.ask(5, Priority.PROGRESS)
    recorder.ask(8, Priority.URGENT)
    recorder.ask(3, Priority.PROGRESS)
    recorder.ask(2, Priority.URGENT)
    recorder.ask(9, Priority.PROGRESS)
    await recorder.done()

    assert recorder.order == [8, 2, 5, 3, 9]


async def test_within_a_priority_requests_are_served_in_arrival_order_not_by_chat(pacer: UpdatePacer) -> None:
    await pacer.wait_turn(100, Priority.URGENT)
    recorder = Recorder(pacer)
    for chat in (50, 7, 31, 2, -400, 12):
        recorder.ask(chat, Priority.PROGRESS)
    await recorder.done()

    assert recorder.order == [50, 7, 31, 2, -400, 12]


async def test_busy_chats_take_turns_round_robin(pacer: UpdatePacer) -> None:
    """Ten streams asking again as soon as they are served: each gets one turn per round, none starves."""
    chats = list(range(1, 11))
    order: list[int] = []

    async def stream(chat_id: int) -> None:
        for _ in range(3):
            await pacer.wait_turn(chat_id, Priority.PROGRESS)
            order.append(chat_id)

    await asyncio.wait_for(asyncio.gather(*(stream(chat) for chat in chats)), 10)

    assert order == chats * 3


# --- spacing ---------------------------------------------------------------------------------------------


async def test_a_private_chat_is_served_at_most_once_per_private_interval(pacer: UpdatePacer) -> None:
    recorder = Recorder(pacer)
    for _ in range(3):
        await recorder.ask(1, Priority.URGENT)
    first, second, third = recorder.times(1)

    assert second - first >= PRIVATE - TOLERANCE
    assert third - second >= PRIVATE - TOLERANCE
    assert third - first < 2 * PRIVATE + 0.15  # spaced, not stalled


async def test_a_group_is_served_at_most_once_per_group_interval(pacer: UpdatePacer) -> None:
    recorder = Recorder(pacer)
    await recorder.ask(-100200300, Priority.URGENT)
    await recorder.ask(-100200300, Priority.URGENT)
    first, second = recorder.times(-100200300)

    assert second - first >= GROUP - TOLERANCE
    assert second - first < GROUP + 0.15


async def test_other_chats_are_only_held_by_the_bot_wide_gap(pacer: UpdatePacer) -> None:
    recorder = Recorder(pacer)
    await recorder.ask(1)
    await recorder.ask(-500)
    await recorder.ask(2)
    await recorder.ask(3)
    (_, start), *_, (_, end) = recorder.grants

    assert recorder.order == [1, -500, 2, 3]
    assert end - start < 3 * GAP + 0.08  # far less than one private interval, let alone a group one
    assert end - start < PRIVATE


async def test_a_chat_waiting_for_its_spacing_does_not_block_a_ready_chat_behind_it(pacer: UpdatePacer) -> None:
    recorder = Recorder(pacer)
    await recorder.ask(1, Priority.URGENT)
    recorder.ask(1, Priority.URGENT)  # first in line and urgent, but chat 1 must wait out PRIVATE
    await asyncio.sleep(0)
    recorder.ask(2, Priority.PROGRESS)
    recorder.ask(-300, Priority.PROGRESS)
    await recorder.done()
    first = recorder.grants[0][1]

    assert recorder.order == [1, 2, -300, 1]
    assert recorder.times(2)[0] - first < PRIVATE / 2
    assert recorder.times(-300)[0] - first < PRIVATE / 2
    assert recorder.times(1)[1] - first >= PRIVATE - TOLERANCE


# --- the bot-wide rate -----------------------------------------------------------------------------------


async def test_many_chats_are_served_at_the_bot_wide_rate(pacer: UpdatePacer) -> None:
    count = 25
    recorder = Recorder(pacer)
    for chat in range(1, count + 1):
        recorder.ask(chat, Priority.URGENT)
    await recorder.done()
    times = sorted(at for _, at in recorder.grants)
    gaps = [later - earlier for earlier, later in itertools.pairwise(times)]

    assert sorted(recorder.order) == list(range(1, count + 1))
    assert times[-1] - times[0] >= (count - 1) * GAP - TOLERANCE
    assert times[-1] - times[0] < (count - 1) * GAP + 0.3  # about count / bot_per_second, not stalled
    assert min(gaps) >= GAP - TOLERANCE


# --- cancellation ----------------------------------------------------------------------------------------


async def test_a_caller_cancelled_while_waiting_takes_no_slot(pacer: UpdatePacer) -> None:
    await pacer.wait_turn(1, Priority.URGENT)
    spaced = asyncio.create_task(pacer.wait_turn(1, Priority.URGENT))
    await asyncio.sleep(PRIVATE / 4)
    assert pacer.waiting == 1
    spaced.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await spaced
    assert pacer.waiting == 0

    # Chat 1 is next due when its first turn's spacing ends, not a second interval later.
    started = time.monotonic()
    await asyncio.wait_for(pacer.wait_turn(1), 2.0)
    assert time.monotonic() - started < PRIVATE
    assert await granted_within(pacer, 2, limit=1.0) < PRIVATE


class CancellingClock:
    """A real clock that, the first time the pacer reads it after arming, cancels the armed task.

    The pacer reads the clock right before choosing whom to serve, so the armed caller's future is cancelled
    while its request is still in the queue and ready: the race in which the worker once called
    set_result on a cancelled future and died with InvalidStateError.
    """

    def __init__(self) -> None:
        self.victim: asyncio.Task[None] | None = None
        self.fired = False

    def __call__(self) -> float:
        if self.victim is not None and not self.victim.done():
            self.victim.cancel()
            self.victim = None
            self.fired = True
        return time.monotonic()


async def test_a_caller_cancelled_just_before_its_grant_does_not_break_the_worker() -> None:
    clock = CancellingClock()
    pacer = UpdatePacer(**SPACED,
                        clock=clock)
    try:
        victim = asyncio.create_task(pacer.wait_turn(7, Priority.URGENT))
        clock.victim = victim
        bystander = asyncio.create_task(pacer.wait_turn(8, Priority.PROGRESS))
        await asyncio.wait_for(bystander, 2.0)  # still served: the worker survived

        assert clock.fired
        assert victim.cancelled()
        assert pacer.waiting == 0
        # The cancelled caller took no slot: chat 7 has no spacing to wait out.
        assert await granted_within(pacer, 7, limit=1.0) < PRIVATE / 2
        assert await granted_within(pacer, 9, limit=1.0) < PRIVATE / 2
    finally:
        await pacer.close()


# --- flood waits -----------------------------------------------------------------------------------------


async def test_pause_chat_delays_that_chat_only(pacer: UpdatePacer) -> None:
    await pacer.wait_turn(1, Priority.URGENT)
    paused_at = time.monotonic()
    pacer.pause_chat(1, 0.4)
    recorder = Recorder(pacer)
    recorder.ask(1, Priority.URGENT)
    other = await granted_within(pacer, 2, limit=1.0)
    await recorder.done()

    assert other < 0.1
    assert recorder.times(1)[0] - paused_at >= 0.4 - TOLERANCE
    assert recorder.times(1)[0] - paused_at < 0.4 + 0.15


async def test_pause_on_two_chats_within_a_second_pauses_the_whole_bot(pacer: UpdatePacer) -> None:
    paused_at = time.monotonic()
    pacer.pause_chat(1, 0.4)
    pacer.pause_chat(2, 0.4)

    await granted_within(pacer, 3, limit=2.0)  # chat 3 was never told to wait
    waited = time.monotonic() - paused_at

    assert waited >= 0.4 - TOLERANCE
    assert waited < 0.4 + 0.15


async def test_pauses_on_two_chats_far_apart_are_no_whole_bot_flood() -> None:
    offset = 0.0

    def clock() -> float:
        return time.monotonic() + offset

    pacer = UpdatePacer(**SPACED,
                        clock=clock)
    try:
        pacer.pause_chat(1, 5.0)
        offset = 1.5  # the second flood wait comes 1.5 s later
        pacer.pause_chat(2, 5.0)

        assert await granted_within(pacer, 3, limit=1.0) < 0.1
        blocked = asyncio.create_task(pacer.wait_turn(2))
        await asyncio.sleep(0.2)
        assert not blocked.done()  # chat 2 itself is still paused
        blocked.cancel()
    finally:
        await pacer.close()


async def test_pause_of_the_same_chat_twice_is_no_whole_bot_flood(pacer: UpdatePacer) -> None:
    pacer.pause_chat(1, 2.0)
    pacer.pause_chat(1, 2.0)

    assert await granted_within(pacer, 2, limit=1.0) < 0.1


# --- lifecycle and bounds --------------------------------------------------------------------------------


def _pacer_workers() -> list[asyncio.Task[object]]:
    return [task for task in asyncio.all_tasks() if task.get_name() == "update-pacer" and not task.done()]


async def test_close_stops_the_worker() -> None:
    pacer = UpdatePacer(**SPACED)
    await pacer.wait_turn(1)
    assert len(_pacer_workers()) == 1
    pending = asyncio.create_task(pacer.wait_turn(1))
    await asyncio.sleep(0.05)  # the worker is asleep until chat 1's spacing ends

    await asyncio.wait_for(pacer.close(), 2.0)

    assert _pacer_workers() == []
    await asyncio.sleep(PRIVATE + 0.1)
    assert not pending.done()  # nobody grants turns any more
    pending.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await pending
    assert pacer.waiting == 0


async def test_close_right_after_a_request_arrived_stops_the_worker() -> None:
    pacer = UpdatePacer(private=SendRate(PRIVATE), group=SendRate(GROUP), bot=SendRate(0.5))
    await pacer.wait_turn(1)  # the worker now sleeps out the bot-wide gap
    pending = asyncio.create_task(pacer.wait_turn(2))
    await asyncio.sleep(0)  # the request is queued and has woken the worker
    try:
        await asyncio.wait_for(pacer.close(), 2.0)
        assert _pacer_workers() == []
    finally:
        pending.cancel()
        await asyncio.gather(pending, return_exceptions=True)
        for worker in _pacer_workers():
            worker.cancel()
            await asyncio.gather(worker, return_exceptions=True)


async def test_the_queue_stays_bounded_by_the_number_of_streams(pacer: UpdatePacer) -> None:
    """100 streams, each with at most one request waiting and often giving up on it: no request leaks."""
    streams = 100
    served = 0
    running = True

    async def stream(number: int) -> None:
        nonlocal served
        chat = number % 20 + 1 if number % 2 else -(number % 7 + 1)
        while running:
            try:
                await asyncio.wait_for(pacer.wait_turn(chat, Priority.PROGRESS), 0.03)
            except TimeoutError:
                continue
            served += 1

    tasks = [asyncio.create_task(stream(number)) for number in range(streams)]
    peak = 0
    deadline = time.monotonic() + 0.8
    while time.monotonic() < deadline:
        peak = max(peak, pacer.waiting)
        await asyncio.sleep(0.005)
    running = False
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)

    assert 0 < peak <= streams
    assert served > 0
    assert pacer.waiting == 0


# --- bursts: what Telegram grants a chat for a moment, used for what the user waits for -------------------------

@pytest.fixture
async def bursting() -> AsyncIterator[UpdatePacer]:
    paced = UpdatePacer(private=SendRate(PRIVATE, burst=3), group=SendRate(GROUP, burst=3), bot=SendRate(GAP, burst=3))
    yield paced
    await paced.close()


async def test_urgent_sends_use_the_whole_burst_then_the_interval(bursting: UpdatePacer) -> None:
    for _ in range(3):
        assert await granted_within(bursting, 7, 0.02, Priority.URGENT) < 0.02
    assert await granted_within(bursting, 7, PRIVATE + 0.05, Priority.URGENT) >= PRIVATE - TOLERANCE


async def test_progress_leaves_one_send_of_the_burst_for_the_final_message(bursting: UpdatePacer) -> None:
    assert await granted_within(bursting, 7, 0.02) < 0.02
    assert await granted_within(bursting, 7, 0.02) < 0.02
    progress = asyncio.create_task(bursting.wait_turn(7, Priority.PROGRESS))
    await asyncio.sleep(0.05)
    assert not progress.done()  # the third send of the burst is kept ...
    assert await granted_within(bursting, 7, 0.02, Priority.URGENT) < 0.02  # ... for the final message
    await asyncio.wait_for(progress, 2 * PRIVATE + 0.05)  # when two are back: one for it, one kept


async def test_the_bot_bursts_three_then_keeps_its_rate(bursting: UpdatePacer) -> None:
    recorder = Recorder(bursting)
    for chat in range(1, 11):
        recorder.ask(chat, Priority.URGENT)
    await recorder.done()
    times = [at for _, at in recorder.grants]
    assert times[2] - times[0] < GAP  # the burst
    assert times[-1] - times[0] >= 7 * GAP - TOLERANCE  # then one gap each


async def test_typing_takes_a_free_turn_and_is_dropped_when_anyone_waits(bursting: UpdatePacer) -> None:
    assert await bursting.try_turn(7) is True
    assert await bursting.try_turn(7) is False  # only a full bucket: the first text and final still go at once
    waiting = [asyncio.create_task(bursting.wait_turn(chat, Priority.URGENT)) for chat in range(100, 110)]
    await asyncio.sleep(0)
    assert await bursting.try_turn(8) is False  # under pressure typing goes first
    await asyncio.wait_for(asyncio.gather(*waiting), 1.0)


async def test_a_pause_takes_the_whole_burst(bursting: UpdatePacer) -> None:
    bursting.pause_chat(7, 0.2)
    assert await granted_within(bursting, 7, 0.3, Priority.URGENT) >= 0.2 - TOLERANCE


async def test_a_turn_taken_is_known_only_inside_its_block_and_for_its_chat(bursting: UpdatePacer) -> None:
    assert not bursting.has_turn(7)
    with bursting.turn_taken(7):
        assert bursting.has_turn(7)
        assert not bursting.has_turn(8)
    assert not bursting.has_turn(7)


async def test_a_first_text_keeps_the_last_send_for_the_final_message(bursting: UpdatePacer) -> None:
    """A chat with one send left: the first text waits, so an answer already complete goes as its final at once."""
    assert await granted_within(bursting, 7, 0.02, Priority.URGENT) < 0.02
    assert await granted_within(bursting, 7, 0.02, Priority.URGENT) < 0.02
    first_text = asyncio.create_task(bursting.wait_turn(7, Priority.FIRST))
    await asyncio.sleep(0.05)
    assert not first_text.done()
    assert await granted_within(bursting, 7, 0.02, Priority.URGENT) < 0.02
    first_text.cancel()  # the answer was delivered whole: its first text is no longer wanted, and takes no slot
    await asyncio.gather(first_text, return_exceptions=True)
    assert bursting.waiting == 0


async def test_first_texts_go_before_progress_updates(pacer: UpdatePacer) -> None:
    recorder = Recorder(pacer)
    recorder.ask(1, Priority.PROGRESS)
    recorder.ask(2, Priority.FIRST)
    recorder.ask(3, Priority.URGENT)
    await recorder.done()
    assert recorder.order == [3, 2, 1]
