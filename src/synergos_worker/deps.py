from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from synergos_core.settings import WorkerSettings

from .sessions import SessionRegistry


def _registry(request: Request) -> SessionRegistry:
    return request.app.state.registry


def _settings(request: Request) -> WorkerSettings:
    return request.app.state.settings


RegistryDep = Annotated[SessionRegistry, Depends(_registry)]
SettingsDep = Annotated[WorkerSettings, Depends(_settings)]
