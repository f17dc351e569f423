"""The API's endpoints. Each finds the running API's state in `request.app.state.service`;
protected ones check the bearer token before their body is read (`AuthenticatedRoute`).

Every prediction goes through `Bundle.predict_products`, the function behind the batch command
(`rakuten-classifier predict`), so both give the same classes and probabilities.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Form, Request, Security, UploadFile
from fastapi.responses import JSONResponse, Response
from fastapi.routing import APIRoute
from fastapi.security import OAuth2PasswordBearer, OAuth2PasswordRequestForm
from prometheus_client import CONTENT_TYPE_LATEST

from rakuten_classifier.bundle import BundlePrediction
from rakuten_classifier.config import logger
from rakuten_classifier.serve.errors import BEARER, ApiError
from rakuten_classifier.serve.inputs import Product, check_product, decode_base64
from rakuten_classifier.serve.schemas import (
    TOP_K,
    BatchItem,
    BatchItemError,
    BatchProduct,
    BatchRequest,
    BatchResponse,
    PredictResponse,
    StatusResponse,
    TokenResponse,
    error_responses,
)
from rakuten_classifier.serve.service import Service


def service(request: Request) -> Service:
    return request.app.state.service


def latency_ms(request: Request) -> float:
    return round((time.perf_counter() - request.state.started) * 1000, 2)


# --- public ------------------------------------------------------------------------------------

public = APIRouter()


@public.get(
    "/status",
    response_model=StatusResponse,
    responses={503: {"model": StatusResponse, "description": "the model is not running"}},
)
async def status(api: Annotated[Service, Depends(service)]) -> JSONResponse:
    """Whether the API is up, and the model it serves. No token needed."""
    running = api.predictor.running
    body = StatusResponse(
        status="up" if running else "down",
        model_version=api.bundle.version,
        classes=len(api.bundle.labels.codes),
        image_model=api.bundle.image is not None,
        uptime_s=round(time.time() - api.started, 1),
    )
    return JSONResponse(body.model_dump(), 200 if running else 503)


@public.get(
    "/metrics",
    response_class=Response,
    responses={200: {"content": {"text/plain": {}}, "description": "Prometheus text format"}},
)
async def prometheus(api: Annotated[Service, Depends(service)]) -> Response:
    """Prometheus exposition of the API's metrics."""
    return Response(api.metrics.exposition(), media_type=CONTENT_TYPE_LATEST)


@public.post(
    "/token",
    response_model=TokenResponse,
    responses=error_responses(400, 401, 413, 422, 429, 503),
)
async def token(
    request: Request,
    form: Annotated[OAuth2PasswordRequestForm, Depends()],
    api: Annotated[Service, Depends(service)],
) -> TokenResponse:
    """OAuth2 password flow: a username and password in, a short-lived bearer token out.
    Failed logins are limited per username and attempts per client address (429)."""
    client = request.client.host if request.client else "unknown"
    if not await api.logins.login(form.username, form.password, client):
        logger.warning("login refused", extra={"client": client})
        raise ApiError(401, "bad_credentials", "incorrect username or password", headers=BEARER)
    request.state.user = form.username
    logger.info("token issued", extra={"user": form.username})
    return TokenResponse(
        access_token=api.tokens.issue(form.username),
        expires_in=int(api.tokens.lifetime.total_seconds()),
    )


# --- protected -------------------------------------------------------------------------------


class AuthenticatedRoute(APIRoute):
    """A route that needs a bearer token, checked (with the rate limit) before the body is read."""

    def get_route_handler(self) -> Callable[[Request], Awaitable[Response]]:
        handler = super().get_route_handler()

        async def authenticated(request: Request) -> Response:
            request.app.state.service.authenticate(request)
            return await handler(request)

        return authenticated


# For the Authorize button of /docs; the token itself is checked by AuthenticatedRoute.
bearer = OAuth2PasswordBearer(tokenUrl="token", auto_error=False)
protected = APIRouter(route_class=AuthenticatedRoute, dependencies=[Security(bearer)])
PROTECTED_ERRORS = error_responses(400, 401, 413, 422, 429, 503)


