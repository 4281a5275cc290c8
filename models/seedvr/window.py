"""Attention windows of NaDiT, sized for the resolution (models/dit*/window.py in the reference).

The configured window tuple is a *count* of windows at a 720p reference grid (45 x 80 tokens):
the token grid is rescaled to that area, window sizes are chosen from the counts, and those
sizes are used on the real grid. Odd layers use the shifted variant (half-window offset where
the window is smaller than the axis, giving partial windows at the borders). Windows are listed
with w outermost, then h, then t, as the reference enumerates them.
"""
import math

Window = tuple  # (slice_t, slice_h, slice_w)


def window_sizes(size: tuple, counts: tuple) -> tuple:
    """Window sizes (wt, wh, ww) for a (t, h, w) token grid."""
    t, h, w = size
    nt, nh, nw = counts
    scale = math.sqrt((45 * 80) / (h * w))
    resized_h, resized_w = round(h * scale), round(w * scale)
    return math.ceil(min(t, 30) / nt), math.ceil(resized_h / nh), math.ceil(resized_w / nw)


def _axis_slices(length: int, size: int, shifted: bool) -> list:
    """Non-empty slices tiling one axis; shifted tiles start half a window before the origin."""
    shift = 0.5 if shifted and size < length else 0.0
    if shift:
        count = math.ceil((length - shift) / size) + 1
    else:
        count = math.ceil(length / size)
    slices = []
    for i in range(count):
        start = max(int((i - shift) * size), 0)
        stop = min(int((i - shift + 1) * size), length)
        if stop > start:
            slices.append(slice(start, stop))
    return slices


def make_windows(size: tuple, counts: tuple, shifted: bool) -> list:
    """All windows of a (t, h, w) grid as (slice_t, slice_h, slice_w), w outermost."""
    sizes = window_sizes(size, counts)
    t_sl, h_sl, w_sl = (_axis_slices(n, s, shifted) for n, s in zip(size, sizes))
    return [(st, sh, sw) for sw in w_sl for sh in h_sl for st in t_sl]


def window_shape(window: Window, size: tuple) -> tuple:
    """(t, h, w) extent of one window inside a grid of `size`."""
    return tuple(len(range(*axis.indices(n))) for axis, n in zip(window, size))


def group_windows(windows: list, size: tuple, max_tokens: int | None = None) -> list:
    """[(shape, windows of that shape)] in first-seen order, each batch at most `max_tokens` video
    tokens (always at least one window); `max_tokens` 0 gives one window per entry, None no limit."""
    groups: dict = {}
    for window in windows:
        groups.setdefault(window_shape(window, size), []).append(window)
    if max_tokens is None:
        return list(groups.items())
    batches = []
    for shape, group in groups.items():
        step = max(1, max_tokens // math.prod(shape))
        batches += [(shape, group[i:i + step]) for i in range(0, len(group), step)]
    return batches
