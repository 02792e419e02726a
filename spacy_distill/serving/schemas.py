"""Request and response bodies of the HTTP API (they also make the OpenAPI schema)."""

from typing import Dict, List, Literal, Optional

from pydantic import BaseModel, ConfigDict, Field, StrictStr


class _Strict(BaseModel):
    # Unknown fields are usually typos ("text" for "texts"): say so instead of
    # silently ignoring them.
    model_config = ConfigDict(extra="forbid")


class ClassifyRequest(_Strict):
    """Texts to classify."""

    texts: List[StrictStr] = Field(
        ..., description="Texts to classify (at most max_texts, each at most max_chars characters)."
    )
    model: Optional[StrictStr] = Field(
        None, description="Model name; the first loaded model if omitted."
    )


class EncodeRequest(_Strict):
    """Texts to turn into fixed-length vectors."""

    texts: List[StrictStr] = Field(
        ..., description="Texts to encode (at most max_texts, each at most max_chars characters)."
    )
    model: Optional[StrictStr] = Field(
        None, description="Model name; the first loaded model if omitted."
    )
    pooling: Literal["mean", "max"] = Field("mean", description="How token vectors are pooled.")


class CatsResult(BaseModel):
    """One text's categories."""

    cats: Dict[str, float] = Field(..., description="Score per label, as set in doc.cats.")
    label: Optional[str] = Field(None, description="Highest-scoring label (null if no categories).")
    score: Optional[float] = Field(None, description="Score of that label.")
    # Only in the answers of a student→teacher cascade (serving/cascade.py).
    model: Optional[Literal["student", "teacher"]] = Field(
        None, description="Cascade only: which model answered this text."
    )
    confidence: Optional[float] = Field(
        None, description="Cascade only: the student's top-class probability that decided (after its temperature)."
    )
    teacher_failed: Optional[bool] = Field(
        None, description="Cascade only: the teacher failed on this deferred text, so the student answered."
    )


class ClassifyResponse(BaseModel):
    """Results of /classify, one per input text, in input order."""

    model: str
    elapsed_ms: float = Field(
        ..., description="Server-side time for the request, queueing included."
    )
    results: List[CatsResult]


class EncodeResponse(BaseModel):
    """Results of /encode, one vector per input text, in input order."""

    model: str
    elapsed_ms: float
    pooling: str
    source: str = Field(
        ..., description='Where vectors came from: "tensor", "transformer" or "vectors".'
    )
    width: int
    vectors: List[List[float]]


class ErrorResponse(BaseModel):
    """Any error: a message saying what went wrong."""

    detail: str


class HealthResponse(BaseModel):
    """Liveness."""

    status: str


class ReadyResponse(BaseModel):
    """Readiness: whether every model is loaded."""

    ready: bool
    models: List[str]
    detail: Optional[str] = None
