"""The W1 notification stream (reliability-anchors §0): duplicates, reordering, bursts and
malformed posts mixed into the notifications Withings would send for data as it lands."""

from __future__ import annotations

import asyncio
import random
import time
from dataclasses import dataclass
from typing import Any

from fhir_gateway.withings.sandbox_state import SandboxState
from tests.pipeline.harness import Pipeline, measure_group, notification_form, user_grpid


@dataclass(frozen=True, slots=True)
class PlannedGroup:
    """Data that will land at Withings, in landing order, and its notification."""

    userid: str
    group: dict[str, Any]
    body: str


@dataclass(frozen=True, slots=True)
class Delivery:
    body: str
    landing: int | None  # index of the PlannedGroup that must have landed first; None: malformed


def plan_groups(
    rng: random.Random, sandbox: SandboxState, userids: list[str], total: int
) -> list[PlannedGroup]:
    """`total` groups spread evenly over the users, interleaved in a random landing order."""
    now = int(time.time())
    slots = [userids[i % len(userids)] for i in range(total)]
    rng.shuffle(slots)
    counts: dict[str, int] = {}
    plan: list[PlannedGroup] = []
    for userid in slots:
        counts[userid] = counts.get(userid, 0) + 1
        taken = now - rng.randint(60, 30 * 86_400)
        group, appli = measure_group(rng, user_grpid(sandbox, userid, counts[userid]), taken)
        body = notification_form(userid, appli, taken - 1, taken + 1)
        plan.append(PlannedGroup(userid, group, body))
    return plan


def malformed_body(rng: random.Random, userid: str) -> str:
    start = int(time.time()) - 3600
    return rng.choice(
        [
            f"userid={userid}&appli=1&startdate={start + 10}&enddate={start}",  # start after end
            f"userid={userid}&startdate={start}&enddate={start + 1}",  # no appli
            f"userid={userid}x&appli=1&startdate={start}&enddate={start + 1}",
            f"userid={userid}&appli=1&startdate={start}",  # enddate missing
            f"userid={userid}&userid={userid}&appli=1&startdate={start}&enddate={start + 1}",
            f"userid={userid}&appli=1&date=2024-02-30",
            f"userid={userid}&appli=one&startdate={start}&enddate={start + 1}",
        ]
    )


@dataclass(frozen=True, slots=True)
class StreamShape:
    total: int = 10_000
    duplicates: int = 3_000  # 30 %: the same body again, later
    reordered: int = 2_000  # 20 %: moved up to `displacement` places
    burst_size: int = 10
    bursts: int = 100  # 10 %: runs of one user's notifications back to back
    malformed: int = 500  # 5 %
    displacement: int = 200

    @property
    def unique(self) -> int:
        return self.total - self.duplicates - self.malformed


def build_stream(
    rng: random.Random, plan: list[PlannedGroup], shape: StreamShape
) -> list[Delivery]:
    """Every planned group announced once in landing order, then the noise laid over it."""
    assert len(plan) == shape.unique
    # Duplicates come after their original: sort positions with a later key for each copy.
    keyed = [(float(index), Delivery(item.body, index)) for index, item in enumerate(plan)]
    for _ in range(shape.duplicates):
        original = rng.randrange(len(plan))
        later = rng.uniform(original + 0.5, len(plan))
        keyed.append((later, Delivery(plan[original].body, original)))
    stream = [delivery for _, delivery in sorted(keyed, key=lambda pair: pair[0])]
    for _ in range(shape.bursts):
        userid = rng.choice(plan).userid
        mine = [
            i
            for i, delivery in enumerate(stream)
            if delivery.landing is not None and plan[delivery.landing].userid == userid
        ]
        chosen = sorted(rng.sample(mine, min(shape.burst_size, len(mine))))
        burst = [stream[i] for i in chosen]
        for i in reversed(chosen):
            del stream[i]
        stream[chosen[0] : chosen[0]] = burst
    for _ in range(shape.reordered):
        source = rng.randrange(len(stream))
        item = stream.pop(source)
        shift = rng.choice((-1, 1)) * rng.randint(1, shape.displacement)
        stream.insert(min(len(stream), max(0, source + shift)), item)
    users = sorted({item.userid for item in plan})
    for _ in range(shape.malformed):
        body = malformed_body(rng, rng.choice(users))
        stream.insert(rng.randrange(len(stream) + 1), Delivery(body, None))
    assert len(stream) == shape.total
    return stream


class Deliverer:
    """Sends a stream to the webhook with `concurrency` posts in flight, landing each group at
    Withings before the first notification that needs it (data always precedes its notice)."""

    def __init__(self, pipeline: Pipeline, plan: list[PlannedGroup]) -> None:
        self._pipeline = pipeline
        self._plan = plan
        self._landed = 0

    def land_until(self, index: int) -> None:
        while self._landed <= index:
            item = self._plan[self._landed]
            self._pipeline.sandbox.add_measure_group(item.userid, item.group)
            self._landed += 1

    async def send(self, stream: list[Delivery], concurrency: int) -> list[int]:
        statuses = [0] * len(stream)
        slots = asyncio.Semaphore(concurrency)

        async def one(position: int, delivery: Delivery) -> None:
            try:
                response = await self._pipeline.post(delivery.body)
                statuses[position] = response.status_code
            finally:
                slots.release()

        tasks = []
        for position, delivery in enumerate(stream):
            await slots.acquire()
            if delivery.landing is not None:
                self.land_until(delivery.landing)
            tasks.append(asyncio.create_task(one(position, delivery)))
        await asyncio.gather(*tasks)
        return statuses
