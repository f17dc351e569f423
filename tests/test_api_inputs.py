"""What clients send that the API refuses, each with its status and error kind: texts,
photos, bodies and headers over the limits, batches; and the server goes on after each."""

from __future__ import annotations

import base64
import socket
from collections.abc import Iterator

import pytest
from api_support import (
    LIMITS,
    PHOTO_PART,
    Server,
    encode,
    login_real,
    png_header,
    raw_response,
)
from fastapi.testclient import TestClient
from PIL import Image


@pytest.mark.parametrize(
    ("form", "kind", "field"),
    [
        ({"designation": "   "}, "empty_designation", "designation"),
        ({"designation": ""}, "empty_designation", "designation"),
        ({"designation": "\u00a0\u200b\u3000\u200d"}, "empty_designation", "designation"),
        ({"description": "only a description"}, "empty_designation", "designation"),
        ({"designation": "x" * 501}, "text_too_long", "designation"),
        ({"designation": "Chaise", "description": "y" * 501}, "text_too_long", "description"),
        ({"designation": "Chaise", "product_id": "9" * 300}, "invalid_field", "product_id"),
    ],
    ids=["blank", "empty", "invisible", "missing", "long-title", "long-description", "long-meta"],
)
def test_bad_text_gets_422(
    client: TestClient, auth: dict[str, str], form: dict[str, str], kind: str, field: str | None
) -> None:
    response = client.post("/predict", data=form, headers=auth)
    assert response.status_code == 422
    body = response.json()
    assert body["error"] == kind and body.get("field") == field
    assert body["request_id"] == response.headers["X-Request-ID"]


