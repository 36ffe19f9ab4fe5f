"""The poller: one task that knows every generating job of a run and polls each one.

Polling is the only way to learn that a generation ended and its slot is free, so when each
job is polled decides how busy the slots are and how many status calls a run makes.

Contract:

* `watch()` hands a generating job to the poller and returns when the job's `on_status`
  callback, called with every status reply, returns True (terminal); it raises whatever a
  status call (after the client's own retries) or the callback raised. The callback runs in
  the poller's task the moment the reply arrives: that is where the runner commits the
  terminal state and gives the slot to the next job, with no wake-up in between.
* Every poll is a fresh `client.status` call (a fresh trace id each time; the client's).
* Schedule. The poller learns how long generations take from the ones it saw end (each is
  known to lie between its last "still generating" poll and the poll that saw it end), by
  input length when that predicts them better (a job's `size`: its voice's seconds). With
  fewer than `MIN_SAMPLES` seen, a job is polled every `poll_interval`. After that, its first
  poll comes when the earliest generations have finished (the `FIRST_SHARE` quantile), and
  each next one when another `STEP_SHARE` of those still running would have finished: polls
  come more often where finishing is likely. Between two polls of one job there is never
  more than `poll_interval` (nor less than `MIN_GAP_SHARE` of it), counted from when each
  poll was sent, not when its reply came (a call the overload gate held was sent when it
  left the gate; a retried call's last try, about a round trip before its reply); only the
  first poll may come later than that after the submission, and never later than the
  quantile says.
* Lanes. Each API key's jobs are watched in a lane of their own (`watch(lane=...)`): its own
  calls at once, round trips, queue waits and bookings. A key whose overload gate is closed
  holds its own status calls there (inside `status`), never another key's.
* Status calls at once (per lane). Polls due together are sent together, up to a number sized
  to what the interval needs: the most jobs the lane watched at once times a status call's
  round trip over the interval, times `CALLS_HEADROOM`, between `POLLS_AT_ONCE` and
  `POLLS_AT_MOST`; they follow the round trip up and down. The round trip is the median of
  the last `ROUND_TRIPS` calls that did not wait at the overload gate (`gate_waited`: such a
  call measures the overload, its waits and its refused tries), each taken as at most the
  interval: an overload does not grow the calls at once, which the gate would let out
  together when it opens. So 200 generations at 0.3 s a call and a 5 s interval make about
  36 calls at once, not 200. The wait for a free call (as measured) is taken off the next
  gap, with `GAP_MARGIN` of the interval (at least `GAP_MARGIN_SECONDS`) for jitter, so a
  poll that queued still leaves within the interval. Sends are booked per stretch of time
  (`_book`) so that polls the schedule puts at one moment (jobs started together) leave
  spread out, never as one burst that queues: a poll brought forward is put off within its
  interval, a poll due at its interval is brought forward. Past `POLLS_AT_MOST` calls at
  once (some 800 generations at 0.3 s a call and 5 s) the gaps grow instead of the calls.
* A job resumed from an earlier run is polled at once (`poll_now`), and every job is polled
  by its `poll_by` moment (the 10-minute slot rule), whatever the schedule says.
"""

from __future__ import annotations

import bisect
import heapq
import itertools
import math
import statistics
import time
from collections import deque
from collections.abc import Awaitable, Callable, Hashable, Iterable
from dataclasses import dataclass, field

import anyio
import anyio.abc

from pipeline.client import VideoStatus
from pipeline.gate import gate_waited

