"""Load SeedVR checkpoints (.pth via torch.load(weights_only=True, mmap=True), .safetensors)
with strict key and shape matching against the model built for them.

The DiT is built on the meta device and the checkpoint's tensors are assigned (cast to the
requested precision, fp8 upcast), so a 7B never exists twice in memory. `variant="auto"` reads
the architecture from the weights (any size, including the small test models); a named variant
builds the official config and any difference is reported key by key. The only tolerated gap:
the rotary `rope.rope.freqs` buffers, constants that some conversions drop (or store rounded to
fp16 / fp8), are recomputed in float32.

Comfy-Org's repackaged files (seedvr2_3b_fp16, seedvr2_7b_fp16, *_fp8_e4m3fn,
seedvr2_7b_sharp_fp16, the ones today's ComfyUI loads natively) are the official keys plus two
buffers, `positive_conditioning` [58, 5120] and `negative_conditioning` [64, 5120], the text
embeddings baked in: they are taken out (checked to be [tokens, txt_in_dim]) and returned as the
model's own embeddings; everything else is matched as strictly as in an official file.
"""
import re
from pathlib import Path

import torch

from ...utils.errors import InputError
from .build import meta_vae
from .config import VARIANTS, SAMPLER_V1, SAMPLER_V2, DiTConfig, VAEConfig, variant
from .dit import NaDiT
from .rope import MMRope3d, PixelRope3d

ROPE_SUFFIX = "attn.rope.rope.freqs"
EMBEDDING_KEYS = ("positive", "negative")
_OLD_ATTN = {"query": "to_q", "key": "to_k", "value": "to_v", "proj_attn": "to_out.0"}


def read_state_dict(path: Path, input_name: str) -> dict:
    """Tensors of a .safetensors or .pth/.pt/.ckpt file (never unpickles arbitrary objects)."""
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(path))
        else:
            state = torch.load(str(path), map_location="cpu", weights_only=True, mmap=True)
    except Exception as error:  # corrupt / truncated / not a checkpoint: say which file
        raise InputError(input_name, f"cannot read '{path.name}': {type(error).__name__}: {error}",
                         ".safetensors or a torch .pth state_dict") from error
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise InputError(input_name, f"'{path.name}' does not hold a flat state_dict of tensors")
    return state


def _require(state: dict, keys: list, input_name: str, what: str) -> None:
    missing = [k for k in keys if k not in state]
    if missing:
        raise InputError(input_name, f"not a {what} checkpoint: missing {', '.join(missing)}")


