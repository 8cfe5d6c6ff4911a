"""The Worker's federation server: one WebSocket listener, one authenticated channel per run.

The handshake checks the run token, then the protocol version (`protocol.PROTOCOL_VERSION`);
each control frame received is parsed into its request model once, in `_handle`, and everything
after works on the typed request. Every message renews its session's lease; a task ends the
sessions whose lease ran out (`SessionRegistry.expire`)."""

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

from synergos_core.errors import ErrorCode, FederationError, SynergosError, report
from synergos_core.federation import (
    WS_PATH_PREFIX,
    ReplayGuard,
    recv_header,
    recv_into,
    run_name,
    send_message,
    send_state,
)
from synergos_core.identity import Credentials, peer_identity
from synergos_core.metrics import classification_statistics, metric_parts, predicted_classes, regression_statistics
from synergos_core.protocol import (
    PROTOCOL_HEADER,
    PROTOCOL_VERSION,
    Close,
    Closed,
    Error,
    Evaluate,
    GktEvaluate,
    GktExport,
    GktTrain,
    Infer,
    Loss,
    Metrics,
    RequestMessage,
    Train,
    Update,
    new_nonce,
    parse_request,
    reply_to,
    version_mismatch,
)
from synergos_core.settings import FederationLimits

from . import gkt, resume
from .sessions import RunKey, RunSession, SessionRegistry
from .trust import WorkerTrust

log = logging.getLogger(__name__)


def _run_key(path: str) -> RunKey | None:
    if not path.startswith(WS_PATH_PREFIX):
        return None
    parts = path[len(WS_PATH_PREFIX) :].split("?")[0].split("/")
    return tuple(parts) if len(parts) == 4 and all(parts) else None  # type: ignore[return-value]


def _bind_torch_threads() -> None:
    # torch.set_num_threads reaches OpenMP only in the thread that calls it: a fresh thread would
    # otherwise start a team of one OpenMP thread per core, whose spin-waits after every op burn the
    # CPU that the other parties and the TTP on the host need (5-10x a small model's compute).
    torch.set_num_threads(torch.get_num_threads())


