"""The prediction API: `create_app` builds a FastAPI app that serves one model bundle with the
routes of `routes`, the input limits of `inputs`, and every refusal as the same JSON shape.

`uvicorn --factory rakuten_classifier.serve:create_app` works as well as
`rakuten-classifier serve` (which also sets the HTTP server's own limits).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from importlib import metadata
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.utils import get_openapi
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException

from rakuten_classifier.bundle import Bundle
from rakuten_classifier.serve.errors import ApiError
from rakuten_classifier.serve.inputs import MAX_METADATA_CHARS, RequestLimits
from rakuten_classifier.serve.routes import administering, predicting, public, reviewing
from rakuten_classifier.serve.schemas import error_responses
from rakuten_classifier.serve.service import Service
from rakuten_classifier.serve.settings import Settings, load_settings
from rakuten_classifier.serve.telemetry import Metrics, RequestContext, configure_logging

SMALL_BODY_BYTES = 16_384  # /token and the endpoints without a body
FORM_OVERHEAD_BYTES = 65_536  # multipart boundaries, headers and the metadata fields
HTTP_KINDS = {400: "bad_request", 404: "not_found", 405: "method_not_allowed", 413: "too_large"}


def create_app(
    settings: Settings | None = None,
    bundle: Bundle | None = None,
    challenger: Bundle | None = None,
) -> FastAPI:
    """The API for `settings` (default: environment and .env). Refuses to start without a
    signing secret of 32 bytes or more and at least one user. The models come from the
    settings (local bundles or the registry) unless `bundle` (and `challenger`) are given."""
    settings = settings or load_settings()
    configure_logging(settings.log_level)
    api = Service.build(settings, bundle, challenger)

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        await api.start()
        yield
        await api.stop()

    app = FastAPI(
        title="Rakuten product type classifier",
        version=metadata.version("rakuten-classifier"),
        description="Predicts a Rakuten France product's type code from its title, "
        "description and photo. Get a token from POST /token, then send it as a Bearer token. "
        "Every endpoint may also answer 431 (headers too large).",
        lifespan=lifespan,
        responses=error_responses(431),
    )
    app.state.service = api
    predict_limit = settings.max_upload_bytes + 8 * settings.max_text_chars + FORM_OVERHEAD_BYTES
    app.add_middleware(
        RequestLimits,
        limits={
            "/predict": (
                predict_limit,
                f"a photo of at most {settings.max_upload_bytes} bytes and texts of at most "
                f"{settings.max_text_chars} characters",
            ),
            "/predict/batch": (settings.max_batch_bytes, "split the batch"),
            "/feedback": (SMALL_BODY_BYTES, "a product type and the product's identifiers"),
        },
        default=(SMALL_BODY_BYTES, "no upload on this endpoint"),
        max_header_bytes=settings.max_header_bytes,
        refused=lambda kind: api.metrics.errors.labels(kind).inc(),
    )
    app.add_middleware(RequestContext, metrics=api.metrics)  # outermost: sees every response
    install_error_handlers(app, api.metrics)
    for router in (public, predicting, reviewing, administering):
        app.include_router(router)
    app.openapi = lambda: openapi_schema(app, settings)  # type: ignore[method-assign]
    return app


def install_error_handlers(app: FastAPI, metrics: Metrics) -> None:
    """Every refusal as JSON {error, detail, field?, fields?, request_id}, counted by kind."""

    def error_response(
        request: Request, error: ApiError, extra: dict[str, Any] | None = None
    ) -> JSONResponse:
        metrics.errors.labels(error.kind).inc()
        body = {**error.payload(), **(extra or {}), "request_id": request.state.request_id}
        return JSONResponse(body, error.status, headers=error.headers)

    @app.exception_handler(ApiError)
    async def refused(request: Request, error: ApiError) -> JSONResponse:
        return error_response(request, error)

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, error: RequestValidationError) -> JSONResponse:
        # The offending values are left out: they may be passwords or megabytes of text.
        fields = [
            {
                "field": ".".join(str(part) for part in item["loc"][1:]) or "body",
                "problem": item["msg"],
            }
            for item in error.errors()
        ]
        detail = "; ".join(f"{item['field']}: {item['problem']}" for item in fields)
        return error_response(request, ApiError(422, "invalid_request", detail), {"fields": fields})

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, error: HTTPException) -> JSONResponse:
        kind = HTTP_KINDS.get(error.status_code, "http_error")
        return error_response(
            request, ApiError(error.status_code, kind, str(error.detail), headers=error.headers)
        )


def openapi_schema(app: FastAPI, settings: Settings) -> dict[str, Any]:
    """FastAPI's schema, with the limits of this deployment's settings written in where the
    code checks them itself (so that their refusals carry the API's own error kinds)."""
    if app.openapi_schema:
        return app.openapi_schema
    schema = get_openapi(
        title=app.title,
        version=app.version,
        description=app.description,
        routes=app.routes,
    )
    components = schema["components"]["schemas"]
    form = components["Body_predict_predict_post"]
    form["required"] = sorted({*form.get("required", []), "designation"})
    fields = form["properties"]
    for name, field in fields.items():
        # A multipart form has no null: an optional field is one that may be left out.
        alternatives = [
            option for option in field.pop("anyOf", [field]) if option.get("type") != "null"
        ]
        field.update(alternatives[0])
        field.pop("default", None)
        if field.get("type") == "string" and name != "image":
            texts = ("designation", "description")
            field["maxLength"] = settings.max_text_chars if name in texts else MAX_METADATA_CHARS
    fields["designation"]["minLength"] = 1
    # Over RAKUTEN_API_BATCH_MAX a batch gets 413, not a validation error: said in words.
    products = components["BatchRequest"]["properties"]["products"]
    products["description"] = f"The products, 1 to {settings.batch_max} (more: 413)"
    app.openapi_schema = schema
    return schema
