"""Wire schemas: the Label Studio ML backend protocol (1.23) and the admin API.

Label Studio sends more fields than we read; request models allow extra fields so a newer Label Studio does not
break the backend. Responses are exactly what Label Studio expects (see ``POST /predict``: one entry per task, in
order, never a bare list).
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field


class _Incoming(BaseModel):
    model_config = ConfigDict(extra="allow", populate_by_name=True)


# --- Label Studio -> backend ---------------------------------------------------------------------------------


class Task(_Incoming):
    """One Label Studio task as sent to ``/predict`` (``data`` holds the imported values)."""

    id: int | None = None
    data: dict[str, Any] = Field(default_factory=dict)


class PredictRequest(_Incoming):
    """``POST /predict`` body."""

    tasks: list[Task]
    project: str | None = Field(default=None, description='"<project id>.<created timestamp>"')
    label_config: str | None = None
    params: dict[str, Any] | None = None


class SetupRequest(_Incoming):
    """``POST /setup`` body (``schema`` is the project's label config XML)."""

    project: str | None = None
    label_schema: str | None = Field(default=None, alias="schema")
    hostname: str | None = None
    access_token: str | None = Field(default=None, repr=False)
    extra_params: Any = None


# --- backend -> Label Studio ---------------------------------------------------------------------------------


class ChoicesValue(BaseModel):
    """``value`` of a Choices result."""

    choices: list[str]


class ChoicesResult(BaseModel):
    """One Choices result item (``from_name`` / ``to_name`` from the project's label config)."""

    from_name: str
    to_name: str
    type: Literal["choices"] = "choices"
    value: ChoicesValue


class TaskPrediction(BaseModel):
    """The prediction for one task; ``result`` is empty when the series could not be read (score 0)."""

    result: list[ChoicesResult]
    score: float = Field(ge=0.0, le=1.0)
    model_version: str


class PredictResponse(BaseModel):
    """``POST /predict`` answer: exactly one entry per task, in request order."""

    results: list[TaskPrediction]


class SetupResponse(BaseModel):
    """``POST /setup`` answer: the version that will serve this project's predictions."""

    model_version: str


class HealthResponse(BaseModel):
    """``GET /health`` answer."""

    status: Literal["UP"] = "UP"
    model_class: str = "ctphase"


class VersionsResponse(BaseModel):
    """``GET /versions`` answer."""

    versions: list[str]


class WebhookAccepted(BaseModel):
    """``POST /webhook`` answer, sent before the event is processed."""

    status: Literal["accepted"] = "accepted"
    action: str | None = None


# --- admin API -----------------------------------------------------------------------------------------------


class VersionOut(BaseModel):
    """One registered model version as listed by ``GET /admin/versions``."""

    id: int
    project: str
    version: int
    label: str
    preset: str
    arch: str
    classes: list[str]
    sha256: str
    artifact_uri: str
    metrics: dict[str, Any]
    training_job_id: int | None
    parent_version_id: int | None
    created_at: datetime
    is_champion: bool
    n_predictions: int


class VersionsOut(BaseModel):
    """``GET /admin/versions`` answer."""

    project: str
    champion: str | None
    champion_project: str | None = Field(description="project whose champion serves (the default one as fallback)")
    versions: list[VersionOut]


class PromoteIn(BaseModel):
    """``POST /admin/promote`` body: ``version`` is a number (3), ``"v3"`` or a label (``"ctphase-7-v3"``)."""

    version: int | str
    project: str | None = None


class RollbackIn(BaseModel):
    """``POST /admin/rollback`` body."""

    project: str | None = None


class RegisterIn(BaseModel):
    """``POST /admin/register`` body: a model directory on the server (copied into the model store)."""

    path: str
    project: str | None = None
    promote: bool = False


class ChampionOut(BaseModel):
    """The champion after a promote / rollback / register."""

    project: str
    champion: str
    previous: str | None
    action: str


class RegisteredOut(BaseModel):
    """``POST /admin/register`` answer."""

    version: VersionOut
    promoted: bool


class ErrorOut(BaseModel):
    """Every error response: a message that says what to fix, and the request id for the logs."""

    detail: str
    kind: str
    request_id: str | None = None
