"""The Worker's side of FedGKT: train locally against the server's predictions, hand over
features and predictions (never labels), evaluate with the server's layers, export the extractor."""
from __future__ import annotations

import asyncio
from typing import Any

from synergos_core.errors import FederationError, SynergosError
from synergos_core.federation import recv_into, recv_tensors, send_header, send_tensors
from synergos_core.gkt import GKTTrainer
from synergos_core.settings import FederationLimits

OPS = {"gkt_train", "gkt_evaluate", "gkt_export"}


async def serve(ws: Any, trainer: Any, header: dict, reply: dict, limits: FederationLimits) -> None:
    if not isinstance(trainer, GKTTrainer):
        raise FederationError(f"{header['op']} needs a FedGKT run", "federation.protocol")
    op = header["op"]
    if op == "gkt_train":
        received = await recv_tensors(ws, header, {"server_out"}, limits.max_payload_bytes, limits.round_timeout_s)
        teacher = received.get("server_out")
        if teacher is not None and len(teacher) != len(trainer.data["train"]):
            raise FederationError("server predictions do not match this party's samples", "federation.bad_update")
        try:
            result = await asyncio.to_thread(trainer.train_gkt, int(header.get("epochs", 1)), teacher)
        except ValueError as exc:
            raise SynergosError(str(exc), "worker.no_train_data") from None
        tensors = {"features": result.pop("features"), "local_out": result.pop("local_out")}
        await send_tensors(ws, {**reply, "op": "gkt_features", **result}, tensors, limits.shard_bytes)
    elif op == "gkt_evaluate":
        await recv_into(ws, int(header.get("shards", 0)), trainer.server_layout, trainer.state,
                        limits.round_timeout_s)
        loss, n = await asyncio.to_thread(trainer.evaluate, header.get("meta", "evaluate"))
        # the party's full model (its extractor, the server's layers) on its train and evaluate data
        assessment = await asyncio.to_thread(trainer.assess) if header.get("assess") else None
        await send_header(ws, {**reply, "op": "loss", "loss": loss, "n_samples": n, "assessment": assessment})
    else:
        await send_tensors(ws, {**reply, "op": "gkt_extractor"}, trainer.extractor_state(), limits.shard_bytes)