class FederationServer:
    def __init__(
        self,
        registry: SessionRegistry,
        limits: FederationLimits,
        outputs_dir: Path,
        credentials: Credentials | None = None,
        trust: WorkerTrust | None = None,
    ) -> None:
        self.registry = registry
        self.limits = limits
        self.outputs_dir = outputs_dir
        # TLS with the Worker's identity; the TTP's certificate is checked at the handshake (401/403)
        self.credentials = credentials
        self.trust = trust
        self._server: Server | None = None
        self._leases: asyncio.Task[None] | None = None
        # local training, evaluation and inference run here, off the event loop
        self._compute = ThreadPoolExecutor(
            min(32, (os.cpu_count() or 1) + 4), thread_name_prefix="synergos-compute", initializer=_bind_torch_threads
        )

    async def _in_thread(self, fn: Any, *args: Any) -> Any:
        return await asyncio.get_running_loop().run_in_executor(self._compute, fn, *args)

    async def start(self, host: str, port: int) -> None:
        self.registry.bind(asyncio.get_running_loop())
        self._leases = asyncio.get_running_loop().create_task(self._expire_leases(), name="session leases")
        self._server = await serve(
            self._handle,
            host,
            port,
            process_request=self._authenticate,
            process_response=self._announce_version,
            max_size=self.limits.max_frame_bytes,
            max_queue=self.limits.max_queue,
            compression=None,  # tensors do not compress; deflate only adds memory and CPU
            ping_interval=self.limits.ping_interval_s,
            ping_timeout=self.limits.ping_timeout_s,
            open_timeout=self.limits.open_timeout_s,
            close_timeout=self.limits.close_timeout_s,
            ssl=self.credentials.server_context(require_client=False) if self.credentials else None,
        )
        log.info("federation listening on %s://%s:%d", "wss" if self.credentials else "ws", host, port)

    async def _expire_leases(self) -> None:
        lease = self.limits.session_lease_s
        while True:
            await asyncio.sleep(max(0.1, min(lease / 4, 30.0)))
            try:
                self.registry.expire(lease)
            except Exception as exc:  # noqa: BLE001 - the leases must keep being checked whatever one close did
                report(exc, log, "expiring federation sessions")

    async def stop(self) -> None:
        if self._leases is not None:
            self._leases.cancel()
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
        self._compute.shutdown(wait=False)

    # -- handshake: refuse before any state is allocated --
    def _authenticate(self, connection: ServerConnection, request: Request) -> Response | None:
        if self.trust is not None:
            identity = peer_identity(connection.transport.get_extra_info("peercert"))
            if identity is None:
                return connection.respond(HTTPStatus.UNAUTHORIZED, "present a certificate of this collaboration\n")
            refused = self.trust.caller(identity)
            if refused is not None:
                log.warning("federation channel of %s refused: %s", identity, refused[1])
                return connection.respond(HTTPStatus.FORBIDDEN, refused[1] + "\n")
        key = _run_key(request.path)
        if key is None:
            return connection.respond(HTTPStatus.NOT_FOUND, "unknown federation path\n")
        if self.trust is not None and (refused := self.trust.serves(key[0], key[1])) is not None:
            return connection.respond(HTTPStatus.FORBIDDEN, refused[1] + "\n")
        session = self.registry.find(key)
        auth = request.headers.get("Authorization", "")
        presented = auth[7:] if auth.startswith("Bearer ") else None
        if session is None or not session.authorised(presented):
            # same answer for unknown runs and wrong tokens: nothing to learn by probing
            return connection.respond(HTTPStatus.UNAUTHORIZED, "missing or invalid run token\n")
        # The version is checked after the token, though it is no secret: a client without a run's
        # token learns nothing, not even which protocol this node speaks; the TTP that holds the
        # token learns both versions, the clear error it needs.
        offered = request.headers.get(PROTOCOL_HEADER)
        if offered != str(PROTOCOL_VERSION):
            why = version_mismatch(offered, peer="Worker")
            log.warning("run %s: channel refused: %s", run_name(*key), why)
            response = connection.respond(HTTPStatus.UPGRADE_REQUIRED, why + "\n")
            response.headers[PROTOCOL_HEADER] = str(PROTOCOL_VERSION)
            return response
        return None

    def _announce_version(self, connection: ServerConnection, request: Request, response: Response) -> None:
        # the TTP checks that the node that accepted its channel speaks its version
        if response.status_code == HTTPStatus.SWITCHING_PROTOCOLS:
            response.headers[PROTOCOL_HEADER] = str(PROTOCOL_VERSION)

    async def _handle(self, ws: ServerConnection) -> None:
        key = _run_key(ws.request.path) if ws.request is not None else None
        session = self.registry.find(key) if key else None
        if session is None:
            await ws.close(1008, "session closed")
            return
        if session.connection is not None:
            await session.connection.close(1001, "replaced by a new connection")
        session.connection = ws
        run = run_name(*session.key)
        guard = session.guard  # the session's, not this connection's: a replay on a new connection is refused too
        try:
            while True:
                request: RequestMessage | None = None
                header: dict = {}
                try:
                    header = await recv_header(ws, None)
                    session.touch()  # the TTP was heard from: the lease starts again
                    request = parse_request(header)  # the edge: past here, only typed messages
                    guard.check(request)
                    if isinstance(request, Close):
                        await send_message(ws, reply_to(request, Closed))
                        break
                    await self._serve(ws, session, request)
                except ConnectionClosed:
                    break
                except SynergosError as exc:
                    log.warning("run %s: %s", run, exc.detail)
                    await send_message(ws, self._error(run, guard, request, header, exc.code, exc.detail))
                    if isinstance(exc, FederationError):
                        await ws.close(1008, exc.code)
                        break
                except Exception as exc:  # noqa: BLE001 - a failure of local work: report it, keep the channel
                    op = request.op if request is not None else "request"
                    # the traceback stays in this node's log; the TTP gets the id to find it by
                    error = report(exc, log, f"run {run}: {op}")
                    detail = f"{op} failed on this node; its log holds the details under correlation id"
                    await send_message(
                        ws,
                        self._error(
                            run,
                            guard,
                            request,
                            header,
                            ErrorCode.WORKER_FAILED,
                            f"{detail} {error['correlation_id']}",
                        ),
                    )
        finally:
            if session.connection is ws:
                session.connection = None
                session.touch()  # the lease runs from the channel's end

    @staticmethod
    def _error(
        run: str, guard: ReplayGuard, request: RequestMessage | None, header: dict, code: str, detail: str
    ) -> Error:
        """The error reply to `request`, or to a frame that never became one (then `reply_to` echoes
        its nonce only if it had a plausible one)."""
        if request is not None:
            return Error(
                run=run, round=request.round, nonce=new_nonce(), reply_to=request.nonce, code=code, detail=detail[:8192]
            )
        nonce = header.get("nonce")
        echo = nonce if isinstance(nonce, str) and 16 <= len(nonce) <= 128 else None
        return Error(
            run=run, round=max(guard.round, 0), nonce=new_nonce(), reply_to=echo, code=code, detail=detail[:8192]
        )

    async def _receive_weights(
        self, ws: ServerConnection, session: RunSession, request: Train | Evaluate | Infer
    ) -> None:
        trainer = session.trainer
        await recv_into(ws, request.shards, trainer.layout, trainer.state, self.limits.frame_timeout_s)

    async def _serve(self, ws: ServerConnection, session: RunSession, request: RequestMessage) -> None:
        if isinstance(request, (GktTrain, GktEvaluate, GktExport)):
            async with session.lock:
                await gkt.serve(ws, session.trainer, request, self.limits)
            return
        if not isinstance(request, (Train, Evaluate, Infer)):
            raise FederationError(f"{request.op} is not served here", ErrorCode.FEDERATION_PROTOCOL)
        trainer = session.trainer
        async with session.lock:
            await self._receive_weights(ws, session, request)
            if isinstance(request, Train):
                if request.resume_from is not None:  # a resumed run: carry on as after that round
                    await self._in_thread(resume.restore, self.outputs_dir, session, request.resume_from)
                # the weights received are the previous round's global model: how it does on this
                # party's data is that round's honest history
                assessment = await self._in_thread(trainer.assess) if request.evaluate else None
                try:
                    result = await self._in_thread(trainer.train, request.epochs, request.round)
                except ValueError as exc:
                    raise SynergosError(str(exc), ErrorCode.WORKER_NO_TRAIN_DATA) from None
                # kept before the update leaves: a checkpoint the TTP makes of this round can resume
                await self._in_thread(resume.keep, self.outputs_dir, session, request.round)
                update = reply_to(request, Update, **result, assessment=assessment)
                await send_state(ws, update, trainer.state, self.limits.shard_bytes)
            elif isinstance(request, Evaluate):
                loss, n = await self._in_thread(trainer.evaluate, request.meta)
                assessment = await self._in_thread(trainer.assess) if request.assess else None
                await send_message(ws, reply_to(request, Loss, loss=loss, n_samples=n, assessment=assessment))
            else:
                stats = await self._in_thread(self._infer, session, request.meta)
                await send_message(ws, reply_to(request, Metrics, **stats))

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
        return {
            "meta": meta,
            "statistics": statistics,
            "n_samples": len(labels),
            "res_path": str(rel),
            "parts": metric_parts(labels, scores, session.action),
        }