def infer_dit_config(state: dict, input_name: str = "dit_name") -> DiTConfig:
    """The NaDiT architecture a state_dict was saved from."""
    _require(state, ["vid_in.proj.weight", "txt_in.weight", "vid_out.proj.weight"], input_name, "SeedVR DiT")
    family = "v2" if "vid_out_norm.weight" in state else "v1"
    vid_dim, patch_in = state["vid_in.proj.weight"].shape
    first = "blocks.0.attn.norm_q." + ("vid" if "blocks.0.attn.norm_q.vid.weight" in state else "all")
    _require(state, [f"{first}.weight", first.replace("norm_q", "proj_qkv") + ".weight"], input_name, "SeedVR DiT")
    head_dim = state[f"{first}.weight"].shape[0]
    qkv = state[first.replace("norm_q", "proj_qkv") + ".weight"].shape[0]
    indices = {int(m.group(1)) for k in state if (m := re.match(r"blocks\.(\d+)\.", k))}
    mm_layers = sum(f"blocks.{i}.attn.proj_qkv.vid.weight" in state for i in indices)
    hidden_key = "blocks.0.mlp.{}.proj_in.weight".format("vid" if mm_layers else "all")
    expand = 4
    if family == "v1" and hidden_key in state:
        expand = state[hidden_key].shape[0] // vid_dim
    return DiTConfig(family=family, vid_dim=vid_dim, txt_in_dim=state["txt_in.weight"].shape[1],
                     heads=qkv // 3 // head_dim, head_dim=head_dim, num_layers=max(indices, default=-1) + 1,
                     mm_layers=mm_layers, expand_ratio=expand, in_channels=patch_in // 4,
                     out_channels=state["vid_out.proj.weight"].shape[0] // 4)


def infer_vae_config(state: dict, input_name: str = "vae_name") -> VAEConfig:
    """The VAE layout a state_dict was saved from (channels, resnets per block, latent width)."""
    _require(state, ["encoder.conv_in.weight", "decoder.conv_in.weight"], input_name, "SeedVR video VAE")
    channels, i = [], 0
    while f"encoder.down_blocks.{i}.resnets.0.conv1.weight" in state:
        channels.append(state[f"encoder.down_blocks.{i}.resnets.0.conv1.weight"].shape[0])
        i += 1
    layers = sum(bool(re.fullmatch(r"encoder\.down_blocks\.0\.resnets\.\d+\.conv1\.weight", k)) for k in state)
    latent = state["decoder.conv_in.weight"].shape[1]
    if state["decoder.conv_in.weight"].ndim != 5 or latent != 16 or len(channels) < 2:
        raise InputError(input_name, f"this VAE has {latent} latent channels and {len(channels)} levels",
                         "SeedVR's causal 3D video VAE (ema_vae.pth: 16 latent channels, 5-D convs)")
    return VAEConfig(block_out_channels=tuple(channels), layers_per_block=layers, latent_channels=latent,
                     norm_groups=min(32, min(channels)))


def _names(keys, limit: int = 8) -> str:
    keys = sorted(keys)
    more = f" and {len(keys) - limit} more" if len(keys) > limit else ""
    return ", ".join(keys[:limit]) + more


def check_keys(model: torch.nn.Module, state: dict, input_name: str, what: str) -> None:
    """Raise InputError naming missing keys, extra keys and shape mismatches."""
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    missing = [k for k in expected if k not in state and not k.endswith(ROPE_SUFFIX)]
    extra = [k for k in state if k not in expected]
    shapes = [f"{k} {tuple(state[k].shape)} != {expected[k]}" for k in expected
              if k in state and tuple(state[k].shape) != expected[k]]
    problems = []
    if missing:
        problems.append(f"{len(missing)} missing keys: {_names(missing)}")
    if extra:
        problems.append(f"{len(extra)} unexpected keys: {_names(extra)}")
    if shapes:
        problems.append(f"{len(shapes)} shape mismatches: {_names(shapes, 4)}")
    if problems:
        raise InputError(input_name, f"checkpoint does not match {what}: " + "; ".join(problems))


def _cast(state: dict, dtype: torch.dtype) -> dict:
    """Floating tensors to `dtype` (fp8 upcast); rotary buffers stay float32."""
    out = {}
    for key, tensor in state.items():
        target = torch.float32 if key.endswith(ROPE_SUFFIX) else dtype
        out[key] = tensor.to(target) if tensor.is_floating_point() else tensor
    return out


def _fill_rope(model: NaDiT, state: dict) -> None:
    """Rotary constants that are missing, or stored rounded (fp16 / fp8 files), computed in float32."""
    rope_cls = MMRope3d if model.cfg.family == "v2" else PixelRope3d
    freqs = rope_cls(model.cfg.rope_axis_dim).rope.freqs
    for key in model.state_dict():
        if key.endswith(ROPE_SUFFIX) and (key not in state or state[key].dtype != torch.float32):
            state[key] = freqs.clone()


def variant_name(cfg: DiTConfig, file_name: str) -> str:
    """seedvr_3b / seedvr2_7b / ... from the size and the file name ("custom" for other sizes);
    a file name without "seedvr" followed by something other than "2" counts as SeedVR2."""
    size = {2560: "3b", 3072: "7b"}.get(cfg.vid_dim, "custom")
    generation = "seedvr" if re.search(r"seedvr(?!2)", file_name.lower()) else "seedvr2"
    return f"{generation}_{size}"


def take_embeddings(state: dict, width: int, input_name: str) -> dict:
    """Pop Comfy-Org's baked-in conditioning buffers: {"positive": [L, width], "negative": ...} float32."""
    embeddings = {}
    for name in EMBEDDING_KEYS:
        tensor = state.pop(f"{name}_conditioning", None)
        if tensor is None:
            continue
        if tensor.ndim != 2 or tensor.shape[1] != width or not tensor.is_floating_point():
            raise InputError(input_name, f"{name}_conditioning has shape {tuple(tensor.shape)} ({tensor.dtype})",
                             f"[tokens, {width}], the text embedding width of this DiT")
        embeddings[name] = tensor.float()
    return embeddings


def load_dit(path: Path, variant_choice: str, dtype: torch.dtype, input_name: str = "dit_name") -> tuple:
    """(NaDiT on the CPU in `dtype`, variant name, sampler defaults, baked-in embeddings ({} if none))."""
    return dit_from_state(read_state_dict(path, input_name), variant_choice, path.name, dtype, input_name)


def dit_from_state(state: dict, variant_choice: str, file_name: str, dtype: torch.dtype,
                   input_name: str = "dit_name") -> tuple:
    """`load_dit` on a state_dict read from `file_name` (its tensors are assigned, not copied)."""
    state = dict(state)
    if variant_choice == "auto":
        cfg = infer_dit_config(state, input_name)
        name = variant_name(cfg, file_name)
    elif variant_choice in VARIANTS:
        cfg, name = variant(variant_choice).dit, variant_choice
    else:
        raise InputError("variant", f"unknown variant {variant_choice!r}", "auto, " + ", ".join(VARIANTS))
    embeddings = take_embeddings(state, cfg.txt_in_dim, input_name)
    with torch.device("meta"):
        dit = NaDiT(cfg)
    check_keys(dit, state, input_name, f"the {name} DiT ({cfg.num_layers} blocks, width {cfg.vid_dim})")
    _fill_rope(dit, state)
    dit.load_state_dict(_cast(state, dtype), strict=True, assign=True)
    sampler = SAMPLER_V1 if name.startswith("seedvr_") else SAMPLER_V2
    return dit.eval().requires_grad_(False), name, sampler, embeddings


def load_vae(path: Path, dtype: torch.dtype, input_name: str = "vae_name"):
    """VideoVAE on the CPU in `dtype` (old diffusers attention key names are renamed first)."""
    state = read_state_dict(path, input_name)
    state = {re.sub(r"attentions\.0\.(query|key|value|proj_attn)\.",
                    lambda m: f"attentions.0.{_OLD_ATTN[m.group(1)]}.", k): v for k, v in state.items()}
    vae = meta_vae(infer_vae_config(state, input_name))
    check_keys(vae, state, input_name, "SeedVR's video VAE")
    vae.load_state_dict(_cast(state, dtype), strict=True, assign=True)
    return vae.eval().requires_grad_(False)
