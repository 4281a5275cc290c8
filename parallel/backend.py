"""Which torch.distributed backend a worker joins, and on which device its messages travel.

A CUDA worker joins "cpu:gloo,cuda:nccl": NCCL carries CUDA tensors (the step pipeline's
sample states, Ulysses all-to-alls), gloo beside it the small CPU tensors (cancel votes), and
the worker names its GPU to `init_process_group` (`device_id`) so NCCL binds it at once. A CPU
worker joins plain gloo, and so does every rank of a group that names one GPU twice (NCCL takes
one rank per GPU): its messages then travel on the CPU. The launcher decides for the whole group
and tells each rank (COMFYUI_PARALLEL_BACKEND), so all ranks join the same. The group reports
its backends per device type ("cpu:gloo,cuda:nccl"; plain gloo reads "cpu:gloo,cuda:gloo"), so
the choice of message device reads that mapping, not the backend's name, and the CPU twin runs
the same code.
"""
import torch
import torch.distributed as dist

CUDA_BACKEND = "cpu:gloo,cuda:nccl"


def group_backend(devices: list[torch.device]) -> str:
    """The backend every rank of a group over `devices` joins: NCCL beside gloo for distinct GPUs, else gloo."""
    gpus = [torch.device(d) for d in devices]
    distinct = len(set(gpus)) == len(gpus)
    return CUDA_BACKEND if gpus and distinct and all(d.type == "cuda" for d in gpus) else "gloo"


def init_options(backend: str, device: torch.device) -> dict:
    """Extra keywords for init_process_group: the worker's GPU as device_id when NCCL carries CUDA tensors."""
    return {"device_id": device} if device.type == "cuda" and uses_nccl(backend) else {}


def uses_nccl(config: str) -> bool:
    return backends_by_device(config).get("cuda") == "nccl"


def backends_by_device(config: str) -> dict[str, str]:
    """'cpu:gloo,cuda:nccl' -> {'cpu': 'gloo', 'cuda': 'nccl'}; a bare name applies to both."""
    if ":" not in config:
        return {"cpu": config, "cuda": config}
    pairs = (part.split(":", 1) for part in config.split(",") if part)
    return {device.strip(): backend.strip() for device, backend in pairs}


def message_device(config: str, cuda_index: int | None = None) -> torch.device:
    """Where tensors sent between ranks must live: the current GPU when CUDA maps to NCCL, else the CPU."""
    if uses_nccl(config):
        return torch.device("cuda", torch.cuda.current_device() if cuda_index is None else cuda_index)
    return torch.device("cpu")


def current_message_device() -> torch.device:
    """message_device of the default process group this process joined."""
    return message_device(dist.get_backend_config())
