"""The Worker's side of FedGKT: train locally against the server's predictions, hand over
features and predictions (never labels), evaluate with the server's layers, export the extractor."""

from __future__ import annotations

import asyncio
from typing import Any

from synergos_core.errors import ErrorCode, FederationError, SynergosError
from synergos_core.federation import recv_into, recv_tensors, send_message, send_tensors
from synergos_core.gkt import GKTTrainer
from synergos_core.protocol import GktEvaluate, GktExport, GktExtractor, GktFeatures, GktTrain, Loss, reply_to
from synergos_core.settings import FederationLimits


async def serve(ws: Any, trainer: Any, request: GktTrain | GktEvaluate | GktExport, limits: FederationLimits) -> None:
    if not isinstance(trainer, GKTTrainer):
        raise FederationError(f"{request.op} needs a FedGKT run", ErrorCode.FEDERATION_PROTOCOL)
    if isinstance(request, GktTrain):
        received = await recv_tensors(ws, request, {"server_out"}, limits.max_payload_bytes, limits.frame_timeout_s)
        teacher = received.get("server_out")
        if teacher is not None and len(teacher) != len(trainer.data["train"]):
            raise FederationError(
                "server predictions do not match this party's samples", ErrorCode.FEDERATION_BAD_UPDATE
            )
        try:
            result = await asyncio.to_thread(trainer.train_gkt, request.epochs, teacher)
        except ValueError as exc:
            raise SynergosError(str(exc), ErrorCode.WORKER_NO_TRAIN_DATA) from None
        tensors = {"features": result.pop("features"), "local_out": result.pop("local_out")}
        await send_tensors(ws, reply_to(request, GktFeatures, **result), tensors, limits.shard_bytes)
    elif isinstance(request, GktEvaluate):
        await recv_into(ws, request.shards, trainer.server_layout, trainer.state, limits.frame_timeout_s)
        loss, n = await asyncio.to_thread(trainer.evaluate, request.meta)
        # the party's full model (its extractor, the server's layers) on its train and evaluate data
        assessment = await asyncio.to_thread(trainer.assess) if request.assess else None
        await send_message(ws, reply_to(request, Loss, loss=loss, n_samples=n, assessment=assessment))
    else:
        await send_tensors(ws, reply_to(request, GktExtractor), trainer.extractor_state(), limits.shard_bytes)
