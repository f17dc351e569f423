"""The prediction API: a FastAPI app serving one model bundle, built by `create_app`.

Every prediction goes through `Bundle.predict_products`, the function behind the batch command
(`rakuten-classifier predict`), so both give the same classes and probabilities.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from datetime import timedelta
from typing import Annotated, Any

from fastapi import APIRouter, Depends, FastAPI, Form, Request, Security, UploadFile
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from fastapi.routing import APIRoute
from fastapi.security import OAuth2PasswordBearer, OAuth2PasswordRequestForm
from prometheus_client import CONTENT_TYPE_LATEST
from pydantic import BaseModel, Field, ValidationError
from starlette.exceptions import HTTPException

from rakuten_classifier.bundle import Bundle, BundlePrediction, load_bundle
from rakuten_classifier.config import logger
from rakuten_classifier.serve.errors import BEARER, ApiError
from rakuten_classifier.serve.inputs import (
    BodyLimit,
    Product,
    check_product,
    decode_base64,
)
from rakuten_classifier.serve.predictor import Predictor
from rakuten_classifier.serve.security import Authenticator, RateLimiter, Tokens
from rakuten_classifier.serve.settings import Settings, load_settings
from rakuten_classifier.serve.telemetry import Metrics, RequestContext, configure_logging

TOP_K = 5
SMALL_BODY_BYTES = 16_384  # /token and the endpoints without a body
FORM_OVERHEAD_BYTES = 65_536  # multipart boundaries, headers and the metadata fields
HTTP_KINDS = {400: "bad_request", 404: "not_found", 405: "method_not_allowed", 413: "too_large"}


# --- what the API answers ------------------------------------------------------------------


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
    model_version: str
    latency_ms: float


class BatchProduct(BaseModel):
    designation: str
    description: str | None = None
    product_identifier: str | int | None = None
    product_id: str | int | None = None
    imageid: str | int | None = None
    image: str | None = Field(None, description="The photo, base64 (or a base64 data: URL)")


class BatchRequest(BaseModel):
    # Checked one by one (BatchProduct), so that one bad product gets its own error entry.
    products: list[Any] = Field(description="Products, each a BatchProduct object")


class BatchItem(ProductPrediction):
    index: int
    status: int = 200


class BatchItemError(BaseModel):
    index: int
    status: int
    error: str
    detail: str
    field: str | None = None


class BatchResponse(BaseModel):
    model_version: str
    latency_ms: float
    succeeded: int
    failed: int
    results: list[BatchItem | BatchItemError] = Field(description="One per product, in order")


class TokenResponse(BaseModel):
    access_token: str
    token_type: str = "bearer"
    expires_in: int = Field(description="Seconds the token stays valid")


class StatusResponse(BaseModel):
    status: str
    model_version: str
    model_created_at: str | None
    classes: int
    image_model: bool
    uptime_s: float


# --- the app -------------------------------------------------------------------------------


class AuthenticatedRoute(APIRoute):
    """A route that needs a bearer token, checked (with the rate limit) before the body is read:
    an upload without a valid token costs the server nothing."""

    def get_route_handler(self) -> Callable[[Request], Awaitable[Response]]:
        handler = super().get_route_handler()

        async def authenticated(request: Request) -> Response:
            request.app.state.authenticate(request)
            return await handler(request)

        return authenticated


def create_app(settings: Settings | None = None, bundle: Bundle | None = None) -> FastAPI:
    """The API for `settings` (default: environment and .env). Refuses to start without a
    signing secret of 32 bytes or more and at least one user. The bundle (default: the one at
    settings.bundle) is loaded once, here; `uvicorn --factory rakuten_classifier.serve:create_app`
    works as well as `rakuten-classifier serve`."""
    settings = settings or load_settings()
    secret = settings.signing_secret()
    users = settings.load_users()
    configure_logging(settings.log_level)
    bundle = bundle or load_bundle(settings.bundle)
    metrics = Metrics()
    metrics.model.info({"version": bundle.version, "classes": str(len(bundle.labels.codes))})
    predictor = Predictor(bundle, metrics, settings.max_pending)
    authenticator = Authenticator(users)
    lifetime = timedelta(minutes=settings.token_minutes)
    tokens = Tokens(secret, lifetime)
    limiter = RateLimiter(settings.rate_per_minute, settings.rate_burst)
    started = time.time()

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        await predictor.start()
        logger.info("serving model %s from %s", bundle.version, bundle.path)
        yield
        await predictor.stop()

    app = FastAPI(
        title="Rakuten product type classifier",
        version=bundle.version,
        description="Predicts a Rakuten France product's type code from its title, "
        "description and photo. Get a token from POST /token, then send it as a Bearer token.",
        lifespan=lifespan,
    )
    predict_limit = settings.max_upload_bytes + 8 * settings.max_text_chars + FORM_OVERHEAD_BYTES
    app.add_middleware(
        BodyLimit,
        limits={
            "/predict": (
                predict_limit,
                f"a photo of at most {settings.max_upload_bytes} bytes and texts of at most "
                f"{settings.max_text_chars} characters",
            ),
            "/predict/batch": (settings.max_batch_bytes, "split the batch"),
        },
        default=(SMALL_BODY_BYTES, "no upload on this endpoint"),
    )
    app.add_middleware(RequestContext, metrics=metrics)  # outermost: sees every response

    def authenticate(request: Request) -> None:
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise ApiError(
                401,
                "missing_token",
                "this endpoint needs a token: send 'Authorization: Bearer <token>' with a "
                "token from POST /token",
                headers=BEARER,
            )
        user = tokens.subject(token.strip())
        if user not in users:
            raise ApiError(401, "invalid_token", "the token's user is gone", headers=BEARER)
        request.state.user = user
        limiter.check(f"user:{user}", "requests")

    app.state.authenticate = authenticate

    _handle_errors(app, metrics)

    def latency_ms(request: Request) -> float:
        return round((time.perf_counter() - request.state.started) * 1000, 2)

    @app.get("/status", response_model=StatusResponse)
    async def status() -> JSONResponse:
        """Whether the API is up, and the model it serves. No token needed."""
        body = StatusResponse(
            status="up" if predictor.running else "down",
            model_version=bundle.version,
            model_created_at=bundle.manifest.get("created_at"),
            classes=len(bundle.labels.codes),
            image_model=bundle.image is not None,
            uptime_s=round(time.time() - started, 1),
        )
        return JSONResponse(body.model_dump(), 200 if predictor.running else 503)

    @app.get("/metrics", response_class=Response)
    async def prometheus() -> Response:
        """Prometheus exposition of the API's metrics."""
        return Response(metrics.exposition(), media_type=CONTENT_TYPE_LATEST)

    @app.post("/token", response_model=TokenResponse)
    def token(
        request: Request, form: Annotated[OAuth2PasswordRequestForm, Depends()]
    ) -> TokenResponse:
        """OAuth2 password flow: a username and password in, a short-lived bearer token out.
        (A plain function: FastAPI runs it in a thread, bcrypt takes a fraction of a second.)"""
        client = request.client.host if request.client else "unknown"
        limiter.check(f"login:{client}", "login attempts")
        if not authenticator.check(form.username, form.password):
            logger.warning("login refused", extra={"client": client})
            raise ApiError(401, "bad_credentials", "incorrect username or password", headers=BEARER)
        request.state.user = form.username
        logger.info("token issued", extra={"user": form.username})
        return TokenResponse(
            access_token=tokens.issue(form.username), expires_in=int(lifetime.total_seconds())
        )

    scheme = OAuth2PasswordBearer(tokenUrl="token", auto_error=False)  # for the docs' Authorize
    protected = APIRouter(route_class=AuthenticatedRoute, dependencies=[Security(scheme)])

    @protected.post(
        "/predict",
        response_model=PredictResponse,
        form_limits={"max_part_size": predict_limit},  # text over the limit: our 422, not a 400
    )
    async def predict(
        request: Request,
        designation: Annotated[str, Form(description="The product's title (required)")],
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
        product = check_product(
            settings,
            designation,
            description,
            data,
            {
                "product_identifier": product_identifier,
                "product_id": product_id,
                "imageid": imageid,
            },
        )
        prediction, row = await predictor.predict(
            [product.designation], [product.description], [product.image]
        )
        return PredictResponse(
            **_answer(bundle, metrics, prediction, row, product),
            model_version=bundle.version,
            latency_ms=latency_ms(request),
        )

    @protected.post("/predict/batch", response_model=BatchResponse)
    async def predict_batch(request: Request, batch: BatchRequest) -> BatchResponse:
        """Classify up to RAKUTEN_API_BATCH_MAX products sent as JSON, photos in base64.
        One result per product, in order; a bad product gets its own error entry."""
        count = len(batch.products)
        if count > settings.batch_max:
            raise ApiError(
                413,
                "batch_too_large",
                f"{count} products in one batch; at most {settings.batch_max} (split it)",
                field="products",
            )
        if not count:
            raise ApiError(422, "empty_batch", "products is empty", field="products")
        results: list[BatchItem | BatchItemError | None] = [None] * count

        def failed(index: int, error: ApiError) -> None:
            metrics.errors.labels(error.kind).inc()
            results[index] = BatchItemError(index=index, status=error.status, **error.payload())

        accepted: list[tuple[int, Product]] = []
        for index, raw in enumerate(batch.products):
            try:
                accepted.append((index, _batch_product(settings, raw)))
            except ApiError as error:
                failed(index, error)
        if accepted:
            prediction, first = await predictor.predict(
                [product.designation for _, product in accepted],
                [product.description for _, product in accepted],
                [product.image for _, product in accepted],
            )
            for offset, (index, product) in enumerate(accepted):
                try:
                    results[index] = BatchItem(
                        index=index, **_answer(bundle, metrics, prediction, first + offset, product)
                    )
                except ApiError as error:
                    failed(index, error)
        errors = sum(isinstance(item, BatchItemError) for item in results)
        return BatchResponse(
            model_version=bundle.version,
            latency_ms=latency_ms(request),
            succeeded=count - errors,
            failed=errors,
            results=results,
        )

    app.include_router(protected)
    return app


def _batch_product(settings: Settings, raw: Any) -> Product:
    try:
        item = BatchProduct.model_validate(raw)
    except ValidationError as error:
        first = error.errors()[0]
        where = ".".join(str(part) for part in first["loc"]) or "product"
        raise ApiError(422, "invalid_product", f"{where}: {first['msg']}", field=where) from None
    image = decode_base64(settings, item.image) if item.image else None
    metadata = item.model_dump(include={"product_identifier", "product_id", "imageid"})
    return check_product(settings, item.designation, item.description, image, metadata)


def _handle_errors(app: FastAPI, metrics: Metrics) -> None:
    """Every refusal as JSON {error, detail, field?, request_id}, counted by kind."""

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


def _answer(
    bundle: Bundle, metrics: Metrics, prediction: BundlePrediction, row: int, product: Product
) -> dict[str, Any]:
    """One product's answer; a photo that the bundle could not decode (a truncated file) is
    an error, not a silent fallback to the text."""
    used = bool(prediction.image_used[row])
    problem = prediction.image_problems[row] if product.image is not None else None
    if problem is not None and bundle.image is not None:
        raise ApiError(422, "corrupt", f"image: {problem}", field="image")
    code = int(prediction.codes[row])
    modalities = ["text", "image"] if used else ["text"]
    metrics.predictions.labels(str(code), "+".join(modalities)).inc()
    return {
        "prdtypecode": code,
        "category": bundle.labels.name(code),
        "probability": float(prediction.confidence[row]),
        "top": [
            {"prdtypecode": c, "category": bundle.labels.name(c), "probability": p}
            for c, p in prediction.top(row, TOP_K)
        ],
        "modalities": modalities,
        "image_problem": problem,
        **product.metadata,
    }
