from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from redis.asyncio import Redis

from fhir_gateway.errors import (
    GatewayError,
    WithingsError,
    WithingsInvalidGrant,
    WithingsRateLimited,
    WithingsTransient,
)
from fhir_gateway.locks import InProcessLocks, LockUnavailable, RedisLocks
from fhir_gateway.withings.keys import generate_key, parse_keys
from fhir_gateway.withings.models import TokenSet
from fhir_gateway.withings.tokens import NeedsReauth, TokenManager
from fhir_gateway.withings.vault import TOKENS_KIND, TokenVault
from tests.redis_server import RedisServer, run_redis_server
from tests.withings.fake_token_endpoint import (
    ACCESS_LIFETIME,
    GRACE,
    FakeTokenEndpoint,
    ManualClock,
)
from tests.withings.memory_store import STORE_KINDS, HookedStore, MemoryRecordStore, open_store

USER = "363"
KEY = generate_key()


class ProcessDied(Exception):
    """Stands for the worker being killed at this point."""


@pytest.fixture(params=STORE_KINDS)
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[HookedStore]:
    async with open_store(request.param, tmp_path) as opened:
        yield HookedStore(opened)


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    with run_redis_server(tmp_path) as server:
        yield server


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock()


@pytest.fixture
def endpoint(clock: ManualClock) -> FakeTokenEndpoint:
    return FakeTokenEndpoint(clock)


@pytest.fixture
def vault(store: HookedStore, clock: ManualClock) -> TokenVault:
    return TokenVault(store, parse_keys(KEY), clock=clock)


@pytest.fixture
def manager(vault: TokenVault, endpoint: FakeTokenEndpoint, clock: ManualClock) -> TokenManager:
    return TokenManager(vault, endpoint, InProcessLocks(), clock)


async def connect(vault: TokenVault, endpoint: FakeTokenEndpoint) -> TokenSet:
    """The OAuth callback: a first pair stored for USER."""
    first = endpoint.authorize(USER)
    await vault.save(first, expected_version=0)
    return first


# ------------------------------------------------------------------------------ fast path


async def test_a_valid_token_is_returned_without_lock_or_refresh(
    vault: TokenVault, endpoint: FakeTokenEndpoint, clock: ManualClock
) -> None:
    first = await connect(vault, endpoint)
    locks = InProcessLocks()
    manager = TokenManager(vault, endpoint, locks, clock)
    # The refresh lock is held elsewhere: the fast path must not wait for it.
    async with locks.lock(f"withings-refresh:{USER}", timeout=60):
        token = await asyncio.wait_for(manager.access_token(USER), timeout=1)
    assert token == first.access_token
    assert endpoint.refresh_calls == []


async def test_refresh_starts_within_the_margin(
    manager: TokenManager, vault: TokenVault, endpoint: FakeTokenEndpoint, clock: ManualClock
) -> None:
    first = await connect(vault, endpoint)
    clock.advance(ACCESS_LIFETIME - 301)
    assert await manager.access_token(USER) == first.access_token
    clock.advance(2)  # now 299 s before expiry: inside the 300 s margin
    token = await manager.access_token(USER)
    assert token != first.access_token
    assert endpoint.refresh_calls == [first.refresh_token]
    stored = await vault.load(USER)
    assert stored is not None
    assert stored.tokens.access_token == token
    assert stored.version == 2


# ------------------------------------------------------------------------------ O1: one refresh


async def test_fifty_concurrent_callers_cause_exactly_one_refresh(
    manager: TokenManager, vault: TokenVault, endpoint: FakeTokenEndpoint, clock: ManualClock
) -> None:
    first = await connect(vault, endpoint)
    clock.advance(ACCESS_LIFETIME + 1)
    endpoint.latency = 0.02
    tokens = await asyncio.gather(*(manager.access_token(USER) for _ in range(50)))
    assert endpoint.refresh_calls == [first.refresh_token]
    assert len(set(tokens)) == 1
    stored = await vault.load(USER)
    assert stored is not None and stored.tokens.access_token == tokens[0]
    assert endpoint.use(tokens[0])


