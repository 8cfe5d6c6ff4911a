"""Synergos Driver: the Python SDK that drives a Synergos TTP or Director over REST.

    from synergos import Driver

    driver = Driver(host="127.0.0.1", port=5000)
    driver.collaborations.create("collaboration_1")
    driver.projects.create("collaboration_1", "project_1", action="classify", incentives={})

Every task method returns the server's envelope `{apiVersion, success, status, method, params,
data}`; failures raise a `SynergosError` subclass (see `synergos_driver._exceptions`). This
package needs only httpx: it never imports torch, ray or pika.
"""

from ._base import BaseTask
from ._connect import CollaborationTask, ExperimentTask, ParticipantTask, ProjectTask, RunTask
from ._driver import Driver
from ._evaluate import PredictionTask, ValidationTask
from ._exceptions import (
    Conflict,
    ConnectionFailed,
    Forbidden,
    JobFailed,
    NotFound,
    RequestInvalid,
    ResponseError,
    ServerError,
    ServerUnresponsive,
    SynergosError,
    WaitTimeout,
)
from ._registration import RegistrationTask, TagTask
from ._train import AlignmentTask, ModelTask, OptimizationTask
from ._version import __version__

__all__ = [
    "__version__",
    "Driver",
    "BaseTask",
    "CollaborationTask",
    "ProjectTask",
    "ExperimentTask",
    "RunTask",
    "ParticipantTask",
    "RegistrationTask",
    "TagTask",
    "AlignmentTask",
    "ModelTask",
    "OptimizationTask",
    "ValidationTask",
    "PredictionTask",
    "SynergosError",
    "ConnectionFailed",
    "ServerUnresponsive",
    "JobFailed",
    "WaitTimeout",
    "ResponseError",
    "RequestInvalid",
    "Forbidden",
    "NotFound",
    "Conflict",
    "ServerError",
]

# Present the public names as belonging to the package, not to its private modules.
for _name in __all__:
    if _name != "__version__":
        globals()[_name].__module__ = __name__
del _name
