"""Checks on what clients send, before any of it reaches the model: header sizes, body sizes
while the body streams in, then text lengths, photo sizes and formats (header only, with
`preprocess.inspect_image`; the bundle decodes the photo itself, with the decoder every path
shares)."""

from __future__ import annotations

import base64
from collections.abc import Callable
from dataclasses import dataclass

from starlette.exceptions import HTTPException
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from rakuten_classifier.preprocess import ImageError, has_visible_text, inspect_image
from rakuten_classifier.serve.errors import IMAGE_STATUS, ApiError
from rakuten_classifier.serve.settings import Settings

MAX_METADATA_CHARS = 256


class BodyTooLarge(HTTPException):
    """Raised from inside `receive`: an HTTPException, so FastAPI's body parsing passes it on
    (anything else it would turn into a 400) to the app's handler."""

    def __init__(self, limit: int, allows: str) -> None:
        super().__init__(413, f"the request body is over the limit of {limit} bytes ({allows})")


class RequestLimits:
    """ASGI middleware: a limit on the request's headers, and a body-size limit per path (with
    what it allows, for the message).

    Headers over `max_header_bytes` get a JSON 431 before anything else runs. A body declared
    (Content-Length) over its limit is refused before any byte of it is read; one that streams
    in without a length (chunked) is cut off as soon as it goes over. Both end in a JSON 413
    from the app's error handler.
    """

    def __init__(
        self,
        app: ASGIApp,
        limits: dict[str, tuple[int, str]],
        default: tuple[int, str],
        max_header_bytes: int,
        refused: Callable[[str], None],
    ) -> None:
        self.app, self.limits, self.default = app, limits, default
        self.max_header_bytes = max_header_bytes
        self.refused = refused  # counts a refusal by kind

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        header_bytes = sum(len(name) + len(value) for name, value in scope["headers"])
        if header_bytes > self.max_header_bytes:
            self.refused("headers_too_large")
            body = {
                "error": "headers_too_large",
                "detail": f"the request's headers have {header_bytes} bytes; at most "
                f"{self.max_header_bytes}",
                "request_id": scope.get("state", {}).get("request_id", ""),
            }
            await JSONResponse(body, 431)(scope, receive, send)
            return
        limit, allows = self.limits.get(scope["path"], self.default)
        declared = next((v for k, v in scope["headers"] if k == b"content-length"), b"")
        declared_too_large = declared.isdigit() and int(declared) > limit
        received = 0

        async def receive_within_limit() -> Message:
            nonlocal received
            if declared_too_large:
                raise BodyTooLarge(limit, allows)
            message = await receive()
            received += len(message.get("body", b""))
            if received > limit:
                raise BodyTooLarge(limit, allows)
            return message

        await self.app(scope, receive_within_limit, send)


@dataclass
class Product:
    """One product as the model gets it, and what the client wants echoed back."""

    designation: str
    description: str
    image: bytes | None
    metadata: dict[str, str | int | None]
    photo_size: tuple[int, int] | None = None  # width, height, from the photo's header

    def key(self, fallback: str) -> str:
        """What identifies the product for A/B routing: its id, else `fallback`."""
        for name in ("product_id", "product_identifier"):
            if self.metadata.get(name) not in (None, ""):
                return f"{name}:{self.metadata[name]}"
        return fallback


def check_product(
    settings: Settings,
    designation: str,
    description: str | None,
    image: bytes | None,
    metadata: dict[str, str | int | None],
) -> Product:
    """A product the model can take, or an ApiError naming the field and what is wrong."""
    description = description or ""
    if not has_visible_text(designation):
        raise ApiError(
            422,
            "empty_designation",
            "designation is missing, empty or made of invisible characters only: every "
            "product needs its title",
            field="designation",
        )
    for name, text in (("designation", designation), ("description", description)):
        if len(text) > settings.max_text_chars:
            raise ApiError(
                422,
                "text_too_long",
                f"{name} has {len(text)} characters; at most {settings.max_text_chars}",
                field=name,
            )
    for name, value in metadata.items():
        if isinstance(value, str) and len(value) > MAX_METADATA_CHARS:
            raise ApiError(
                422,
                "invalid_field",
                f"{name} is over {MAX_METADATA_CHARS} characters",
                field=name,
            )
    size = check_image(settings, image) if image is not None else None
    return Product(designation, description, image, metadata, size)


def check_image(settings: Settings, data: bytes) -> tuple[int, int]:
    """Size in bytes, then format and pixel count from the header, without decoding; returns
    the photo's width and height."""
    if len(data) > settings.max_upload_bytes:
        raise ApiError(
            413,
            "image_too_large",
            f"image is {len(data)} bytes; at most {settings.max_upload_bytes}",
            field="image",
        )
    try:
        return inspect_image(data, settings.max_pixels)[1]
    except ImageError as error:
        raise ApiError(IMAGE_STATUS[error.kind], error.kind, f"image: {error}", "image") from None


def decode_base64(settings: Settings, text: str) -> bytes:
    """A batch product's photo: base64, optionally as a data URL (data:image/jpeg;base64,...)."""
    if text.startswith("data:"):
        text = text.partition(",")[2]
    if len(text) // 4 * 3 > settings.max_upload_bytes + 3:
        raise ApiError(
            413,
            "image_too_large",
            f"image is over {settings.max_upload_bytes} bytes once decoded",
            field="image",
        )
    try:
        return base64.b64decode(text, validate=True)
    except ValueError:  # binascii.Error, or characters outside ASCII
        raise ApiError(422, "invalid_base64", "image is not valid base64", field="image") from None
