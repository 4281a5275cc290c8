"""NaDiT, the SeedVR / SeedVR2 diffusion transformer (3B: dit_v2 tree, 7B: dit tree).

Written from the architecture facts in tests/data/seedvr/NOTES.md; module and parameter names
follow the official checkpoints exactly, so their state_dicts load with strict matching.
One video per call: `vid` is a [T, H, W, 33] latent grid (noisy latent, low-res latent, mask),
`txt` a [L, txt_in_dim] text embedding, `timestep` a float on the 0..1000 scale.
"""
import math

import torch
import torch.nn.functional as F
from torch import nn

from .config import DiTConfig
from .rope import MMRope3d, PixelRope3d, rotate_interleaved
from .window import group_windows, make_windows


class RMSNorm(nn.Module):
    """Apex FusedRMSNorm layout: `weight` only when affine, no buffers; computed in float32."""

    def __init__(self, dim: int, eps: float, affine: bool):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim)) if affine else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        xf = x.float()
        out = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)
        if self.weight is not None:
            out = out * self.weight.float()
        return out.to(x.dtype)


class MM(nn.Module):
    """A video/text pair of modules (`.vid`, `.txt`) or one shared module (`.all`)."""

    def __init__(self, make, shared: bool, vid_only: bool = False):
        super().__init__()
        self.shared = shared
        self.vid_only = vid_only
        if shared:
            self.all = make()
        else:
            self.vid = make()
            self.txt = make()

    def pick(self, branch: str) -> nn.Module:
        return self.all if self.shared else getattr(self, branch)

    def forward(self, vid, txt, *args):
        vid = self.pick("vid")(vid, *args)
        if not self.vid_only:
            txt = self.pick("txt")(txt, *args)
        return vid, txt


class AdaSingle(nn.Module):
    """Single adaptive modulation: learned per-block vectors added to slices of the time embedding.

    The embedding [6*dim] is viewed as (dim, layers, 3 = shift, scale, gate), d outermost.
    "in": h * (scale_emb + scale) + (shift_emb + shift), no "1 +"; "out": h * (gate_emb + gate).
    """

    def __init__(self, dim: int, layers: tuple, with_gate: bool = True):
        super().__init__()
        self.layers = layers
        for layer in layers:
            setattr(self, f"{layer}_shift", nn.Parameter(torch.zeros(dim)))
            setattr(self, f"{layer}_scale", nn.Parameter(torch.ones(dim)))
            if with_gate:
                setattr(self, f"{layer}_gate", nn.Parameter(torch.zeros(dim)))

    def modulate_in(self, hid, emb_slot, layer: str):
        shift, scale = emb_slot[..., 0], emb_slot[..., 1]
        return hid * (scale + getattr(self, f"{layer}_scale")) + (shift + getattr(self, f"{layer}_shift"))

    def modulate_out(self, hid, emb_slot, layer: str):
        return hid * (emb_slot[..., 2] + getattr(self, f"{layer}_gate"))


def emb_slot(emb: torch.Tensor, index: int, layers: int = 2) -> torch.Tensor:
    """The (shift, scale, gate) triple of layer slot `index`: [1, dim, 3]."""
    return emb.unflatten(-1, (-1, layers, 3))[..., index, :]


class SwiGLU(nn.Module):
    """3B MLP: proj_out(silu(proj_in_gate(x)) * proj_in(x)); registration order as the checkpoint."""

    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.proj_in_gate = nn.Linear(dim, hidden, bias=False)
        self.proj_out = nn.Linear(hidden, dim, bias=False)
        self.proj_in = nn.Linear(dim, hidden, bias=False)

    def forward(self, x):
        return self.proj_out(F.silu(self.proj_in_gate(x)) * self.proj_in(x))


class GeluMLP(nn.Module):
    """7B MLP: Linear -> GELU(tanh) -> Linear, with biases."""

    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.proj_in = nn.Linear(dim, hidden)
        self.proj_out = nn.Linear(hidden, dim)

    def forward(self, x):
        return self.proj_out(F.gelu(self.proj_in(x), approximate="tanh"))


WINDOW_BATCH_TOKENS = 2048  # video tokens per batched window-attention call (see WindowAttention)


