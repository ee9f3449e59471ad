"""Live updates for dashboards: Server-Sent Events from the gateway's live hub.

``GET /api/live[?site_id=&node_id=]`` streams, as ``text/event-stream``:

- ``retry: 3000`` first (how long a browser waits before reconnecting);
- ``event: resync`` (no id) whenever the client must fetch ``/api/nodes`` again: on a fresh
  connection (``reason`` ``new``), after a restart of the gateway (``restart``), when its
  ``Last-Event-ID`` is older than the replay buffer (``gap``) or when it fell too far behind
  and the oldest queued messages were dropped (``overflow``);
- ``event: reading`` / ``status`` / ``event`` with ``id: <epoch>-<n>`` and JSON data naming
  ``site_id`` and ``node_id`` (a reading has the shape of the API's latest reading);
- ``event: alert`` (same ids) when the gateway opens, changes, closes or someone acknowledges
  an alert: the alert as ``GET /api/alerts`` lists it;
- ``event: heartbeat`` with the gateway's time at least every 15 s when nothing else is sent,
  so proxies keep the connection and a client can tell a dead connection from a quiet site.

A browser's ``EventSource`` reconnects by itself and sends ``Last-Event-ID``; messages after
it are replayed when the hub still has them.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable
from typing import Annotated

from fastapi import APIRouter, Header, HTTPException, status
from fastapi.responses import StreamingResponse

from gateway.api.deps import ContextDep, OperatorDep
from gateway.live import LiveHub, Subscription

router = APIRouter(prefix="/api/live", tags=["live"])


def _resync(reason: str) -> str:
    return f"event: resync\ndata: {json.dumps({'reason': reason})}\n\n"


async def _stream(hub: LiveHub, subscription: Subscription, ready: asyncio.Event,
                  now: Callable[[], str]) -> AsyncIterator[str]:
    """Until the client goes (the next write fails, at the latest with the next heartbeat) or
    the hub closes."""
    try:
        yield f"retry: {hub.retry_ms}\n\n"
        while not subscription.closed:
            ready.clear()  # before take(): a message arriving after take() sets it again
            reason, messages = subscription.take()
            if reason is not None:
                yield _resync(reason)
            if messages:
                yield "".join(message.sse(hub.epoch) for message in messages)
            if reason is not None or messages:
                continue
            try:
                await asyncio.wait_for(ready.wait(), hub.heartbeat_s)
            except TimeoutError:
                yield f"event: heartbeat\ndata: {json.dumps({'at': now()})}\n\n"
    finally:
        subscription.close()


@router.get("", summary="Live readings, statuses, events and alerts (Server-Sent Events)",
            response_class=StreamingResponse,
            responses={200: {"content": {"text/event-stream": {}},
                             "description": "An endless event stream; see docs/dashboard.md"}})
async def live(context: ContextDep, _actor: OperatorDep,
               site_id: str | None = None, node_id: str | None = None,
               last_event_id: Annotated[str | None, Header(alias="Last-Event-ID")] = None
               ) -> StreamingResponse:
    hub = context.live
    if hub is None:
        raise HTTPException(status.HTTP_503_SERVICE_UNAVAILABLE,
                            "live updates are not running in this process",
                            headers={"Retry-After": "30"})
    loop = asyncio.get_running_loop()
    ready = asyncio.Event()

    def wake() -> None:
        loop.call_soon_threadsafe(ready.set)

    subscription = hub.subscribe(site_id=site_id, node_id=node_id,
                                 last_event_id=last_event_id, wake=wake)
    if subscription is None:
        raise HTTPException(status.HTTP_503_SERVICE_UNAVAILABLE,
                            f"too many live connections (at most {hub.max_subscribers}); "
                            "retry later", headers={"Retry-After": "30"})

    def now() -> str:
        return context.clock.now().isoformat().replace("+00:00", "Z")

    return StreamingResponse(
        _stream(hub, subscription, ready, now), media_type="text/event-stream",
        headers={"Cache-Control": "no-cache, no-transform", "X-Accel-Buffering": "no"})
