"""Request and response bodies of the REST API, as they appear in the OpenAPI document."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from digitrec.config import TOP_K_MAX
from digitrec.preprocess import FORMAT_LIST
from digitrec.rejection import VERDICTS


class TopItem(BaseModel):
    digit: int = Field(ge=0, le=9, examples=[7])
    probability: float = Field(ge=0, le=1, examples=[0.998])
    character: str | None = Field(
        None,
        min_length=1,
        max_length=1,
        description="the digit in the answer's script",
        examples=["7"],
    )


class AlternativeOut(BaseModel):
    script: str = Field(examples=["bengali"])
    digit: int = Field(ge=0, le=9, examples=[4])
    character: str = Field(min_length=1, max_length=1, examples=["৪"])
    probability: float = Field(
        ge=0, le=1, description="how likely the image is in this script", examples=[0.31]
    )


class ModelRef(BaseModel):
    name: str = Field(examples=["digitnet"])
    version: str = Field(examples=["20261125-120301"])


PREDICTION_ID_PATTERN = r"^[0-9a-f]{32}$"
VERDICT_HELP = "; ".join(f"`{name}`: {meaning}" for name, meaning in VERDICTS.items())


class PredictionOut(BaseModel):
    digit: int = Field(ge=0, le=9, description="the most likely digit (the best guess)")
    confidence: float = Field(
        ge=0, le=1, description="its calibrated probability, given that the image is a digit"
    )
    is_digit: bool = Field(description="true when the verdict is `digit`")
    verdict: Literal["digit", "not_a_digit", "several_digits", "unsure"] = Field(
        description="whether the image shows one digit: " + VERDICT_HELP
    )
    digit_score: float | None = Field(
        description="the score the verdict compares with thresholds chosen on validation "
        "data (higher: more like one digit; its scale depends on the model's rejection "
        "method, see the model card); null for a model that cannot reject"
    )
    top: list[TopItem] = Field(
        description="the top_k digits, most likely first (given that the image is a digit)"
    )
    model: ModelRef = Field(description="the model version that produced this answer")
    processing_ms: float = Field(ge=0, description="server time from request to answer")
    prediction_id: str | None = Field(
        None,
        pattern=PREDICTION_ID_PATTERN,
        description="send it to POST /api/v1/feedback to correct this answer (absent when "
        "the server keeps no answers: log_predictions off or no database)",
    )
    arm: Literal["production", "candidate"] | None = Field(
        None, description="the A/B test arm that served this client, during an experiment"
    )
    input_image: str | None = Field(
        None,
        description="the 28x28 image the model saw, as a PNG data URL "
        "(only with include_input=true)",
    )
    script: str = Field(
        "latin",
        description="the writing system the digit was read in: the one asked for with "
        "`script`, or the one `auto` found",
        examples=["devanagari"],
    )
    character: str = Field(
        min_length=1,
        max_length=1,
        description="the digit as it is written in that script (`digit` is always its value 0-9)",
        examples=["७"],
    )
    script_uncertain: bool = Field(
        False,
        description="with script=auto: another script is almost as likely and reads another "
        "value (the verdict is then `unsure`); see `alternatives`",
    )
    alternatives: list[AlternativeOut] = Field(
        default_factory=list, description="those other readings, most likely first"
    )


class _OneOf(BaseModel):
    label: int | None = Field(
        None, ge=0, le=9, description="the right digit; null: it is not a digit"
    )
    correct: Literal[True] | None = Field(None, description="true: the answer was right")

    @model_validator(mode="after")
    def _one_of(self) -> _OneOf:
        if ("label" in self.model_fields_set) == (self.correct is not None):
            raise ValueError("send either 'label' (a digit, or null) or 'correct': true")
        return self


class FeedbackIn(_OneOf):
    """A user's correction of one answer: the right digit, null for "not a digit", or
    ``correct: true`` when the answer was right."""

    model_config = ConfigDict(extra="forbid")
    prediction_id: str = Field(pattern=PREDICTION_ID_PATTERN, description="from the answer")


class FeedbackOut(BaseModel):
    prediction_id: str
    label: int | None = Field(description="the right digit as stored; null: not a digit")
    right: bool = Field(description="whether the answer served was right")
    model: ModelRef
    stored: list[str] = Field(description="what was stored with the correction")


OFFLINE_BATCH_MAX = 50  # corrections in one POST /api/v1/feedback/offline
INPUT_BASE64_MAX = 1100  # base64 of the 784-byte 28x28 input, with room for padding


class OfflineCorrectionIn(_OneOf):
    """An answer the page's offline engine gave, with the person's correction."""

    model_config = ConfigDict(extra="forbid")
    prediction_id: str = Field(pattern=PREDICTION_ID_PATTERN, description="made by the page")
    answered_at: datetime = Field(description="when the page answered, with a time zone")
    model: ModelRef = Field(description="the model the page downloaded")
    digit: int = Field(ge=0, le=9)
    confidence: float = Field(ge=0, le=1)
    verdict: Literal["digit", "not_a_digit", "several_digits", "unsure"]
    probabilities: list[float] = Field(min_length=10, max_length=10, description="of each digit")
    input: str = Field(
        max_length=INPUT_BASE64_MAX,
        description="the 28x28 image the model saw: base64 of 784 bytes",
    )


class OfflineFeedbackIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    corrections: list[OfflineCorrectionIn] = Field(min_length=1, max_length=OFFLINE_BATCH_MAX)


class OfflineFeedbackOut(BaseModel):
    stored: list[str] = Field(description="the prediction ids stored (all of them)")


class NumberDigitOut(BaseModel):
    digit: int = Field(description="the most likely digit (meaningful when verdict is digit)")
    character: str = Field(
        min_length=1, max_length=1, description="the digit in the number's script"
    )
    confidence: float
    verdict: str = Field(description=VERDICT_HELP)
    box: list[int] = Field(
        min_length=4,
        max_length=4,
        description="[x, y, width, height] in the uploaded image's pixels",
    )
    top: list[TopItem]
    prediction_id: str | None = Field(
        None, description="this digit's answer, to correct with POST /api/v1/feedback"
    )


class NumberOut(BaseModel):
    number: str = Field(description="the digits read, left to right (only those read)")
    script: str = Field(
        "latin", description="the writing system the number was read in (one for all digits)"
    )
    characters: str = Field(
        "", description="`number` as it is written in that script (most significant first)"
    )
    complete: bool = Field(
        description="false: a mark is not a digit (its verdict stands in its place in "
        "`digits`), so `number` is not the whole of what is written"
    )
    confidence: float = Field(description="product of the digits' confidences")
    digits: list[NumberDigitOut] = Field(description="every mark found, left to right")
    model: ModelRef
    prediction_id: str | None = Field(
        None, description="null: each digit has its own (see `digits`)"
    )
    processing_ms: float


class PredictJSON(BaseModel):
    """JSON form of a prediction request."""

    model_config = ConfigDict(extra="forbid")
    image: str = Field(
        min_length=1,
        description="the image file as base64, or a data URL such as data:image/png;base64,...",
    )
    top_k: int | None = Field(None, ge=1, le=TOP_K_MAX, description="answers to return (default 3)")


class ScriptOut(BaseModel):
    name: str = Field(examples=["devanagari"])
    digits: str = Field(description="its ten digits, 0 to 9", examples=["०१२३४५६७८९"])
    right_to_left: bool = Field(description="written right to left (Arabic, Persian)")
    held_out_accuracy: float | None = Field(
        None, description="with the script given, on fonts held out of training"
    )


class ModelCard(BaseModel):
    name: str
    version: str
    architecture: str
    parameters: int | None
    test_accuracy: float | None = Field(
        description="fraction of MNIST test images right, from the model's manifest"
    )
    test_size: int | None
    val_accuracy: float | None
    trained_at: str | None
    epochs: int | None
    train_seconds: float | None
    device: str | None
    dry_run: bool
    preprocessing: dict[str, Any]
    rejection: dict[str, Any] | None = Field(
        description="how verdicts are made: method, thresholds and validation figures; "
        "null for a model that cannot reject"
    )
    calibration: dict[str, Any] | None = Field(
        description="temperature and MNIST test calibration error before and after"
    )
    feedback: dict[str, Any] | None = Field(
        None,
        description="for a model fine-tuned on users' corrections: the model it started "
        "from, corrections used and held out, accuracy before and after",
    )
    backend: str = Field(description="inference engine: onnx or torch")
    scripts: list[ScriptOut] = Field(
        default_factory=list,
        description="the writing systems `script` accepts besides `auto`, Latin first, with "
        "the script model's accuracy on fonts held out of its training (empty: Latin only)",
    )


class ErrorDetail(BaseModel):
    code: str = Field(examples=["invalid_image"])
    message: str = Field(examples=["the image is damaged or truncated"])


class ErrorOut(BaseModel):
    error: ErrorDetail


class Health(BaseModel):
    status: str = "ok"


class Ready(BaseModel):
    ready: bool
    model: ModelRef | None = None
    reason: str | None = None


class WebToken(BaseModel):
    token: str
    expires_in: int = Field(description="seconds")


# --- GET /api/v1/stats: what the dashboard shows ---------------------------------------


class TrafficMinute(BaseModel):
    minute: str = Field(description="start of the minute, UTC, ISO 8601")
    requests: int = Field(ge=0, description="API requests answered or refused in this minute")
    client_errors: int = Field(ge=0, description="of which 4xx: the input or the caller refused")
    server_errors: int = Field(ge=0, description="of which 5xx: busy, not ready or failed")
    predictions: int = Field(ge=0, description="answers logged in this minute")
    latency_p50_ms: float | None = Field(description="median server time; null: no answers")
    latency_p95_ms: float | None


class Traffic(BaseModel):
    window_s: int = Field(description="the window: the last hour")
    requests: int = Field(
        ge=0,
        description="API requests (every /api/ route but this one) answered or refused by "
        "every worker and replica sharing the database, refusals of the HTTP layer included",
    )
    per_second: float = Field(ge=0, description="requests per second over the window")
    client_errors: int = Field(ge=0)
    server_errors: int = Field(ge=0)
    error_rate: float | None = Field(description="errors (4xx and 5xx) per request; null: none")
    predictions: int = Field(ge=0, description="answers logged in the window")
    latency_p50_ms: float | None
    latency_p95_ms: float | None
    latency_sample: int = Field(
        ge=0, description="newest answers the latency percentiles were computed from (capped)"
    )
    minutes: list[TrafficMinute] = Field(
        description="one bucket per minute, oldest first, empty minutes included"
    )


class Draws(BaseModel):
    window_s: int = Field(description="the window: the last 24 hours")
    predictions: int = Field(ge=0)
    by_digit: list[int] = Field(description="answers per best-guess digit, 0 to 9")
    by_verdict: dict[str, int] = Field(description="answers per verdict (digit, not_a_digit, ...)")
    flagged_share: float | None = Field(
        description="share of answers whose verdict is not `digit`; null: no answers"
    )
    confidence_edges: list[float] = Field(description="11 bin edges from 0 to 1")
    confidence_counts: list[int] = Field(description="answers per confidence bin (10 bins)")


class OnlineAccuracy(BaseModel):
    model: str = Field(description="NAME:VERSION")
    arm: str | None = Field(None, description="the A/B arm, in an experiment's figures")
    requests: int | None = Field(None, description="answers served (experiment arms only)")
    corrections: int = Field(ge=0, description="answers people corrected or confirmed")
    right: int = Field(ge=0, description="of them, answers that were right")
    accuracy: float | None = Field(description="right / corrections; null: no corrections")
    accuracy_low: float | None = Field(description="Wilson 95 % interval")
    accuracy_high: float | None


class ExperimentStats(BaseModel):
    id: int
    running: bool
    production: str
    candidate: str
    share: float = Field(description="share of clients on the candidate arm")
    started_at: str
    verdict: str = Field(description="better | worse | not_enough_data (digitrec.abstats)")
    message: str
    needed_corrections: int | None
    arms: list[OnlineAccuracy]


class ModelsStats(BaseModel):
    production: str | None = Field(description="the model serving production, NAME:VERSION")
    candidate: str | None = Field(description="the model on the candidate arm, if any")
    online: list[OnlineAccuracy] = Field(description="per model, accuracy from corrections")
    experiment: ExperimentStats | None = Field(description="the running or latest A/B test")


class CorrectionItem(BaseModel):
    prediction_id: str
    corrected_at: str
    model: str
    digit: int = Field(description="what the model said")
    verdict: str
    confidence: float
    label: int | None = Field(description="what the person said; null: not a digit")
    right: bool = Field(description="the model's answer was right")
    image: str = Field(description="the 28x28 input the model saw, a PNG data URL")


class ClassMetrics(BaseModel):
    digit: int
    precision: float
    recall: float


class Curves(BaseModel):
    epoch: list[int]
    train_loss: list[float | None]
    val_loss: list[float | None]
    train_accuracy: list[float | None]
    val_accuracy: list[float | None]


class Mistake(BaseModel):
    index: int = Field(ge=0, description="position in the MNIST test set")
    label: int = Field(description="the true digit")
    predicted: int = Field(description="the digit the model said")
    confidence: float
    image: str = Field(description="the 28x28 test image, a PNG data URL")


class TrainingStats(BaseModel):
    ref: str = Field(description="NAME:VERSION")
    created_at: str
    dry_run: bool
    bundled: bool = Field(description="ships with digitrec")
    test_accuracy: float | None
    test_size: int | None
    ece: float | None = Field(description="expected calibration error on the test set")
    confusion_matrix: list[list[int]] | None = Field(description="rows: true digit; columns: said")
    per_class: list[ClassMetrics]
    curves: Curves | None = Field(
        description="per epoch, from the manifest (or the run folder's metrics.csv)"
    )
    mistakes: list[Mistake] = Field(
        description="the test images it got wrong with the most confidence, worst first"
    )


class Stats(BaseModel):
    generated_at: str = Field(description="when these figures were computed, UTC")
    cache_s: float = Field(description="figures are reused for this long")
    database: bool = Field(description="false: no lifecycle database, so no live figures")
    traffic: Traffic
    draws: Draws
    models: ModelsStats
    corrections: list[CorrectionItem] = Field(description="the newest corrections, newest first")
    training: list[TrainingStats] = Field(description="every registered version, oldest first")


class ModelVersionRef(ModelRef):
    ref: str = Field(examples=["digitnet:20261125-120301"])


class OfflineRejection(BaseModel):
    method: Literal["extra_class", "max_softmax", "energy"] = Field(
        description="the score the verdict is taken from (rejection.py)"
    )
    accept: float = Field(description="score at or above: `digit`")
    reject: float = Field(description="score below: `not_a_digit` or `several_digits`")


class OfflineFile(BaseModel):
    url: str
    sha256: str
    bytes: int = Field(ge=0)


class RuntimeFile(BaseModel):
    name: str = Field(examples=["ort-wasm-simd.wasm"])
    url: str
    bytes: int = Field(ge=0)


class OfflineRuntime(BaseModel):
    package: str = Field(examples=["onnxruntime-web"])
    version: str = Field(examples=["1.18.0"])
    files: list[RuntimeFile] = Field(description="the ES module first, then its WebAssembly")


class TopKRange(BaseModel):
    default: int = Field(ge=1, le=TOP_K_MAX)
    max: int = Field(ge=1, le=TOP_K_MAX)


class OfflineScript(BaseModel):
    name: str = Field(examples=["devanagari"])
    digits: list[str] = Field(
        min_length=10, max_length=10, description="the characters of 0 to 9 in this script"
    )
    right_to_left: bool = Field(description="the script is written right to left")


class OfflineAuto(BaseModel):
    latin_keep: float = Field(
        description="auto keeps the digit model's accepted answer "
        "while Latin is at least this likely"
    )
    foreign_sure: float = Field(
        description="auto accepts a mark the digit model rejects as a digit of another "
        "script only when the other scripts are this likely (and likelier than not a "
        "digit); otherwise it stays not_a_digit, its digit their best guess"
    )


class OfflineScriptModel(BaseModel):
    """What the engine needs to read a drawing in a script as the server does
    (``multiscript.ScriptModel.read``)."""

    version: str
    scripts: list[OfflineScript] = Field(description="in the order of the outputs, Latin first")
    classes: int = Field(description="10 per script (10 * index + digit), then not-a-digit")
    not_a_digit: bool = Field(description="true: the last output is 'not a digit'")
    preprocessing: dict[str, float] = Field(
        description="mean and std: the 28x28 input (/255) is normalised with them"
    )
    auto: OfflineAuto
    close: float = Field(
        description="another script this likely reading another value: the script is uncertain"
    )
    sure: float = Field(
        description="a script's top probability under this: unsure; "
        "not-a-digit at or above it: not_a_digit"
    )
    rejected: list[str] = Field(description="the digit model's verdicts for non-digits")
    onnx: OfflineFile = Field(description="the script model's ONNX file")


class OfflineModel(BaseModel):
    """What the page's offline engine (static/offline/engine.js) needs and downloads."""

    model: ModelVersionRef = Field(description="the model served in production")
    labels: list[int | str] | None = Field(description="the model's outputs, in order")
    preprocessing: dict[str, Any] = Field(description="the manifest's preprocessing spec")
    pipeline: dict[str, float] = Field(
        description="constants of the server's preprocessing that the browser's port reads"
    )
    temperature: float = Field(gt=0, description="divides the digit logits (calibration)")
    rejection: OfflineRejection | None = Field(
        description="how outputs become a verdict; null: the model cannot reject"
    )
    top_k: TopKRange
    onnx: OfflineFile = Field(description="the model's ONNX file")
    runtime: OfflineRuntime = Field(description="the vendored ONNX Runtime Web files")
    script_model: OfflineScriptModel | None = Field(
        None,
        description="the model that reads digits of other scripts; null: Latin only",
    )
    bundle_bytes: int = Field(
        ge=0,
        description="what going offline downloads: the runtime's files, the model and the "
        "script model",
    )


def error_responses(*codes: int) -> dict[int | str, dict[str, Any]]:
    """The OpenAPI ``responses`` of the error statuses a route may answer with."""
    described = {
        400: "malformed request: empty body, bad JSON or base64, missing field 'image' "
        "(feedback: a body that is not JSON)",
        401: "an API key is required (keys are on) or the key is not valid",
        403: "the API key was revoked",
        404: "no such answer: the prediction id is unknown, or its correction window is over",
        413: "the body or the image (pixels) is over the limit, or decoding it would cost "
        "more than one request may (image_too_costly: CPU time, memory, crafted structure)",
        415: f"not an image format we read (send {FORMAT_LIST})",
        422: "the image is damaged, blank, or a parameter is out of range",
        429: "rate limit reached; see Retry-After",
        503: "no model is loaded, the server is at capacity (busy; try again shortly), or "
        "corrections cannot be stored (no database)",
    }
    return {c: {"model": ErrorOut, "description": described[c]} for c in codes}
