"""The models one server process holds, keyed by version, and how it follows changes.

``Routing`` is what requests are served by: the production model, and during an A/B
test the candidate and the experiment that assigns clients to it. ``ModelSet`` builds it
at start-up and then, every ``model_poll_s``, reads the production alias and the running
experiment from the database; when they changed it loads the new model off the event
loop, swaps the routing in one assignment, and retires the models no longer needed once
the requests that were already using them have finished. So a promotion, rollback or
A/B start reaches every worker within a few seconds, without a restart and without a
failed request. With a pinned model (``--model``) nothing is followed.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Iterator
from dataclasses import dataclass, field

from starlette.concurrency import run_in_threadpool

from digitrec import experiments
from digitrec.api import metrics
from digitrec.api.batching import MicroBatcher
from digitrec.config import Settings
from digitrec.db import Database
from digitrec.errors import DigitrecError, StorageError
from digitrec.experiments import Experiment
from digitrec.lifecycle import production_entry, served_entry
from digitrec.multiscript import ScriptModel, load_shipped
from digitrec.predict import Predictor
from digitrec.registry import ModelEntry, Registry
from digitrec.tasks import cancel

log = logging.getLogger(__name__)

RETIRE_TIMEOUT_S = 60.0  # a retired model waits at most this long for its requests


def entry_to_start(settings: Settings) -> ModelEntry:
    """The model a server starts with: the pinned one, else production; the shipped one
    while the database does not answer (the server is then not ready, and follows the
    database once it answers: see ``Service``)."""
    try:
        return served_entry(settings)
    except StorageError as exc:
        log.warning("no database; starting with the shipped model: %s", exc.message)
        return production_entry(Registry.from_settings(settings), None)


@dataclass
class Served:
    """One loaded model, its micro-batcher, and how many requests are using it."""

    predictor: Predictor
    batcher: MicroBatcher
    in_flight: int = 0

    scripts: ScriptModel | None = None  # reads digits of other scripts, when asked (#14)

    @classmethod
    async def start(cls, predictor: Predictor, settings: Settings) -> Served:
        batcher = MicroBatcher(predictor.infer, settings.batch_max_size, settings.batch_max_wait_ms)
        await batcher.start()
        return cls(predictor, batcher, scripts=load_shipped() if settings.scripts else None)

    @contextlib.contextmanager
    def using(self) -> Iterator[Predictor]:
        self.in_flight += 1
        try:
            yield self.predictor
        finally:
            self.in_flight -= 1

    async def retire(self) -> None:
        """Stop once the requests using this model are done (or after the timeout)."""
        waited = 0.0
        while self.in_flight > 0 and waited < RETIRE_TIMEOUT_S:
            await asyncio.sleep(0.05)
            waited += 0.05
        await self.batcher.stop()
        log.info("retired model %s", self.predictor.ref)


@dataclass(frozen=True)
class Routing:
    """What serves requests now; replaced whole, never changed in place."""

    production: Served
    candidate: Served | None = None
    experiment: Experiment | None = None

    def route(self, client_id: str | None) -> tuple[Served, str | None]:
        """The model for this client, and its A/B arm (None outside an experiment)."""
        if self.experiment is None or self.candidate is None:
            return self.production, None
        arm = experiments.assign(self.experiment, client_id)
        return (self.candidate if arm == "candidate" else self.production), arm

    @property
    def models(self) -> dict[str, Served]:
        both = [self.production] + ([self.candidate] if self.candidate else [])
        return {s.predictor.ref: s for s in both}


@dataclass(frozen=True)
class Wanted:
    """The routing the database asks for: models by ref, and the experiment if any."""

    production: ModelEntry
    candidate: ModelEntry | None = None
    experiment: Experiment | None = None
    refs: tuple[str, ...] = field(init=False)

    def __post_init__(self) -> None:
        refs = (self.production.ref, self.candidate.ref if self.candidate else "")
        object.__setattr__(self, "refs", refs)


class ModelSet:
    """The routing of one server process, kept in step with the database."""

    def __init__(self, settings: Settings, db: Database | None) -> None:
        self.settings = settings
        self.db = db
        self.registry = Registry.from_settings(settings)
        self.routing: Routing | None = None
        self._wanted: Wanted | None = None
        self._task: asyncio.Task[None] | None = None
        self._retiring: set[asyncio.Task[None]] = set()

    @property
    def follows(self) -> bool:
        return self.db is not None and not self.settings.model

    async def start(self, predictor: Predictor | None = None) -> None:
        """Load what the database asks for (or serve ``predictor``, as tests pass one)."""
        if predictor is not None:
            self._swap(Routing(await Served.start(predictor, self.settings)))
            self._wanted = Wanted(predictor.entry)
        else:
            wanted = await run_in_threadpool(self._read_wanted)
            await self._apply(wanted)
        if self.follows:
            self._task = asyncio.create_task(self._follow(), name="model-follower")

    async def follow(self, db: Database) -> None:
        """Follow a database that answered only after start-up: serve what it asks for
        now, then keep in step with it as if it had been there from the start."""
        self.db = db
        if not self.follows or self._task is not None:
            return
        try:
            wanted = await run_in_threadpool(self._read_wanted)
            if self._changed(wanted):
                await self._apply(wanted)
        except DigitrecError as exc:
            log.warning("keeping the models being served: %s", exc.message)
        self._task = asyncio.create_task(self._follow(), name="model-follower")

    async def stop(self) -> None:
        await cancel(self._task)
        self._task = None
        for task in list(self._retiring):
            task.cancel()
        if self.routing is not None:
            for served in self.routing.models.values():
                await served.batcher.stop()
            self.routing = None

    # -- following the database --
    def _read_wanted(self) -> Wanted:
        """Blocking: read the alias and the experiment, resolve them in the registry."""
        if self.db is None or self.settings.model:
            return Wanted(entry_to_start(self.settings))
        production = production_entry(self.registry, self.db)
        experiment = experiments.current(self.db)
        if experiment is None:
            return Wanted(production)
        return Wanted(production, self.registry.resolve(experiment.candidate), experiment)

    async def _follow(self) -> None:
        while True:
            await asyncio.sleep(self.settings.model_poll_s)
            try:
                wanted = await run_in_threadpool(self._read_wanted)
                if self._changed(wanted):
                    await self._apply(wanted)
            except DigitrecError as exc:  # the database or a model is unavailable: keep on
                log.warning("keeping the models being served: %s", exc.message)

    def _changed(self, wanted: Wanted) -> bool:
        return (
            self._wanted is None
            or wanted.refs != self._wanted.refs
            or wanted.experiment != self._wanted.experiment
        )

    def _swap(self, routing: Routing) -> None:
        """Serve ``routing`` from now on, and say so in the metrics at once."""
        self.routing = routing
        candidate = routing.candidate.predictor if routing.candidate else None
        production = routing.production.predictor
        metrics.serving(
            (production.name, production.version),
            (candidate.name, candidate.version) if candidate else None,
        )

    async def _apply(self, wanted: Wanted) -> None:
        """Load what is missing, swap the routing, retire what is no longer needed."""
        current = self.routing.models if self.routing else {}
        loaded: dict[str, Served] = {}
        for entry in (wanted.production, wanted.candidate):
            if entry is None or entry.ref in loaded:
                continue
            if entry.ref in current:
                loaded[entry.ref] = current[entry.ref]
                continue
            predictor = await run_in_threadpool(Predictor.for_entry, entry, self.settings)
            loaded[entry.ref] = await Served.start(predictor, self.settings)
        candidate = loaded[wanted.candidate.ref] if wanted.candidate else None
        self._swap(Routing(loaded[wanted.production.ref], candidate, wanted.experiment))
        self._wanted = wanted
        log.info(
            "serving %s%s",
            wanted.production.ref,
            f" with candidate {wanted.candidate.ref} for {wanted.experiment.share:.0%} of clients"
            if wanted.candidate and wanted.experiment
            else "",
        )
        for ref, served in current.items():
            if ref not in loaded:
                task = asyncio.create_task(served.retire(), name=f"retire {ref}")
                self._retiring.add(task)
                task.add_done_callback(self._retiring.discard)
