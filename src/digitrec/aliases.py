"""Registry aliases: named pointers (``production``) to model versions, moved by events.

A version never changes; an alias moves. Each move is a row of ``alias_events``: a
promotion (``promote``, or ``ab_promote`` when an A/B test ends with the candidate
promoted) or a ``rollback``. An alias points where its newest event says; ``None`` means
the shipped model (the newest bundled one, found by the caller). Promotions still in
force form a stack: a rollback undoes the top one (sets its ``undone_at``) and points
the alias at what it pointed at before that promotion, so rolling back again goes one
further back, down to the shipped model. Refs are not checked against the registry
here: the caller resolves them (``Registry.resolve(...).ref``).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any, cast

from sqlalchemy import CursorResult, select, update
from sqlalchemy.orm import Session

from digitrec.db import Database
from digitrec.db.tables import REF_LENGTH, AliasEventRow, utcnow
from digitrec.errors import InvalidRequest

PRODUCTION = "production"  # the alias `digitrec serve` serves
PROMOTIONS = ("promote", "ab_promote")  # the actions a rollback can undo


@dataclass(frozen=True)
class AliasChange:
    """One move of an alias: ``model`` is where it points after, ``previous`` before."""

    alias: str
    model: str | None  # None: the shipped model
    previous: str | None
    action: str  # promote | rollback | ab_promote
    at: datetime


def _change(row: AliasEventRow) -> AliasChange:
    return AliasChange(row.alias, row.model, row.previous, row.action, row.at)


def target_in(session: Session, alias: str = PRODUCTION) -> str | None:
    """Where ``alias`` points now, within an open session; None: the shipped model."""
    newest = (
        select(AliasEventRow.model)
        .where(AliasEventRow.alias == alias)
        .order_by(AliasEventRow.id.desc())
        .limit(1)
    )
    return session.execute(newest).scalar_one_or_none()


def target(db: Database, alias: str = PRODUCTION) -> str | None:
    """Where ``alias`` points now; None: the shipped model."""
    with db.session() as session:
        return target_in(session, alias)


def production(db: Database) -> str | None:
    """The promoted production ref, or None: serve the shipped model."""
    return target(db, PRODUCTION)


def promote_in(
    session: Session, ref: str, alias: str = PRODUCTION, action: str = "promote"
) -> AliasChange:
    """Point ``alias`` at ``ref`` within an open session (e.g. the one ending an A/B test)."""
    if not ref or len(ref) > REF_LENGTH:
        raise InvalidRequest(f"not a model reference: {ref!r}", code="invalid_model_ref")
    if action not in PROMOTIONS:
        raise InvalidRequest(f"not a promotion: {action!r} (use one of {', '.join(PROMOTIONS)})")
    row = AliasEventRow(
        alias=alias, model=ref, previous=target_in(session, alias), action=action, at=utcnow()
    )
    session.add(row)
    return _change(row)


def promote(
    db: Database, ref: str, alias: str = PRODUCTION, action: str = "promote"
) -> AliasChange:
    """Point ``alias`` at the model ``ref`` (``NAME:VERSION``)."""
    with db.session() as session:
        return promote_in(session, ref, alias, action)


def rollback(db: Database, alias: str = PRODUCTION) -> AliasChange:
    """Undo the newest promotion still in force: the alias points where it did before it."""
    with db.session() as session:
        top = session.scalars(
            select(AliasEventRow)
            .where(
                AliasEventRow.alias == alias,
                AliasEventRow.action.in_(PROMOTIONS),
                AliasEventRow.undone_at.is_(None),
            )
            .order_by(AliasEventRow.id.desc())
            .limit(1)
        ).first()
        if top is None:
            raise InvalidRequest(
                f"nothing to roll back: {alias!r} already points at the shipped model",
                code="nothing_to_roll_back",
            )
        _undo(session, top)
        row = AliasEventRow(
            alias=alias, model=top.previous, previous=top.model, action="rollback", at=utcnow()
        )
        session.add(row)
        return _change(row)


def _undo(session: Session, promotion: AliasEventRow) -> None:
    """Mark ``promotion`` undone, unless another rollback got there first."""
    done = session.execute(
        update(AliasEventRow)
        .where(AliasEventRow.id == promotion.id, AliasEventRow.undone_at.is_(None))
        .values(undone_at=utcnow())
        .execution_options(synchronize_session=False)
    )
    if cast(CursorResult[Any], done).rowcount != 1:
        raise InvalidRequest(
            f"{promotion.alias!r} was rolled back by someone else meanwhile: check "
            "`digitrec models list` and try again",
            code="alias_changed",
        )


def history(db: Database, alias: str = PRODUCTION) -> list[AliasChange]:
    """Every move of ``alias``, newest first."""
    with db.session() as session:
        rows = session.scalars(
            select(AliasEventRow)
            .where(AliasEventRow.alias == alias)
            .order_by(AliasEventRow.id.desc())
        )
        return [_change(row) for row in rows]
