"""``GET /api/v1/stats``: the figures the dashboard draws, as JSON others can use too.

Everything is read off the event loop (one thread) from the lifecycle database and the
model registry, and kept for ``CACHE_S`` seconds, so a room full of dashboards costs one
computation every few seconds. Each database figure is an SQL aggregate over a bounded
window; only the latency percentiles read rows, at most ``LATENCY_SAMPLE`` of them.
Without a database (or with no rows) every section is present and empty.
"""

from __future__ import annotations

import asyncio
import csv
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
from fastapi import APIRouter, Depends, Request
from sqlalchemy import ColumnElement, Integer, case, cast, func, select
from starlette.concurrency import run_in_threadpool

from digitrec import experiments, feedback
from digitrec.api.access import guard
from digitrec.api.schemas import Stats, error_responses
from digitrec.api.service import Service
from digitrec.config import Settings
from digitrec.db import Database
from digitrec.db.tables import CorrectionRow, PredictionRow, utcnow
from digitrec.preprocess import PNG_DATA_URL, png_data_url
from digitrec.registry import ModelEntry, Registry
from digitrec.traffic import per_minute

CACHE_S = 3.0  # figures are reused this long (the page asks every 5 s)
TRAFFIC_WINDOW = timedelta(hours=1)  # traffic: the last hour, per minute
DRAWS_WINDOW = timedelta(hours=24)  # what people draw: the last day
LATENCY_SAMPLE = 20_000  # newest answers read for the latency percentiles
RECENT_CORRECTIONS = 24  # corrections shown with their input
CONFIDENCE_BINS = 10  # equal bins over [0, 1]
DIGITS = 10
MISTAKES = 12  # worst test mistakes shown per version
CURVE_COLUMNS = ("train_loss", "val_loss", "train_accuracy", "val_accuracy")

stats = APIRouter(
    prefix="/api/v1",
    tags=["monitoring"],
    dependencies=[Depends(guard)],
    responses=error_responses(401, 403, 429),
)


class StatsCache:
    """The last figures and when they were computed; one computation at a time."""

    def __init__(self) -> None:
        self.lock = asyncio.Lock()
        self.value: dict[str, Any] | None = None
        self.at = -float("inf")


@stats.get(
    "/stats",
    response_model=Stats,
    summary="Figures for the dashboard",
    description="Traffic over the last hour, what people draw, the models and their online "
    "accuracy (with the A/B verdict), recent corrections and each registered version's "
    f"training results. Reused for {CACHE_S:g} s.",
)
async def get_stats(request: Request) -> dict[str, Any]:
    cache: StatsCache | None = getattr(request.app.state, "stats_cache", None)
    if cache is None:
        cache = request.app.state.stats_cache = StatsCache()
    async with cache.lock:
        if time.monotonic() - cache.at >= CACHE_S or cache.value is None:
            service: Service = request.app.state.service
            refs = _served_refs(service)
            cache.value = await run_in_threadpool(compute, service.settings, service.db, refs)
            cache.at = time.monotonic()
        return cache.value


def _served_refs(service: Service) -> tuple[str | None, str | None]:
    """The production and candidate models this process serves (None: not loaded)."""
    routing = service.models.routing if service.models is not None else None
    if routing is None:
        return None, None
    candidate = routing.candidate.predictor.ref if routing.candidate else None
    return routing.production.predictor.ref, candidate


def compute(
    settings: Settings, db: Database | None, refs: tuple[str | None, str | None]
) -> dict[str, Any]:
    """Blocking: every figure of ``Stats``."""
    now = utcnow()
    return {
        "generated_at": now.isoformat(timespec="seconds"),
        "cache_s": CACHE_S,
        "database": db is not None,
        "traffic": traffic(db, now),
        "draws": draws(db, now),
        "models": models(db, refs),
        "corrections": recent_corrections(db),
        "training": training(Registry.from_settings(settings), settings.runs_path),
    }