async def test_fifty_callers_in_four_processes_share_one_refresh_through_redis(
    store: HookedStore, endpoint: FakeTokenEndpoint, clock: ManualClock, redis_server: RedisServer
) -> None:
    # Four "processes": each its own Redis connection pool, lock factory, vault and manager.
    clients = [Redis.from_url(redis_server.url) for _ in range(4)]
    try:
        managers = [
            TokenManager(
                TokenVault(store, parse_keys(KEY), clock=clock), endpoint, RedisLocks(c), clock
            )
            for c in clients
        ]
        first = await connect(TokenVault(store, parse_keys(KEY), clock=clock), endpoint)
        clock.advance(ACCESS_LIFETIME + 1)
        endpoint.latency = 0.05
        tokens = await asyncio.gather(*(managers[i % 4].access_token(USER) for i in range(50)))
    finally:
        for client in clients:
            await client.aclose()
    assert endpoint.refresh_calls == [first.refresh_token]
    assert len(set(tokens)) == 1


async def test_without_a_shared_lock_the_cas_still_keeps_one_consistent_pair(
    store: HookedStore, endpoint: FakeTokenEndpoint, clock: ManualClock
) -> None:
    # Four processes whose locks do not see each other (a lease that expired, a split brain):
    # several refreshes may happen, but one pair wins and every caller gets that pair.
    managers = [
        TokenManager(
            TokenVault(store, parse_keys(KEY), clock=clock), endpoint, InProcessLocks(), clock
        )
        for _ in range(4)
    ]
    await connect(TokenVault(store, parse_keys(KEY), clock=clock), endpoint)
    clock.advance(ACCESS_LIFETIME + 1)
    endpoint.latency = 0.02
    tokens = await asyncio.gather(*(managers[i % 4].access_token(USER) for i in range(40)))
    assert 1 <= len(endpoint.refresh_calls) <= 4
    assert len(set(tokens)) == 1
    stored = await TokenVault(store, parse_keys(KEY), clock=clock).load(USER)
    assert stored is not None and stored.tokens.access_token == tokens[0]
    # The stored refresh token is live: the next rotation works.
    assert endpoint.use(tokens[0])
    clock.advance(ACCESS_LIFETIME + 1)
    assert await managers[0].access_token(USER) != tokens[0]


async def test_losing_the_cas_discards_our_pair_and_uses_the_winners(
    store: HookedStore,
    manager: TokenManager,
    vault: TokenVault,
    endpoint: FakeTokenEndpoint,
    clock: ManualClock,
) -> None:
    first = await connect(vault, endpoint)
    clock.advance(ACCESS_LIFETIME + 1)
    winner = TokenSet(USER, "winner-access", "winner-refresh", clock() + ACCESS_LIFETIME, "x")

    async def another_worker_saves_first(kind: str, key: str) -> None:
        store.before_put = None
        await vault.save(winner, expected_version=1)

    store.before_put = another_worker_saves_first
    assert await manager.access_token(USER) == "winner-access"
    assert endpoint.refresh_calls == [first.refresh_token]
    stored = await vault.load(USER)
    assert stored is not None and stored.tokens == winner


# ------------------------------------------------------------------------------ O2: crash


async def test_a_crash_before_the_write_recovers_with_the_old_refresh_token(
    store: HookedStore,
    manager: TokenManager,
    vault: TokenVault,
    endpoint: FakeTokenEndpoint,
    clock: ManualClock,
) -> None:
    first = await connect(vault, endpoint)
    clock.advance(ACCESS_LIFETIME + 1)

    async def die_before_writing(kind: str, key: str) -> None:
        if kind == TOKENS_KIND:
            store.before_put = None
            raise ProcessDied

    store.before_put = die_before_writing
    with pytest.raises(ProcessDied):
        await manager.access_token(USER)  # Withings answered; the new pair was never stored
    assert endpoint.refresh_calls == [first.refresh_token]

    clock.advance(600)  # the job is retried ten minutes later, well inside the 8 h grace
    token = await manager.access_token(USER)
    assert endpoint.refresh_calls == [first.refresh_token, first.refresh_token]
    assert endpoint.use(token)
    stored = await vault.load(USER)
    assert stored is not None
    assert (stored.status, stored.tokens.access_token) == ("active", token)


async def test_using_an_unsaved_access_token_would_have_stranded_the_user(
    store: HookedStore,
    manager: TokenManager,
    vault: TokenVault,
    endpoint: FakeTokenEndpoint,
    clock: ManualClock,
) -> None:
    # The control for the test above: the fake really ends the grace on first use of the new
    # access token, which is why the manager persists before it hands the token out.
    first = await connect(vault, endpoint)
    clock.advance(ACCESS_LIFETIME + 1)
    lost = await endpoint.refresh(first.refresh_token)
    assert endpoint.use(lost.access_token)
    with pytest.raises(NeedsReauth):
        await manager.access_token(USER)


