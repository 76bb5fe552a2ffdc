"""The Ray Serve deployment: one replica serves one registered generator over HTTP.

Routes (relative to the application's route prefix): ``GET /`` the page, ``GET /model``,
``GET /healthz``, ``POST /reload``, ``POST /generate[?format=npz]``, ``POST /walk[?format=webp|gif]``
(a latent walk as an animation, ``deploy.walk_request``: it takes a generate slot and runs in a thread,
outside the batches). Every request passes the guard
first (``deploy.guard``: the bearer token, the caller's origin, JSON bodies). Requests are batched on
the replica (``serve.batch``): their input rows go through the generator together, in a thread, so
the event loop keeps answering; a prompt is encoded in a thread too. The load bounds are
``deploy.limits``'s: a replica holds at most ``generate_capacity()`` generate requests (one more is a
503 with ``Retry-After``), a generate request not answered within ``request_timeout_s`` is a 503, and
``/reload`` is spaced out (429) and takes no generate slot. Whatever a client sends gets an answer; a
handler that fails unexpectedly answers 500 and the replica goes on.
"""
# No `from __future__ import annotations` here: FastAPI reads the route handlers' annotations
# (Request) at runtime, and Serve's ingress rebinds the handlers where strings cannot be resolved.
import asyncio
import json
import logging
from typing import Any, Dict, List, Optional, Tuple

import numpy as np
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, Response
from ray import serve
from starlette.exceptions import HTTPException as StarletteHTTPException

from deploy.batching import run_batch
from deploy.encoding import MEDIA_TYPES, encode
from deploy.follow import ModelFollower
from deploy.guard import Guard, GuardMiddleware
from deploy.limits import RETRY_AFTER_S, Busy, GenerateSlots, ReloadRate, TooSoon, retry_after
from deploy.loader import RegistryError
from deploy.page import PAGE
from deploy.request import BadRequest, Prepared, check_body_size, parse_body, parse_format, prepare
from deploy.serve_config import ServeConfig
from deploy.tags import describe_tags
from deploy.walk_request import parse_walk, parse_walk_format, prepare_walk
from trainers.animation import ANIMATION_TYPES, encode_animation
from trainers.walks import walk_frames, walk_space

log = logging.getLogger("ray.serve")
api = FastAPI(title="ganray generator", docs_url=None, redoc_url=None, openapi_url=None)
api.add_middleware(GuardMiddleware)


def error(status: int, reason: str, headers: Optional[Dict[str, str]] = None) -> Response:
    """{"error": reason} as JSON with every non-ASCII character escaped: any reason can be encoded."""
    return Response(json.dumps({"error": reason}), status_code=status, media_type="application/json",
                    headers=headers)


@api.exception_handler(BadRequest)
async def _bad_request(_: Request, err: BadRequest) -> Response:
    return error(400, str(err))


@api.exception_handler(RequestValidationError)
async def _invalid(_: Request, err: RequestValidationError) -> Response:
    return error(400, f"invalid request: {err.errors()[:3]}"[:500])


@api.exception_handler(StarletteHTTPException)
async def _http(_: Request, err: StarletteHTTPException) -> Response:
    return error(err.status_code, str(err.detail))


@api.exception_handler(Exception)
async def _unexpected(_: Request, err: Exception) -> Response:
    log.exception("unexpected error in a request")
    return error(500, f"internal error ({type(err).__name__})")


