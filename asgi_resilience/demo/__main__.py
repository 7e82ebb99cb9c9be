"""``python -m asgi_resilience.demo [--redis URL] [--port N]``: run the demo under uvicorn."""

from __future__ import annotations

import argparse
import asyncio
import sys

from asgi_resilience._optional import import_optional
from asgi_resilience.demo._app import build_demo
from asgi_resilience.demo._summary import configure_logging


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m asgi_resilience.demo",
        description="A small API behind the full asgi-resilience stack, with a live dashboard.",
    )
    parser.add_argument("--redis", metavar="URL", help="share limits and cache through Redis (redis://host:6379/0)")
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=8000, help="port to listen on (default 8000)")
    parser.add_argument("--no-traffic", action="store_true", help="no background traffic for the dashboard")
    parser.add_argument(
        "--summary-every",
        type=float,
        default=10.0,
        metavar="SECONDS",
        help="log one summary line of what the layers did per interval (default 10)",
    )
    args = parser.parse_args(argv)
    if not args.summary_every > 0:
        print("error: --summary-every must be a positive number of seconds", file=sys.stderr)
        return 2
    try:
        uvicorn = import_optional("uvicorn", extra="demo", feature="The demo")
        demo = build_demo(redis=args.redis, traffic=not args.no_traffic, summary_every=args.summary_every)
    except (ImportError, ValueError) as exc:  # a missing extra or a bad --redis URL: say so, no traceback
        print(f"error: {exc}", file=sys.stderr)
        return 2
    base = f"http://{'127.0.0.1' if args.host in ('0.0.0.0', '::') else args.host}:{args.port}"
    storage = f"Redis at {args.redis}" if args.redis else "in memory"
    print(
        f"asgi-resilience demo ({storage})\n"
        f"  API:        {base}/\n"
        f"  dashboard:  {base}/_resilience/   (loopback clients only)\n"
        f"  open the breaker: curl '{base}/chaos?failure_rate=1'   heal it: curl '{base}/chaos?failure_rate=0'\n"
        f"  see a 429:  for i in 1 2 3 4 5 6; do curl -s -o /dev/null -w '%{{http_code}} ' {base}/hello; done; echo\n"
        f"  see a 504:  curl -i '{base}/slow?seconds=3'\n"
        f"Refused and retried requests are counted, not logged one by one: a summary every {args.summary_every:g} s.\n"
        "Press Ctrl+C to stop.",
        flush=True,
    )
    configure_logging()
    server = uvicorn.Server(
        uvicorn.Config(demo.app, host=args.host, port=args.port, log_level="warning", timeout_graceful_shutdown=5)
    )

    async def serve() -> None:
        async def end_streams_on_shutdown() -> None:
            # uvicorn waits for open requests before it stops, and a dashboard tab keeps an event stream
            # open: end the streams as soon as the server is asked to stop.
            while not server.should_exit:  # noqa: ASYNC110 - uvicorn only offers a flag
                await asyncio.sleep(0.1)
            demo.dashboard.close()

        watcher = asyncio.create_task(end_streams_on_shutdown())
        try:
            await server.serve()
        finally:
            watcher.cancel()

    asyncio.run(serve())
    return 0


if __name__ == "__main__":
    sys.exit(main())