async def test_after_the_8_hour_grace_the_old_refresh_token_is_refused(
    manager: TokenManager, vault: TokenVault, endpoint: FakeTokenEndpoint, clock: ManualClock
) -> None:
    first = await connect(vault, endpoint)
    clock.advance(ACCESS_LIFETIME + 1)
    await endpoint.refresh(first.refresh_token)  # issued, never stored
    clock.advance(GRACE)
    with pytest.raises(NeedsReauth):
        await manager.access_token(USER)


# ------------------------------------------------------------------------------ O4: failures


async def test_invalid_grant_flags_reauth_and_stops_calling_withings(
    manager: TokenManager, vault: TokenVault, endpoint: FakeTokenEndpoint, clock: ManualClock
) -> None:
    await connect(vault, endpoint)
    clock.advance(ACCESS_LIFETIME + 1)
    endpoint.fail_with = WithingsInvalidGrant("invalid_grant")
    endpoint.latency = 0.01
    outcomes = await asyncio.gather(
        *(manager.access_token(USER) for _ in range(20)), return_exceptions=True
    )
    assert all(isinstance(outcome, NeedsReauth) for outcome in outcomes)
    assert len(endpoint.refresh_calls) == 1
    stored = await vault.load(USER)
    assert stored is not None
    assert (stored.status, stored.needs_reauth_reason) == ("needs_reauth", "invalid_grant")
    [flagged] = await vault.list_users(status="needs_reauth")
    assert flagged.userid == USER

    endpoint.fail_with = None
    clock.advance(3600)
    with pytest.raises(NeedsReauth) as raised:
        await manager.access_token(USER)
    assert raised.value.userid == USER
    assert isinstance(raised.value, GatewayError)
    assert len(endpoint.refresh_calls) == 1  # no further token call


async def test_needs_reauth_is_raised_even_for_an_unexpired_token(
    manager: TokenManager, vault: TokenVault, endpoint: FakeTokenEndpoint
) -> None:
    await connect(vault, endpoint)
    await vault.mark_needs_reauth(USER, "unlinked")
    with pytest.raises(NeedsReauth, match="unlinked"):
        await manager.access_token(USER)
    assert endpoint.refresh_calls == []


@pytest.mark.parametrize(
    "failure",
    [
        WithingsTransient("Withings requesttoken failed: HTTP 502"),
        WithingsRateLimited("Too many requests", wait_seconds=188),
        WithingsError("an error occurred"),
    ],
    ids=["transient", "rate-limited", "other"],
)
async def test_transient_failures_propagate_and_never_flag_reauth(
    manager: TokenManager,
    vault: TokenVault,
    endpoint: FakeTokenEndpoint,
    clock: ManualClock,
    failure: Exception,
) -> None:
    first = await connect(vault, endpoint)
    clock.advance(ACCESS_LIFETIME + 1)
    endpoint.fail_with = failure
    with pytest.raises(type(failure)) as raised:
        await manager.access_token(USER)
    assert raised.value is failure
    stored = await vault.load(USER)
    assert stored is not None
    assert (stored.status, stored.version, stored.tokens) == ("active", 1, first)

    endpoint.fail_with = None  # the retry succeeds with the same refresh token
    token = await manager.access_token(USER)
    assert endpoint.refresh_calls == [first.refresh_token, first.refresh_token]
    assert endpoint.use(token)


async def test_invalid_grant_after_a_concurrent_rotation_uses_the_new_pair(
    store: HookedStore, vault: TokenVault, endpoint: FakeTokenEndpoint, clock: ManualClock
) -> None:
    # Our lease expired mid-refresh: another worker rotated, stored, and already used the new
    # access token, so Withings refuses our (older) refresh token. Re-read before giving up.
    await connect(vault, endpoint)
    clock.advance(ACCESS_LIFETIME + 1)
    ours = TokenManager(vault, endpoint, InProcessLocks(), clock)
    theirs = TokenManager(
        TokenVault(store, parse_keys(KEY), clock=clock), endpoint, InProcessLocks(), clock
    )
    used: list[str] = []

    async def the_other_worker_rotates_and_uses_first() -> None:
        endpoint.before_refresh = None
        used.append(await theirs.access_token(USER))
        assert endpoint.use(used[0])

    endpoint.before_refresh = the_other_worker_rotates_and_uses_first
    assert await ours.access_token(USER) == used[0]
    stored = await vault.load(USER)
    assert stored is not None and stored.status == "active"


