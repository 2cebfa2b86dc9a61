"""The interpreter: the executor that carries out `saga.decide`'s effects (see `executor`)."""

from workers.interpreter.executor import Executor, WorkflowCatalog, utc_now

__all__ = ["Executor", "WorkflowCatalog", "utc_now"]
