"""GPU Status: a report of the devices, a gpu_ids check, and a parallelism recommendation.

The same data is served as JSON at `GET /parallel/gpus?gpu_ids=...&model=...` on ComfyUI's
server (registered at import when the server is running), for scripts and dashboards.
"""
import folder_paths

from ..models.comfy.server import add_get_route
from ..parallel.devices import parse_gpu_ids
from ..parallel.status import format_report, gpu_status
from ..utils.errors import InputError

NO_MODEL = "None"
MODEL_FOLDERS = ("diffusion_models", "checkpoints")


def model_choices() -> list[str]:
    """'None', then the files of diffusion_models and checkpoints (first folder wins on a repeat)."""
    names = [NO_MODEL]
    for folder in MODEL_FOLDERS:
        names += [name for name in folder_paths.get_filename_list(folder) if name not in names]
    return names


def model_path(name: str | None) -> str | None:
    """The full path of a model choice; None for 'None'; InputError for a file that is not there."""
    if not name or name == NO_MODEL:
        return None
    for folder in MODEL_FOLDERS:
        path = folder_paths.get_full_path(folder, name)
        if path:
            return path
    raise InputError("model", f"'{name}' is not in the diffusion_models or checkpoints folder",
                     ", ".join(model_choices()[:20]))


class GPUStatus:
    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "gpu_ids": ("STRING", {"default": "all", "tooltip":
                    "Devices to check: '0,1', 'cuda:0,cuda:1', 'all', 'cpu', or 'cpu,cpu' (simulated devices). "
                    "An id this machine lacks is an error listing what exists."}),
            },
            "optional": {
                "model": (model_choices(), {"default": NO_MODEL, "tooltip":
                    "A model file (diffusion_models or checkpoints folder) to recommend a parallelism for, "
                    "from its size against the free memory of the devices above. None: devices only."}),
            },
        }

    RETURN_TYPES = ("STRING",)
    RETURN_NAMES = ("report",)
    FUNCTION = "report"
    OUTPUT_NODE = True
    CATEGORY = "parallel/utils"
    DESCRIPTION = ("Report the GPUs (memory, utilisation, temperature) and host RAM, check a gpu_ids string, "
                   "and recommend a parallelism for a model file.")

    def report(self, gpu_ids, model=NO_MODEL):
        parse_gpu_ids(gpu_ids)  # a bad gpu_ids is an error naming the input, not just a report line
        text = format_report(gpu_status(gpu_ids, model_path(model)))
        print(f"[GPUStatus]\n{text}")
        return {"ui": {"text": [text]}, "result": (text,)}


async def parallel_gpus(request):
    """GET /parallel/gpus?gpu_ids=...&model=...: the status as JSON (a bad gpu_ids is a 400 naming it)."""
    from aiohttp import web

    gpu_ids = request.query.get("gpu_ids", "all")
    try:
        status = gpu_status(gpu_ids, model_path(request.query.get("model")))
    except InputError as err:
        return web.json_response({"error": str(err)}, status=400)
    status["report"] = format_report(status)
    return web.json_response(status)


add_get_route("/parallel/gpus", parallel_gpus)

NODE_CLASS_MAPPINGS = {"GPUStatus": GPUStatus}
NODE_DISPLAY_NAME_MAPPINGS = {"GPUStatus": "GPU Status"}