MIN_SAMPLES = 3  # generations seen to end before the schedule follows them
WINDOW = 200  # the most recent generations the schedule learns from
FIRST_SHARE = 0.1  # the first poll: when this share of generations has ended
STEP_SHARE = 0.3  # each next poll: when this share of those still running would have ended
MIN_GAP_SHARE = 0.1  # of poll_interval: the shortest gap between two polls of one job
POLLS_AT_ONCE = 8  # status calls in flight at once, at least (they are small)
POLLS_AT_MOST = 64  # status calls in flight at once, at most: this bounds a burst
CALLS_HEADROOM = 3.0  # calls at once: this many times what the interval needs on average
GAP_MARGIN = 0.02  # of poll_interval: a later poll leaves this much early, for jitter,
GAP_MARGIN_SECONDS = 0.02  # and at least this (a short interval on a busy machine)
BUCKET_SHARE = 0.02  # of poll_interval: the stretch of time whose sends `_book` counts
ROOM_SHARE = 0.8  # of the sends the calls at once make in a stretch: what `_book` fills
WISH_SHARE = 0.5  # of that room: what polls brought forward by the schedule may take
SMOOTHING = 0.2  # weight of the newest measure in the queue-wait average
ROUND_TRIPS = 32  # the latest status calls whose median is a lane's round trip


@dataclass(eq=False)
class _Lane:
    """One API key's share of the poller: its status calls at once and what sizes them."""

    calls: anyio.CapacityLimiter = field(
        default_factory=lambda: anyio.CapacityLimiter(POLLS_AT_ONCE)
    )
    watched: int = 0  # watches not yet over
    most: int = 0  # the most watched at once
    trips: deque[float] = field(default_factory=lambda: deque(maxlen=ROUND_TRIPS))
    round_trip: float = 0.0  # a status call's seconds, from send to reply: median of `trips`
    queued: float = 0.0  # a later poll's average seconds from due to sent (for a call)
    booked: dict[int, int] = field(default_factory=dict)  # polls per stretch of time (`_book`)
    bookings: int = 0


@dataclass(eq=False)
class _Watch:
    video_id: int
    started: float  # the poller's clock when the generation started
    size: float | None
    on_status: Callable[[VideoStatus], bool]
    lane: _Lane
    learn: bool  # its finish may teach the schedule (watched from its start, in this run)
    poll_by: float | None = None  # the poller's clock: a poll no later than this
    due: float = 0.0
    last_running: float | None = None  # elapsed at the last poll that saw it still running
    polls: int = 0
    done: anyio.Event = field(default_factory=anyio.Event)
    error: BaseException | None = None


@dataclass(frozen=True)
class _Sample:
    low: float  # seconds after the start: still running then (if never seen: see `_poll`)
    high: float  # seen ended by then
    size: float | None


