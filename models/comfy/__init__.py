"""The host adapter: every use of ComfyUI's internals, in one package.

Nothing else in the pack imports `comfy`. Each function here detects what the running ComfyUI
has (attributes, signatures, load-list entry shapes), never its version string, and the
overrides of ModelPatcher methods take and pass on arguments they do not know. Public
extension points (wrappers, callbacks, attachments, `model_options`) are used where they do
the job. tests/unit/models/comfy/test_surface.py walks the table below against the installed
ComfyUI and fails naming any `always` item that is missing; `optional` items are detected at
run time (the adapter falls back as the last columns say); `instance` items are attributes
ComfyUI sets on each patcher or model it builds (checked on a new ModelPatcher); `server` items
exist only in a running server and are covered by the end-to-end tests. The 0.38 column is read from
Comfy-Org/ComfyUI's source (comfy/model_patcher.py @08d0e510, comfy/model_management.py
@02b2b388, comfy/sd.py @35ead008, main.py @4f8cf3e2); tests/integration/test_host_contract_038.py
drives the pack's overrides with those call shapes.

| item | needed | why the pack needs it | 0.3.52 | 0.3.75 | 0.38 |
|---|---|---|---|---|---|
| `comfy.model_patcher.ModelPatcher.load` | always | block managers place blocks at load | (device_to, lowvram_model_memory, force_patch_weights, full_load) | same | dynamic: + `dirty`, called `load(device, dirty=...)` |
| `comfy.model_patcher.ModelPatcher._load_list` | always | blocks the pack places stay out of ComfyUI's list | entries (size, name, module, params) | (offload size, size, name, module, params) | `(for_dynamic, default_device)`; dynamic entries have 6 fields |
| `comfy.model_patcher.ModelPatcher.clone` | always | the pack's mixin survives clones (LoRA loaders) | `clone()`, builds `self.__class__` | same | keywords `disable_dynamic`, `model_override`, `force_deepcopy`; plain ModelPatcher when non-dynamic |
| `comfy.model_patcher.ModelPatcher.unpatch_model` | always | undo a block placement | (device_to, unpatch_weights) | same | same |
| `comfy.model_patcher.ModelPatcher.model_size` | always | ComfyUI frees only the main device's share | also called by `__init__` inside `clone()`, before the clone has the pack's settings | cached size passed to the clone | same |
| `comfy.model_patcher.ModelPatcher.patch_weight_to_device` | always | LoRA applied to each block on its device | (key, device_to, inplace_update) | same | + `return_weight`, `force_cast` |
| `comfy.model_patcher.ModelPatcher.use_ejected` | always | load with injections ejected, as ComfyUI does | yes | yes | yes |
| `comfy.model_patcher.ModelPatcher.get_key_patches` | always | original weights + patches for stage workers | yes | yes | yes |
| `comfy.model_patcher.ModelPatcher.add_wrapper_with_key` | always | data_parallel / distributed / offload run each forward | yes | yes | yes |
| `comfy.model_patcher.ModelPatcher.add_callback_with_key` | always | workers and replicas closed when ComfyUI unloads | yes | yes | yes |
| `comfy.model_patcher.ModelPatcher.set_attachments` | always | offload state shared by a patcher's clones | yes | yes | yes |
| `comfy.model_patcher.ModelPatcher.pin_weight_to_device` | optional | swapped blocks page-locked in place at load on CUDA (returns whether ComfyUI pinned: its limit, `--disable-pinned-memory`) | absent: the engine pins a copy that replaces the pageable one | yes | legacy yes; raises on the dynamic patcher (never called there) |
| `comfy.model_patcher.ModelPatcher.unpin_weight` | optional | a pinned weight patched onto a GPU | absent | yes | as above |
| `comfy.model_patcher.ModelPatcher.is_dynamic` | optional | Dynamic VRAM detection | absent: never dynamic | absent | yes |
| `comfy.model_patcher.ModelPatcher.get_free_memory` | optional | free memory as the patcher accounts it | absent: `model_management.get_free_memory` | absent | yes (adds what Dynamic VRAM can give back) |
| `comfy.model_patcher.ModelPatcherDynamic.get_non_dynamic_delegate` | optional | Apply nodes convert a dynamic MODEL | absent | absent | yes (else `clone(disable_dynamic=True)`) |
| `comfy.model_patcher.ModelPatcherDynamic.register_load_device` | optional | a changed load device of a dynamic patcher | absent | absent | yes |
| `comfy.model_patcher.CoreModelPatcher` | optional | whether Dynamic VRAM is on | absent: off | absent: off | `ModelPatcherDynamic` when on |
| `comfy.model_patcher.get_key_weight` | always | refuse patches on quantized weights | yes | yes | yes |
| `comfy.model_patcher.string_to_seed` | optional | stochastic rounding seed of a patched weight | the only home | shim | deprecated shim, logs on every call |
| `comfy.utils.string_to_seed` | optional | the same seed, its home from 0.3.75 on | absent: the shim above | yes | yes |
| `comfy.model_management.get_free_memory` | always | offload budget (vram_budget_gb 0), read when the model loads | yes | yes | documented as wrong under Dynamic VRAM: the patcher's is used |
| `comfy.model_management.vram_state` | always | HIGH_VRAM (`--highvram` / `--gpu-only`) builds models whole on the first GPU: block_distribution, distributed and offload warn | yes | yes | yes |
| `comfy.model_management.VRAMState.HIGH_VRAM` | always | the state those two flags set | yes | yes | yes |
| `comfy.model_management.args` | always | which of the two flags it was (`gpu_only`), for the warning | yes | yes | yes |
| `comfy.model_management.minimum_inference_memory` | always | reserve left for activations | yes | yes | yes |
| `comfy.model_management.module_size` | always | block sizes for plans | yes | yes | yes |
| `comfy.model_management.intermediate_device` | always | where latents live between steps | yes | yes | yes |
| `comfy.model_management.cast_to_device` | always | patched weights computed as ComfyUI does | yes | yes | yes |
| `comfy.model_management.processing_interrupted` | always | Cancel reaches workers | yes | yes | yes |
| `comfy.model_management.throw_exception_if_processing_interrupted` | always | ComfyUI's own "interrupted" | yes | yes | yes |
| `comfy.model_management.InterruptProcessingException` | always | Cancel raised as ComfyUI's interrupt | an `Exception` | an `Exception` | a `BaseException`: caught by name |
| `comfy.model_management.get_torch_device` | always | SeedVR's device | yes | yes | yes |
| `comfy.model_management.unload_all_models` | always | SeedVR frees the GPU first | yes | yes | yes |
| `comfy.model_management.soft_empty_cache` | always | SeedVR frees cached memory after | yes | yes | yes |
| `comfy.cli_args.args` | always | `--cpu` / `--novram` set before ComfyUI is imported outside its server; workers get the server's attention, `--fast`, VRAM-mode and precision flags (models/comfy/flags.py) | yes | yes | yes |
| `comfy.cli_args.PerformanceFeature` | optional | `--fast`'s features rebuilt in a worker from their names | yes | yes | yes |
| `comfy.utils.ProgressBar` | always | progress in the UI | yes | yes | yes |
| `comfy.utils.load_torch_file` | always | checkpoints read safely | yes | yes | yes |
| `comfy.patcher_extension.WrappersMP` | always | DIFFUSION_MODEL wrapper type | yes | yes | yes |
| `comfy.patcher_extension.CallbacksMP` | always | ON_DETACH / ON_CLEANUP | yes | yes | yes (+ multigpu callbacks) |
| `comfy.patcher_extension.WrapperExecutor.new_class_executor` | always | each replica continues the wrapper chain; the distributed runner runs the wrappers after it around the workers' call | yes | yes | yes |
| `comfy.sd.load_diffusion_model` | always | the pack's loaders | (path, model_options) | same | + `disable_dynamic` (passed when the mode needs it) |
| `comfy.sd.load_checkpoint_guess_config` | always | SDXL batch pipeline | yes | yes | yes |
| `comfy.sd.load_state_dict_guess_config` | always | SDXL workers from shared memory | yes | yes | yes |
| `comfy.sd.load_lora_for_models` | always | SDXL batch LoRA | yes | yes | yes |
| `comfy.samplers.KSAMPLER` | always | the step pipeline's stage sampler subclasses it | yes | yes | yes |
| `comfy.samplers.KSamplerX0Inpaint` | always | stage sampler's model wrapper | yes | yes | yes |
| `comfy.samplers.KSampler` | always | sigma schedule, sampler / scheduler lists | yes | yes | yes |
| `comfy.samplers.sampler_object` | always | a named sampler's function | yes | yes | yes |
| `comfy.samplers.sample` | always | CFGGuider sampling of one stage | yes | yes | yes |
| `comfy.sample.sample` | always | SDXL batch sampling | yes | yes | yes |
| `comfy.sample.prepare_noise` | always | per-seed noise | yes | yes | yes |
| `comfy.sample.fix_empty_latent_channels` | always | empty latents as KSampler fixes them | yes | yes | yes |
| `comfy.k_diffusion.sampling.BrownianTreeNoiseSampler` | always | SDE noise over the whole schedule | yes | yes | yes |
| `comfy.lora.calculate_weight` | always | LoRA for stage workers | yes | yes | yes |
| `comfy.float.stochastic_rounding` | always | same rounding as ComfyUI's load | yes | yes | yes |
| `comfy.ops.pick_operations` | always | a worker's Wan with the server's ops (fp8_scaled files: scaled fp8 ops with `scale_weight`) | (weight_dtype, compute_dtype, load_device, disable_fast_fp8, fp8_optimizations, scaled_fp8) | + `model_config` (per-layer quant config; passed when accepted) | not read |
| `comfy.supported_models_base.BASE.scaled_fp8` | always | the dtype of an fp8_scaled file's `scaled_fp8` marker, for a worker's ops | yes | yes | not read |
| `comfy.supported_models_base.BASE.optimizations` | always | `fp8` (fp8 matrix multiply) as detection set it, for a worker's ops | yes | yes | not read |
| `comfy.supported_models_base.BASE.layer_quant_config` | optional | per-layer (mixed precision) quantization, for a worker's ops | absent: none | yes | not read |
| `comfy.model_patcher.ModelPatcher.patches_uuid` | instance | names a patcher's weight patches (changed by every `add_patches`): what replicas, workers and shared copies hold | yes | yes | yes |
| `comfy.model_base.BaseModel.current_weight_patches_uuid` | instance | the `patches_uuid` ComfyUI's load patched the model with (None unpatched): replicas and workers refresh when it changes, never by tensor address | yes | yes | yes (the 0.38 stand-in sets it as its load does) |
| `comfy.ldm.wan.model.WanModel` | always | Wan detection, `blocks`, `head` | yes | yes | yes |
| `comfy.ldm.wan.model.WanSelfAttention` | always | Ulysses reads q, k, v, o, norm_q, norm_k, num_heads, head_dim | `forward(x, freqs)` | + `transformer_options` | + `attn1_patch`, attention containers |
| `comfy.ldm.wan.model.repeat_e` | always | per-frame modulation expanded to a token shard exactly as the running Wan does | repeats only when the frames divide the tokens | + the remainder | same |
| `comfy.ldm.flux.math.apply_rope1` | optional | rotary embedding of q, then k | absent: `apply_rope(q, k, freqs)` | yes | yes |
| `comfy.ldm.flux.math.apply_rope` | optional | rotary embedding of q and k together | the only one | yes | yes |
| `comfy.ldm.modules.attention.optimized_attention` | always | attention over the gathered sequence | no `transformer_options` | takes `transformer_options` | same |
| `comfy_extras.nodes_video_model.VideoLinearCFGGuidance` | always | CFG guidance recognised and re-applied | yes | yes | yes |
| `comfy_extras.nodes_video_model.VideoTriangleCFGGuidance` | always | as above | yes | yes | yes |
| `server.PromptServer.instance.routes` | server | GET /parallel/gpus | yes | yes | yes |
| `server.PromptServer.instance.app` | server | a middleware sees POST /free and ends idle worker groups | yes | yes | yes |
"""
