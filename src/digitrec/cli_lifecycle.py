"""The model-lifecycle commands: `models promote | rollback`, `ab start | status | stop`
and `feedback list | export`. Each returns the text to show; cli.py builds the parsers
and prints it.

They change or read the lifecycle database (``Settings.database``); a running server
follows what they change within ``model_poll_s`` seconds (api/models.py).
"""

from __future__ import annotations

import argparse
import contextlib
import json
from collections.abc import Iterator
from typing import Any

from digitrec import aliases, experiments, feedback
from digitrec.config import Settings
from digitrec.db import Database
from digitrec.errors import InvalidRequest
from digitrec.lifecycle import database_exists, production_entry
from digitrec.registry import Registry


@contextlib.contextmanager
def database(settings: Settings) -> Iterator[Database]:
    db = Database.from_settings(settings)
    try:
        db.migrate()
        yield db
    finally:
        db.dispose()


def roles(settings: Settings) -> dict[str, str]:
    """Model ref -> its role ("production", "candidate"), without creating a database."""
    registry = Registry.from_settings(settings)
    if not database_exists(settings):
        return {registry.shipped().ref: "production"}
    with database(settings) as db:
        found = {production_entry(registry, db).ref: "production"}
        experiment = experiments.current(db)
        if experiment is not None:
            found[experiment.candidate] = "candidate"
        return found


def promote(settings: Settings, version: str) -> str:
    entry = Registry.from_settings(settings).resolve(version)
    if entry.dry_run:
        raise InvalidRequest(f"{entry.ref} is a dry run, not a model to serve")
    with database(settings) as db:
        change = aliases.promote(db, entry.ref)
    before = change.previous or "the shipped model"
    return f"production -> {entry.ref} (was {before}); servers follow within seconds"


def rollback(settings: Settings) -> str:
    with database(settings) as db:
        change = aliases.rollback(db)
    now = change.model or f"{Registry.from_settings(settings).shipped().ref} (shipped)"
    return f"production -> {now} (was {change.previous})"


def ab(args: argparse.Namespace, settings: Settings) -> str:
    """`digitrec ab start | stop | status`: what to print."""
    registry = Registry.from_settings(settings)
    with database(settings) as db:
        if args.ab_command == "start":
            candidate = registry.resolve(args.candidate)
            production = production_entry(registry, db)
            if candidate.ref == production.ref:
                raise InvalidRequest(f"{candidate.ref} is already production: nothing to compare")
            exp = experiments.start(db, candidate.ref, production.ref, args.share)
            return (
                f"A/B test {exp.id}: {exp.candidate} for {exp.share:.0%} of clients, "
                f"{exp.production} for the rest"
            )
        if args.ab_command == "stop":
            exp = experiments.stop(db, promote=args.promote)
            promoted = f"; production -> {exp.candidate}" if args.promote else ""
            return f"A/B test {exp.id} stopped{promoted}"
        return _ab_status(db, args.json)


def _ab_status(db: Database, as_json: bool) -> str:
    from digitrec import abstats  # statsmodels takes a second to import: only here

    exp = experiments.current(db) or experiments.latest(db)
    if exp is None:
        raise InvalidRequest(
            "no A/B test yet: start one with `digitrec ab start --candidate VERSION`"
        )
    rows = experiments.arm_rows(db, exp)
    report = abstats.summarize(
        abstats.ArmCounts(**vars(rows["production"])), abstats.ArmCounts(**vars(rows["candidate"]))
    )
    head = {
        "experiment": exp.id,
        "running": exp.stopped_at is None,
        "production": exp.production,
        "candidate": exp.candidate,
        "share": exp.share,
        "started_at": exp.started_at.isoformat(),
    }
    if as_json:
        return json.dumps({**head, **report.to_dict()}, default=str)
    state = "running" if exp.stopped_at is None else f"stopped ({exp.outcome})"
    return (
        f"A/B test {exp.id} ({state} since {exp.started_at:%Y-%m-%d %H:%M}): "
        f"candidate {exp.candidate} for {exp.share:.0%} of clients, production {exp.production}\n"
        f"\n{abstats.render(report)}"
    )


def feedback_text(args: argparse.Namespace, settings: Settings) -> str:
    """`digitrec feedback list | export`: what to print."""
    with database(settings) as db:
        if args.feedback_command == "export":
            return f"wrote {feedback.export_feedback(db, args.output, args.format)}"
        rows = feedback.list_feedback(db, limit=args.limit)
    if args.json:
        return json.dumps([_row(c) for c in rows], default=str)
    if not rows:
        return "no corrections yet"
    return "\n".join(_line(c) for c in rows)


def _line(c: Any) -> str:
    said = "not a digit" if c.label is None else str(c.label)
    answer = c.digit if c.verdict == "digit" else c.verdict.replace("_", " ")
    mark = "right" if c.right else "wrong"
    return (
        f"{c.corrected_at:%Y-%m-%d %H:%M}  {c.prediction_id}  {c.model:34s} "
        f"answered {answer}, user says {said} ({mark})"
    )


def _row(c: Any) -> dict[str, Any]:
    return {
        "prediction_id": c.prediction_id,
        "model": c.model,
        "arm": c.arm,
        "digit": c.digit,
        "verdict": c.verdict,
        "confidence": c.confidence,
        "label": c.label,
        "right": c.right,
        "created_at": c.created_at,
        "corrected_at": c.corrected_at,
    }
