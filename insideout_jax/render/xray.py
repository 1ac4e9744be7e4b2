"""Radiative (X-ray) rasterizer: exact Gaussian line integrals, additive tile accumulation.

A detector pixel is the line integral of the density field Σᵢ ρᵢ Gᵢ(x) along its source → pixel ray.
Per Gaussian and ray (origin o, direction d, P = Σ⁻¹, q = o − μ) the closed form is

    ∫ ρ G(o + τd) ‖d‖ dτ = ρ ‖d‖ sqrt(2π / a) exp(−½ m²),   a = dᵀPd,  m² = qᵀPq − (dᵀPq)² / a,

m being the Mahalanobis distance between μ and the ray. It is evaluated in a cancellation-free form:
the ray of the pixel through which μ projects, (j₀, i₀), passes through μ, so the ray of pixel
(j, i) = (j₀ + Δj, i₀ + Δi) is μ + g + s·d̃ with g = Δj·U + Δi·V a small in-plane offset (mm) and
d̃ = w + g (w = μ − source for cone beam, w = beam direction for parallel beam). With primes for the
whitened space (x' = S⁻¹Rᵀx, so P = WᵀW) and ŵ = w'/‖w'‖:

    m² = ‖Δj·X + Δi·Y‖² / aₙ,   X = U' × ŵ,  Y = V' × ŵ,
    aₙ = ‖ŵ + g'/‖w'‖‖²  (a polynomial of degree 2 in Δj, Δi; 1 for parallel beam),
    value = Lpix · K · aₙ^(−1/2) · exp(−½ m²),   K = ρ·sqrt(2π)·t₀/‖w'‖ (cone), ρ·sqrt(2π)/‖w'‖ (parallel),

where Lpix = ‖pixel − source‖ is a per-pixel factor common to all Gaussians (1 for parallel beam)
and t₀ = depth/DSD. No large quantity is ever subtracted from another one (the naive c − b²/a loses
~eps·(DSO/σ)² in float32).

aₙ^(−1/2) = (1 + ε)^(−1/2) is evaluated as its Taylor polynomial of degree 5 in ε for records whose
|ε| ≤ ``SERIES_EPS`` = 0.1 on every pixel of their tiles (truncation ≤ 2.5e-7, float32 rounding;
:func:`series_records` bounds ε rigorously), and with rsqrt for the others (needle-like Gaussians),
in a second pass of the engine.

Culling: a Gaussian contributes to a pixel only where m ≤ ``cutoff_sigma`` (k). The set of rays with
m ≤ k is exactly the set that meets the k-σ ellipsoid, so its detector footprint is the ellipsoid's
silhouette, whose bounding box is computed *exactly* (tangent planes through the source, a quadratic
per detector axis) — no Jacobian (local-affine) approximation and no heuristic margin; a 0.01 px
margin only absorbs float32 rounding of the bounds. The per-pixel test m² ≤ k² then makes the
result independent of the tile layout (k = 5 by default: e^(−k²/2) = 3.7e-6; k = 4: 3.4e-4; k = 3:
1.1e-2).

The truncation error of one Gaussian is at most e^(−k²/2) of its central line integral, and for
a dense field of overlapping Gaussians the relative error of a projection is the same e^(−k²/2)
(2D Gaussian mass beyond k); gradients differ from those of the untruncated closed form by up to
~m²·e^(−k²/2) (measured 1.4e-4 at k = 5, ~1e-6 at k = 6). Cone beam: a Gaussian whose k-σ ellipsoid reaches the
plane of the source (depth² ≤ k²·Σrr) is not rendered in that view; :func:`xray_tile_stats`
counts them (they are outside any physical scan).

Accumulation is additive and order-independent (no depth sort), with the chunked engine of
:mod:`insideout_jax.render.additive`: (record, tile) pairs are enumerated on the fly, nothing is
ever truncated, no pair capacity is guessed, and the hand-written backward (``jax.custom_vjp``)
replays the same chunks. Per pair it computes one per-pixel map, u = ct·e·a^(−5/2), its moments
up to degree 4 (one matmul against the tile's monomials) and from them the moments of degree ≤ 2
of u·(N − a) and u·a about the Gaussian's own centre pixel (exact binomial shift), which add up
over the Gaussian's tiles: a and N are quadratic polynomials of the pixel offset, so these 13 sums per
Gaussian determine its cotangent, formed once per Gaussian after the loop (deterministic segment
sums in a fixed order). ``backend="pallas"`` (chosen by ``"auto"`` on GPU)
runs the same integrals as Pallas GPU kernels over tile-sorted windows of pairs
(:mod:`insideout_jax.render.pallas_xray`).

Glossary: C capacity, V views, R = V·C records, T tiles, Pt pixels per tile, B pairs per chunk.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from insideout_jax import xla
from insideout_jax.cameras import XrayGeometry, view_frame, view_params
from insideout_jax.render.additive import (
    TileLayout,
    pixel_bounds_to_boxes,
    sum_splat,
)
from insideout_jax.render.pairs import box_counts
from insideout_jax.render.tiles import pairs_overflow, raise_on_overflow
from insideout_jax.render.xray_records import (  # noqa: F401  (re-exported)
    CONE_KERNEL,
    CONE_SERIES_KERNEL,
    PARALLEL_KERNEL,
    SERIES_EPS,
    XRAY_RECORD_FIELDS,
    safe_quats,
    series_records,
    xray_records,
)
from insideout_jax.splats import RadSplats

__all__ = ["render_xray", "xray_records", "xray_tile_stats", "ray_length_image",
           "resolve_view_angles", "safe_quats", "series_records", "XRAY_RECORD_FIELDS", "CONE_KERNEL",
           "CONE_SERIES_KERNEL", "PARALLEL_KERNEL", "SERIES_EPS", "XRAY_BACKENDS",
           "resolve_xray_backend", "check_pallas_options"]



def ray_length_image(geometry: XrayGeometry, view=0.0) -> jax.Array:
    """[nv, nu] ‖pixel centre − source‖ in mm of one view (cone beam); ones for parallel beam."""
    nv, nu = geometry.n_detector
    if geometry.mode != "cone":
        return jnp.ones((nv, nu), jnp.float32)
    dv, du = geometry.d_detector[0], geometry.d_detector[1]
    _, _, _, _, ov, ou = view_frame(geometry, view)
    u = (jnp.arange(nu, dtype=jnp.float32) - (nu - 1) / 2.0) * du + ou
    v = (jnp.arange(nv, dtype=jnp.float32) - (nv - 1) / 2.0) * dv + ov
    return jnp.sqrt(geometry.dsd ** 2 + u[None, :] ** 2 + v[:, None] ** 2)


def resolve_view_angles(geometry: XrayGeometry, views) -> jax.Array:
    """[V] float32 view angles (rad), or [V, 5, 3] poses for a posed geometry, from None (all
    views), int indices, float angles or poses (:func:`insideout_jax.cameras.view_params`)."""
    return view_params(geometry, views)


def _check_inputs(splats, geometry, cutoff_sigma, tile_size, chunk):
    if not isinstance(splats, RadSplats):
        raise ValueError(f"splats must be RadSplats, got {type(splats).__name__}")
    if splats.means.ndim != 2 or splats.means.shape[0] < 1:
        raise ValueError(f"splats.means must have shape [C, 3] with C ≥ 1, got {splats.means.shape}")
    if not isinstance(geometry, XrayGeometry):
        raise ValueError(f"geometry must be an XrayGeometry, got {type(geometry).__name__}")
    if not cutoff_sigma > 0:
        raise ValueError(f"cutoff_sigma must be > 0, got {cutoff_sigma}")
    if int(tile_size) < 1 or int(chunk) < 1:
        raise ValueError(f"tile_size and chunk must be positive, got {tile_size}, {chunk}")


def _layout(geometry, n_views, tile_size, chunk) -> TileLayout:
    nv, nu = geometry.n_detector
    t = int(tile_size)
    return TileLayout(n_views, -(-nv // t), -(-nu // t), t, t, int(chunk))


def _xray_setup(splats, geometry, angles, cutoff_sigma, layout):
    rec, bounds, ok = xray_records(splats, geometry, angles, cutoff_sigma=cutoff_sigma)
    v, c = ok.shape
    nv, nu = geometry.n_detector
    layer = jnp.repeat(jnp.arange(v, dtype=jnp.int32), c)
    b = jax.lax.stop_gradient(bounds.reshape(v * c, 4))
    boxes = pixel_bounds_to_boxes(b[:, 0], b[:, 1], b[:, 2], b[:, 3], layer,
                                  jnp.ones_like(layer), ok.reshape(-1), layout, nu, nv)
    return rec.reshape(v * c, -1), boxes, ok


XRAY_BACKENDS = ("auto", "xla", "pallas", "pallas_interpret")


def resolve_xray_backend(backend: str, *, runnable: bool = False) -> str:
    """The back end that ``backend`` selects on this machine.

    "auto" is the Pallas kernels where ``jax.default_backend() == "gpu"`` and the XLA path
    elsewhere (on CPU it is always XLA). The Pallas kernels are tested on CPU in the Pallas
    interpreter and lowered to Triton IR there; ``pytest -m gpu`` (``benchmarks/gpu_check.py``)
    checks them on a GPU (passed on an NVIDIA H200, JAX 0.11.2: forward + backward at 200k Gaussians,
    512², 21.9 ms against the XLA path's 235–250 ms) — pass ``"xla"`` to compare.

    With ``runnable`` (the trainers' check before any work), "pallas" where JAX has no GPU is an
    error too: compiled kernels cannot run there (lowering them for export still works without it).

    Raises:
      ValueError: for an unknown back end (the message names ``backend``), or, with ``runnable``,
        "pallas" without a GPU.
    """
    if backend not in XRAY_BACKENDS:
        raise ValueError(f"backend must be one of {XRAY_BACKENDS}, got {backend!r}")
    if runnable and backend == "pallas" and jax.default_backend() != "gpu":
        raise ValueError(f"backend='pallas' runs compiled GPU kernels, but JAX runs on {jax.default_backend()!r}: "
                         "use 'auto' or 'xla' ('pallas_interpret' runs the kernels in the interpreter)")
    if backend == "auto":
        return "pallas" if jax.default_backend() == "gpu" else "xla"
    return backend


def render_xray(splats: RadSplats, geometry: XrayGeometry, views=None, *,
                cutoff_sigma: float = 5.0, tile_size: int = 16, chunk: int = 1024,
                backend: str = "auto", capacity: int | None = None) -> jax.Array:
    """X-ray projections (line integrals of the density field) of radiative splats.

    Exact closed-form Gaussian line integral per ray (module docstring), cone or parallel beam
    (``geometry.mode``), additive over Gaussians, differentiable with a hand-written VJP with
    respect to means, log_scales, quats and log_densities. Inactive splats are ignored. Jit-able
    (``geometry`` static fields and the keyword options are static); nothing is truncated.

    Args:
      splats: :class:`RadSplats`; density ρ = exp(log_densities) in 1/mm, lengths in mm.
      geometry: :class:`XrayGeometry`.
      views: None (all views), [V] int view indices, [V] float angles in radians (circular
        scans) or [V, 5, 3] poses (``geometry.views``).
      cutoff_sigma: k; contributions with Mahalanobis ray distance m > k are dropped (relative
        error ≤ e^(−k²/2) of each Gaussian's central integral: 3.7e-6 at the default 5).
      tile_size: square tile side in pixels (a power of two for the Pallas back ends).
      chunk: XLA back end: (record, tile) pairs evaluated per loop step (memory ≈ chunk ·
        tile_size² floats).
      backend: "auto" (:func:`resolve_xray_backend`: Pallas on GPU, XLA elsewhere), "xla" (any
        device), "pallas" (GPU kernels, :mod:`insideout_jax.render.pallas_xray`) or
        "pallas_interpret" (the same kernels in the Pallas interpreter, for tests on CPU).
      capacity: Pallas back ends only: static pairs per window (performance and memory only;
        more pairs run further windows). None: ``pallas_additive.default_window_capacity``.

    Returns:
      [V, nv, nu] float32 line integrals (dimensionless attenuation −ln(I/I₀)).

    Raises:
      tiles.PairCountOverflow: outside a trace, when the (record, tile) pairs would exceed the
        int32 counts (``tiles.PAIR_LIMIT``; under a trace the result is NaN instead).
    """
    _check_inputs(splats, geometry, cutoff_sigma, tile_size, chunk)
    backend = resolve_xray_backend(backend)
    angles = resolve_view_angles(geometry, views)
    if backend != "xla":
        check_pallas_options(tile_size, capacity, backend)
    img, overflow = _render_xray_jit(splats, geometry, angles, jnp.float32(cutoff_sigma),
                                     tile_size=int(tile_size), chunk=int(chunk), backend=backend,
                                     capacity=None if capacity is None else int(capacity))
    raise_on_overflow(overflow, f"render_xray of {splats.means.shape[0]} splats on {angles.shape[0]}"
                      f" views of {geometry.n_detector[1]}×{geometry.n_detector[0]} pixels",
                      "Render fewer views per call (views=…) and concatenate the results.")
    return img


def check_pallas_options(tile_size: int, capacity, backend: str) -> None:
    """ValueError naming the argument for Pallas options the kernels cannot take."""
    t = int(tile_size)
    if t < 1 or t & (t - 1):
        raise ValueError(f"tile_size must be a power of two for backend={backend!r}, got {t}")
    if capacity is not None and int(capacity) < 1:
        raise ValueError(f"capacity must be positive or None, got {capacity}")


@functools.partial(jax.jit, static_argnames=("tile_size",))
def _pair_counts(splats, geometry, angles, cutoff_sigma, *, tile_size):
    layout = _layout(geometry, angles.shape[0], tile_size, 1)
    _, boxes, ok = _xray_setup(splats, geometry, angles, cutoff_sigma, layout)
    return box_counts(boxes), ok


@xla.jit(static_argnames=("tile_size", "chunk", "backend", "capacity"))
def _render_xray_jit(splats, geometry, angles, cutoff_sigma, *, tile_size, chunk, backend,
                     capacity):
    # cutoff_sigma is traced (one compilation for all cutoffs)
    layout = _layout(geometry, angles.shape[0], tile_size, chunk)
    cutoff = jax.lax.stop_gradient(cutoff_sigma)
    rec, boxes, _ = _xray_setup(splats, geometry, angles, cutoff, layout)
    overflow = pairs_overflow(box_counts(boxes))
    if backend == "xla" and geometry.mode == "cone":
        # two passes of the engine: records in the series regime, then the others (each pass
        # enumerates only its own records' pairs)
        sel = series_records(rec, boxes, layout)[:, None]
        empty = boxes.at[:, 3:].set(0)
        series, other = jnp.where(sel, boxes, empty), jnp.where(sel, empty, boxes)
        overflow = pairs_overflow(box_counts(series)) | pairs_overflow(box_counts(other))
        buf = (sum_splat(CONE_SERIES_KERNEL, layout, rec, cutoff * cutoff, series)
               + sum_splat(CONE_KERNEL, layout, rec, cutoff * cutoff, other))
    elif backend == "xla":
        buf = sum_splat(PARALLEL_KERNEL, layout, rec, cutoff * cutoff, boxes)
    else:
        from insideout_jax.render import pallas_xray

        buf = pallas_xray.integrate_tiles(rec, boxes, layout, mode=geometry.mode,
                                          cutoff_sigma=cutoff,
                                          interpret=backend == "pallas_interpret",
                                          capacity=capacity)
    nv, nu = geometry.n_detector
    img = layout.untile(buf, nv, nu)
    if geometry.mode == "cone" and angles.ndim == 3:  # posed views: per-view detector offsets
        return img * jax.vmap(lambda v: ray_length_image(geometry, v))(angles), overflow
    return img * ray_length_image(geometry)[None], overflow


def xray_tile_stats(splats: RadSplats, geometry: XrayGeometry, views=None, *,
                    cutoff_sigma: float = 5.0, tile_size: int = 16) -> dict:
    """Host-side diagnostics of the binning: pair count and culled Gaussians.

    Returns:
      dict with ``tile_pairs`` (number of (Gaussian, view, tile) pairs evaluated),
      ``n_records_rendered`` and ``n_culled_at_source`` (active Gaussians whose k-σ ellipsoid
      reaches the source plane in some view, which the cone-beam renderer leaves out).
    """
    _check_inputs(splats, geometry, cutoff_sigma, tile_size, 1)
    angles = resolve_view_angles(geometry, views)
    counts, ok = _pair_counts(splats, geometry, angles, jnp.float32(cutoff_sigma),
                              tile_size=int(tile_size))
    counts = np.asarray(counts)
    active = np.asarray(splats.active)
    culled = (~np.asarray(ok)) & active[None, :]
    return dict(tile_pairs=int(counts.sum()), n_records_rendered=int((counts > 0).sum()),
                n_culled_at_source=int(culled.any(axis=0).sum()))
