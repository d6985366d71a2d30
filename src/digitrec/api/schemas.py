"""Request and response bodies of the REST API, as they appear in the OpenAPI document."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from digitrec.config import TOP_K_MAX
from digitrec.rejection import VERDICTS


class TopItem(BaseModel):
    digit: int = Field(ge=0, le=9, examples=[7])
    probability: float = Field(ge=0, le=1, examples=[0.998])


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


class FeedbackIn(BaseModel):
    """A user's correction of one answer: the right digit, null for "not a digit", or
    ``correct: true`` when the answer was right."""

    model_config = ConfigDict(extra="forbid")
    prediction_id: str = Field(pattern=PREDICTION_ID_PATTERN, description="from the answer")
    label: int | None = Field(
        None, ge=0, le=9, description="the right digit; null: it is not a digit"
    )
    correct: Literal[True] | None = Field(None, description="true: the answer was right")

    @model_validator(mode="after")
    def _one_of(self) -> FeedbackIn:
        if ("label" in self.model_fields_set) == (self.correct is not None):
            raise ValueError("send either 'label' (a digit, or null) or 'correct': true")
        return self


class FeedbackOut(BaseModel):
    prediction_id: str
    label: int | None = Field(description="the right digit as stored; null: not a digit")
    right: bool = Field(description="whether the answer served was right")
    model: ModelRef
    stored: list[str] = Field(description="what was stored with the correction")


class PredictJSON(BaseModel):
    """JSON form of a prediction request."""

    model_config = ConfigDict(extra="forbid")
    image: str = Field(
        min_length=1,
        description="the image file as base64, or a data URL such as data:image/png;base64,...",
    )
    top_k: int | None = Field(None, ge=1, le=TOP_K_MAX, description="answers to return (default 3)")


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