# --- traffic ------------------------------------------------------------------------------


def _minute_of(db: Database) -> ColumnElement[Any]:
    """Whole minutes since the epoch of an answer's time, in SQL (SQLite stores naive UTC
    text). ``//``: SQLAlchemy 2 renders ``/`` as true division, which would group by second."""
    if db.dialect == "sqlite":
        return cast(func.strftime("%s", PredictionRow.created_at), Integer) // 60
    return cast(func.floor(func.extract("epoch", PredictionRow.created_at) / 60), Integer)


def _percentiles(values: list[float] | np.ndarray) -> tuple[float | None, float | None]:
    if len(values) == 0:
        return None, None
    p50, p95 = np.percentile(np.asarray(values, dtype=np.float64), [50, 95])
    return round(float(p50), 2), round(float(p95), 2)


def traffic(db: Database | None, now: datetime) -> dict[str, Any]:
    """Requests and errors per minute over the last hour (every process's counts), and
    answers with their latency percentiles per minute (from the prediction log)."""
    end = int(now.timestamp()) // 60 + 1  # the current minute is the last bucket
    first = end - int(TRAFFIC_WINDOW.total_seconds()) // 60
    counts: dict[int, int] = {}
    requests: dict[int, tuple[int, int, int]] = {}
    latencies: dict[int, list[float]] = {}
    sample: list[float] = []
    if db is not None:
        since = datetime.fromtimestamp(first * 60, UTC)
        requests = per_minute(db, since)
        recent = PredictionRow.created_at >= since
        minute = _minute_of(db)
        with db.session() as session:
            for bucket, count in session.execute(
                select(minute, func.count()).where(recent).group_by(minute)
            ):
                counts[int(bucket)] = int(count)
            rows = session.execute(
                select(PredictionRow.created_at, PredictionRow.latency_ms)
                .where(recent)
                .order_by(PredictionRow.created_at.desc())
                .limit(LATENCY_SAMPLE)
            )
            for created_at, latency in rows:
                latencies.setdefault(int(created_at.timestamp()) // 60, []).append(latency)
                sample.append(latency)
    minutes: list[dict[str, Any]] = []
    for bucket in range(first, end):
        p50, p95 = _percentiles(latencies.get(bucket, []))
        n, client, server = requests.get(bucket, (0, 0, 0))
        start = datetime.fromtimestamp(bucket * 60, UTC).isoformat(timespec="minutes")
        minutes.append(
            {
                "minute": start,
                "requests": n,
                "client_errors": client,
                "server_errors": server,
                "predictions": counts.get(bucket, 0),
                "latency_p50_ms": p50,
                "latency_p95_ms": p95,
            }
        )
    window = [requests.get(b, (0, 0, 0)) for b in range(first, end)]
    total, client, server = (sum(column) for column in zip(*window, strict=True))
    p50, p95 = _percentiles(sample)
    return {
        "window_s": int(TRAFFIC_WINDOW.total_seconds()),
        "requests": total,
        "per_second": round(total / TRAFFIC_WINDOW.total_seconds(), 4),
        "client_errors": client,
        "server_errors": server,
        "error_rate": round((client + server) / total, 4) if total else None,
        "predictions": sum(counts.get(b, 0) for b in range(first, end)),
        "latency_p50_ms": p50,
        "latency_p95_ms": p95,
        "latency_sample": len(sample),
        "minutes": minutes,
    }


# --- what people draw ------------------------------------------------------------------


def _confidence_bin() -> ColumnElement[int]:
    """The bin of an answer's confidence, 0 to CONFIDENCE_BINS - 1 (portable SQL)."""
    confidence = PredictionRow.confidence
    whens = [(confidence < (i + 1) / CONFIDENCE_BINS, i) for i in range(CONFIDENCE_BINS - 1)]
    return case(*whens, else_=CONFIDENCE_BINS - 1)


def draws(db: Database | None, now: datetime) -> dict[str, Any]:
    """Answers of the last day by digit, by verdict and by confidence."""
    by_digit = [0] * DIGITS
    by_verdict: dict[str, int] = {}
    confidence = [0] * CONFIDENCE_BINS
    if db is not None:
        recent = PredictionRow.created_at >= now - DRAWS_WINDOW
        p, bin_ = PredictionRow, _confidence_bin()
        with db.session() as session:
            for digit, verdict, count in session.execute(
                select(p.digit, p.verdict, func.count()).where(recent).group_by(p.digit, p.verdict)
            ):
                if 0 <= digit < DIGITS:
                    by_digit[digit] += int(count)
                by_verdict[verdict] = by_verdict.get(verdict, 0) + int(count)
            for index, count in session.execute(
                select(bin_, func.count()).where(recent).group_by(bin_)
            ):
                confidence[int(index)] = int(count)
    total = sum(by_verdict.values())
    flagged = total - by_verdict.get("digit", 0)
    return {
        "window_s": int(DRAWS_WINDOW.total_seconds()),
        "predictions": total,
        "by_digit": by_digit,
        "by_verdict": by_verdict,
        "flagged_share": round(flagged / total, 4) if total else None,
        "confidence_edges": [round(i / CONFIDENCE_BINS, 2) for i in range(CONFIDENCE_BINS + 1)],
        "confidence_counts": confidence,
    }


# --- models: online accuracy and the A/B test -----------------------------------------------


def _online(model: str, right: int, n: int, **extra: Any) -> dict[str, Any]:
    from digitrec import abstats  # statsmodels takes a second to import: only here

    low, high = abstats.wilson_interval(right, n) if n else (None, None)
    return {
        "model": model,
        **extra,
        "corrections": n,
        "right": right,
        "accuracy": round(right / n, 4) if n else None,
        "accuracy_low": None if low is None else round(low, 4),
        "accuracy_high": None if high is None else round(high, 4),
    }


def models(db: Database | None, refs: tuple[str | None, str | None]) -> dict[str, Any]:
    production, candidate = refs
    result: dict[str, Any] = {
        "production": production,
        "candidate": candidate,
        "online": [],
        "experiment": None,
    }
    if db is None:
        return result
    c = CorrectionRow
    right = func.sum(case((c.right.is_(True), 1), else_=0))
    with db.session() as session:
        rows = session.execute(select(c.model, func.count(), right).group_by(c.model)).all()
    result["online"] = [_online(model, int(r or 0), int(n)) for model, n, r in sorted(rows)]
    experiment = experiments.current(db) or experiments.latest(db)
    if experiment is not None:
        result["experiment"] = _experiment(db, experiment)
    return result


def _experiment(db: Database, exp: experiments.Experiment) -> dict[str, Any]:
    from digitrec import abstats

    rows = experiments.arm_rows(db, exp)
    counts = {arm: abstats.ArmCounts(**vars(rows[arm])) for arm in experiments.ARMS}
    report = abstats.summarize(counts[experiments.PRODUCTION], counts[experiments.CANDIDATE])
    models = {experiments.PRODUCTION: exp.production, experiments.CANDIDATE: exp.candidate}
    arms = [
        {
            "model": models[arm],
            "arm": arm,
            "requests": s.requests,
            "corrections": s.corrections,
            "right": s.right,
            "accuracy": s.accuracy,
            "accuracy_low": s.accuracy_low,
            "accuracy_high": s.accuracy_high,
        }
        for arm, s in report.arms.items()
    ]
    return {
        "id": exp.id,
        "running": exp.running,
        "production": exp.production,
        "candidate": exp.candidate,
        "share": exp.share,
        "started_at": exp.started_at.isoformat(timespec="seconds"),
        "verdict": report.verdict,
        "message": report.message,
        "needed_corrections": report.needed_corrections,
        "arms": arms,
    }


# --- recent corrections -------------------------------------------------------------------


def recent_corrections(db: Database | None) -> list[dict[str, Any]]:
    if db is None:
        return []
    return [
        {
            "prediction_id": c.prediction_id,
            "corrected_at": c.corrected_at.isoformat(timespec="seconds"),
            "model": c.model,
            "digit": c.digit,
            "verdict": c.verdict,
            "confidence": round(c.confidence, 4),
            "label": c.label,
            "right": c.right,
            "image": png_data_url(c.input),
        }
        for c in feedback.list_feedback(db, limit=RECENT_CORRECTIONS)
    ]


# --- training, per registered version -------------------------------------------------------


def _number(value: Any) -> float | None:
    if isinstance(value, bool):
        return None
    try:
        return float(value) if value not in (None, "") else None
    except (TypeError, ValueError):
        return None


def curves(manifest: dict[str, Any], runs: Path) -> dict[str, Any] | None:
    """The learning curves: the manifest's history, else the run folder's metrics.csv."""
    rows = manifest.get("history")
    if not isinstance(rows, list) or not rows:
        run = manifest.get("run")
        rows = _metrics_csv(runs / run) if isinstance(run, str) and _plain_name(run) else None
    if not rows or not all(isinstance(r, dict) for r in rows):
        return None
    epochs = [_number(row.get("epoch")) for row in rows]
    if any(e is None for e in epochs):
        return None
    return {
        "epoch": [int(e or 0) for e in epochs],
        **{col: [_number(row.get(col)) for row in rows] for col in CURVE_COLUMNS},
    }


def _metrics_csv(run_dir: Path) -> list[dict[str, Any]] | None:
    try:
        with (run_dir / "metrics.csv").open(encoding="utf-8", newline="") as handle:
            return list(csv.DictReader(handle))
    except OSError:
        return None


def mistakes(metrics: dict[str, Any]) -> list[dict[str, Any]]:
    """The manifest's worst test mistakes; anything malformed is left out."""
    items = metrics.get("worst_mistakes")
    keys = {"index", "label", "predicted", "confidence", "image"}
    return [
        {k: item[k] for k in keys}
        for item in (items if isinstance(items, list) else [])
        if isinstance(item, dict)
        and keys <= item.keys()
        and isinstance(item["image"], str)
        and item["image"].startswith(PNG_DATA_URL)
    ][:MISTAKES]


def _ece(manifest: dict[str, Any]) -> float | None:
    calibration = manifest.get("calibration") or {}
    for key in ("test_ece_after", "test_ece_before", "test_ece"):
        if isinstance(calibration.get(key), int | float):
            return float(calibration[key])
    return None


def _version(entry: ModelEntry, runs: Path) -> dict[str, Any]:
    metrics = entry.metrics
    matrix = metrics.get("confusion_matrix")
    return {
        "ref": entry.ref,
        "created_at": entry.created_at,
        "dry_run": entry.dry_run,
        "bundled": entry.bundled,
        "test_accuracy": metrics.get("test_accuracy"),
        "test_size": metrics.get("test_size"),
        "ece": _ece(entry.manifest),
        "confusion_matrix": matrix if isinstance(matrix, list) else None,
        "per_class": [
            {"digit": c["digit"], "precision": c["precision"], "recall": c["recall"]}
            for c in metrics.get("per_class", [])
            if isinstance(c, dict) and {"digit", "precision", "recall"} <= c.keys()
        ],
        "curves": curves(entry.manifest, runs),
        "mistakes": mistakes(metrics),
    }


def _plain_name(name: str) -> bool:
    """A folder name, not a path: a manifest never sends the reader elsewhere."""
    return bool(name) and Path(name).name == name and not name.startswith(".")


def training(registry: Registry, runs: Path) -> list[dict[str, Any]]:
    return [_version(entry, runs) for entry in registry.list()]
