"""ComfyUI's public extension points the pack hooks into: wrappers, callbacks, the wrapper chain."""
from .runtime import ensure_comfy

ensure_comfy()
import comfy.patcher_extension  # noqa: E402
from comfy.patcher_extension import CallbacksMP as CALLBACKS  # noqa: E402,F401
from comfy.patcher_extension import WrappersMP as WRAPPERS  # noqa: E402,F401


def rest_of_chain(executor, inner, class_obj=None):
    """A function running the wrappers after `executor`'s in its chain, then `inner` instead of the
    wrapped forward (class_obj: what those wrappers see as executor.class_obj; default the same)."""
    remaining = executor.wrappers[executor.idx + 1:]
    owner = executor.class_obj if class_obj is None else class_obj

    def run(*args, **kwargs):
        return comfy.patcher_extension.WrapperExecutor.new_class_executor(inner, owner, remaining).execute(
            *args, **kwargs)

    return run


def continue_chain(executor, replica):
    """A function running the rest of `executor`'s wrapper chain, then the inner forward, on `replica`."""
    method = executor.original.__name__
    return rest_of_chain(executor, lambda *args, **kwargs: getattr(replica, method)(*args, **kwargs), replica)
