"""The Worker's federation server: one WebSocket listener, one authenticated channel per run."""
from __future__ import annotations

import asyncio
import json
import logging
import os
from concurrent.futures import ThreadPoolExecutor
from http import HTTPStatus
from pathlib import Path
from typing import Any

import numpy as np
import torch
from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request, Response

from synergos_core.errors import FederationError, SynergosError
from synergos_core.federation import (WS_PATH_PREFIX, ReplayGuard, new_nonce, recv_header, recv_into,
                                      run_name, send_header, send_state)
from synergos_core.metrics import classification_statistics, metric_parts, predicted_classes, regression_statistics
from synergos_core.settings import FederationLimits

from . import gkt
from .sessions import RunKey, RunSession, SessionRegistry

log = logging.getLogger(__name__)


def _run_key(path: str) -> RunKey | None:
    if not path.startswith(WS_PATH_PREFIX):
        return None
    parts = path[len(WS_PATH_PREFIX):].split("?")[0].split("/")
    return tuple(parts) if len(parts) == 4 and all(parts) else None  # type: ignore[return-value]


def _bind_torch_threads() -> None:
    # torch.set_num_threads reaches OpenMP only in the thread that calls it: a fresh thread would
    # otherwise start a team of one OpenMP thread per core, whose spin-waits after every op burn the
    # CPU that the other parties and the TTP on the host need (5-10x a small model's compute).
    torch.set_num_threads(torch.get_num_threads())