async def test_a_user_never_connected_needs_to_connect(
    manager: TokenManager, endpoint: FakeTokenEndpoint
) -> None:
    with pytest.raises(NeedsReauth, match="not connected"):
        await manager.access_token("nobody")
    assert endpoint.refresh_calls == []


async def test_an_answer_for_another_user_is_refused(
    vault: TokenVault, endpoint: FakeTokenEndpoint, clock: ManualClock
) -> None:
    first = await connect(vault, endpoint)
    clock.advance(ACCESS_LIFETIME + 1)

    class Confused:
        async def refresh(self, refresh_token: str) -> TokenSet:
            return TokenSet("999", "a", "r", clock() + ACCESS_LIFETIME, "")

    with pytest.raises(WithingsError, match="another user"):
        await TokenManager(vault, Confused(), InProcessLocks(), clock).access_token(USER)
    stored = await vault.load(USER)
    assert stored is not None and stored.tokens == first
    assert await vault.load("999") is None


# ------------------------------------------------------------------------------ consent, locks


async def test_store_initial_creates_replaces_and_clears_reauth(
    manager: TokenManager, vault: TokenVault, endpoint: FakeTokenEndpoint
) -> None:
    assert await manager.store_initial(endpoint.authorize(USER)) == 1
    await vault.mark_needs_reauth(USER, "invalid_grant")
    renewed = endpoint.authorize(USER)
    assert await manager.store_initial(renewed) == 3
    assert await manager.access_token(USER) == renewed.access_token


async def test_a_busy_lock_falls_back_to_what_its_holder_stored(
    vault: TokenVault, endpoint: FakeTokenEndpoint, clock: ManualClock
) -> None:
    await connect(vault, endpoint)
    clock.advance(ACCESS_LIFETIME + 1)
    locks = InProcessLocks()
    manager = TokenManager(vault, endpoint, locks, clock, lock_timeout=0.05)
    async with locks.lock(f"withings-refresh:{USER}", timeout=60):
        with pytest.raises(LockUnavailable):
            await manager.access_token(USER)
        # The holder stores a fresh pair just as our wait runs out.
        fresh = endpoint.authorize(USER)
        await vault.save(fresh, expected_version=1)
        assert await manager.access_token(USER) == fresh.access_token
    assert endpoint.refresh_calls == []


# ------------------------------------------------------------------------------ O6: no leaks


async def test_no_token_value_reaches_logs_reprs_or_errors(
    store: HookedStore,
    manager: TokenManager,
    vault: TokenVault,
    endpoint: FakeTokenEndpoint,
    clock: ManualClock,
    caplog: pytest.LogCaptureFixture,
) -> None:
    shown: list[str] = [repr(manager), repr(vault)]
    with caplog.at_level(logging.DEBUG):
        await manager.store_initial(endpoint.authorize(USER))
        clock.advance(ACCESS_LIFETIME + 1)
        await manager.access_token(USER)  # a refresh

        async def die(kind: str, key: str) -> None:
            store.before_put = None
            raise ProcessDied

        store.before_put = die
        clock.advance(ACCESS_LIFETIME + 1)
        with pytest.raises(ProcessDied):
            await manager.access_token(USER)
        stored = await vault.load(USER)
        shown += [repr(stored), str(stored), repr(await vault.list_users())]
        endpoint.fail_with = WithingsTransient("Withings requesttoken failed: HTTP 502")
        with pytest.raises(WithingsTransient) as transient:
            await manager.access_token(USER)
        shown.append(str(transient.value))
        endpoint.fail_with = WithingsInvalidGrant("invalid_grant")
        with pytest.raises(NeedsReauth) as reauth:
            await manager.access_token(USER)
        shown += [str(reauth.value), repr(reauth.value), str(reauth.value.__cause__)]
    text = caplog.text + "\n".join(shown)
    assert "refreshed withings tokens" in caplog.text  # the logs did capture the work
    assert len(endpoint.issued) >= 6
    leaked = [value for value in endpoint.issued if value in text]
    assert leaked == []
    assert KEY not in text


# ------------------------------------------------------------------------------ O3: interleavings

Step = tuple[str, int]

