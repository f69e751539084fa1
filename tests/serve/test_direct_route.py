"""``_Direct``: the inference route served past FastAPI's router keeps the app's
behaviour (its error answers, 405 for other methods, the metrics' route label)."""

from __future__ import annotations

import pytest

pytest.importorskip("fastapi", reason="the serve extra is not installed")

import asyncio  # noqa: E402

import httpx  # noqa: E402
from fastapi import FastAPI, Request  # noqa: E402
from fastapi.responses import JSONResponse, Response  # noqa: E402

from edgemed.errors import EdgemedError  # noqa: E402
from edgemed.serve.app import _Direct, _query_flag  # noqa: E402
from edgemed.serve.errors import RequestError  # noqa: E402


def _app() -> tuple[FastAPI, list[str]]:
    seen: list[str] = []

    async def endpoint(request: Request) -> Response:
        seen.append(getattr(request.scope.get("route"), "path", ""))
        what = request.query_params.get("what")
        if what == "refuse":
            raise RequestError("refused", code="REQUEST_TEST")
        if what == "bug":
            raise RuntimeError("a bug")
        return Response(b'{"ok":true}', media_type="application/json")

    def on_error(request: Request, exc: EdgemedError) -> JSONResponse:
        return JSONResponse({"error": {"code": exc.code}}, 400)

    app = FastAPI()

    @app.exception_handler(Exception)
    async def bug(request: Request, exc: Exception) -> JSONResponse:
        return JSONResponse({"error": {"code": "INTERNAL"}}, 500)

    app.add_route("/v1/infer", endpoint, methods=["POST"])
    app.add_middleware(_Direct, route=app.router.routes[-1], on_error=on_error)

    class Labels:  # what MetricsMiddleware reads after the answer: the route's path
        def __init__(self, inner: object) -> None:
            self.inner = inner

        async def __call__(self, scope, receive, send) -> None:
            await self.inner(scope, receive, send)
            seen.append("label " + getattr(scope.get("route"), "path", "unmatched"))

    app.add_middleware(Labels)
    return app, seen


def test_the_direct_route_answers_like_the_app():
    app, seen = _app()

    async def requests() -> list[httpx.Response]:
        transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as c:
            return [
                await c.post("/v1/infer"),
                await c.post("/v1/infer", params={"what": "refuse"}),
                await c.post("/v1/infer", params={"what": "bug"}),
                await c.get("/v1/infer"),
                await c.post("/v1/other"),
            ]

    ok, refused, bug, get, other = asyncio.run(requests())
    assert ok.json() == {"ok": True}
    assert (refused.status_code, refused.json()) == (400, {"error": {"code": "REQUEST_TEST"}})
    assert (bug.status_code, bug.json()) == (500, {"error": {"code": "INTERNAL"}})
    assert get.status_code == 405  # the app's router answers other methods
    assert other.status_code == 404
    # The endpoint ran for the three POSTs; the metrics' label is the route's path for
    # every request to it, the 405 included (the bug's request raises past this
    # recorder: MetricsMiddleware reads the label in a finally).
    endpoint_calls = [s for s in seen if not s.startswith("label ")]
    assert endpoint_calls == ["/v1/infer"] * 3
    labels = [s for s in seen if s.startswith("label ")]
    assert labels[:2] == ["label /v1/infer"] * 2
    assert labels[-2:] == ["label /v1/infer", "label unmatched"]


@pytest.mark.parametrize(
    ("text", "want"),
    [(None, False), ("true", True), ("Yes", True), ("1", True), ("off", False), ("F", False)],
)
def test_query_flags_read_as_fastapi_read_them(text, want):
    assert _query_flag(text, "any_modality") is want


def test_a_query_flag_that_is_no_boolean_is_refused():
    with pytest.raises(RequestError) as err:
        _query_flag("maybe", "any_modality")
    assert err.value.code == "REQUEST_INVALID"