async def read_body(request: Request) -> bytes:
    """The body, refused past 64 KB (by its declared length, or as it streams in)."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit():
        check_body_size(int(declared))
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        check_body_size(len(body))
    return bytes(body)


@serve.deployment(name="generator")
@serve.ingress(api)
class GeneratorServer:
    async def __init__(self, args: Dict[str, Any]):
        self.config = ServeConfig.from_args(args)  # checked again on the replica: args may come from a manifest
        api.state.guard = Guard.from_config(self.config)  # a token_file is read now; only its digest is kept
        self.follower = ModelFollower(self.config.model, self.config.device())
        self.slots = GenerateSlots(self.config.generate_capacity())
        self.reloads = ReloadRate(self.config.reload_min_interval_s)
        self._generate_batch.set_max_batch_size(self.config.max_batch_size)
        self._generate_batch.set_batch_wait_timeout_s(self.config.batch_wait_s)
        self._poller = asyncio.create_task(self.follower.follow(self.config.poll_s))

    @api.get("/")
    async def page(self) -> HTMLResponse:
        return HTMLResponse(PAGE)

    @api.get("/healthz")
    async def healthz(self, request: Request) -> JSONResponse:
        """The status; the version and the last error only to whoever may see what is served."""
        model, told = self.follower.current, not self.config.private or api.state.guard.authorized(request.headers)
        if model is None:
            details = {"model": str(self.config.model), "error": self.follower.last_error} if told else {}
            return JSONResponse({"status": "loading", **details}, status_code=503)
        return JSONResponse({"status": "ok", **({"version": model.version} if told else {})})

    @api.get("/model")
    async def model(self) -> Response:
        model = self.follower.current
        if model is None:
            return error(503, f"{self.config.model} is not loaded yet ({self.follower.last_error or 'loading'})")
        return JSONResponse({**model.describe(), **describe_tags(model.meta)})

    @api.post("/reload")
    async def reload(self) -> Response:
        try:
            with self.reloads.turn():
                model = await self.follower.refresh()
        except TooSoon as err:
            return error(429, str(err), retry_after(err.retry_after_s))
        except RegistryError as err:
            return error(503, str(err))
        return JSONResponse({"version": model.version})

    @api.post("/generate")
    async def generate(self, request: Request) -> Response:
        return await self._bounded(self._answer(request))

    @api.post("/walk")
    async def walk(self, request: Request) -> Response:
        return await self._bounded(self._walk(request))

    async def _bounded(self, answer) -> Response:
        """answer in a generate slot and within request_timeout_s; 503 with Retry-After otherwise."""
        try:
            with self.slots.admit():
                return await asyncio.wait_for(answer, self.config.request_timeout_s)
        except Busy as err:
            answer.close()  # never started
            return error(503, str(err), retry_after(err.retry_after_s))
        except TimeoutError:
            return error(503, f"not answered within {self.config.request_timeout_s:g} s (request_timeout_s): the "
                              "endpoint is busy, retry later", retry_after(RETRY_AFTER_S))

    async def _answer(self, request: Request) -> Response:
        fmt = parse_format(request.query_params.get("format"))
        req = parse_body(await read_body(request))
        model = self.follower.current
        if model is None:
            return error(503, f"{self.config.model} is not loaded yet", retry_after(RETRY_AFTER_S))
        if req.prompt is None:
            prepared = prepare(model, req, self.config.max_request_pixels)
        else:  # the text encoder runs in a thread: the event loop keeps answering
            prepared = await asyncio.to_thread(prepare, model, req, self.config.max_request_pixels)
        images, batch = await self._generate_batch(prepared)
        content = await asyncio.to_thread(encode, images, fmt)
        return Response(content, media_type=MEDIA_TYPES[fmt],
                        headers={"X-Ganray-Model": model.name, "X-Ganray-Version": str(model.version),
                                 "X-Ganray-Batch": str(batch), "Cache-Control": "no-store"})

    async def _walk(self, request: Request) -> Response:
        fmt = parse_walk_format(request.query_params.get("format"))
        req = parse_walk(await read_body(request))
        model = self.follower.current
        if model is None:
            return error(503, f"{self.config.model} is not loaded yet", retry_after(RETRY_AFTER_S))
        walk = await asyncio.to_thread(prepare_walk, model, req, self.config.max_request_pixels)
        frames = await asyncio.to_thread(walk_frames, model, walk.seeds, walk.frames, walk.c_from, walk.c_to,
                                         walk.truncation, self.config.rows_per_pass)
        content = await asyncio.to_thread(encode_animation, frames, fmt, walk.fps)
        return Response(content, media_type=ANIMATION_TYPES[fmt],
                        headers={"X-Ganray-Model": model.name, "X-Ganray-Version": str(model.version),
                                 "X-Ganray-Frames": str(len(frames)), "X-Ganray-Walk-Space": walk_space(model),
                                 "Cache-Control": "no-store"})

    @serve.batch(max_batch_size=16, batch_wait_timeout_s=0.01)
    async def _generate_batch(self, items: List[Prepared]) -> List[Tuple[np.ndarray, int]]:
        """Each request's images, and how many requests shared the forward passes (X-Ganray-Batch)."""
        images = await asyncio.to_thread(run_batch, items, self.config.rows_per_pass)
        return [(x, len(items)) for x in images]