@protected.post(
    "/predict",
    response_model=PredictResponse,
    responses={**PROTECTED_ERRORS, **error_responses(415)},
)
async def predict(
    request: Request,
    api: Annotated[Service, Depends(service)],
    # An empty form field reaches FastAPI as a missing one: both get empty_designation from
    # check_product rather than a generic "Field required" (the schema still requires it).
    designation: Annotated[str, Form(description="The product's title (required)")] = "",
    description: Annotated[str | None, Form()] = None,
    product_identifier: Annotated[str | None, Form()] = None,
    product_id: Annotated[str | None, Form()] = None,
    imageid: Annotated[str | None, Form()] = None,
    image: UploadFile | None = None,
) -> PredictResponse:
    """Classify one product sent as a multipart form (the photo is optional)."""
    data = await image.read() if image is not None else None
    if image is not None and not data and not image.filename:
        data = None  # a form's empty file field: no photo
    metadata = {"product_identifier": product_identifier, "product_id": product_id}
    product = check_product(
        api.settings, designation, description, data, {**metadata, "imageid": imageid}
    )
    prediction, row = await api.predictor.predict(
        [product.designation], [product.description], [product.image]
    )
    return PredictResponse(
        **answer(api, prediction, row, product),
        model_version=api.bundle.version,
        latency_ms=latency_ms(request),
    )


@protected.post("/predict/batch", response_model=BatchResponse, responses=PROTECTED_ERRORS)
async def predict_batch(
    request: Request, batch: BatchRequest, api: Annotated[Service, Depends(service)]
) -> BatchResponse:
    """Classify up to RAKUTEN_API_BATCH_MAX products sent as JSON, photos in base64.
    One result per product, in order; a product with unusable content gets its own error."""
    count = len(batch.products)
    if count > api.settings.batch_max:
        raise ApiError(
            413,
            "batch_too_large",
            f"{count} products in one batch; at most {api.settings.batch_max} (split it)",
            field="products",
        )
    results: list[BatchItem | BatchItemError | None] = [None] * count

    def failed(index: int, error: ApiError) -> None:
        api.metrics.errors.labels(error.kind).inc()
        results[index] = BatchItemError(index=index, status=error.status, **error.payload())

    accepted: list[tuple[int, Product]] = []
    for index, item in enumerate(batch.products):
        try:
            accepted.append((index, batch_product(api, item)))
        except ApiError as error:
            failed(index, error)
    if accepted:
        prediction, first = await api.predictor.predict(
            [product.designation for _, product in accepted],
            [product.description for _, product in accepted],
            [product.image for _, product in accepted],
        )
        for offset, (index, product) in enumerate(accepted):
            try:
                results[index] = BatchItem(
                    index=index, **answer(api, prediction, first + offset, product)
                )
            except ApiError as error:
                failed(index, error)
    errors = sum(isinstance(item, BatchItemError) for item in results)
    return BatchResponse(
        model_version=api.bundle.version,
        latency_ms=latency_ms(request),
        succeeded=count - errors,
        failed=errors,
        results=results,
    )


def batch_product(api: Service, item: BatchProduct) -> Product:
    image = decode_base64(api.settings, item.image) if item.image else None
    metadata = item.model_dump(include={"product_identifier", "product_id", "imageid"})
    return check_product(api.settings, item.designation, item.description, image, metadata)


def answer(
    api: Service, prediction: BundlePrediction, row: int, product: Product
) -> dict[str, Any]:
    """One product's answer; a photo that the bundle could not decode (a truncated file) is
    an error, not a silent fallback to the text."""
    used = bool(prediction.image_used[row])
    problem = prediction.image_problems[row] if product.image is not None else None
    if problem is not None and api.bundle.image is not None:
        raise ApiError(422, "corrupt", f"image: {problem}", field="image")
    code = int(prediction.codes[row])
    modalities = ["text", "image"] if used else ["text"]
    api.metrics.predictions.labels(str(code), "+".join(modalities)).inc()
    labels = api.bundle.labels
    return {
        "prdtypecode": code,
        "category": labels.name(code),
        "probability": float(prediction.confidence[row]),
        "top": [
            {"prdtypecode": c, "category": labels.name(c), "probability": p}
            for c, p in prediction.top(row, TOP_K)
        ],
        "modalities": modalities,
        "image_problem": problem,
        **product.metadata,
    }