class FederationServer:
    def __init__(self, registry: SessionRegistry, limits: FederationLimits, outputs_dir: Path) -> None:
        self.registry = registry
        self.limits = limits
        self.outputs_dir = outputs_dir
        self._server: Server | None = None
        # local training, evaluation and inference run here, off the event loop
        self._compute = ThreadPoolExecutor(min(32, (os.cpu_count() or 1) + 4), thread_name_prefix="synergos-compute",
                                           initializer=_bind_torch_threads)

    async def _in_thread(self, fn: Any, *args: Any) -> Any:
        return await asyncio.get_running_loop().run_in_executor(self._compute, fn, *args)

    async def start(self, host: str, port: int) -> None:
        self._server = await serve(
            self._handle, host, port,
            process_request=self._authenticate,
            max_size=self.limits.max_frame_bytes,
            max_queue=self.limits.max_queue,
            compression=None,  # tensors do not compress; deflate only adds memory and CPU
            ping_interval=self.limits.ping_interval_s,
            ping_timeout=self.limits.ping_timeout_s,
            open_timeout=self.limits.open_timeout_s,
        )
        log.info("federation listening on %s:%d", host, port)

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
        self._compute.shutdown(wait=False)

    # -- handshake: refuse before any state is allocated --
    def _authenticate(self, connection: ServerConnection, request: Request) -> Response | None:
        key = _run_key(request.path)
        if key is None:
            return connection.respond(HTTPStatus.NOT_FOUND, "unknown federation path\n")
        session = self.registry.find(key)
        auth = request.headers.get("Authorization", "")
        presented = auth[7:] if auth.startswith("Bearer ") else None
        if session is None or not session.authorised(presented):
            # same answer for unknown runs and wrong tokens: nothing to learn by probing
            return connection.respond(HTTPStatus.UNAUTHORIZED, "missing or invalid run token\n")
        return None

    async def _handle(self, ws: ServerConnection) -> None:
        key = _run_key(ws.request.path)
        session = self.registry.find(key) if key else None
        if session is None:
            await ws.close(1008, "session closed")
            return
        if session.connection is not None:
            await session.connection.close(1001, "replaced by a new connection")
        session.connection = ws
        guard = ReplayGuard(run_name(*session.key))
        try:
            while True:
                header: dict = {}
                try:
                    header = await recv_header(ws, None)
                    guard.check(header)
                    if header["op"] == "close":
                        await send_header(ws, self._reply(header, "closed"))
                        break
                    await self._serve(ws, session, header)
                except ConnectionClosed:
                    break
                except SynergosError as exc:
                    log.warning("run %s: %s", run_name(*session.key), exc.detail)
                    await send_header(ws, {**self._reply(header, "error"),
                                           "code": exc.code, "detail": exc.detail})
                    if isinstance(exc, FederationError):
                        await ws.close(1008, exc.code)
                        break
                except Exception as exc:  # a failure of local work: report it, keep the channel
                    log.exception("run %s: %s failed", run_name(*session.key), header.get("op"))
                    await send_header(ws, {**self._reply(header, "error"), "code": "worker.failed",
                                           "detail": f"{header.get('op')} failed: {type(exc).__name__}: {exc}"})
        finally:
            if session.connection is ws:
                session.connection = None

    def _reply(self, request: dict, op: str) -> dict:
        return {"op": op, "run": request.get("run"), "round": request.get("round", 0),
                "reply_to": request.get("nonce"), "nonce": new_nonce()}

    async def _receive_weights(self, ws: ServerConnection, session: RunSession, header: dict) -> None:
        trainer = session.trainer
        await recv_into(ws, int(header.get("shards", 0)), trainer.layout, trainer.state, self.limits.round_timeout_s)

    async def _serve(self, ws: ServerConnection, session: RunSession, header: dict) -> None:
        op = header["op"]
        if op in gkt.OPS:
            async with session.lock:
                await gkt.serve(ws, session.trainer, header, self._reply(header, op), self.limits)
            return
        if op not in {"train", "evaluate", "infer"}:
            raise FederationError(f"unknown op {op!r}", "federation.protocol")
        trainer = session.trainer
        async with session.lock:
            await self._receive_weights(ws, session, header)
            if op == "train":
                # the weights received are the previous round's global model: how it does on this
                # party's data is that round's honest history
                assessment = await self._in_thread(trainer.assess) if header.get("evaluate") else None
                try:
                    result = await self._in_thread(trainer.train, int(header.get("epochs", 1)),
                                                   int(header.get("round", 0)))
                except ValueError as exc:
                    raise SynergosError(str(exc), "worker.no_train_data") from None
                reply = {**self._reply(header, "update"), **result, "assessment": assessment}
                await send_state(ws, reply, trainer.state, self.limits.shard_bytes)
            elif op == "evaluate":
                meta = header.get("meta", "evaluate")
                loss, n = await self._in_thread(trainer.evaluate, meta)
                assessment = await self._in_thread(trainer.assess) if header.get("assess") else None
                await send_header(ws, {**self._reply(header, "loss"), "loss": loss, "n_samples": n,
                                       "assessment": assessment})
            else:
                meta = header.get("meta", "evaluate")
                if meta not in {"train", "evaluate", "predict"}:
                    raise SynergosError(f"unknown meta {meta!r}", "request.invalid")
                stats = await self._in_thread(self._infer, session, meta)
                await send_header(ws, {**self._reply(header, "metrics"), **stats})

    def _infer(self, session: RunSession, meta: str) -> dict[str, Any]:
        """Predict on local data, keep predictions here, return only statistics."""
        result = session.trainer.infer(meta)
        if result is None:
            return {"meta": meta, "statistics": None, "n_samples": 0, "res_path": None}
        labels, scores = result
        if session.action == "classify":
            statistics = classification_statistics(labels, scores)
            predicted = predicted_classes(scores)
        else:
            statistics = regression_statistics(labels.reshape(-1), scores.reshape(-1))
            predicted = scores.reshape(-1)
        rel = Path(*session.key) / meta
        out_dir = self.outputs_dir / rel
        out_dir.mkdir(parents=True, exist_ok=True)
        np.savetxt(out_dir / f"inference_predictions_{meta}.txt", predicted)
        np.savetxt(out_dir / f"inference_scores_{meta}.txt", scores)
        (out_dir / f"inference_statistics_{meta}.json").write_text(json.dumps(statistics, indent=2))
        session.results[meta] = {"statistics": statistics, "res_path": str(rel)}
        # sums from which the TTP pools metrics exactly across parties (e.g. R2 of the pooled data)
        return {"meta": meta, "statistics": statistics, "n_samples": int(len(labels)), "res_path": str(rel),
                "parts": metric_parts(labels, scores, session.action)}
