"""The recognition service behind the routes: models, decoder, answer log, guards.

One ``Service`` lives on ``app.state.service``. At start-up (in the lifespan, never at
import) it opens the lifecycle database, loads the models it asks for (``ModelSet``:
production, and a candidate during an A/B test) and keeps the reason when it cannot, so
``/readyz`` can say why and predictions answer 503 instead of a guess. Each answer gets a
``prediction_id`` and is written to the database in batches, off the request path
(``PredictionLog``), so a user can correct it. Everything that holds threads, processes
or connections is created in ``start`` and released in ``stop``, so an app can be
started again (a second lifespan, as tests do).

``/readyz`` tells a load balancer the truth: not ready while the model loads, while the
database does not answer (checked every ``db_check_s`` in a thread; predictions go on
from the models already loaded) and while shutting down (``api.shutdown``). A database
that cannot be reached at start-up is opened, migrated and followed once it answers.
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import logging
import time
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING

import numpy as np
from starlette.concurrency import run_in_threadpool

from digitrec import feedback
from digitrec.api import metrics
from digitrec.api.decoding import Decoder
from digitrec.api.models import ModelSet, Routing
from digitrec.config import Settings
from digitrec.db import BUSY_TIMEOUT_S, Database
from digitrec.errors import (
    DigitrecError,
    ModelNotReady,
    NotFound,
    ServiceBusy,
    ValidationFailed,
)
from digitrec.feedback import Correction, OfflineAnswer, PredictionLog, PredictionRecord
from digitrec.multiscript import LATIN, choose, read_number_as
from digitrec.predict import Prediction, Predictor
from digitrec.registry import Registry
from digitrec.rejection import DIGIT_CLASSES
from digitrec.tasks import cancel
from digitrec.traffic import TrafficRecorder

if TYPE_CHECKING:
    from digitrec.numbers.reader import NumberReading

log = logging.getLogger(__name__)

OFFLINE_TOLERANCE = 1e-3  # an offline answer's probabilities are rounded to 6 places
OFFLINE_CLOCK_SKEW = timedelta(minutes=5)  # a phone's clock may run this far ahead
DB_CHECK_TIMEOUT_S = 5.0  # a database check that takes longer counts as unreachable


class Service:
    def __init__(
        self, settings: Settings, predictor: Predictor | None = None, *, warm: bool = False
    ) -> None:
        self.settings = settings
        self.given = predictor  # tests pass a loaded model; the server loads its own
        self.warm = warm  # start the sandbox processes at start-up (the real server does)
        self.load_error: str | None = None
        self.db_error: str | None = None
        self.decoder = Decoder(settings)
        self.db: Database | None = None
        self.models: ModelSet | None = None
        self.log: PredictionLog | None = None
        self.traffic: TrafficRecorder | None = None
        self._late: Database | None = None  # opened by a check, to be used by the loop
        self.shutting_down = False  # set by api.shutdown on SIGTERM: /readyz answers 503
        self._watch: asyncio.Task[None] | None = None

    async def start(self) -> None:
        self.shutting_down = False
        self.decoder.start()
        if self.warm:
            await run_in_threadpool(self.decoder.warm)
        db = await run_in_threadpool(self._open_database)
        if db is not None:
            await self._use_database(db)
        self.models = ModelSet(self.settings, self.db)
        try:
            await self.models.start(self.given)
        except DigitrecError as exc:
            self.load_error = exc.message
            self.models = None
            log.error("not serving predictions: %s", exc.message)
        self._watch = asyncio.create_task(self._watch_database(), name="database-check")

    def _open_database(self) -> Database | None:
        """The lifecycle database, migrated; None (and why) when it cannot be used:
        predictions go on from the shipped or pinned model, corrections answer 503,
        ``/readyz`` says why, and ``_watch_database`` tries again."""
        db = Database.from_settings(self.settings)
        try:
            db.migrate()
        except DigitrecError as exc:
            if self.db_error is None:
                log.error("no corrections, aliases or A/B tests: %s", exc.message)
            self.db_error = exc.message
            db.dispose()
            return None
        return db

    async def _use_database(self, db: Database) -> None:
        """Log answers and traffic to ``db`` from now on."""
        self.db, self.db_error = db, None
        if self.settings.log_predictions:
            self.log = PredictionLog.from_settings(db, self.settings)
            self.log.start()
        self.traffic = TrafficRecorder(db)
        await self.traffic.start()

    async def _watch_database(self) -> None:
        """Every ``db_check_s``: does the database answer? One that could not be
        opened at start-up is opened (migrated) once it does, and then followed."""
        probe: asyncio.Future[str | None] | None = None
        try:
            while True:
                await asyncio.sleep(self.settings.db_check_s)
                if probe is None:  # a check hung on a dead host is waited for, not repeated
                    check = self._check_database if self.db is not None else self._open_late
                    probe = asyncio.ensure_future(run_in_threadpool(check))
                await asyncio.wait({probe}, timeout=DB_CHECK_TIMEOUT_S)
                if not probe.done():
                    error: str | None = f"no answer in {DB_CHECK_TIMEOUT_S:g} s"
                else:
                    error, probe = probe.result(), None
                await self._database_answered(error)
        finally:
            if probe is not None:
                probe.cancel()

    async def _database_answered(self, error: str | None) -> None:
        """Take in a check's outcome: ``error`` is why the database did not answer."""
        if self.db is None:
            if error is None and self._late is not None:
                await self._use_late()
        elif error is not None and self.db_error is None:
            log.warning("the database does not answer: %s", error)
            self.db_error = error
        elif error is None and self.db_error is not None:
            log.warning("the database answers again")
            self.db_error = None

    async def _use_late(self) -> None:
        db, self._late = self._late, None
        assert db is not None
        await self._use_database(db)
        log.warning("the database answers: corrections, aliases and A/B tests are on")
        if self.models is not None:
            await self.models.follow(db)

    def _check_database(self) -> str | None:
        """Blocking: why the database does not answer a trivial query, or None."""
        assert self.db is not None
        try:
            self.db.ping()
        except DigitrecError as exc:
            return exc.message
        return None

    def _open_late(self) -> str | None:
        """Blocking: open (migrate) the database that was unreachable so far."""
        self._late = self._open_database()
        return None if self._late is not None else self.db_error

    async def stop(self) -> None:
        await cancel(self._watch)
        self._watch = None
        if self.models is not None:
            await self.models.stop()
            self.models = None
        if self.log is not None:
            await run_in_threadpool(self.log.stop)
            self.log = None
        if self.traffic is not None:
            await self.traffic.stop()
            self.traffic = None
        for db in (self.db, self._late):
            if db is not None:
                db.dispose()
        self.db = self._late = None
        await run_in_threadpool(self.decoder.stop)

    def not_ready(self) -> str | None:
        """Why a load balancer should not send requests here now, or None."""
        if self.shutting_down:
            return "shutting down"
        if self.models is None or self.models.routing is None:
            return self.load_error or "the model is still loading"
        if self.db_error is not None:
            return f"database unreachable: {self.db_error}"
        return None

    def routing(self) -> Routing:
        if self.models is None or self.models.routing is None:
            reason = self.load_error or "the model is still loading"
            raise ModelNotReady(f"no model is being served: {reason}")
        routing = self.models.routing
        return routing

    @property
    def predictor(self) -> Predictor:
        """The production model (the model card, readiness)."""
        return self.routing().production.predictor

    async def predict(
        self, raw: bytes, top_k: int, client_id: str | None = None, script: str = LATIN
    ) -> Prediction:
        """Prepare the image off the event loop (a thread, or the sandbox for big or
        unusual files), share a forward pass with other requests, read it in ``script``
        (``multiscript``), log the answer."""
        routing = self.routing()  # one snapshot: a switch mid-request changes nothing here
        served, arm = routing.route(client_id)
        script = choose(served.scripts, script)
        started = time.perf_counter()
        # Another script than Latin asked for: the script model's forward pass runs in a
        # decoding thread while the digit model runs in its batch; reading its row is light.
        scripts = served.scripts if script != LATIN else None
        with served.using() as predictor:
            with served.batcher.arriving():
                prepared = await self.decoder.prepare(predictor, raw)
            prepared_at = time.perf_counter()
            if scripts is not None:  # both models at once, on two cores
                seen = asyncio.get_running_loop().run_in_executor(
                    self.decoder.threads, scripts.logits_for, prepared.image
                )
            logits = await served.batcher.submit(prepared.tensor)
            inferred_at = time.perf_counter()
            answer = predictor.answer(prepared, logits, top_k, started)
            if scripts is not None:
                answer = scripts.read(await seen, answer, script, top_k)
        metrics.record_prediction(answer, prepared_at - started, inferred_at - prepared_at)
        answer = dataclasses.replace(answer, arm=arm)
        if self.log is None or answer.script != LATIN:
            # No id: nothing is kept that a correction could refer to. Digits of other
            # scripts are not kept: corrections fine-tune the Latin digit model.
            return answer
        answer = dataclasses.replace(answer, prediction_id=feedback.new_prediction_id())
        experiment = routing.experiment.id if arm and routing.experiment else None
        keep = self.settings.store_uploads and len(raw) <= self.settings.store_upload_max_bytes
        self.log.add(_record(answer, experiment, client_id, raw if keep else None))
        return answer

    async def read_number(
        self, raw: bytes, top_k: int, client_id: str | None = None, script: str = LATIN
    ) -> tuple[NumberReading, list[str] | None]:
        """The whole number written in an image (``numbers.read_number``), read in a
        decoding thread with the model this client is routed to. Each digit read is
        logged as an answer of its own, so it can be corrected; their ids come back in
        order (None when nothing is logged)."""
        routing = self.routing()
        served, arm = routing.route(client_id)
        script = choose(served.scripts, script)
        read_as = functools.partial(read_number_as, served.scripts, script=script)
        with served.using() as predictor:
            reading = await self.decoder.read_number(
                predictor, raw, DIGIT_CLASSES, self.settings.number_max_components, read_as
            )
        logged = [_probabilities(d.top) for d in reading.digits]  # all ten, before trimming
        digits = tuple(dataclasses.replace(d, top=d.top[:top_k]) for d in reading.digits)
        reading = dataclasses.replace(reading, digits=digits)
        if self.log is None or reading.script != LATIN:  # as for predict: not kept
            return reading, None
        experiment = routing.experiment.id if arm and routing.experiment else None
        ids = []
        for digit, probabilities in zip(reading.digits, logged, strict=True):
            ids.append(feedback.new_prediction_id())
            self.log.add(
                PredictionRecord(
                    id=ids[-1],
                    created_at=datetime.now(UTC),
                    model=f"{reading.model_name}:{reading.model_version}",
                    arm=arm,
                    experiment_id=experiment,
                    client_hash=feedback.client_hash(client_id),
                    digit=digit.digit,
                    confidence=digit.confidence,
                    verdict=digit.verdict,
                    probabilities=probabilities,
                    input=digit.image,
                    latency_ms=reading.processing_ms,
                    upload=None,
                )
            )
        return reading, ids

    async def correct(
        self, prediction_id: str, label: int | None, correct: bool | None
    ) -> Correction:
        """Store a user's correction of an answer (see ``feedback.record_feedback``)."""
        if self.db is None:
            raise ServiceBusy(
                f"corrections cannot be stored now: {self.db_error or 'no database'}",
                code="feedback_unavailable",
            )
        record = functools.partial(
            feedback.record_feedback,
            self.db,
            prediction_id,
            label,
            correct,
            window_s=self.settings.correction_window_s,
        )
        try:
            stored = await run_in_threadpool(record)
        except NotFound:
            # The answer may still wait in a log's queue: this process's, written as soon
            # as the database takes it (a write waits up to BUSY_TIMEOUT_S for a lock, so
            # waiting less would call a queued answer unknown; an id not queued here waits
            # for nothing), or (with several workers) another's, which writes it within
            # ``log_flush_s``.
            if self.log is not None and self.log.queued(prediction_id):
                await run_in_threadpool(self.log.wait_written, prediction_id, BUSY_TIMEOUT_S)
            else:
                await asyncio.sleep(self.settings.log_flush_s)
            stored = await run_in_threadpool(record)
        metrics.record_correction(stored.model.partition(":")[2], stored.right)
        return stored

    async def correct_offline(
        self, items: list[tuple[OfflineAnswer, int | None, bool | None]], client_id: str | None
    ) -> list[Correction]:
        """Store corrections of answers the page gave offline, once each is checked
        against its model (see ``check_offline_answer``); all or none are stored."""
        if self.db is None:
            raise ServiceBusy(
                f"corrections cannot be stored now: {self.db_error or 'no database'}",
                code="feedback_unavailable",
            )
        db, registry = self.db, Registry.from_settings(self.settings)

        def store() -> list[Correction]:
            for ref in {answer.model for answer, _, _ in items}:  # a registry scan each
                registry.resolve(ref)  # ModelNotFound (404) for an unknown version
            for answer, _, _ in items:
                check_offline_answer(answer)
            return feedback.record_offline_feedback(db, items, client_id=client_id)

        stored = await run_in_threadpool(store)
        for correction in stored:
            metrics.record_correction(correction.model.partition(":")[2], correction.right)
        return stored


