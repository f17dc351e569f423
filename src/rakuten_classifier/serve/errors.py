"""The API's one error type, so every refusal has the same JSON shape and is counted by kind."""

from __future__ import annotations

# The status of each unusable photo, by `ImageError.kind`: not a photo at all, or one that the
# server refuses to decode (a decompression bomb is "too large" even when its file is tiny).
IMAGE_STATUS = {
    "not_an_image": 415,
    "unsupported_format": 415,
    "corrupt": 422,
    "too_many_pixels": 413,
}

BEARER = {"WWW-Authenticate": "Bearer"}


class ApiError(Exception):
    """A request the API refuses: HTTP status, a stable `kind` for clients and metrics, and a
    message that says what is wrong and where (`field`), never echoing secrets or payloads."""

    def __init__(
        self,
        status: int,
        kind: str,
        message: str,
        field: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status, self.kind, self.message = status, kind, message
        self.field, self.headers = field, headers

    def payload(self) -> dict[str, object]:
        body: dict[str, object] = {"error": self.kind, "detail": self.message}
        if self.field is not None:
            body["field"] = self.field
        return body
