"""What the API accepts and answers, as Pydantic models: they validate the requests and make
the OpenAPI schema (`/openapi.json`, `/docs`), so the schema describes the real API."""

from __future__ import annotations

from pydantic import BaseModel, Field, StrictInt, StrictStr

# Echoed back as sent: a string or an integer, nothing converted (a boolean is not an id).
Identifier = StrictStr | StrictInt | None

TOP_K = 5


class ClassProbability(BaseModel):
    prdtypecode: int
    category: str
    probability: float


class ProductPrediction(BaseModel):
    prdtypecode: int = Field(description="The predicted product type code")
    category: str = Field(description="Its category name")
    probability: float = Field(description="Its probability")
    top: list[ClassProbability] = Field(description=f"The {TOP_K} most probable product types")
    modalities: list[str] = Field(description='What the answer used: ["text"] or ["text", "image"]')
    image_problem: str | None = Field(None, description="Why a photo sent was not used")
    product_identifier: str | int | None = None
    product_id: str | int | None = None
    imageid: str | int | None = None


class PredictResponse(ProductPrediction):
    model_version: str = Field(description="The bundle that answered (its content hash)")
    variant: str = Field(description="champion, or challenger (A/B testing)")
    latency_ms: float


class BatchProduct(BaseModel):
    """One product of a batch. A product whose content is unusable (empty or invisible title,
    text or photo over the limits, a photo that is not one) gets its own error in the answer;
    the others are still classified."""

    designation: str = Field(
        description="The product's title; an empty one gets the item error empty_designation"
    )
    description: str | None = None
    product_identifier: Identifier = None
    product_id: Identifier = None
    imageid: Identifier = None
    image: str | None = Field(None, description="The photo, base64 (or a base64 data: URL)")


class BatchRequest(BaseModel):
    products: list[BatchProduct] = Field(
        min_length=1, description="The products, at most RAKUTEN_API_BATCH_MAX (else 413)"
    )


class BatchItem(ProductPrediction):
    index: int
    status: int = 200
    model_version: str
    variant: str


class BatchItemError(BaseModel):
    index: int
    status: int
    error: str
    detail: str
    field: str | None = None


class BatchResponse(BaseModel):
    model_version: str = Field(description="The champion's (each result names its own model)")
    latency_ms: float
    succeeded: int
    failed: int
    results: list[BatchItem | BatchItemError] = Field(description="One per product, in order")


class TokenResponse(BaseModel):
    access_token: str
    token_type: str = "bearer"
    expires_in: int = Field(description="Seconds the token stays valid")


class ServedModelInfo(BaseModel):
    variant: str
    model_version: str
    registry_version: str | None
    source: str


class StatusResponse(BaseModel):
    status: str = Field(description="up, or down while the model is not running (503)")
    model_version: str = Field(description="The champion's")
    classes: int
    image_model: bool
    mode: str = Field(description="off, ab or shadow")
    models: list[ServedModelInfo]
    store_backlog: int = Field(description="Predictions and feedback not yet in the database")
    uptime_s: float


class FeedbackRequest(BaseModel):
    """The true product type of a product, as an administrator assigned it. Name the product
    by at least one of its identifiers (as sent to /predict) or the prediction's request id."""

    prdtypecode: StrictInt = Field(description="The true product type code")
    product_identifier: StrictStr | None = Field(None, max_length=256)
    product_id: StrictStr | StrictInt | None = None
    request_id: StrictStr | None = Field(None, max_length=128)
    comment: StrictStr | None = Field(None, max_length=2000)


class FeedbackResponse(BaseModel):
    feedback_id: str
    status: str = Field(
        description="accepted: on disk, written to the database as soon as it is available"
    )


class ReloadResponse(BaseModel):
    changed: list[str] = Field(description="The variants whose model was swapped")
    models: list[ServedModelInfo]


class FieldProblem(BaseModel):
    field: str
    problem: str


class ErrorResponse(BaseModel):
    """Every refusal: a stable `error` kind for programs, a `detail` for people."""

    error: str = Field(description="What went wrong, e.g. empty_designation, rate_limited")
    detail: str = Field(description="What is wrong and where, and what to do")
    field: str | None = Field(None, description="The request field at fault, if one is")
    fields: list[FieldProblem] | None = Field(
        None, description="With invalid_request: each invalid field and its problem"
    )
    request_id: str = Field(description="The id of the request in the server's logs")


# What each refusal means, for the OpenAPI schema of every endpoint that can answer it.
ERROR_MEANINGS = {
    400: "bad_request: a body that cannot be read (invalid JSON or UTF-8, broken multipart)",
    401: "missing_token, invalid_token, token_expired or bad_credentials",
    403: "forbidden: the token's user lacks the role this endpoint needs",
    413: "too_large, image_too_large, batch_too_large or too_many_pixels",
    415: "not_an_image or unsupported_format",
    422: "invalid_request (see fields), empty_designation, text_too_long, invalid_field, "
    "corrupt, invalid_base64, unknown_prdtypecode or missing_product",
    429: "rate_limited or login_rate_limited: retry after the Retry-After header's seconds",
    431: "headers_too_large: the request's headers are over the server's limit",
    503: "not_ready, overloaded, store_full or registry_unavailable: retry after the "
    "Retry-After header's seconds",
}


def error_responses(*statuses: int) -> dict[int | str, dict[str, object]]:
    """The OpenAPI `responses` entries of these refusals, all with the ErrorResponse body."""
    return {
        status: {"model": ErrorResponse, "description": ERROR_MEANINGS[status]}
        for status in statuses
    }