def check_offline_answer(answer: OfflineAnswer) -> None:
    """An offline answer must be one a model could give (its version is checked by the
    caller, once per version): ten probabilities adding up to one, the digit their
    largest, the confidence the digit's probability, and a time not in the future."""
    probs = np.asarray(answer.probabilities, dtype=np.float64)
    problems = []
    if not (np.all((probs >= 0) & (probs <= 1)) and abs(probs.sum() - 1) <= OFFLINE_TOLERANCE):
        problems.append("the probabilities do not add up to 1")
    elif int(probs.argmax()) != answer.digit and probs.max() - probs[answer.digit] > 1e-6:
        problems.append("the digit is not the most probable one")
    elif abs(probs[answer.digit] - answer.confidence) > OFFLINE_TOLERANCE:
        problems.append("the confidence is not the digit's probability")
    if answer.answered_at > datetime.now(UTC) + OFFLINE_CLOCK_SKEW:
        problems.append("answered_at is in the future")
    if problems:
        raise ValidationFailed(f"offline answer {answer.id}: {'; '.join(problems)}")


def _probabilities(top: list[tuple[int, float]]) -> list[float]:
    """Each digit's probability, 0 to 9, from a full top list."""
    by_digit = dict(top)
    return [float(by_digit.get(d, 0.0)) for d in range(DIGIT_CLASSES)]


def _record(
    answer: Prediction, experiment_id: int | None, client_id: str | None, upload: bytes | None
) -> PredictionRecord:
    assert answer.prediction_id is not None
    return PredictionRecord(
        id=answer.prediction_id,
        created_at=datetime.now(UTC),
        model=f"{answer.model_name}:{answer.model_version}",
        arm=answer.arm,
        experiment_id=experiment_id,
        client_hash=feedback.client_hash(client_id),
        digit=answer.digit,
        confidence=answer.confidence,
        verdict=answer.verdict,
        probabilities=list(answer.probabilities),
        input=answer.image,
        latency_ms=answer.processing_ms,
        upload=upload,
    )
