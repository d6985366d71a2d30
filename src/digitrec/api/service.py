"""The recognition service behind the routes: the loaded model, batcher and guards.

One ``Service`` lives on ``app.state.service``. It loads the model at start-up (in the
lifespan, never at import) and keeps the reason when it cannot, so ``/readyz`` can say
why and predictions answer 503 instead of a guess.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from concurrent.futures import ThreadPoolExecutor

from starlette.concurrency import run_in_threadpool

from digitrec.api.batching import MicroBatcher
from digitrec.api.security import RateLimiter, WebTokens
from digitrec.config import Settings
from digitrec.errors import DigitrecError, ModelNotReady
from digitrec.keys import KeyStore
from digitrec.predict import Prediction, Predictor

log = logging.getLogger(__name__)
# Up to this many declared pixels an image is prepared in about 3 ms or less (a 280x280
# canvas: 1.3 ms): cheap enough to do on the event loop rather than hand to a thread.
INLINE_MAX_PIXELS = 512 * 512


def preprocess_threads(settings: Settings) -> int:
    """Decoding threads per worker process: the configured number, or the usable cores
    shared among the workers. Dozens of threads fighting over two cores for the GIL cost
    more in switches than they gain (measured: +25-35 % req/s with a pool this small),
    and with one worker per core a single thread each is fastest (+4 %)."""
    if settings.preprocess_threads:
        return settings.preprocess_threads
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return max(1, (cores or 1) // settings.workers)


class Service:
    def __init__(self, settings: Settings, predictor: Predictor | None = None) -> None:
        self.settings = settings
        self.predictor = predictor
        self.load_error: str | None = None
        self.batcher: MicroBatcher | None = None
        threads = preprocess_threads(settings)
        self.decoders = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="decode")
        # A pool of one thread adds a hand-off but no parallelism: small images are then
        # prepared on the event loop (measured: +7 % req/s with one worker per core).
        self.prepare_inline = threads == 1
        self.keys = KeyStore(settings.keys_path)
        self.api_limiter = RateLimiter(settings.api_rate_limit)
        self.web_limiter = RateLimiter(settings.web_rate_limit)
        secret = settings.secret_key.get_secret_value().encode() if settings.secret_key else None
        self.web_tokens = WebTokens(secret)

    async def start(self) -> None:
        if self.predictor is None:
            try:
                self.predictor = await run_in_threadpool(Predictor.from_settings, self.settings)
            except DigitrecError as exc:
                self.load_error = exc.message
                log.error("not serving predictions: %s", exc.message)
                return
        self.batcher = MicroBatcher(
            self.predictor.predict_batch,
            self.settings.batch_max_size,
            self.settings.batch_max_wait_ms,
        )
        await self.batcher.start()

    async def stop(self) -> None:
        if self.batcher is not None:
            await self.batcher.stop()
        self.decoders.shutdown(wait=True)

    @property
    def ready(self) -> bool:
        return self.predictor is not None and self.batcher is not None

    def require_predictor(self) -> tuple[Predictor, MicroBatcher]:
        if self.predictor is None or self.batcher is None:
            reason = self.load_error or "the model is still loading"
            raise ModelNotReady(f"no model is being served: {reason}")
        return self.predictor, self.batcher

    async def predict(self, raw: bytes, top_k: int) -> Prediction:
        """Prepare the image (in a decoding thread unless it is small and the pool has one
        thread), then share a forward pass with other requests."""
        predictor, batcher = self.require_predictor()
        started = time.perf_counter()
        img = predictor.open(raw)  # the header only: bad uploads are refused right here
        with batcher.arriving():
            if self.prepare_inline and img.width * img.height <= INLINE_MAX_PIXELS:
                prepared = predictor.prepare(img)
            else:
                loop = asyncio.get_running_loop()
                prepared = await loop.run_in_executor(self.decoders, predictor.prepare, img)
        probs = await batcher.submit(prepared.tensor)
        return predictor.answer(prepared, probs, top_k, started)