class WindowAttention(nn.Module):
    """Joint video+text attention inside each window; text attends per window and is averaged.

    Windows of equal shape (all inner windows, and each kind of border window) share their
    rotary angles and are computed in batched attention calls of up to `batch_tokens` video
    tokens: batching every window at once would hold a second copy of the whole grid's q / k / v
    (about 3x the block's activations at 720p), so the batches are bounded. `batch_tokens` 0 makes
    every window its own call, as the reference loops over its varlen segments.
    """

    def __init__(self, cfg: DiTConfig, shared: bool, shifted: bool):
        super().__init__()
        dim, inner = cfg.vid_dim, cfg.heads * cfg.head_dim
        self.cfg, self.shifted = cfg, shifted
        self.batch_tokens = WINDOW_BATCH_TOKENS
        self.proj_qkv = MM(lambda: nn.Linear(dim, 3 * inner, bias=False), shared)
        self.proj_out = MM(lambda: nn.Linear(inner, dim), shared)
        self.norm_q = MM(lambda: RMSNorm(cfg.head_dim, cfg.norm_eps, True), shared)
        self.norm_k = MM(lambda: RMSNorm(cfg.head_dim, cfg.norm_eps, True), shared)
        rope_cls = MMRope3d if cfg.family == "v2" else PixelRope3d
        self.rope = rope_cls(cfg.rope_axis_dim)

    def _qkv(self, x, branch: str):
        """x [L, dim] -> q, k, v each [L, heads, head_dim], q/k RMS-normalised per head."""
        qkv = self.proj_qkv.pick(branch)(x).unflatten(-1, (3, self.cfg.heads, self.cfg.head_dim))
        q, k, v = qkv.unbind(-3)
        return self.norm_q.pick(branch)(q), self.norm_k.pick(branch)(k), v

    def forward(self, vid: torch.Tensor, txt: torch.Tensor) -> tuple:
        """vid [T, H, W, dim], txt [L, dim] -> same shapes."""
        grid = tuple(vid.shape[:3])
        vq, vk, vv = self._qkv(vid.reshape(-1, vid.shape[-1]), "vid")
        text = self._qkv(txt, "txt")
        text_len = txt.shape[0]
        if self.rope.mm:
            angles = self.rope.text_angles(text_len)
            text = (rotate_interleaved(text[0], angles), rotate_interleaved(text[1], angles), text[2])
        vq, vk, vv = (x.unflatten(0, grid) for x in (vq, vk, vv))
        vid_out = torch.empty_like(vv)
        txt_sum = torch.zeros_like(text[2], dtype=torch.float32)
        windows = make_windows(grid, self.cfg.window, self.shifted)
        for shape, group in group_windows(windows, grid, self.batch_tokens):
            angles = self.rope.video_angles(shape, text_len)
            wq, wk, wv = (torch.stack([x[w] for w in group]).flatten(1, 3) for x in (vq, vk, vv))
            wq, wk = rotate_interleaved(wq, angles), rotate_interleaved(wk, angles)
            joint = [torch.cat((w, t.expand(len(group), *t.shape)), dim=1) for w, t in zip((wq, wk, wv), text)]
            out = self._attend(*joint)
            size = wq.shape[1]
            for window, part in zip(group, out[:, :size]):
                vid_out[window] = part.unflatten(0, shape)
            txt_sum += out[:, size:].float().sum(0)
        txt_out = (txt_sum / len(windows)).to(text[2].dtype)
        vid_out = vid_out.flatten(-2).reshape(*grid, -1)
        return self.proj_out(vid_out, txt_out.flatten(-2))

    @staticmethod
    def _attend(q, k, v):
        """Full attention within each window: [n, L, heads, D] -> [n, L, heads, D]."""
        out = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2))
        return out.transpose(1, 2)


class Block(nn.Module):
    """Pre-norm MM-DiT block: norm -> ada in -> window attention -> ada out -> residual, then MLP.

    The last block computes no text MLP (`vid_only` mlp_norm / mlp in the reference). In the 3B
    tree its `ada` is `vid_only` too (models/dit_v2/nablocks/mmsr_block.py, mm.py): the text
    enters attention as the plain normalised text, unmodulated, and its attention output is not
    gated. The video attends to those text keys / values, so this changes the video output.
    """

    def __init__(self, cfg: DiTConfig, index: int):
        super().__init__()
        shared = cfg.shared(index)
        last = index == cfg.num_layers - 1
        dim = cfg.vid_dim
        self.is_last = last
        self.modulates_text = not (last and cfg.family == "v2")
        self.attn_norm = MM(lambda: RMSNorm(dim, cfg.norm_eps, False), shared)
        self.attn = WindowAttention(cfg, shared, shifted=index % 2 == 1)
        self.mlp_norm = MM(lambda: RMSNorm(dim, cfg.norm_eps, False), shared, vid_only=last)
        mlp_cls = SwiGLU if cfg.swiglu else GeluMLP
        self.mlp = MM(lambda: mlp_cls(dim, cfg.mlp_hidden), shared, vid_only=last)
        self.ada = MM(lambda: AdaSingle(dim, ("attn", "mlp")), shared)

    def _ada(self, branch, hid, emb, layer, mode):
        if branch == "txt" and not self.modulates_text:
            return hid
        ada = self.ada.pick(branch)
        slot = emb_slot(emb, ada.layers.index(layer))
        return ada.modulate_in(hid, slot, layer) if mode == "in" else ada.modulate_out(hid, slot, layer)

    def forward(self, vid, txt, emb):
        v, t = self.attn_norm(vid, txt)
        v, t = self._ada("vid", v, emb, "attn", "in"), self._ada("txt", t, emb, "attn", "in")
        v, t = self.attn(v, t)
        vid = vid + self._ada("vid", v, emb, "attn", "out")
        txt = txt + self._ada("txt", t, emb, "attn", "out")
        v, t = self.mlp_norm(vid, txt)
        vid = vid + self._ada("vid", self.mlp.pick("vid")(self._ada("vid", v, emb, "mlp", "in")), emb, "mlp", "out")
        if not self.is_last:
            txt = txt + self._ada("txt", self.mlp.pick("txt")(self._ada("txt", t, emb, "mlp", "in")), emb, "mlp", "out")
        return vid, txt


