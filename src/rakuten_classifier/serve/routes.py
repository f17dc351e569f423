"""The API's endpoints. Each finds the running API's state in `request.app.state.service`;
protected ones check the bearer token and its role before their body is read.

Every prediction goes through `Bundle.predict_products`, the function behind the batch command
(`rakuten-classifier predict`), so both give the same classes and probabilities. Each served
prediction (and, in shadow mode, the challenger's answer to the same product) is handed to the
prediction store, which never slows or fails the request.
"""

from __future__ import annotations

import asyncio
import time
from collections import defaultdict
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
from rakuten_classifier.serve.models import CHAMPION, ServedModel
from rakuten_classifier.serve.recording import feedback_row, prediction_row
from rakuten_classifier.serve.schemas import (
    TOP_K,
    BatchItem,
    BatchItemError,
    BatchProduct,
    BatchRequest,
    BatchResponse,
    FeedbackRequest,
    FeedbackResponse,
    PredictResponse,
    ReloadResponse,
    StatusResponse,
    TokenResponse,
    error_responses,
)
from rakuten_classifier.serve.service import Service
from rakuten_classifier.store.writer import SpoolFull


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
    """Whether the API is up, the models it serves and in which mode. No token needed."""
    running = api.models.running
    champion = api.models.champion.bundle if running else None
    body = StatusResponse(
        status="up" if running else "down",
        model_version=champion.version if champion else "",
        classes=len(champion.labels.codes) if champion else 0,
        image_model=champion is not None and champion.image is not None,
        mode=api.settings.mode,
        models=[model.describe() for model in api.models.models.values()],
        store_backlog=api.store.backlog,
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
    """OAuth2 password flow: a username and password in, a short-lived bearer token out, with
    the user's roles. Failed logins are limited per username and attempts per address (429)."""
    client = request.client.host if request.client else "unknown"
    if not await api.logins.login(form.username, form.password, client):
        logger.warning("login refused", extra={"client": client})
        raise ApiError(401, "bad_credentials", "incorrect username or password", headers=BEARER)
    request.state.user = form.username
    logger.info("token issued", extra={"user": form.username})
    return TokenResponse(
        access_token=api.tokens.issue(form.username, api.users[form.username].roles),
        expires_in=int(api.tokens.lifetime.total_seconds()),
    )


# --- protected -------------------------------------------------------------------------------


def role_route(role: str) -> type[APIRoute]:
    """A route class whose token must carry `role`, checked (with the rate limit) before the
    request's body is read."""

    class RoleRoute(APIRoute):
        def get_route_handler(self) -> Callable[[Request], Awaitable[Response]]:
            handler = super().get_route_handler()

            async def authenticated(request: Request) -> Response:
                request.app.state.service.authenticate(request, role)
                return await handler(request)

            return authenticated

    RoleRoute.__name__ = f"{role.title()}Route"
    return RoleRoute


# For the Authorize button of /docs; the token itself is checked by the route class.
bearer = OAuth2PasswordBearer(tokenUrl="token", auto_error=False)
predicting = APIRouter(route_class=role_route("predict"), dependencies=[Security(bearer)])
reviewing = APIRouter(route_class=role_route("reviewer"), dependencies=[Security(bearer)])
administering = APIRouter(route_class=role_route("admin"), dependencies=[Security(bearer)])
PROTECTED_ERRORS = error_responses(400, 401, 403, 413, 422, 429, 503)


@predicting.post(
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
    model = api.models.route(product.key(request.state.request_id))
    request.state.variant, request.state.model_version = model.variant, model.version
    prediction, row = await model.predictor.predict(
        [product.designation], [product.description], [product.image]
    )
    answer = product_answer(api, model, prediction, row, product)
    latency = latency_ms(request)
    record(api, request, model, prediction, row, product, latency, served=True)
    shadow(api, request, model, [product])
    return PredictResponse(**answer, latency_ms=latency)


@predicting.post("/predict/batch", response_model=BatchResponse, responses=PROTECTED_ERRORS)
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

    # Each product is routed on its own (A/B testing is per product): one model call per variant.
    groups: dict[str, list[tuple[int, Product]]] = defaultdict(list)
    chosen: dict[str, ServedModel] = {}
    for index, item in enumerate(batch.products):
        try:
            product = batch_product(api, item)
        except ApiError as error:
            failed(index, error)
            continue
        model = api.models.route(product.key(f"{request.state.request_id}:{index}"))
        chosen[model.variant] = model
        groups[model.variant].append((index, product))
    request.state.variant = "+".join(sorted(groups)) or None
    request.state.model_version = "+".join(chosen[v].version for v in sorted(groups)) or None
    served = await asyncio.gather(
        *(
            chosen[variant].predictor.predict(
                [p.designation for _, p in members],
                [p.description for _, p in members],
                [p.image for _, p in members],
            )
            for variant, members in groups.items()
        )
    )
    latency = latency_ms(request)
    for (variant, members), (prediction, first) in zip(groups.items(), served, strict=True):
        model = chosen[variant]
        for offset, (index, product) in enumerate(members):
            try:
                answer = product_answer(api, model, prediction, first + offset, product)
            except ApiError as error:
                failed(index, error)
                continue
            results[index] = BatchItem(index=index, **answer)
            record(api, request, model, prediction, first + offset, product, latency, True)
        shadow(api, request, model, [product for _, product in members])
    errors = sum(isinstance(item, BatchItemError) for item in results)
    return BatchResponse(
        model_version=api.models.champion.version,
        latency_ms=latency,
        succeeded=count - errors,
        failed=errors,
        results=results,
    )


def batch_product(api: Service, item: BatchProduct) -> Product:
    image = decode_base64(api.settings, item.image) if item.image else None
    metadata = item.model_dump(include={"product_identifier", "product_id", "imageid"})
    return check_product(api.settings, item.designation, item.description, image, metadata)


def product_answer(
    api: Service, model: ServedModel, prediction: BundlePrediction, row: int, product: Product
) -> dict[str, Any]:
    """One product's answer; a photo that the bundle could not decode (a truncated file) is
    an error, not a silent fallback to the text."""
    used = bool(prediction.image_used[row])
    problem = prediction.image_problems[row] if product.image is not None else None
    if problem is not None and model.bundle.image is not None:
        raise ApiError(422, "corrupt", f"image: {problem}", field="image")
    code = int(prediction.codes[row])
    modalities = ["text", "image"] if used else ["text"]
    api.metrics.predictions.labels(
        str(code), "+".join(modalities), model.variant, model.version
    ).inc()
    labels = model.bundle.labels
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
        "model_version": model.version,
        "variant": model.variant,
        **product.metadata,
    }


def record(
    api: Service,
    request: Request,
    model: ServedModel,
    prediction: BundlePrediction,
    row: int,
    product: Product,
    latency: float,
    served: bool,
) -> None:
    api.store.submit(
        "predictions",
        prediction_row(
            product=product,
            prediction=prediction,
            row=row,
            profile=model.bundle.profile,
            request_id=request.state.request_id,
            user=getattr(request.state, "user", None),
            variant=model.variant,
            model_version=model.version,
            served=served,
            latency_ms=latency,
            store_texts=api.settings.store_texts,
        ),
    )


def shadow(api: Service, request: Request, served: ServedModel, products: list[Product]) -> None:
    """In shadow mode, after the champion has answered: the challenger predicts the same
    products in the background, and its answers are only stored."""
    challenger = api.models.challenger
    if api.settings.mode != "shadow" or challenger is None or served.variant != CHAMPION:
        return
    if challenger.predictor.pending + len(products) > api.settings.shadow_max_pending:
        api.metrics.shadow.labels("skipped").inc(len(products))
        return

    async def run() -> None:
        started = time.perf_counter()
        try:
            prediction, first = await challenger.predictor.predict(
                [p.designation for p in products],
                [p.description for p in products],
                [p.image for p in products],
            )
        except Exception:  # the challenger's failure is not the client's
            api.metrics.shadow.labels("failed").inc(len(products))
            logger.exception("shadow prediction failed")
            return
        latency = round((time.perf_counter() - started) * 1000, 2)
        for offset, product in enumerate(products):
            record(api, request, challenger, prediction, first + offset, product, latency, False)
        api.metrics.shadow.labels("stored").inc(len(products))

    task = asyncio.create_task(run(), name="shadow")
    api.pending_shadows.add(task)
    task.add_done_callback(api.pending_shadows.discard)


# --- feedback and administration -----------------------------------------------------------


@reviewing.post(
    "/feedback",
    status_code=202,
    response_model=FeedbackResponse,
    responses=error_responses(400, 401, 403, 413, 422, 429, 503),
)
async def feedback(
    request: Request, given: FeedbackRequest, api: Annotated[Service, Depends(service)]
) -> FeedbackResponse:
    """Record the true product type of a product (role reviewer). Accepted (202) once it is
    on disk: the database may be down, the feedback is kept and written when it is back."""
    codes = api.models.champion.bundle.labels.codes
    if given.prdtypecode not in codes:
        raise ApiError(
            422,
            "unknown_prdtypecode",
            f"prdtypecode {given.prdtypecode} is not one of the {len(codes)} product types",
            field="prdtypecode",
        )
    named = {
        "product_identifier": given.product_identifier,
        "product_id": None if given.product_id is None else str(given.product_id),
        "request_id": given.request_id,
    }
    if all(value in (None, "") for value in named.values()):
        raise ApiError(
            422,
            "missing_product",
            "name the product: product_identifier, product_id or the prediction's request_id",
        )
    row = feedback_row(
        user=request.state.user, prdtypecode=given.prdtypecode, comment=given.comment, **named
    )
    try:
        await asyncio.to_thread(api.store.submit_durable, "feedback", row)
    except SpoolFull:
        raise ApiError(
            503,
            "store_full",
            "the store cannot keep more until its database is back: retry later",
            headers={"Retry-After": "30"},
        ) from None
    api.metrics.feedback.inc()
    return FeedbackResponse(feedback_id=row["uid"], status="accepted")


@administering.post(
    "/admin/reload",
    response_model=ReloadResponse,
    responses=error_responses(400, 401, 403, 413, 429, 503),
)
async def reload(api: Annotated[Service, Depends(service)]) -> ReloadResponse:
    """Look at the models' sources again (the registry's aliases, or the local bundles) and swap
    in what changed, without a restart or a failed request (role admin)."""
    try:
        outcome = await api.models.reload()
    except Exception as error:  # the registry: its message is in the log
        raise ApiError(
            503,
            "registry_unavailable",
            f"the models' source could not be read ({type(error).__name__}); the models in "
            "service stay",
            headers={"Retry-After": "30"},
        ) from None
    return ReloadResponse(**outcome)
