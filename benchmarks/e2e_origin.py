"""A controllable upstream for the end-to-end suite (one uvicorn worker, state in process).

GET  /data             200 {"ok": true}, or 503 while failing; waits ``latency`` seconds first
POST /__control        {"fail": bool, "latency": float} changes the behaviour
GET  /__stats          {"requests": n} requests to /data so far; POST /__stats resets
GET  /healthz          200
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

from asgi_resilience.types import Receive, Scope, Send

STATE: dict[str, Any] = {"fail": False, "latency": 0.0, "requests": 0}


async def _json(send: Send, status: int, payload: Any) -> None:
    body = json.dumps(payload).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


async def _body(receive: Receive) -> bytes:
    data = b""
    while True:
        message = await receive()
        data += message.get("body", b"")
        if not message.get("more_body"):
            return data


async def app(scope: Scope, receive: Receive, send: Send) -> None:
    if scope["type"] != "http":
        if scope["type"] == "lifespan":
            while (message := await receive())["type"] != "lifespan.shutdown":
                await send({"type": message["type"] + ".complete"})
            await send({"type": "lifespan.shutdown.complete"})
        return
    path, method = scope["path"], scope["method"]
    if path == "/data":
        STATE["requests"] += 1
        if STATE["latency"]:
            await asyncio.sleep(STATE["latency"])
        if STATE["fail"]:
            await _json(send, 503, {"ok": False})
        else:
            await _json(send, 200, {"ok": True})
    elif path == "/__control" and method == "POST":
        STATE.update({k: v for k, v in json.loads(await _body(receive) or b"{}").items() if k in {"fail", "latency"}})
        await _json(send, 200, {k: STATE[k] for k in ("fail", "latency")})
    elif path == "/__stats":
        if method == "POST":
            STATE["requests"] = 0
        await _json(send, 200, {"requests": STATE["requests"]})
    elif path == "/healthz":
        await _json(send, 200, {"ok": True})
    else:
        await _json(send, 404, {"error": "not found"})
