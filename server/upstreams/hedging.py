"""Hedge a slow stream: with no first token after `hedge_after_seconds`, start the next candidate too.

The first route to produce a first token wins; the other is cancelled at once, which closes its
upstream request (and frees a breaker trial it held: see attempts.py). The hedge skips each
(upstream, model) pair the first route has asked, whether that attempt is still on its way or
failed and the route waits to retry it (a Retry-After, a backoff): so with one upstream it is the
fallback model, with a pool another upstream, and with neither the hedge finds nothing to ask.
When both fail, the client gets the first route's error, the one about the model it asked for.

A route cancelled as the loser is not awaited (the winner's first token goes out at once), so a
done-callback settles it: a loser that opened its stream anyway (its cancellation arrived as the
stream opened, or was swallowed on the way) has that stream closed, and its error is retrieved,
never "Task exception was never retrieved".
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

from .client import UpstreamClient
from .stream import UpstreamStream

Only = Callable[[UpstreamClient, str], bool]
Route = Callable[[Only | None, set[tuple[str, str]]], Awaitable[UpstreamStream]]


async def hedged(route: Route, after: float, on_hedge: Callable[[], None]) -> UpstreamStream:
    """The stream of `route`, or of a hedge started after `after` seconds without a first token."""
    busy: set[tuple[str, str]] = set()
    first = asyncio.ensure_future(route(None, busy))
    started = [first]
    try:
        await asyncio.wait({first}, timeout=after)
        if not first.done():
            taken = set(busy)
            on_hedge()
            started.append(asyncio.ensure_future(route(lambda client, model: (client.name, model) not in taken, set())))
        pending = set(started)
        while pending:
            done, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
            winners = [task for task in started if task in done and task.exception() is None]
            if winners:
                for extra in winners[1:]:
                    extra.result().close()
                return winners[0].result()
        return first.result()  # both failed: raises the first route's error
    finally:
        for task in started:
            if not task.done():
                task.cancel()
                task.add_done_callback(_settle_loser)


def _settle_loser(task: asyncio.Future[UpstreamStream]) -> None:
    """Close the stream a cancelled route opened anyway; retrieve its error."""
    if task.cancelled() or task.exception() is not None:
        return
    task.result().close()
