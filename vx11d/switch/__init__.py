"""Switch: the deterministic router (safe arithmetic and pattern rules), a library."""

from .arith import ArithError, evaluate
from .router import Decision, Switch, SwitchRefused

__all__ = ["ArithError", "Decision", "Switch", "SwitchRefused", "evaluate"]