def _bad_photos(photo: bytes) -> dict[str, tuple[bytes, int, str]]:
    return {
        "not-an-image": (b"%PDF-1.4 not a photo", 415, "not_an_image"),
        "unsupported-format": (encode(Image.new("RGB", (8, 8)), "PPM"), 415, "unsupported_format"),
        "truncated": (photo[: len(photo) // 2], 422, "corrupt"),
        "decompression-bomb": (png_header(50_000, 50_000), 413, "too_many_pixels"),
        "over-pixel-limit": (encode(Image.new("L", (1001, 1000)), "PNG"), 413, "too_many_pixels"),
        "over-byte-limit": (b"\xff\xd8" + b"\0" * 230_000, 413, "image_too_large"),
        "over-body-limit": (b"\xff" * 1_000_000, 413, "too_large"),
    }


@pytest.mark.parametrize("case", list(_bad_photos(b"")))
def test_bad_photo_is_refused_and_the_server_goes_on(
    client: TestClient, auth: dict[str, str], photo: bytes, case: str
) -> None:
    data, status, kind = _bad_photos(photo)[case]
    response = client.post(
        "/predict",
        data={"designation": "Chaise"},
        files={"image": ("photo.jpg", data, "image/jpeg")},
        headers=auth,
    )
    assert response.status_code == status, response.text
    assert response.json()["error"] == kind
    good = client.post(
        "/predict",
        data={"designation": "Chaise"},
        files={"image": ("photo.jpg", photo, "image/jpeg")},
        headers=auth,
    )
    assert good.status_code == 200
    assert good.json()["modalities"] == ["text", "image"]


def test_body_streamed_over_the_limit_is_cut_off(client: TestClient, auth: dict[str, str]) -> None:
    def chunks() -> Iterator[bytes]:  # no Content-Length: sent chunked
        yield PHOTO_PART
        yield from [b"x" * 65_536] * 20

    response = client.post(
        "/predict",
        content=chunks(),
        headers={**auth, "Content-Type": "multipart/form-data; boundary=b"},
    )
    assert response.status_code == 413
    assert response.json()["error"] == "too_large"


def test_batch_answers_every_product_in_order(
    client: TestClient, auth: dict[str, str], photo: bytes
) -> None:
    encoded = base64.b64encode(photo).decode()
    products = [
        {"designation": "Chaise de jardin", "product_id": 12, "imageid": "34"},
        {"designation": "", "description": "no title"},
        {"designation": "Figurine", "image": f"data:image/jpeg;base64,{encoded}"},
        {"designation": "Lampe", "image": base64.b64encode(b"not a photo").decode()},
    ]
    response = client.post("/predict/batch", json={"products": products}, headers=auth)
    assert response.status_code == 200
    body = response.json()
    assert (body["succeeded"], body["failed"]) == (2, 2)
    results = body["results"]
    assert [item["index"] for item in results] == [0, 1, 2, 3]
    assert [item["status"] for item in results] == [200, 422, 200, 415]
    assert results[0]["product_id"] == 12 and results[0]["imageid"] == "34"
    assert results[1]["error"] == "empty_designation"
    assert results[2]["modalities"] == ["text", "image"]
    assert results[3]["error"] == "not_an_image"
    # Each answer is the one that product gets alone.
    alone = client.post(
        "/predict",
        data={"designation": "Figurine"},
        files={"image": ("p.jpg", photo, "image/jpeg")},
        headers=auth,
    ).json()
    assert alone["prdtypecode"] == results[2]["prdtypecode"]
    assert alone["probability"] == pytest.approx(results[2]["probability"], abs=1e-6)


def test_batch_over_the_limit_gets_413(client: TestClient, auth: dict[str, str]) -> None:
    products = [{"designation": f"Produit {n}"} for n in range(LIMITS["batch_max"] + 1)]
    response = client.post("/predict/batch", json={"products": products}, headers=auth)
    assert response.status_code == 413
    assert response.json()["error"] == "batch_too_large"
    empty = client.post("/predict/batch", json={"products": []}, headers=auth)
    assert empty.status_code == 422
    not_json = client.post(
        "/predict/batch", content=b"{", headers={**auth, "Content-Type": "application/json"}
    )
    assert not_json.status_code == 422 and not_json.json()["error"] == "invalid_request"


def test_oversized_upload_is_refused_before_it_is_sent(server: Server) -> None:
    """A declared 100 MB body gets its 413 without one byte of it sent; a chunked body is cut
    off once over the limit, long before its end."""
    token = login_real(server)["Authorization"]
    head = (
        f"POST /predict HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: {token}\r\n"
        "Content-Type: multipart/form-data; boundary=b\r\n"
    )
    with socket.create_connection(("127.0.0.1", server.port)) as sock:
        sock.sendall(f"{head}Content-Length: 100000000\r\n\r\n".encode())
        status, body = raw_response(sock)
    assert (status, body["error"]) == (413, "too_large")
    with socket.create_connection(("127.0.0.1", server.port)) as sock:
        sock.sendall(f"{head}Transfer-Encoding: chunked\r\n\r\n".encode())
        # A photo part of 512 KiB that would never end, over the ~270 KB limit.
        for chunk in [PHOTO_PART] + [b"x" * 65_536] * 8:
            sock.sendall(f"{len(chunk):x}\r\n".encode() + chunk + b"\r\n")
        status, body = raw_response(sock)
    assert (status, body["error"]) == (413, "too_large")


def test_a_decompression_bomb_is_refused_with_the_configured_limit(
    client: TestClient, auth: dict[str, str]
) -> None:
    """Over Pillow's own limit too (2.5 billion pixels): the answer names this server's."""
    response = client.post(
        "/predict",
        data={"designation": "Chaise"},
        files={"image": ("bomb.png", png_header(50_000, 50_000), "image/png")},
        headers=auth,
    )
    assert response.status_code == 413
    detail = response.json()["detail"]
    assert str(LIMITS["max_pixels"]) in detail and "89478485" not in detail


def test_headers_over_the_limit_get_431(client: TestClient, auth: dict[str, str]) -> None:
    response = client.get("/status", headers={"X-Padding": "p" * 20_000})
    assert response.status_code == 431
    assert response.json()["error"] == "headers_too_large"
    assert client.post("/predict", data={"designation": "Chaise"}, headers=auth).status_code == 200


def test_a_megabyte_authorization_header_gets_431_from_the_real_server(server: Server) -> None:
    """The HTTP server reads the whole head (up to header_read_bytes), so the client gets an
    answer rather than a connection reset."""
    head = (
        "POST /predict HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        f"Authorization: Bearer {'a' * 1_000_000}\r\nContent-Length: 0\r\n\r\n"
    )
    with socket.create_connection(("127.0.0.1", server.port)) as sock:
        sock.sendall(head.encode())
        status, body = raw_response(sock)
    assert (status, body["error"]) == (431, "headers_too_large")
    with socket.create_connection(("127.0.0.1", server.port)) as sock:
        sock.sendall(b"GET /status HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        status, body = raw_response(sock)
    assert (status, body["status"]) == (200, "up")
