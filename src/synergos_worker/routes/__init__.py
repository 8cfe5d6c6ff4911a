from .poll import router as poll_router
from .runs import router as runs_router

ROUTERS = [poll_router, runs_router]
