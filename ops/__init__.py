"""Operations: the production topology run as local processes (`python -m cli stack up|status|down`)."""

from ops.errors import ServiceUnhealthy, StackError
from ops.stack import down, reload_api, status, up

__all__ = ["ServiceUnhealthy", "StackError", "down", "reload_api", "status", "up"]
