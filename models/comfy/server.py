"""ComfyUI's running server, where the pack adds to it: a JSON route and a hook on POST /free.

Both exist only inside ComfyUI's server process (`server.PromptServer.instance`); elsewhere
(tests in-process, workers) the functions do nothing and return False. Routes and middlewares
are added while custom nodes load, before the server's aiohttp application starts.
"""
import json
import sys
import threading
from typing import Awaitable, Callable


def prompt_server():
    """ComfyUI's PromptServer instance, None outside the server."""
    return getattr(getattr(sys.modules.get("server"), "PromptServer", None), "instance", None)


def add_get_route(path: str, handler: Callable[..., Awaitable]) -> bool:
    """Serve GET `path` with an aiohttp handler."""
    instance = prompt_server()
    if instance is None:
        return False
    instance.routes.get(path)(handler)
    return True


def on_free(callback: Callable[[], object]) -> bool:
    """Run `callback()` (in a thread) after ComfyUI answers a POST /free that unloads models or frees memory."""
    instance = prompt_server()
    if instance is None:
        return False
    from aiohttp import web

    @web.middleware
    async def free_hook(request, handler):
        response = await handler(request)
        if request.method == "POST" and request.path == "/free":
            try:
                body = json.loads(await request.read() or b"{}")
            except ValueError:
                body = {}
            if isinstance(body, dict) and (body.get("unload_models") or body.get("free_memory")):
                threading.Thread(target=callback, name="comfyui-parallel-free", daemon=True).start()
        return response

    instance.app.middlewares.append(free_hook)
    return True
