"""Request and response bodies of the REST API, as they appear in the OpenAPI document."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from digitrec.config import TOP_K_MAX
from digitrec.rejection import VERDICTS


class TopItem(BaseModel):
    digit: int = Field(ge=0, le=9, examples=[7])
    probability: float = Field(ge=0, le=1, examples=[0.998])


class ModelRef(BaseModel):
    name: str = Field(examples=["digitnet"])
    version: str = Field(examples=["20261125-120301"])


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
    model: ModelRef
    processing_ms: float = Field(ge=0, description="server time from request to answer")
    input_image: str | None = Field(
        None,
        description="the 28x28 image the model saw, as a PNG data URL "
        "(only with include_input=true)",
    )


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