steps = st.lists(
    st.one_of(
        st.tuples(st.just("call"), st.integers(min_value=1, max_value=0b111111)),
        st.tuples(st.just("advance"), st.sampled_from([60, 1800, 3 * 3600, 9 * 3600])),
        st.tuples(st.just("crash next save"), st.just(0)),
        st.tuples(st.just("use"), st.just(0)),
    ),
    max_size=25,
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(schedule=steps)
def test_no_interleaving_loses_a_rotation(schedule: list[Step]) -> None:
    """Random schedules of concurrent calls, crashes, clock jumps and token use.

    Managers 0 and 1 share a lock; manager 2 has its own (a holder whose lease expired), so
    only the CAS fences it. Invariants: callers only ever get the persisted token; the stored
    refresh token stays usable; re-auth is demanded only when Withings' 8 h grace truly ran out.
    """
    asyncio.run(_run_schedule(schedule))


async def _run_schedule(schedule: list[Step]) -> None:
    clock = ManualClock()
    endpoint = FakeTokenEndpoint(clock)
    store = HookedStore(MemoryRecordStore())
    shared = InProcessLocks()
    managers = [
        TokenManager(TokenVault(store, parse_keys(KEY), clock=clock), endpoint, locks, clock)
        for locks in (shared, shared, InProcessLocks())
    ]
    vault = TokenVault(store, parse_keys(KEY), clock=clock)
    await managers[0].store_initial(endpoint.authorize(USER))
    last_token: str | None = None

    async def die_before_writing(kind: str, key: str) -> None:
        if kind == TOKENS_KIND:
            store.before_put = None
            raise ProcessDied

    for action, argument in schedule:
        if action == "advance":
            clock.advance(argument)
        elif action == "crash next save":
            store.before_put = die_before_writing
        elif action == "use" and last_token is not None:
            assert endpoint.use(last_token)
        elif action == "call":
            # Bits of `argument` pick which managers call (twice for the high bits).
            callers = [managers[bit % 3] for bit in range(6) if argument >> bit & 1]
            outcomes = await asyncio.gather(
                *(caller.access_token(USER) for caller in callers), return_exceptions=True
            )
            stored = await vault.load(USER)
            assert stored is not None
            for outcome in outcomes:
                if isinstance(outcome, str):
                    assert outcome == stored.tokens.access_token  # persisted before handed out
                    last_token = outcome
                elif isinstance(outcome, NeedsReauth):
                    assert endpoint.refusals[-1] == "grace expired"
                else:
                    assert isinstance(outcome, ProcessDied), outcome
            if stored.status == "needs_reauth":
                await managers[0].store_initial(endpoint.authorize(USER))  # the user reconnects
        stored = await vault.load(USER)
        assert stored is not None
        assert endpoint.refusal(stored.tokens.refresh_token) in (None, "grace expired")


# ------------------------------------------------------------------ revoked before expiry


async def test_a_rejected_unexpired_token_is_refreshed_once_for_all_callers(
    manager: TokenManager, vault: TokenVault, endpoint: FakeTokenEndpoint
) -> None:
    first = await connect(vault, endpoint)
    assert await manager.access_token(USER) == first.access_token  # not expired: no refresh
    endpoint.latency = 0.01
    # Twenty calls were refused with the same token at about the same time.
    tokens = await asyncio.gather(
        *(manager.access_token(USER, rejected=first.access_token) for _ in range(20))
    )
    assert len(endpoint.refresh_calls) == 1 and endpoint.refresh_calls[0] == first.refresh_token
    assert len(set(tokens)) == 1 and tokens[0] != first.access_token
    stored = await vault.load(USER)
    assert stored is not None and stored.tokens.access_token == tokens[0]


async def test_a_rejection_of_an_already_replaced_token_hands_out_the_new_one(
    manager: TokenManager, vault: TokenVault, endpoint: FakeTokenEndpoint, clock: ManualClock
) -> None:
    first = await connect(vault, endpoint)
    clock.advance(ACCESS_LIFETIME + 1)
    second = await manager.access_token(USER)  # someone refreshed meanwhile
    assert await manager.access_token(USER, rejected=first.access_token) == second
    assert len(endpoint.refresh_calls) == 1


async def test_a_rejected_token_whose_refresh_is_refused_flags_reauth(
    manager: TokenManager, vault: TokenVault, endpoint: FakeTokenEndpoint
) -> None:
    first = await connect(vault, endpoint)
    endpoint.fail_with = WithingsInvalidGrant("invalid_grant")
    with pytest.raises(NeedsReauth, match="invalid_grant"):
        await manager.access_token(USER, rejected=first.access_token)
    stored = await vault.load(USER)
    assert stored is not None and stored.status == "needs_reauth"