class Poller:
    def __init__(
        self,
        status: Callable[[int], Awaitable[VideoStatus]],
        poll_interval: float,
        *,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[None]] = anyio.sleep,
    ) -> None:
        self._status, self.poll_interval = status, poll_interval
        self._clock, self._sleep = clock, sleep
        self._heap: list[tuple[float, int, _Watch]] = []
        self._order = itertools.count()
        self._samples: deque[_Sample] = deque(maxlen=WINDOW)
        self._by_size: bool | None = None  # the model in use, decided when samples change
        self._decided_at = 0  # samples learned when `_by_size` was last decided
        self._learned = 0  # samples learned in all
        self._cdfs: dict[bool, _Cdf] = {}  # per model, built on first use after a change
        self._built_at = 0  # samples learned when the distributions were last dropped
        self._wake: anyio.CancelScope | None = None
        self._lanes: dict[Hashable, _Lane] = {}
        self.polls = 0  # status calls made (benchmarks read it)
        self.polls_per_job: list[int] = []  # per finished watch, in order (benchmarks read it)

    async def run(self) -> None:
        """Poll what is due, forever (the runner cancels it at the end of the run)."""
        async with anyio.create_task_group() as tg:
            while True:
                now = self._clock()
                while self._heap and self._heap[0][0] <= now:
                    _, _, watch = heapq.heappop(self._heap)
                    if not watch.done.is_set():
                        tg.start_soon(self._poll, watch)
                wait = self._heap[0][0] - now if self._heap else 3600.0
                with anyio.CancelScope() as self._wake:
                    await self._sleep(wait)
                self._wake = None

    async def watch(
        self,
        video_id: int,
        on_status: Callable[[VideoStatus], bool],
        *,
        elapsed: float = 0.0,
        size: float | None = None,
        poll_now: bool = False,
        poll_by: float | None = None,
        lane: Hashable = None,
    ) -> None:
        """Until `on_status` says the generation is over; `elapsed`: how long it has run;
        `poll_by`: seconds after its start by which it is polled at least once; `lane`: whose
        status calls these are (an API key's fingerprint): each lane has its own calls."""
        now = self._clock()
        lane_of = self._lanes.get(lane)
        if lane_of is None:
            lane_of = self._lanes[lane] = _Lane()
        watch = _Watch(video_id, now - elapsed, size, on_status, lane_of, learn=not poll_now)
        if poll_by is not None:
            watch.poll_by = watch.started + poll_by
        first = now if poll_now else self._next_poll(watch, now)
        # counted, not moved: may be late
        self._schedule(watch, self._book(lane_of, first, first, first))
        lane_of.watched += 1
        self._size_calls(lane_of)
        try:
            await watch.done.wait()
        finally:
            watch.done.set()  # cancelled: the poller drops it
            lane_of.watched -= 1
        if watch.error is not None:
            raise watch.error

    def size_predicts(self) -> bool:
        """Whether generation times seen so far follow the jobs' input length. Decided again
        after every new sample while few are known, then after each tenth more (the answer
        moves slowly, and deciding reads every sample)."""
        count = len(self._samples)
        if count < MIN_SAMPLES:
            return False
        if self._by_size is None or self._learned - self._decided_at >= max(1, count // 10):
            self._by_size = _size_predicts(self._samples)
            self._decided_at = self._learned
        return self._by_size

    # polling --------------------------------------------------------------------------------

    async def _poll(self, watch: _Watch) -> None:
        lane = watch.lane
        async with lane.calls:
            asked = self._clock()
            if watch.polls:  # a first poll may queue behind a burst of them: not a gap
                lane.queued += SMOOTHING * (max(0.0, asked - watch.due) - lane.queued)
            try:
                waited = gate_waited()  # this task's (each poll has its own)
                status = await self._status(watch.video_id)
                replied, gated = self._clock(), gate_waited() - waited
                if not gated:  # one that waited at the gate measured an overload
                    lane.trips.append(min(replied - asked, self.poll_interval))
                    lane.round_trip = statistics.median(lane.trips)
                    self._size_calls(lane)
                watch.polls += 1
                self.polls += 1
                ended = watch.on_status(status)
            except Exception as exc:  # noqa: BLE001 - re-raised in the job's own task
                # the job's own task decides what the error means; the poller polls on
                watch.error = exc
                watch.done.set()
                return
        if watch.done.is_set():
            return  # its task was cancelled meanwhile
        if ended:
            if watch.learn:
                high = self._clock() - watch.started
                # never seen running: it ended before its first poll, which came when few were
                # expected to have ended; taking it as "anywhere since the start" would drag
                # every later first poll early, so it counts as one gap wide, like the others
                low = watch.last_running
                low = max(0.0, high - self.poll_interval) if low is None else min(low, high)
                self._learn(_Sample(low, high, watch.size))
            self.polls_per_job.append(watch.polls)
            watch.done.set()
            return
        # counted from the send (the last one: a call the gate held left it `gated` later),
        # less what a poll waits for a free call and a margin for the loop's and the network's
        # jitter: the gap the server sees between two polls stays within the interval however
        # long the replies take
        sent = asked + gated
        watch.last_running = sent - watch.started
        due = self._next_poll(watch, sent)
        lead = min(
            max(GAP_MARGIN * self.poll_interval, GAP_MARGIN_SECONDS) + lane.queued,
            MIN_GAP_SHARE * self.poll_interval,
        )
        # a call retried (in the retrier's backoff, or refused after the gate) sent its last try
        # about a round trip before its reply: the next poll not sooner than the shortest gap
        # after that, even where the interval counted from the first try is already over
        earliest = max(sent, replied - lane.round_trip) + MIN_GAP_SHARE * self.poll_interval
        deadline = max(sent + self.poll_interval - lead, earliest)
        self._schedule(
            watch, self._book(lane, min(max(earliest, due - lead), deadline), earliest, deadline)
        )

    def _book(self, lane: _Lane, target: float, earliest: float, deadline: float) -> float:
        """When to send a poll the schedule wants at `target`, with the calls at once in mind:
        they send `calls / round trip` polls a second, so each stretch of `BUCKET_SHARE` of
        the interval takes that many (`ROOM_SHARE` of it, for jitter). Jobs started together
        get the same moments from the schedule; sent as they come, their polls would leave in
        one burst and the last of them queue past their interval.

        A poll the schedule brings forward (`target` before `deadline`, the latest send that
        keeps the gap) is a wish: it takes only `WISH_SHARE` of a stretch, and a full one puts
        it later, up to the deadline. A poll at its deadline must leave: a full stretch puts it
        in the latest earlier one with room, not before `earliest`. All full: `target` (an
        overload: the gaps grow)."""
        width = BUCKET_SHARE * self.poll_interval
        room = ROOM_SHARE * width * lane.calls.total_tokens / max(lane.round_trip, 1e-3)
        wish, must = max(1.0, WISH_SHARE * room), max(1.0, room)  # each stretch takes one
        booked = lane.booked
        wanted, last = math.floor(target / width), math.floor(deadline / width)
        later = (b for b in range(wanted, last) if booked.get(b, 0) + 1 <= wish)
        chosen = next(later, None)
        if chosen is None:
            first = math.floor(earliest / width)
            sooner = (b for b in range(last, first - 1, -1) if booked.get(b, 0) + 1 <= must)
            chosen = next(sooner, last)
        booked[chosen] = booked.get(chosen, 0) + 1
        lane.bookings += 1
        if lane.bookings % 1024 == 0:  # stretches past are done with
            past = math.floor(self._clock() / width) - 1
            lane.booked = {b: n for b, n in booked.items() if b >= past}
        if chosen == wanted:
            return target
        if chosen == last:
            return deadline
        return min(deadline, max(earliest, (chosen + 0.5) * width))

    def _size_calls(self, lane: _Lane) -> None:
        """Calls at once: what polling the most jobs the lane watched at once, once an
        interval, needs at its round trip, with room. For the most watched, not those watched
        now: polls come in clusters (jobs started together stay together), and a cluster
        still due as its jobs end would queue behind fewer calls. They follow the round trip
        down again: a few slow calls (a retried one, a cold connection) as a lane starts must
        not leave it more calls than it needs for the rest of the run, all of which its
        overload gate would let out together."""
        lane.most = max(lane.most, lane.watched)
        needed = CALLS_HEADROOM * lane.most * lane.round_trip / self.poll_interval
        calls = min(POLLS_AT_MOST, max(POLLS_AT_ONCE, math.ceil(needed)))
        if calls != lane.calls.total_tokens:
            lane.calls.total_tokens = calls

    def _schedule(self, watch: _Watch, due: float) -> None:
        if watch.poll_by is not None and self._clock() < watch.poll_by < due:
            due = watch.poll_by
        watch.due = due
        heapq.heappush(self._heap, (due, next(self._order), watch))
        if self._wake is not None and self._heap[0][2] is watch:
            self._wake.cancel()  # sooner than what the poller sleeps for

    # the schedule ---------------------------------------------------------------------------

    def _next_poll(self, watch: _Watch, now: float) -> float:
        interval = self.poll_interval
        elapsed = now - watch.started
        polled = watch.polls > 0
        model = self._model(watch.size)
        if model is None:
            return now + interval
        cdf, scale = model
        if scale == 1.0:
            ended_by = cdf.share
        else:

            def ended_by(t: float) -> float:
                return cdf.share(t / scale)

        if not polled:
            target = FIRST_SHARE
            earliest, latest = elapsed, cdf.highest * scale
        else:
            done = ended_by(elapsed)
            if done >= 0.999:
                return now + interval  # slower than every one seen: the plain beat
            target = done + STEP_SHARE * (1.0 - done)
            earliest, latest = elapsed + MIN_GAP_SHARE * interval, elapsed + interval
        if latest <= earliest or ended_by(earliest) >= target:
            return watch.started + max(earliest, elapsed)
        if ended_by(latest) < target:
            return watch.started + latest
        for _ in range(30):  # bisection: the first moment `target` of them would have ended
            middle = (earliest + latest) / 2
            if ended_by(middle) >= target:
                latest = middle
            else:
                earliest = middle
        return watch.started + latest

    def _learn(self, sample: _Sample) -> None:
        self._samples.append(sample)
        self._learned += 1
        # built again after every new sample while few are known, then after each tenth more
        if self._learned - self._built_at >= max(1, len(self._samples) // 10):
            self._cdfs.clear()

    def _model(self, size: float | None) -> tuple[_Cdf, float] | None:
        """Where generations like this one end: the distribution, and the factor its times
        are multiplied by (by size: seconds per input second, times this job's seconds);
        None: too few seen yet."""
        samples = self._samples
        if len(samples) < MIN_SAMPLES:
            return None
        by_size = bool(self.size_predicts() and size)
        cdf = self._cdfs.get(by_size)
        if cdf is None:
            self._built_at = self._learned
            if by_size:
                cdf = _Cdf([(s.low / s.size, s.high / s.size) for s in samples if s.size])
            else:
                cdf = _Cdf([(s.low, s.high) for s in samples])
            self._cdfs[by_size] = cdf
        return cdf, (size or 1.0) if by_size else 1.0


class _Cdf:
    """The share of generations ended by t, each spread evenly over its (low, high]
    interval; built once per change of the samples, each `share` in O(log n) (the poller asks
    it some thirty times per poll it schedules).

    share(t) = #{high <= t} + sum over {low < t < high} of (t - low) / (high - low), and the
    intervals with low < t < high are those with low < t less those with high <= t (every
    one of which has low < t), so prefix sums over both orders give it."""

    def __init__(self, intervals: list[tuple[float, float]]) -> None:
        self.count = len(intervals)
        # a point (low == high) is a step at high: a width too small to count elsewhere
        spans = [(low, max(high, low + 1e-6 * max(1.0, abs(low)))) for low, high in intervals]
        self.highest = max(high for _, high in spans)
        by_low = sorted(spans)
        by_high = sorted(spans, key=lambda span: span[1])
        self._lows = [low for low, _ in by_low]
        self._highs = [high for _, high in by_high]
        self._low_w = _prefix(1.0 / (high - low) for low, high in by_low)
        self._low_lw = _prefix(low / (high - low) for low, high in by_low)
        self._high_w = _prefix(1.0 / (high - low) for low, high in by_high)
        self._high_lw = _prefix(low / (high - low) for low, high in by_high)

    def share(self, t: float) -> float:
        started = bisect.bisect_left(self._lows, t)  # low < t
        ended = bisect.bisect_right(self._highs, t)  # high <= t
        weights = self._low_w[started] - self._high_w[ended]
        offsets = self._low_lw[started] - self._high_lw[ended]
        partial = max(0.0, t * weights - offsets)
        return min(1.0, (ended + partial) / self.count)


def _prefix(values: Iterable[float]) -> list[float]:
    return [0.0, *itertools.accumulate(values)]


def _size_predicts(samples: deque[_Sample]) -> bool:
    """Whether seconds-per-input-second vary clearly less than seconds do."""
    sized = [s for s in samples if s.size]
    if len(sized) < max(MIN_SAMPLES, len(samples) // 2):
        return False
    seconds = [(s.low + s.high) / 2 for s in sized]
    rates = [m / s.size for m, s in zip(seconds, sized, strict=True) if s.size]
    return _spread(rates) < 0.7 * _spread(seconds)


def _spread(values: list[float]) -> float:
    mean = statistics.fmean(values)
    return math.inf if mean <= 0 else statistics.pstdev(values) / mean
