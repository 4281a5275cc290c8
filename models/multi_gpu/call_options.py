"""What of a diffusion-model call's transformer_options the distributed workers honour.

The workers rebuild the model and get each call's tensors and plain data. ComfyUI's model
patches are Python functions (`patches` such as attn1_patch, `patches_replace` block
replacements such as SkipLayerGuidanceDiT's, `optimized_attention_override`); the control
channel decodes no code, so they cannot reach the workers, and a call carrying one is refused
naming each patch instead of being computed without it. `rope_options` (plain data) travels.
DIFFUSION_MODEL wrappers registered after the distributed runner (EasyCache, ...) are not
options: the runner runs them in the server around the workers' call, as a plain run runs
them around the forward.
"""
from ...utils.errors import InputError

TRAVELS = ("rope_options",)
ALLOWED = ("no patch nodes on a distributed MODEL (LoRA, EasyCache-style wrappers and CFG guidance work), "
           "or parallelism_type none / data_parallel / block_distribution")


def describe(function) -> str:
    """'module.qualname' of a patch function (its node, for the user)."""
    name = getattr(function, "__qualname__", type(function).__name__)
    return f"{getattr(function, '__module__', '?')}.{name}"


def function_patches(transformer_options: dict) -> list[str]:
    """Every function-valued patch in the options, named by where ComfyUI keeps it."""
    names = [f"patches['{kind}'] ({describe(function)})"
             for kind, functions in (transformer_options.get("patches") or {}).items() for function in functions]
    names += [f"patches_replace['{family}'][{key!r}] ({describe(function)})"
              for family, entries in (transformer_options.get("patches_replace") or {}).items()
              for key, function in entries.items()]
    override = transformer_options.get("optimized_attention_override")
    if override is not None:
        names.append(f"optimized_attention_override ({describe(override)})")
    return names


def worker_options(transformer_options: dict) -> dict:
    """The options the workers get; InputError naming any patch they cannot run."""
    refused = function_patches(transformer_options)
    if refused:
        raise InputError("model", "parallelism_type 'distributed' runs the model in worker processes, which "
                         f"cannot run these model patches: {'; '.join(refused)}", ALLOWED)
    return {key: transformer_options[key] for key in TRAVELS if transformer_options.get(key) is not None}
