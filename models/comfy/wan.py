"""ComfyUI's Wan model internals the pack relies on: its class, blocks, attention, rotary embedding.

Sequence parallelism replaces each block's self-attention with one that computes on a token
shard (models/wan/sequence.py); it reads the attention module's projections and the block's
rotary table, and calls ComfyUI's rotary and attention functions, found here by what the
running ComfyUI has (0.3.52 rotates q and k together with `apply_rope`; 0.3.75+ one at a time
with `apply_rope1`).
"""
import torch
from torch import nn

from .patcher import accepts
from .rebuild import operations_for
from .runtime import ensure_comfy

ensure_comfy()
import comfy.ldm.flux.math as flux_math  # noqa: E402
from comfy.ldm.modules.attention import optimized_attention  # noqa: E402
from comfy.ldm.wan.model import WanModel, repeat_e  # noqa: E402

BLOCKS = "blocks"  # WanModel's transformer block list
ROTARY_KWARG = "freqs"  # a Wan block's rotary table, passed by keyword
MODULATION_KWARG = "e"  # a Wan block's modulation, passed by keyword
TAKES_OPTIONS = accepts(optimized_attention, "transformer_options")


def is_wan(diffusion_model) -> bool:
    """Whether a diffusion model is ComfyUI's WanModel or one of its subclasses (VACE, Camera, ...)."""
    return isinstance(diffusion_model, WanModel)


def is_plain_wan(diffusion_model) -> bool:
    """Exactly WanModel: its forward is the one the sequence-parallel worker hooks into."""
    return type(diffusion_model) is WanModel


def expand_modulation(e: torch.Tensor, length: int) -> torch.Tensor:
    """Per-frame modulation [B, F, ...] repeated to `length` tokens by the running Wan's own `repeat_e`
    (0.3.52 repeats only when F divides the tokens; 0.3.75+ also covers the remainder)."""
    return repeat_e(e, e.new_empty((e.shape[0], length, 0)))


def rotate_qk(q: torch.Tensor, k: torch.Tensor, freqs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """ComfyUI's rotary embedding of q and k ([B, L, heads, D])."""
    one = getattr(flux_math, "apply_rope1", None)
    if one is not None:
        return one(q, freqs), one(k, freqs)
    return flux_math.apply_rope(q, k, freqs)


def self_attention_qkv(attention: nn.Module, x: torch.Tensor, freqs: torch.Tensor):
    """q, k, v ([B, L, heads, D]) of a WanSelfAttention for tokens x, rotated as its forward does."""
    b, s, n, d = *x.shape[:2], attention.num_heads, attention.head_dim
    q = attention.norm_q(attention.q(x)).view(b, s, n, d)
    k = attention.norm_k(attention.k(x)).view(b, s, n, d)
    q, k = rotate_qk(q, k, freqs)
    return q, k, attention.v(x).view(b, s, n, d)


def self_attention_out(attention: nn.Module, out: torch.Tensor) -> torch.Tensor:
    """The output projection of a WanSelfAttention for attention output [B, L, heads, D]."""
    b, s, n, d = out.shape
    return attention.o(out.reshape(b, s, n * d))


def attention_with(transformer_options: dict):
    """ComfyUI's optimized attention as a function of [B, L, heads, D] tensors."""
    def attend(q, k, v):
        b, length, heads, d = q.shape
        flat = [t.reshape(b, length, heads * d) for t in (q, k, v)]
        kwargs = {"transformer_options": transformer_options} if TAKES_OPTIONS else {}  # not on 0.3.52
        return optimized_attention(*flat, heads=heads, **kwargs).view(b, length, heads, d)

    return attend


def build_wan_model(spec: dict, state_dict: dict[str, torch.Tensor], device: torch.device) -> nn.Module:
    """Rebuild a WanModel from a spec (`unet_config`, `manual_cast_dtype`, `quantization`) and its weights.

    Built with the ops the server's BaseModel picked (fp8_scaled files: ComfyUI's scaled fp8 ops,
    whose Linear layers hold `scale_weight`), on the meta device, and given the weights by
    assignment, not copied, so a worker on the CPU computes straight from the shared-memory tensors.
    """
    config = dict(spec["unet_config"])
    operations = operations_for(spec, device)
    with torch.device("meta"):
        model = WanModel(**config, operations=operations)
    missing, unexpected = model.load_state_dict(state_dict, strict=False, assign=True)
    if missing or unexpected:
        raise ValueError(f"Wan weights do not match the spec: missing {missing[:5]}, unexpected {unexpected[:5]}")
    left_on_meta = [name for name, t in list(model.named_parameters()) + list(model.named_buffers()) if t.is_meta]
    if left_on_meta:
        raise ValueError(f"Wan model has tensors without weights: {left_on_meta[:5]}")
    return model.eval().to(device).requires_grad_(False)
