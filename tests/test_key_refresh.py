"""What a request waits for while the server fetches a key (appliance/gateway/key_refresh.py):
only an epoch a refresh is on its way for, only until that refresh has finished, and never past its
bound. The whole path through a server and another process's rotation is test_live_rotation.py."""

from __future__ import annotations

import threading

import trio

from appliance.gateway.key_refresh import KeyRefresh


async def test_an_epoch_nobody_asked_for_is_not_waited_for() -> None:
    refresh = KeyRefresh()
    assert not refresh.is_pending(1, 2)
    with trio.fail_after(1):
        assert await refresh.settled(1, 2) is False


async def test_a_request_waits_for_the_refresh_that_started_after_its_epoch_was_asked() -> None:
    refresh = KeyRefresh()
    # The keyring calls its listener from whatever thread reads.
    reader = threading.Thread(target=refresh, args=(1, 2))
    reader.start()
    reader.join()
    assert refresh.is_pending(1, 2)
    with trio.fail_after(5):
        await refresh.wanted.wait()  # the wake-up is handed to the Trio thread

    # A refresh already running when the epoch was asked for does not settle it: only
    # one that starts after.
    earlier_refresh: set[tuple[int, int]] = set()
    settled: list[bool] = []

    async def request() -> None:
        settled.append(await refresh.settled(1, 2))

    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(request)
            await trio.sleep(0.01)
            refresh.finished(earlier_refresh)
            await trio.sleep(0.01)
            assert settled == [] and refresh.is_pending(1, 2)
            covered = refresh.starting()
            assert covered == {(1, 2)} and not refresh.wanted.is_set()
            refresh.finished(covered)
    assert settled == [True]
    assert not refresh.is_pending(1, 2)

    refresh(1, 2)  # asked about once per epoch: a tenant the escrow refuses is not asked again
    assert not refresh.is_pending(1, 2)


async def test_a_refresh_that_never_finishes_holds_a_request_no_longer_than_its_bound() -> None:
    refresh = KeyRefresh()
    refresh(3, 1)
    with trio.fail_after(5):
        assert await refresh.settled(3, 1, timeout_s=0.05) is False
    assert refresh.is_pending(3, 1)  # still on its way: the next request may wait too
