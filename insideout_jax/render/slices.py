"""Density field of a splat set on a plane (cross-sections) or a voxel grid (voxelizer).

The field is ρ(x) = Σᵢ ρᵢ exp(−½ (x − μᵢ)ᵀ Σᵢ⁻¹ (x − μᵢ)) — for :class:`RadSplats` ρᵢ is the density
exp(log_densities), for :class:`RGBSplats` the opacity sigmoid(opacity_logits) plays its role. It is
the same quantity whose line integrals :func:`insideout_jax.render.xray.render_xray` returns, so
projections, slices and volumes agree. Not an alpha-composited slab (EVALUATION.md §6).

A 3D Gaussian restricted to a plane is an additive 2D Gaussian (EVALUATION.md §6): with unit normal
n, δ = nᵀ(μ − p0), it has peak ρ·exp(−½δ²/nᵀΣn), and the Mahalanobis distance of a plane point is
δ²/nᵀΣn + (its in-plane 2D Mahalanobis distance). The renderer uses this for the footprint (the
bounding box of the in-plane ellipse where the 3D Mahalanobis distance is ≤ k) and evaluates each
Gaussian on the pixels of the tiles it touches as exp(−½‖W(x − μ)‖²), W = S⁻¹Rᵀ, with
x − μ formed per tile centre in world units (no large cancelling terms), which is the same number.
Contributions with Mahalanobis distance > ``cutoff_sigma`` = k are dropped: at most e^(−k²/2) of each
Gaussian's peak, and for a dense field of overlapping Gaussians a relative P(χ²₃ > k²) of the value
(k = 3: 3%, k = 5: 1.5e-5, k = 6: 7e-8). Default k = 6, so that metrics computed on slices and
volumes are within 1e-5 of the exact field whatever the overlap; pass 5 (or less) where speed
matters more (the footprint area grows as k²). Accumulation is
additive over tiles with the chunked engine of :mod:`insideout_jax.render.additive` and a
hand-written VJP (gradients with respect to the splats; the plane and grid are not differentiated).
``backend="pallas"`` (chosen by ``"auto"`` on GPU) runs the same kernel, written on record columns
(``_pallas_value``, ``_pallas_sums``), as Pallas GPU programs
(:mod:`insideout_jax.render.pallas_additive`).

Conventions: CT frame in mm; volumes indexed [z, y, x]; voxel [k, j, i] has centre
origin_xyz + (i·sx, j·sy, k·sz) with spacing_zyx = (sz, sy, sx). A plane's pixel (row r, column c)
has centre origin + (c + ½ − W/2)·(width/W)·e1 + (r + ½ − H/2)·(height/H)·e2.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

from insideout_jax import xla
from insideout_jax.render.additive import (
    SplatKernel,
    TileLayout,
    pixel_bounds_to_boxes,
    sum_splat,
    tile_local_coords,
    tile_moments,
)
from insideout_jax.render.pairs import box_counts
from insideout_jax.render.tiles import pairs_overflow, raise_on_overflow
from insideout_jax.render.xray import check_pallas_options, resolve_xray_backend, safe_quats
from insideout_jax.splats import RadSplats, RGBSplats, quat_to_rotmat

__all__ = ["SlicePlane", "make_slice_plane", "axial_plane", "coronal_plane",
           "slice_pixel_centers", "VoxelGrid", "make_voxel_grid", "voxel_centers",
           "render_slice", "voxelize", "splat_peaks"]


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class SlicePlane:
    """A rectangular pixel grid on a plane.

    Attributes:
      origin: [3] float32 centre of the rectangle, mm.
      e1: [3] float32 unit vector along image columns (column index grows along e1).
      e2: [3] float32 unit vector along image rows, orthogonal to e1.
      extent: [2] float32 (width along e1, height along e2), mm.
      resolution: (H, W) pixels (static).
    """

    origin: jax.Array
    e1: jax.Array
    e2: jax.Array
    extent: jax.Array
    resolution: tuple = dataclasses.field(metadata=dict(static=True))

    @property
    def normal(self) -> jax.Array:
        """[3] unit normal e1 × e2."""
        return jnp.cross(self.e1, self.e2)

    @property
    def pixel_size(self) -> jax.Array:
        """[2] (along e1, along e2) mm per pixel."""
        h, w = self.resolution
        return self.extent / jnp.asarray([w, h], jnp.float32)


def make_slice_plane(origin, e1, e2, extent, resolution) -> SlicePlane:
    """Validated :class:`SlicePlane`.

    Raises:
      ValueError: naming the argument, for wrong shapes, non-unit or non-orthogonal axes,
        non-positive extent or resolution, or non-finite values.
    """
    vals = {}
    for name, v, shape in (("origin", origin, (3,)), ("e1", e1, (3,)), ("e2", e2, (3,)),
                           ("extent", extent, (2,))):
        a = np.asarray(v, np.float64)
        if a.shape != shape or not np.all(np.isfinite(a)):
            raise ValueError(f"{name} must be a finite array of shape {shape}, got {a}")
        vals[name] = a
    for name in ("e1", "e2"):
        if abs(np.linalg.norm(vals[name]) - 1.0) > 1e-5:
            raise ValueError(f"{name} must be a unit vector, got {vals[name]}")
    if abs(vals["e1"] @ vals["e2"]) > 1e-5:
        raise ValueError("e1 and e2 must be orthogonal")
    if np.any(vals["extent"] <= 0):
        raise ValueError(f"extent must be positive (width, height) in mm, got {vals['extent']}")
    res = tuple(int(r) for r in np.asarray(resolution).ravel())
    if len(res) != 2 or min(res) <= 0:
        raise ValueError(f"resolution must be two positive integers (H, W), got {resolution}")
    f32 = lambda a: jnp.asarray(a, jnp.float32)  # noqa: E731
    return SlicePlane(f32(vals["origin"]), f32(vals["e1"]), f32(vals["e2"]),
                      f32(vals["extent"]), res)


def axial_plane(z: float, center_xy, extent, resolution) -> SlicePlane:
    """The plane z = const: columns along +x, rows along +y (like ``volume[k]``)."""
    cx, cy = np.asarray(center_xy, np.float64)
    return make_slice_plane((cx, cy, z), (1, 0, 0), (0, 1, 0), extent, resolution)


def coronal_plane(y: float, center_xz, extent, resolution) -> SlicePlane:
    """The plane y = const: columns along +x, rows along +z (like ``volume[:, j, :]``)."""
    cx, cz = np.asarray(center_xz, np.float64)
    return make_slice_plane((cx, y, cz), (1, 0, 0), (0, 0, 1), extent, resolution)


def slice_pixel_centers(plane: SlicePlane) -> jax.Array:
    """[H, W, 3] world positions (mm) of the pixel centres."""
    h, w = plane.resolution
    px = plane.pixel_size
    c = (jnp.arange(w, dtype=jnp.float32) + 0.5 - w / 2) * px[0]
    r = (jnp.arange(h, dtype=jnp.float32) + 0.5 - h / 2) * px[1]
    return plane.origin + c[None, :, None] * plane.e1 + r[:, None, None] * plane.e2


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class VoxelGrid:
    """A regular voxel grid, indexed [z, y, x].

    Attributes:
      spacing_zyx: [3] float32 voxel size (sz, sy, sx), mm.
      origin_xyz: [3] float32 centre of voxel [0, 0, 0], mm.
      shape_zyx: (Z, Y, X) (static).
    """

    spacing_zyx: jax.Array
    origin_xyz: jax.Array
    shape_zyx: tuple = dataclasses.field(metadata=dict(static=True))


def make_voxel_grid(shape_zyx, spacing_zyx, origin_xyz) -> VoxelGrid:
    """Validated :class:`VoxelGrid` (ValueError naming the argument for bad input)."""
    shape = tuple(int(s) for s in np.asarray(shape_zyx).ravel())
    if len(shape) != 3 or min(shape) <= 0:
        raise ValueError(f"shape_zyx must be three positive integers, got {shape_zyx}")
    sp = np.asarray(spacing_zyx, np.float64)
    if sp.shape != (3,) or not np.all(np.isfinite(sp)) or np.any(sp <= 0):
        raise ValueError(f"spacing_zyx must be three positive numbers (mm), got {spacing_zyx}")
    org = np.asarray(origin_xyz, np.float64)
    if org.shape != (3,) or not np.all(np.isfinite(org)):
        raise ValueError(f"origin_xyz must be three finite numbers (mm), got {origin_xyz}")
    return VoxelGrid(jnp.asarray(sp, jnp.float32), jnp.asarray(org, jnp.float32), shape)


def voxel_centers(grid: VoxelGrid) -> jax.Array:
    """[Z, Y, X, 3] world positions (x, y, z) of the voxel centres, mm."""
    axes = [jnp.arange(n, dtype=jnp.float32) * grid.spacing_zyx[2 - a] + grid.origin_xyz[a]
            for a, n in enumerate(grid.shape_zyx[::-1])]
    x, y, z = axes
    zz, yy, xx = jnp.meshgrid(z, y, x, indexing="ij")
    return jnp.stack([xx, yy, zz], axis=-1)


def splat_peaks(splats: RadSplats | RGBSplats) -> jax.Array:
    """[C] peak value of each Gaussian: density (RadSplats) or opacity (RGBSplats)."""
    if isinstance(splats, RadSplats):
        return jnp.exp(splats.log_densities)
    if isinstance(splats, RGBSplats):
        return jax.nn.sigmoid(splats.opacity_logits)
    raise ValueError(f"splats must be RadSplats or RGBSplats, got {type(splats).__name__}")


# ----------------------------------------------------------------------------------------------
# per-pixel kernel: records [C, 12 + K] = (μ (3), W = S⁻¹Rᵀ row-major (9), K peaks: one per
# channel, K = 1 for the density); a pair's values are its K maps one after the other [B, K·Pt]
# aux = (x00, step_c, step_r, step_l, k²): pixel (x, y) of layer l sits at
#       x00 + x·step_c + y·step_r + l·step_l
# ----------------------------------------------------------------------------------------------


def _pair_stage(rec12, aux, x0, y0, layer, ts):
    x00, step_c, step_r, step_l, _ = aux
    th, tw = ts
    xc = x0.astype(jnp.float32) + (tw - 1) / 2.0
    yc = y0.astype(jnp.float32) + (th - 1) / 2.0
    x_t = (x00 + xc[:, None] * step_c + yc[:, None] * step_r
           + layer.astype(jnp.float32)[:, None] * step_l)
    w = rec12[:, 3:12].reshape(-1, 3, 3)
    o = jnp.einsum("bij,bj->bi", w, x_t - rec12[:, :3], precision=xla.HIGHEST)
    g1 = jnp.matmul(w, step_c, precision=xla.HIGHEST)
    g2 = jnp.matmul(w, step_r, precision=xla.HIGHEST)
    return o, g1, g2


def _pixel_m2(o, g1, g2, ts):
    lx, ly = tile_local_coords(ts, centred=True)
    v = [o[:, k:k + 1] + lx[None] * g1[:, k:k + 1] + ly[None] * g2[:, k:k + 1] for k in range(3)]
    return v[0] * v[0] + v[1] * v[1] + v[2] * v[2]


def _eval_density(rec, aux, x0, y0, layer, ts):
    o, g1, g2 = _pair_stage(rec[:, :12], aux, x0, y0, layer, ts)
    m2 = _pixel_m2(o, g1, g2, ts)
    e = jnp.where(m2 <= aux[4], jnp.exp(-0.5 * m2), 0.0)
    return (rec[:, 12:, None] * e[:, None, :]).reshape(rec.shape[0], -1)  # [B, K·Pt]


def _vjp_density(rec, aux, x0, y0, layer, ts, ct):
    (o, g1, g2), pair_vjp = jax.vjp(lambda r: _pair_stage(r, aux, x0, y0, layer, ts), rec[:, :12])
    m2 = _pixel_m2(o, g1, g2, ts)
    e = jnp.where(m2 <= aux[4], jnp.exp(-0.5 * m2), 0.0)
    n_ch = rec.shape[1] - 12
    ct = ct.reshape(ct.shape[0], n_ch, -1)
    ge = [ct[:, c] * e for c in range(n_ch)]  # ∂L/∂peak_c per pixel
    gm = -0.5 * sum(ge[c] * rec[:, 12 + c:13 + c] for c in range(n_ch))  # ∂L/∂m²
    *peaks, (s0, sx, sy, sxx, sxy, syy) = tile_moments(ts, [*ge, gm])
    col = lambda a: a[:, None]  # noqa: E731
    # m² = ‖o + lx·g1 + ly·g2‖²: Σₚ gm·∂m²/∂(o, g1, g2) from the moments of gm
    go = 2.0 * (o * col(s0) + g1 * col(sx) + g2 * col(sy))
    gg1 = 2.0 * (o * col(sx) + g1 * col(sxx) + g2 * col(sxy))
    gg2 = 2.0 * (o * col(sy) + g1 * col(sxy) + g2 * col(syy))
    (g12,) = pair_vjp((go, gg1, gg2))
    return jnp.concatenate([g12] + [p[0][:, None] for p in peaks], axis=1)


DENSITY_KERNEL = SplatKernel(_eval_density, _vjp_density)


def _sum_density(layout, rec, aux, boxes, backend, capacity):
    """The density kernel on the tiles of ``layout`` by the chosen back end ([T, channels · Pt]).
    The Pallas kernel has one channel: it runs once per channel on the same boxes."""
    if backend == "xla":
        return sum_splat(DENSITY_KERNEL, layout, rec, aux, boxes)
    from insideout_jax.render import pallas_additive, pallas_slices  # noqa: PLC0415 (optional back end)

    flat = jnp.concatenate([aux[0], aux[1], aux[2], aux[3], aux[4][None]])
    one = dataclasses.replace(layout, channels=1)
    return jnp.concatenate([pallas_additive.integrate(
        pallas_slices.density_kernel(), one, jnp.concatenate([rec[:, :12], rec[:, 12 + c:13 + c]], 1), flat,
        boxes, interpret=backend == "pallas_interpret", capacity=capacity) for c in range(layout.channels)], 1)


def _records(splats, values=None):
    """Kernel records [C, 12 + K] (peaks: ``values`` [C, K], else the splats' own [C, 1]) and the
    rows of G = S Rᵀ (for fixed vectors a, b, aᵀΣb = (G a)·(G b); used for footprint bounds)."""
    rot = quat_to_rotmat(safe_quats(splats))
    w = jnp.swapaxes(rot, -1, -2) * jnp.exp(-splats.log_scales)[:, :, None]
    peak = splat_peaks(splats)[:, None] if values is None else values
    rec = jnp.concatenate([splats.means, w.reshape(-1, 9), peak], axis=1)
    g = jnp.swapaxes(rot, -1, -2) * jnp.exp(splats.log_scales)[:, :, None]
    return rec, jax.lax.stop_gradient(g)


def _check(splats, cutoff_sigma, tile_size, chunk, backend, capacity) -> str:
    splat_peaks(splats)  # type check
    if not cutoff_sigma > 0:
        raise ValueError(f"cutoff_sigma must be > 0, got {cutoff_sigma}")
    if int(tile_size) < 1 or int(chunk) < 1:
        raise ValueError(f"tile_size and chunk must be positive, got {tile_size}, {chunk}")
    backend = resolve_xray_backend(backend)
    if backend != "xla":
        check_pallas_options(tile_size, capacity, backend)
    return backend


def render_slice(splats: RadSplats | RGBSplats, plane: SlicePlane, *, values: jax.Array | None = None,
                 cutoff_sigma: float = 6.0, tile_size: int = 16, chunk: int = 1024, backend: str = "auto",
                 capacity: int | None = None) -> jax.Array:
    """Density field on the pixel centres of a plane (exact plane restriction, additive).

    Args:
      splats: RadSplats (density) or RGBSplats (opacity as density); inactive splats ignored.
      plane: :class:`SlicePlane`.
      values: optional [C, K] float32 peak values of K fields on the splats' one geometry (for
        example an image and its masks); each field Σᵢ values[i, k]·Gᵢ is rendered in one pass
        (the footprints are evaluated once), instead of the splats' own density.
      cutoff_sigma: k; contributions beyond Mahalanobis distance k are dropped (module docstring).
      tile_size, chunk: tiling and pairs per loop step of the XLA engine (performance only);
        tile_size a power of two for the Pallas back ends.
      backend: "auto" (Pallas on GPU, XLA elsewhere), "xla", "pallas" or "pallas_interpret" (the
        Pallas kernels in the interpreter, for tests on CPU); as for
        :func:`~insideout_jax.render.xray.render_xray`.
      capacity: Pallas back ends only: static pairs per window (performance and memory only).

    Returns:
      [H, W] float32 density (1/mm for RadSplats; dimensionless for RGBSplats); [K, H, W] with
      ``values``.

    Raises:
      tiles.PairCountOverflow: when the (splat, tile) pairs would exceed the int32 counts of the
        tile engine (``tiles.PAIR_LIMIT``); the message says how to split the work.
    """
    backend = _check(splats, cutoff_sigma, tile_size, chunk, backend, capacity)
    if not isinstance(plane, SlicePlane):
        raise ValueError(f"plane must be a SlicePlane, got {type(plane).__name__}")
    if values is not None and (jnp.ndim(values) != 2 or jnp.shape(values)[0] != splats.means.shape[0]):
        raise ValueError(f"values must be [C = {splats.means.shape[0]}, K] (one row per splat), "
                         f"got shape {jnp.shape(values)}")
    img, overflow = _render_slice_jit(splats, plane, values, jnp.float32(cutoff_sigma),
                                      tile_size=int(tile_size), chunk=int(chunk), backend=backend,
                                      capacity=None if capacity is None else int(capacity))
    h, w = plane.resolution
    raise_on_overflow(overflow, f"render_slice of {splats.means.shape[0]} splats at {w}×{h}",
                      "Render the plane in parts (planes over sub-rectangles) or at a lower"
                      " resolution.")
    return img


@xla.jit(static_argnames=("tile_size", "chunk", "backend", "capacity"))
def _render_slice_jit(splats, plane, values, cutoff_sigma, *, tile_size, chunk, backend, capacity):
    h, w = plane.resolution
    t = tile_size
    n_ch = 1 if values is None else values.shape[1]
    layout = TileLayout(1, -(-h // t), -(-w // t), t, t, chunk, n_ch)
    k2 = jax.lax.stop_gradient(cutoff_sigma) ** 2
    rec, g = _records(splats, None if values is None else jnp.asarray(values, jnp.float32))
    n = plane.normal
    px = plane.pixel_size
    d = jax.lax.stop_gradient(splats.means) - plane.origin
    g_n = xla.dot(g, n)  # [C, 3]
    s_nn = jnp.sum(g_n * g_n, -1)  # nᵀΣn
    delta = xla.dot(d, n)
    r2 = k2 - delta * delta / s_nn
    ok = (r2 > 0) & splats.active

    def axis_bounds(e, size, step):
        g_e = xla.dot(g, e)
        centre = (xla.dot(d, e) - delta * jnp.sum(g_e * g_n, -1) / s_nn) / step + size / 2.0 - 0.5
        # in-plane conditional variance eᵀΣe − (eᵀΣn)²/nᵀΣn = ‖g_e × g_n‖²/nᵀΣn (no cancellation)
        var = jnp.sum(jnp.square(jnp.cross(g_e, g_n)), -1) / s_nn
        half = jnp.sqrt(jnp.maximum(r2, 0.0) * var) / step
        return centre - half, centre + half

    xlo, xhi = axis_bounds(plane.e1, w, px[0])
    ylo, yhi = axis_bounds(plane.e2, h, px[1])
    zero = jnp.zeros(ok.shape, jnp.int32)
    boxes = pixel_bounds_to_boxes(xlo, xhi, ylo, yhi, zero, zero + 1, ok, layout, w, h)
    step_c, step_r = px[0] * plane.e1, px[1] * plane.e2
    x00 = plane.origin + (0.5 - w / 2.0) * step_c + (0.5 - h / 2.0) * step_r
    aux = (x00, step_c, step_r, jnp.zeros(3, jnp.float32), k2)
    aux = jax.tree_util.tree_map(jax.lax.stop_gradient, aux)
    buf = _sum_density(layout, rec, aux, boxes, backend, capacity)
    img = layout.untile_channels(buf, h, w)[:, 0]  # [n_ch, H, W]
    return img[0] if values is None else img, pairs_overflow(box_counts(boxes))


def voxelize(splats: RadSplats | RGBSplats, grid: VoxelGrid, *, cutoff_sigma: float = 6.0,
             tile_size: int = 16, chunk: int = 1024, backend: str = "auto",
             capacity: int | None = None) -> jax.Array:
    """Density field at the voxel centres of a grid (one additive slice per z index).

    Args:
      splats: RadSplats (density) or RGBSplats (opacity as density); inactive splats ignored.
      grid: :class:`VoxelGrid`.
      cutoff_sigma: k; contributions beyond Mahalanobis distance k are dropped.
      tile_size, chunk: tiling of each z-slice and pairs per loop step (performance only).
      backend, capacity: as for :func:`render_slice`.

    Returns:
      [Z, Y, X] float32 density.

    Raises:
      tiles.PairCountOverflow: when the (splat, tile) pairs would exceed the int32 counts of the
        tile engine (``tiles.PAIR_LIMIT``); the message says how to split the work.
    """
    backend = _check(splats, cutoff_sigma, tile_size, chunk, backend, capacity)
    if not isinstance(grid, VoxelGrid):
        raise ValueError(f"grid must be a VoxelGrid, got {type(grid).__name__}")
    vol, overflow = _voxelize_jit(splats, grid, jnp.float32(cutoff_sigma), tile_size=int(tile_size),
                                  chunk=int(chunk), backend=backend,
                                  capacity=None if capacity is None else int(capacity))
    nz, ny, nx = grid.shape_zyx
    raise_on_overflow(overflow, f"voxelize of {splats.means.shape[0]} splats on a {nz}×{ny}×{nx} grid",
                      "Voxelize the grid in z-slabs (VoxelGrids of fewer z layers, origins shifted"
                      " by their first layer) and stack the results.")
    return vol


@xla.jit(static_argnames=("tile_size", "chunk", "backend", "capacity"))
def _voxelize_jit(splats, grid, cutoff_sigma, *, tile_size, chunk, backend, capacity):
    nz, ny, nx = grid.shape_zyx
    t = tile_size
    layout = TileLayout(nz, -(-ny // t), -(-nx // t), t, t, chunk)
    k = jax.lax.stop_gradient(cutoff_sigma)
    rec, g = _records(splats)
    sp_xyz = grid.spacing_zyx[::-1]
    centre = (jax.lax.stop_gradient(splats.means) - grid.origin_xyz) / sp_xyz  # voxel units
    half = k * jnp.sqrt(jnp.sum(g * g, axis=-2)) / sp_xyz  # k·sqrt(diag Σ), voxel units
    lo, hi = centre - half, centre + half
    z0 = jnp.ceil(jnp.clip(lo[:, 2] - 0.01, -1.0, nz + 1.0)).astype(jnp.int32)
    z1 = jnp.floor(jnp.clip(hi[:, 2] + 0.01, -1.0, nz + 1.0)).astype(jnp.int32)
    z0, z1 = jnp.maximum(z0, 0), jnp.minimum(z1, nz - 1)
    boxes = pixel_bounds_to_boxes(lo[:, 0], hi[:, 0], lo[:, 1], hi[:, 1], z0,
                                  jnp.maximum(z1 - z0 + 1, 0), splats.active, layout, nx, ny)
    eye = jnp.eye(3, dtype=jnp.float32)
    aux = (grid.origin_xyz, sp_xyz[0] * eye[0], sp_xyz[1] * eye[1], sp_xyz[2] * eye[2], k * k)
    aux = jax.tree_util.tree_map(jax.lax.stop_gradient, aux)
    buf = _sum_density(layout, rec, aux, boxes, backend, capacity)
    return layout.untile(buf, ny, nx), pairs_overflow(box_counts(boxes))
