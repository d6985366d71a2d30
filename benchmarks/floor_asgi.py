"""The HTTP floors (#17): what the server stack alone costs per request, with no work.

The same HTTP stack as ``digitrec serve`` (uvicorn with httptools and uvloop, one worker
per core, keep-alive), serving an app that reads the whole request body and answers a
fixed small JSON object: no decoding, no model. ``--app asgi``: a bare ASGI function, no
framework at all; ``--app fastapi``: one FastAPI route, no middleware. ``bench_realistic.py``
sends them the same mix as the others, so the CPU they spend per request is the floor
under what any Python server on this stack, or on FastAPI, can spend.

    python benchmarks/floor_asgi.py --port 8100 --workers 2 --app fastapi
"""

from __future__ import annotations

import argparse
from typing import Any

import uvicorn
from fastapi import FastAPI, Request  # at module level: the route's annotations name them

ANSWER = b'{"digit":0}'
HEADERS = [(b"content-type", b"application/json"), (b"content-length", str(len(ANSWER)).encode())]


async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] == "lifespan":
        while (await receive())["type"] != "lifespan.shutdown":
            await send({"type": "lifespan.startup.complete"})
        await send({"type": "lifespan.shutdown.complete"})
        return
    more = True
    while more:  # the whole body, as a real server must read it
        message = await receive()
        more = message.get("more_body", False)
    await send({"type": "http.response.start", "status": 200, "headers": HEADERS})
    await send({"type": "http.response.body", "body": ANSWER})


def fastapi_app() -> FastAPI:
    api = FastAPI()

    @api.post("/api/v1/predict")
    async def predict(request: Request) -> dict[str, int]:
        await request.body()
        return {"digit": 0}

    @api.get("/readyz")
    async def ready() -> dict[str, bool]:
        return {"ready": True}

    return api


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--app", choices=("asgi", "fastapi"), default="asgi")
    args = parser.parse_args()
    uvicorn.run(
        "floor_asgi:app" if args.app == "asgi" else "floor_asgi:fastapi_app",
        factory=args.app == "fastapi",
        host="127.0.0.1",
        port=args.port,
        workers=args.workers,
        loop="uvloop",
        http="httptools",
        access_log=False,
        server_header=False,
        log_level="warning",
    )


if __name__ == "__main__":
    main()
