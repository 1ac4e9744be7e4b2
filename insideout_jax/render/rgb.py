"""RGB Gaussian-splat rasterizer (3DGS): tile-sorted front-to-back compositing, hand-written VJP.

Stages (each public): :func:`~insideout_jax.render.project.project_gaussians` →
:func:`~insideout_jax.render.tiles.pair_layout` / :func:`~insideout_jax.render.tiles.window_intersections`
→ :func:`~insideout_jax.render.tiles.tile_ranges` → :func:`composite_rgb` (this module) →
:func:`render_rgb` (the entry point, which also evaluates SH colours).

**Compositing semantics** (exactly those of the 3DGS CUDA rasterizer, Kerbl et al. 2023). For each
pixel p, the Gaussians whose tile box contains p's tile are visited front to back (ascending camera
depth of the centre; ties by index), starting with T = 1:

1. α = min(0.99, o·exp(power)), power = −½(a·dx² + c·dy²) − b·dx·dy, (dx, dy) = mean2d − p.
2. If α < 1/255 or power > 0: skip this Gaussian.
3. If T·(1 − α) < 1e-4: stop – this Gaussian and every later one are *not* composited.
4. Otherwise C += α·T·colour, D += α·T·z, T ← T·(1 − α).

The outputs are colour = C + T·background, transmittance T (accumulated alpha = 1 − T) and the
accumulated depth D (the entry point divides by the alpha for the expected depth). Tile culling
uses the conservative extents of :func:`~insideout_jax.render.project.footprint_extents`, so it
never removes a pair that passes step 2: the result equals the dense every-pixel × every-Gaussian
evaluation (:mod:`insideout_jax.render.reference`).

**Exactness.** Per-tile lists of any length are processed in chunks until every tile is done (all
its pixels stopped, or its list exhausted); pair windows that exceed the buffer capacity are
composited one after another (see :mod:`~insideout_jax.render.tiles`). Nothing is truncated.

**XLA loop** (the CPU back end): a ``while_loop`` whose every step takes the ``tiles_per_step``
active tiles with the longest lists and composites the next ``chunk_size`` pairs of each (a
``lax.scan`` over the chunk, vectorised over the tiles' pixels). The per-pixel transmittance is
stored signed (negative once the pixel has stopped), so one array carries both T and the stop
flag. The Pallas back end (:mod:`insideout_jax.render.pallas_rgb`) runs one program per tile.

**Backward** (front to back, no division by 1 − α of the transmittance): with q_j = g·c_j + g_D·z_j
the per-pixel cotangent of Gaussian j's colour and depth, and R = g·C_final + g_D·D_final +
g_T·T_final, the cotangent of α_j is

    ∂L/∂α_j = T_j·q_j − (R − Σ_{k≤j} w_k q_k) / (1 − α_j),   w_k = α_k T_k,

zero where α_j was clamped (o·G ≥ 0.99), skipped or not composited. The backward re-traverses the
lists front to back, accumulating Σ w q, and reduces per-pixel terms over each tile's pixels into
per-pair gradients, which are summed per Gaussian by
:func:`~insideout_jax.render.tiles.pairs_to_gaussians` (deterministic: fixed reduction order).
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np

from insideout_jax.cameras import PinholeCamera
from insideout_jax.render import pairs as pr
from insideout_jax.render import project as proj
from insideout_jax.render import tiles as tl
from insideout_jax.render.composite_xla import (  # noqa: F401
    N_PARAMS,
    T_MIN,
    _pad_row,
    composite_window_bwd_xla,
    composite_window_xla,
)
from insideout_jax.splats import RGBSplats

__all__ = ["RasterConfig", "RGBRender", "T_MIN", "N_PARAMS", "pack_gaussians", "composite_rgb",
           "render_rgb", "default_pair_capacity", "fitted_pair_capacity", "pair_capacity_bucket",
           "composite_window_xla", "composite_window_bwd_xla", "resolve_tile_size"]


@dataclasses.dataclass(frozen=True)
class RasterConfig:
    """Static options of the tile rasterizers (hashable; a static argument under ``jit``).

    None of these changes the rendered result, only speed and memory.

    Attributes:
      tile_size: tile edge in pixels; None: 16 (3DGS) for the Pallas kernels, 8 for the XLA loop
        (smaller tiles waste fewer per-pixel evaluations; measured ≈2× faster on CPU).
      pair_capacity: slots of one pair window; more pairs are composited in further windows.
        None: :func:`default_pair_capacity`.
      chunk_size: pairs per tile handled per step of the XLA loop.
      tiles_per_step: tiles handled together per step of the XLA loop (None: 8192 px worth).
      backend: "auto" (Pallas on GPU, XLA elsewhere), "xla", "pallas" or "pallas_interpret"
        (the Pallas kernels run by the interpreter; for testing on CPU).
      near_plane: Gaussians with camera depth ≤ this are culled (3DGS: 0.2, world units).
      eps2d: low-pass variance added to 2D covariances, px² (3DGS: 0.3).
      cull: "ellipse" (a pair is composited only when the Gaussian's α ≥ 1/255 ellipse reaches
        its tile: :func:`~insideout_jax.render.tiles.tile_touches`) or "box" (every tile of the
        ellipse's axis-aligned box). The same image either way; "ellipse" skips the corner
        tiles of large and elongated splats.
    """

    tile_size: int | None = None
    pair_capacity: int | None = None
    chunk_size: int = 16
    tiles_per_step: int | None = None
    backend: str = "auto"
    near_plane: float = proj.NEAR_PLANE
    eps2d: float = proj.EPS2D
    cull: str = "ellipse"


def pair_capacity_bucket(n_pairs: int) -> int:
    """Smallest window capacity ≥ n_pairs from a coarse ladder (8 steps per octave, ≥ 4096).

    Use it to pick ``RasterConfig.pair_capacity`` from a measured ``RGBRender.n_pairs`` so that
    re-compilation happens only when the count crosses a bucket (at most 12.5 % slack).
    """
    n = max(int(n_pairs), 4096)
    step = 1 << max(0, n.bit_length() - 4)
    return -(-n // step) * step


def default_pair_capacity(n_gaussians: int, tile_size: int) -> int:
    """A window capacity that holds all pairs of typical scenes: ≈ 4 (16-px tiles) to 8 pairs per
    Gaussian, rounded up to a power of two (≥ 4096)."""
    per = 4 if tile_size >= 16 else 8 if tile_size >= 8 else 16
    return int(max(4096, 1 << int(np.ceil(np.log2(max(1, per * n_gaussians))))))


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class RGBRender:
    """Output of :func:`render_rgb`.

    Attributes:
      color: [H, W, 3] composited colour including the background term T·background.
      alpha: [H, W] accumulated opacity 1 − T.
      depth: [H, W] expected depth Σ wᵢzᵢ / alpha of the composited Gaussians (0 where alpha = 0).
      visible: [C] bool, the Gaussian touches at least one tile (3DGS "radii > 0").
      n_pairs: [] int32 number of (tile, Gaussian) pairs (−1 under a trace when the count
        overflowed; :func:`render_rgb` raises ``tiles.PairCountOverflow`` then).
      max_pairs_per_tile: [] int32 longest per-tile list.
    """

    color: jax.Array
    alpha: jax.Array
    depth: jax.Array
    visible: jax.Array
    n_pairs: jax.Array
    max_pairs_per_tile: jax.Array


def pack_gaussians(means2d: jax.Array, conics: jax.Array, opacities: jax.Array,
                   colors: jax.Array, depths: jax.Array) -> jax.Array:
    """[N, 10] packed parameters (u, v, a, b, c, o, r, g, b, z) consumed by :func:`composite_rgb`."""
    return jnp.concatenate([means2d, conics, opacities[:, None], colors, depths[:, None]], axis=-1)


def _resolve_backend(config: RasterConfig) -> str:
    if config.backend == "auto":
        return "pallas" if jax.default_backend() == "gpu" else "xla"
    return config.backend


def resolve_tile_size(config: RasterConfig) -> int:
    """The tile edge used for ``config`` (see :class:`RasterConfig`)."""
    if config.tile_size is not None:
        return config.tile_size
    return 8 if _resolve_backend(config) == "xla" else 16


def _kernels(config: RasterConfig, grid: tl.TileGrid):
    backend = _resolve_backend(config)
    chunk = config.chunk_size
    if backend == "xla":
        m = config.tiles_per_step or max(1, 8192 // grid.pixels_per_tile)
        m = min(m, grid.n_tiles)
        return (functools.partial(composite_window_xla, grid=grid, chunk=chunk, m=m),
                functools.partial(composite_window_bwd_xla, grid=grid, chunk=chunk, m=m))
    from insideout_jax.render import pallas_rgb  # noqa: PLC0415 (optional back end)

    interpret = backend == "pallas_interpret"
    return (functools.partial(pallas_rgb.composite_window_pallas, grid=grid, interpret=interpret),
            functools.partial(pallas_rgb.composite_window_bwd_pallas, grid=grid,
                              interpret=interpret))


def alpha_ellipses(packed: jax.Array) -> jax.Array:
    """[N, 6] (u, v, a, b, c, q_max) of packed Gaussians: o·exp(−q/2) ≥ α_min ⇔ q ≤ q_max =
    2·ln(o / α_min), widened by 0.2 % + 0.02 against round-off (as the box extents are); −1 for
    Gaussians that cannot pass the α test."""
    p = jax.lax.stop_gradient(packed)
    o = p[:, 5]
    q_max = 2.0 * jnp.log(jnp.maximum(o, proj.ALPHA_MIN) / proj.ALPHA_MIN) * 1.002 + 0.02
    return jnp.concatenate([p[:, :5], jnp.where(o >= proj.ALPHA_MIN, q_max, -1.0)[:, None]], 1)


def _ellipses(packed, config):
    return alpha_ellipses(packed) if config.cull == "ellipse" else None


def _window(layout, grid, capacity, k, packed, ell):
    isect = tl.window_intersections(layout, grid, capacity=capacity, start=k * capacity,
                                    ellipses=ell)
    starts, ends = tl.tile_ranges(isect.tile_ids, grid.n_tiles)
    pair_params = _pad_row(packed, 0)[isect.gauss_ids]
    if jax.default_backend() == "cpu":  # pairs_to_gaussians needs only the Gaussian ids there
        empty = jnp.zeros(0, jnp.int32)
        isect = isect._replace(tile_ids=empty, ranks=empty, slots=empty)
    return isect, starts, ends, pair_params


def _initial_trans(grid, dtype):
    """[T, S²] signed transmittance before compositing: 1 inside the image, −1 (stopped) outside."""
    u, v = tl.pixel_centers(grid, dtype)
    return jnp.where((u > grid.width) | (v > grid.height), -1.0, 1.0).astype(dtype)


def _forward(packed, extents, background, grid, config):
    capacity = config.pair_capacity or default_pair_capacity(packed.shape[0], grid.tile_size)
    fwd_kernel, _ = _kernels(config, grid)
    layout = tl.pair_layout(packed[:, :2], extents, packed[:, 9], grid, capacity=capacity)
    ell = _ellipses(packed, config)  # once per render, not per window
    t0 = _initial_trans(grid, packed.dtype)
    state = jnp.concatenate([t0[:, None], jnp.zeros((grid.n_tiles, 4) + t0.shape[1:], t0.dtype)], 1)
    n_windows = pr.n_windows(layout.enumeration, capacity)

    def body(c):
        k, state, first = c
        win = _window(layout, grid, capacity, k, packed, ell)
        state = fwd_kernel(win[3], win[1], win[2], state)
        # Keep the first window for the backward pass (saves re-sorting it in the common case).
        first = jax.tree_util.tree_map(lambda old, new: jnp.where(k == 0, new, old), first, win)
        return k + 1, state, first

    first0 = jax.tree_util.tree_map(
        lambda x: jnp.zeros(x.shape, x.dtype),
        jax.eval_shape(lambda: _window(layout, grid, capacity, 0, packed, ell)))
    _, state, first = jax.lax.while_loop(lambda c: c[0] < n_windows, body, (0, state, first0))
    # an overflowing pair count renders nothing: NaN, never the background alone (tiles docstring)
    trans = jnp.where(layout.overflow, jnp.nan, jnp.abs(state[:, 0]))
    color = jnp.moveaxis(state[:, 1:4], 1, 2) + trans[..., None] * background
    max_per_tile = jnp.max(first[2] - first[1])
    out = (color, trans, state[:, 4], jnp.where(layout.overflow, -1, layout.n_pairs), max_per_tile)
    return out, (packed, background, layout, first, color, trans, state[:, 4])


@functools.partial(jax.custom_vjp, nondiff_argnums=(3, 4))
def composite_rgb(packed: jax.Array, extents: jax.Array, background: jax.Array,
                  grid: tl.TileGrid, config: RasterConfig):
    """Tile-sorted front-to-back compositing of projected Gaussians (hand-written VJP).

    Args:
      packed: [N, 10] per-Gaussian (u, v, a, b, c, opacity, r, g, b, z) from :func:`pack_gaussians`;
        differentiable.
      extents: [N, 2] conservative half-extents px (negative: culled); not differentiated.
      background: [3] background colour; differentiable.
      grid: the tiling (static).
      config: static options.

    Returns:
      color: [T, S², 3] tile-major colour including T·background.
      trans: [T, S²] final transmittance.
      depth_acc: [T, S²] Σ wᵢ zᵢ.
      n_pairs: [] int32 number of pairs; −1 when their count reaches ``tiles.PAIR_LIMIT`` (then
        nothing is composited and colour and transmittance are NaN).
      max_pairs_per_tile: [] int32 longest tile list in the first window.
    """
    return _forward(packed, extents, background, grid, config)[0]


def _composite_fwd(packed, extents, background, grid, config):
    out, res = _forward(packed, extents, background, grid, config)
    return out, res + (extents,)


def _composite_bwd(grid, config, res, cts):
    packed, background, layout, first, color, trans, dacc, extents = res
    g_color, g_trans, g_depth = cts[0], cts[1], cts[2]
    capacity = first[3].shape[0]
    _, bwd_kernel = _kernels(config, grid)
    n = packed.shape[0]
    r = jnp.sum(g_color * color, axis=-1) + g_depth * dacc + g_trans * trans
    cot = jnp.concatenate([jnp.moveaxis(g_color, 2, 1), g_depth[:, None], r[:, None]], axis=1)
    t0 = _initial_trans(grid, packed.dtype)
    bstate = jnp.stack([t0, jnp.zeros_like(t0)], axis=1)
    n_windows = pr.n_windows(layout.enumeration, capacity)
    ell = _ellipses(packed, config)  # windows after the first (the first is kept)

    def body(c):
        k, bstate, d_packed = c
        isect, starts, ends, pp = jax.lax.cond(
            k == 0, lambda: first, lambda: _window(layout, grid, capacity, k, packed, ell))
        pair_grads, bstate = bwd_kernel(pp, starts, ends, bstate, cot)
        return k + 1, bstate, d_packed + tl.pairs_to_gaussians(pair_grads, isect, n)

    _, _, d_packed = jax.lax.while_loop(lambda c: c[0] < n_windows, body,
                                        (0, bstate, jnp.zeros_like(packed)))
    d_bg = jnp.sum(g_color * trans[..., None], axis=(0, 1)).astype(background.dtype)
    return d_packed, jnp.zeros_like(extents), d_bg


composite_rgb.defvjp(_composite_fwd, _composite_bwd)


def _footprints(splats, camera, means2d_delta, config):
    """(grid, means2d, cov2d, depths, ok, opacities, extents) of the tile rasterizer."""
    grid = tl.TileGrid(camera.width, camera.height, resolve_tile_size(config))
    means2d, cov2d, depths, ok = proj.project_gaussians(
        splats.means, splats.log_scales, splats.quats, camera, near_plane=config.near_plane,
        eps2d=config.eps2d)
    means2d = means2d + means2d_delta
    ok = ok & splats.active
    opac = jnp.where(ok, jax.nn.sigmoid(splats.opacity_logits), 0)
    extents = jnp.where(ok[:, None], proj.footprint_extents(cov2d, opac), -1.0)
    return grid, means2d, cov2d, depths, ok, opac, extents


@functools.partial(jax.jit, static_argnames=("config",))
def _box_pair_count(splats, camera, config):
    grid, means2d, _, _, _, _, extents = _footprints(splats, camera, 0.0, config)
    r = tl.tile_rects(means2d, extents, grid)
    return jnp.sum((r[:, 2] - r[:, 0]) * (r[:, 3] - r[:, 1]), dtype=jnp.float32)


def fitted_pair_capacity(splats: RGBSplats, cameras, config: RasterConfig = RasterConfig(), *,
                         views: int = 4) -> int:
    """A ``RasterConfig.pair_capacity`` fitted to these splats: the power of two (≥ 4096) at or
    below the largest (tile, Gaussian) pair count over ``views`` of the ``cameras``, evenly spaced.

    Each window sorts all its slots, so a capacity far above the pairs costs time (the default,
    sized for 8 pairs per slot of the buffer, sorted 14× the pairs of the skull's last 3DGS
    step: fwd+bwd 798 ms against 396 ms right-sized), while one below them only adds a window
    (131 072 slots for 290 612 pairs: 361 ms). Trainers call it between blocks (cheap: projection
    only) and recompile only when the power of two changes."""
    cameras = list(cameras)
    picked = np.unique(np.linspace(0, len(cameras) - 1, max(1, views)).astype(int))
    counts = [float(_box_pair_count(splats, cameras[i], config)) for i in picked]
    return int(max(4096, 1 << int(np.floor(np.log2(max(max(counts), 1.0))))))


@functools.partial(jax.jit, static_argnames=("sh_degree", "config"))
def _render_rgb_jit(splats, camera, background, means2d_delta, sh_degree, config):
    grid, means2d, cov2d, depths, ok, opac, extents = _footprints(splats, camera, means2d_delta,
                                                                   config)
    conics = proj.cov2d_to_conic(cov2d)
    colors = proj.sh_colors(splats.sh, splats.means, camera, degree=sh_degree)
    packed = pack_gaussians(means2d, conics, opac, colors, depths)
    packed = jnp.where(ok[:, None], packed, 0)  # culled Gaussians: no pairs, zero gradient
    color, trans, dacc, n_pairs, max_per_tile = composite_rgb(packed, extents, background, grid,
                                                             config)
    rects = tl.tile_rects(means2d, extents, grid)
    visible = (rects[:, 2] > rects[:, 0]) & (rects[:, 3] > rects[:, 1])
    color = tl.tiles_to_image(color, grid)
    alpha = 1 - tl.tiles_to_image(trans, grid)
    dacc = tl.tiles_to_image(dacc, grid)
    pos = alpha > 0
    depth = jnp.where(pos, dacc / jnp.where(pos, alpha, 1), 0)
    return RGBRender(color, alpha, depth, visible, n_pairs, max_per_tile)


def render_rgb(splats: RGBSplats, camera: PinholeCamera, *, background: jax.Array | None = None,
               sh_degree: int | None = None, means2d_delta: jax.Array | None = None,
               config: RasterConfig = RasterConfig()) -> RGBRender:
    """Render RGB splats with the 3DGS rasterizer (jit-compiled; differentiable).

    Inactive slots (``splats.active == False``) are ignored. See the module docstring for the exact
    compositing rules.

    Args:
      splats: :class:`~insideout_jax.splats.RGBSplats` with capacity C and K SH coefficients.
      camera: pinhole camera, image W × H.
      background: [3] background colour in [0, 1] (default black); differentiable.
      sh_degree: SH bands to use (0..3, ≤ the splats' degree); default all.
      means2d_delta: [C, 2] px, added to the projected centres; pass zeros and differentiate with
        respect to it to get the screen-space positional gradients used by densification.
      config: :class:`RasterConfig` (static).

    Returns:
      :class:`RGBRender` with colour [H, W, 3], alpha [H, W], depth [H, W], visibility [C], counts.

    Raises:
      ValueError: for inconsistent shapes, an SH degree out of range or an unknown back end.
      tiles.PairCountOverflow: outside a trace, when the (tile, Gaussian) pairs would exceed the
        int32 counts (``tiles.PAIR_LIMIT``).
    """
    c = splats.means.shape[0]
    if splats.means.ndim != 2 or splats.means.shape[1] != 3 or c == 0:
        raise ValueError(f"splats.means must have shape [C, 3] with C ≥ 1, got {splats.means.shape}")
    for name, arr, shape in (("log_scales", splats.log_scales, (c, 3)), ("quats", splats.quats, (c, 4)),
                             ("opacity_logits", splats.opacity_logits, (c,)),
                             ("active", splats.active, (c,))):
        if arr.shape != shape:
            raise ValueError(f"splats.{name} must have shape {shape}, got {arr.shape}")
    if splats.sh.ndim != 3 or splats.sh.shape[0] != c or splats.sh.shape[2] != 3:
        raise ValueError(f"splats.sh must have shape [C, K, 3], got {splats.sh.shape}")
    degree = splats.sh_degree if sh_degree is None else int(sh_degree)
    if not 0 <= degree <= splats.sh_degree:
        raise ValueError(f"sh_degree must be in 0..{splats.sh_degree}, got {sh_degree}")
    if config.backend not in ("auto", "xla", "pallas", "pallas_interpret"):
        raise ValueError(f"config.backend must be auto, xla, pallas or pallas_interpret, "
                         f"got {config.backend!r}")
    if config.cull not in ("ellipse", "box"):
        raise ValueError(f"config.cull must be 'ellipse' or 'box', got {config.cull!r}")
    if config.pair_capacity is not None and config.pair_capacity <= 0:
        raise ValueError(f"config.pair_capacity must be positive or None, got {config.pair_capacity}")
    if (config.tile_size is not None and config.tile_size <= 0) or config.chunk_size <= 0:
        raise ValueError(f"config.tile_size and config.chunk_size must be positive, got "
                         f"{config.tile_size} and {config.chunk_size}")
    dtype = splats.means.dtype
    bg = jnp.zeros(3, dtype) if background is None else jnp.asarray(background, dtype)
    if bg.shape != (3,):
        raise ValueError(f"background must have shape [3], got {bg.shape}")
    delta = jnp.zeros((c, 2), dtype) if means2d_delta is None else jnp.asarray(means2d_delta, dtype)
    if delta.shape != (c, 2):
        raise ValueError(f"means2d_delta must have shape [{c}, 2], got {delta.shape}")
    out = _render_rgb_jit(splats, camera, bg, delta, degree, config)
    tl.raise_on_overflow(out.n_pairs < 0, f"render_rgb of {c} splats at {camera.width}×{camera.height}",
                         "Render at a lower resolution, in crops (cameras with a shifted principal"
                         " point), or with fewer or smaller splats.")
    return out