def timestep_sinusoid(t: torch.Tensor, dim: int = 256) -> torch.Tensor:
    """[sin, cos] embedding of t with frequencies exp(-ln(10000) * i / (dim/2)) (diffusers, no shift)."""
    half = dim // 2
    freqs = torch.exp(-math.log(10000) * torch.arange(half, dtype=torch.float32, device=t.device) / half)
    args = t.float()[:, None] * freqs[None]
    return torch.cat((args.sin(), args.cos()), dim=-1)


class TimeEmbedding(nn.Module):
    """Sinusoid(256) -> Linear -> SiLU -> Linear -> SiLU -> Linear(6 * dim)."""

    def __init__(self, dim: int, out_dim: int):
        super().__init__()
        self.proj_in = nn.Linear(256, dim)
        self.proj_hid = nn.Linear(dim, dim)
        self.proj_out = nn.Linear(dim, out_dim)

    def forward(self, t: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        emb = timestep_sinusoid(t).to(dtype)
        return self.proj_out(F.silu(self.proj_hid(F.silu(self.proj_in(emb)))))


class PatchIn(nn.Module):
    """[T, H, W, C] -> [T, H/2, W/2, dim]: 1x2x2 patches flattened as (t h w c), c innermost."""

    def __init__(self, cfg: DiTConfig):
        super().__init__()
        self.patch = cfg.patch_size
        pt, ph, pw = cfg.patch_size
        self.proj = nn.Linear(cfg.in_channels * pt * ph * pw, cfg.vid_dim)

    def forward(self, vid):
        _, ph, pw = self.patch
        t, h, w, c = vid.shape
        vid = vid.reshape(t, h // ph, ph, w // pw, pw, c).permute(0, 1, 3, 2, 4, 5)
        return self.proj(vid.reshape(t, h // ph, w // pw, ph * pw * c))


class PatchOut(nn.Module):
    """[T, h, w, dim] -> [T, 2h, 2w, C], the inverse layout of PatchIn."""

    def __init__(self, cfg: DiTConfig):
        super().__init__()
        self.patch = cfg.patch_size
        pt, ph, pw = cfg.patch_size
        self.proj = nn.Linear(cfg.vid_dim, cfg.out_channels * pt * ph * pw)

    def forward(self, vid):
        _, ph, pw = self.patch
        t, h, w, _ = vid.shape
        out = self.proj(vid).reshape(t, h, w, ph, pw, -1).permute(0, 1, 3, 2, 4, 5)
        return out.reshape(t, h * ph, w * pw, -1)


class NaDiT(nn.Module):
    """The SeedVR DiT. `blocks` is the nn.ModuleList that block swap / offload works on."""

    def __init__(self, cfg: DiTConfig):
        super().__init__()
        self.cfg = cfg
        self.vid_in = PatchIn(cfg)
        self.txt_in = nn.Linear(cfg.txt_in_dim, cfg.vid_dim)
        self.emb_in = TimeEmbedding(cfg.vid_dim, cfg.emb_dim)
        self.blocks = nn.ModuleList(Block(cfg, i) for i in range(cfg.num_layers))
        if cfg.family == "v2":
            self.vid_out_norm = RMSNorm(cfg.vid_dim, cfg.norm_eps, True)
            self.vid_out_ada = AdaSingle(cfg.vid_dim, ("out",), with_gate=False)
        self.vid_out = PatchOut(cfg)

    def forward(self, vid: torch.Tensor, txt: torch.Tensor, timestep: torch.Tensor) -> torch.Tensor:
        """vid [T, H, W, 33], txt [L, txt_in_dim], timestep [1] -> v prediction [T, H, W, 16]."""
        dtype = self.txt_in.weight.dtype
        txt = self.txt_in(txt.to(dtype))
        vid = self.vid_in(vid.to(dtype))
        emb = self.emb_in(timestep.reshape(1).to(vid.device), dtype)
        for block in self.blocks:
            vid, txt = block(vid, txt, emb)
        if self.cfg.family == "v2":
            # Reference quirk (dit_v2/nadit.py + modulation.py): the output ada reads the cached
            # "emb_repeat_0_vid" entry, which the blocks filled with the *attention* slot of the
            # time embedding, so the head uses that slot's shift/scale plus out_shift/out_scale.
            vid = self.vid_out_ada.modulate_in(self.vid_out_norm(vid), emb_slot(emb, 0), "out")
        return self.vid_out(vid)
