"""The recognition service behind the routes: the loaded model, decoder, batcher, guards.

One ``Service`` lives on ``app.state.service``. It loads the model at start-up (in the
lifespan, never at import) and keeps the reason when it cannot, so ``/readyz`` can say
why and predictions answer 503 instead of a guess. Everything that holds threads or
processes is created in ``start`` and released in ``stop``, so an app can be started
again (a second lifespan, as tests do).
"""

from __future__ import annotations

import logging
import time

from starlette.concurrency import run_in_threadpool

from digitrec.api.batching import MicroBatcher
from digitrec.api.decoding import Decoder
from digitrec.api.security import RateLimiter, WebTokens
from digitrec.config import Settings
from digitrec.errors import DigitrecError, ModelNotReady
from digitrec.keys import KeyStore
from digitrec.predict import Prediction, Predictor

log = logging.getLogger(__name__)


class Service:
    def __init__(
        self, settings: Settings, predictor: Predictor | None = None, *, warm: bool = False
    ) -> None:
        self.settings = settings
        self.predictor = predictor
        self.warm = warm  # start the sandbox processes at start-up (the real server does)
        self.load_error: str | None = None
        self.batcher: MicroBatcher | None = None
        self.decoder = Decoder(settings)
        self.keys = KeyStore(settings.keys_path)
        self.api_limiter = RateLimiter(settings.api_rate_limit)
        self.web_limiter = RateLimiter(settings.web_rate_limit)
        secret = settings.secret_key.get_secret_value().encode() if settings.secret_key else None
        self.web_tokens = WebTokens(secret, ttl=settings.web_token_ttl_s)

    async def start(self) -> None:
        self.decoder.start()
        if self.warm:
            await run_in_threadpool(self.decoder.warm)
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
            self.batcher = None
        await run_in_threadpool(self.decoder.stop)

    @property
    def ready(self) -> bool:
        return self.predictor is not None and self.batcher is not None

    def require_predictor(self) -> tuple[Predictor, MicroBatcher]:
        if self.predictor is None or self.batcher is None:
            reason = self.load_error or "the model is still loading"
            raise ModelNotReady(f"no model is being served: {reason}")
        return self.predictor, self.batcher

    async def predict(self, raw: bytes, top_k: int) -> Prediction:
        """Prepare the image off the event loop (a thread, or the sandbox for big or
        unusual files), then share a forward pass with other requests."""
        predictor, batcher = self.require_predictor()
        started = time.perf_counter()
        with batcher.arriving():
            prepared = await self.decoder.prepare(predictor, raw)
        logits = await batcher.submit(prepared.tensor)
        return predictor.answer(prepared, logits, top_k, started)
