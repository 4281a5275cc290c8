"""ComfyUI's public extension points the pack hooks into: wrappers, callbacks, the wrapper chain."""
from .runtime import ensure_comfy

ensure_comfy()
import comfy.patcher_extension  # noqa: E402
from comfy.patcher_extension import CallbacksMP as CALLBACKS  # noqa: E402,F401
from comfy.patcher_extension import WrappersMP as WRAPPERS  # noqa: E402,F401


def continue_chain(executor, replica):
    """A function running the rest of `executor`'s wrapper chain, then the inner forward, on `replica`."""
    remaining = executor.wrappers[executor.idx + 1:]
    method = executor.original.__name__

    def run(*args, **kwargs):
        original = getattr(replica, method)
        return comfy.patcher_extension.WrapperExecutor.new_class_executor(original, replica, remaining).execute(
            *args, **kwargs)

    return run
