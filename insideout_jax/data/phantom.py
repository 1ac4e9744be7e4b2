"""The built-in skull: an analytic phantom of ellipsoids with signed densities, and its exact truth.

Model. A phantom is a list of ellipsoids E_k (centre c, semi-axes s, rotation R whose columns are the
principal axes, so a point x has local coordinates u = Rᵀ(x − c)/s and lies inside when |u| ≤ 1),
gathered into *groups*. A group is the union of its members and carries one signed density ρ_g
(attenuation, 1/mm); groups add:

    f(x) = Σ_g ρ_g · 1[x ∈ ∪_{k∈g} E_k].

With one member per group this is the classic signed-density ellipsoid phantom (a shell is an outer
group +ρ and an inner group −ρ, EVALUATION.md §7); unions let overlapping ellipsoids form one region
without doubling its density (a skin made of cranium, face, nose and ears; a cavity made of the
cranial cavity, orbits and sinuses). One group is the *outer* group: the boundary of its union is
the object's outer (skin) surface, the one the photos show.

Projections are exact: along a ray o + τd every ellipsoid covers one interval [τ−, τ+] (closed-form
chord, computed from the point of closest approach in local coordinates so that it stays accurate
in float32 far from the source), and the length of a union of intervals is computed without sorting
(span minus the gaps that follow uncovered interval ends). Line integral = Σ_g ρ_g · |∪ intervals|.

Tissues of :func:`skull_phantom` (attenuation per mm, roughly 60-70 keV; contrasts of the brain
exaggerated so that the internal layers show): air 0, orbital fat and ventricles (CSF) 0.014,
white matter and soft tissue 0.020, grey matter 0.024, bone 0.048, teeth 0.065.

CT frame: mm, z up (rotation axis), x = patient left-right, anterior (face) towards −y, the head
centred near the origin (about 169 × 206 × 226 mm in x, y, z).
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

from insideout_jax.cameras import XrayGeometry, xray_rays
from insideout_jax.data.skull_setup import (  # noqa: F401
    add_projection_noise,
    default_skull_cameras,
    default_skull_geometry,
    default_skull_grid,
)

__all__ = ["Phantom", "make_phantom", "skull_phantom", "phantom_density", "project_phantom",
           "project_rays", "phantom_volume", "phantom_surface_points", "default_skull_geometry",
           "default_skull_grid", "default_skull_cameras", "add_projection_noise", "TISSUES"]

# attenuation per mm of the skull's tissues (see the module docstring)
TISSUES = dict(air=0.0, fat=0.014, csf=0.014, white_matter=0.020, soft_tissue=0.020,
               grey_matter=0.024, bone=0.048, teeth=0.065)


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class Phantom:
    """Ellipsoids grouped into unions with signed densities (see the module docstring).

    Attributes:
      centres: [E, 3] float32 ellipsoid centres, mm (CT frame).
      semi_axes: [E, 3] float32 semi-axes along the columns of ``rotations``, mm.
      rotations: [E, 3, 3] float32; column a is the direction of semi-axis a.
      densities: [G] float32 signed density of each group, 1/mm.
      groups: per group, the tuple of its member ellipsoid indices (static).
      outer_group: index of the group whose union is the outer surface (static).
      names: per ellipsoid, a name (static, documentation only).
    """

    centres: jax.Array
    semi_axes: jax.Array
    rotations: jax.Array
    densities: jax.Array
    groups: tuple = dataclasses.field(metadata=dict(static=True))
    outer_group: int = dataclasses.field(metadata=dict(static=True))
    names: tuple = dataclasses.field(metadata=dict(static=True), default=())

    @property
    def n_ellipsoids(self) -> int:
        return self.centres.shape[0]


def _rotation(angles_deg) -> np.ndarray:
    """R = Rz(γ) Ry(β) Rx(α) for angles (α, β, γ) in degrees."""
    a, b, g = np.deg2rad(np.asarray(angles_deg, np.float64))
    rx = np.array([[1, 0, 0], [0, np.cos(a), -np.sin(a)], [0, np.sin(a), np.cos(a)]])
    ry = np.array([[np.cos(b), 0, np.sin(b)], [0, 1, 0], [-np.sin(b), 0, np.cos(b)]])
    rz = np.array([[np.cos(g), -np.sin(g), 0], [np.sin(g), np.cos(g), 0], [0, 0, 1]])
    return rz @ ry @ rx


def make_phantom(groups, *, outer_group: int = 0) -> Phantom:
    """Validated :class:`Phantom` from a list of groups.

    Args:
      groups: list of (density [1/mm], members), members a list of (name, centre [3] mm,
        semi_axes [3] mm, angles [3] degrees (Rz·Ry·Rx, may be omitted)).
      outer_group: index of the group whose union is the outer surface.

    Raises:
      ValueError: for an empty group, non-positive semi-axes, non-finite values, or an
        ``outer_group`` out of range.
    """
    cs, ss, rs, names, members, dens = [], [], [], [], [], []
    for gi, (rho, items) in enumerate(groups):
        if not np.isfinite(rho):
            raise ValueError(f"groups[{gi}] density must be finite, got {rho}")
        if len(items) == 0:
            raise ValueError(f"groups[{gi}] has no ellipsoid")
        idx = []
        for item in items:
            name, c, s = item[0], np.asarray(item[1], float), np.asarray(item[2], float)
            ang = item[3] if len(item) > 3 else (0.0, 0.0, 0.0)
            if c.shape != (3,) or s.shape != (3,) or not np.all(np.isfinite(c)) or np.any(s <= 0):
                raise ValueError(f"groups[{gi}] ellipsoid {name!r}: centre and semi_axes must be "
                                 f"3 finite numbers, semi-axes > 0; got {c}, {s}")
            idx.append(len(cs))
            cs.append(c), ss.append(s), rs.append(_rotation(ang)), names.append(str(name))
        members.append(tuple(idx))
        dens.append(float(rho))
    if not 0 <= outer_group < len(members):
        raise ValueError(f"outer_group must index one of the {len(members)} groups, got {outer_group}")
    f32 = lambda v: jnp.asarray(np.asarray(v), jnp.float32)  # noqa: E731
    return Phantom(f32(cs), f32(ss), f32(rs), f32(dens), tuple(members), int(outer_group),
                   tuple(names))


def skull_phantom() -> Phantom:
    """The built-in head/skull phantom (deterministic; tissues in :data:`TISSUES`).

    Nested structure from outside in: skin and soft tissue (union of cranium, face, chin, nose, ears),
    cranium shell 6 mm thick with facial skeleton and mandible (bone union), cranial cavity, grey
    matter, white matter, two lateral ventricles; orbits with fat and eyes, nasal cavity and
    maxillary sinuses (air), 24 teeth on two parabolic arches.
    """
    bone = TISSUES["bone"] - TISSUES["soft_tissue"]
    soft = TISSUES["soft_tissue"]
    sym = lambda name, c, s, a=(0.0, 0.0, 0.0): [  # noqa: E731  mirrored pair about x = 0
        (name + "_r", (c[0], c[1], c[2]), s, a), (name + "_l", (-c[0], c[1], c[2]), s,
                                                  (a[0], -a[1], -a[2]))]
    skin = [("cranium_skin", (0, 8, 28), (76, 96, 86)),
            ("face_skin", (0, -38, -34), (62, 52, 60)),
            *sym("cheek", (34, -26, -64), (16, 22, 32)),
            ("jaw_skin", (0, -40, -88), (54, 44, 24)),
            ("chin_skin", (0, -62, -88), (30, 26, 22)),
            ("nose", (0, -88, -25), (12, 13, 24), (-18, 0, 0)),
            *sym("ear", (76, 10, -5), (8, 15, 25), (0, 0, 10))]
    bones = [("cranium_bone", (0, 8, 31), (70, 90, 78)),
             ("face_bone", (0, -46, -26), (50, 38, 40)),
             *sym("zygoma", (43, -30, -24), (6, 26, 8), (0, 0, -12)),
             ("chin_bone", (0, -72, -96), (18, 8, 10)),
             *sym("mandible_body", (26, -49, -92), (6, 25, 8), (0, 0, -33.7)),
             *sym("mandible_ramus", (34, -26, -66), (5, 10, 22))]
    cavity = [("cranial_cavity", (0, 10, 33), (64, 84, 70)),
              *sym("orbit", (29, -56, -16), (13, 13, 13)),
              *sym("maxillary_sinus", (21, -50, -44), (10, 13, 10)),
              ("nasal_cavity", (0, -60, -34), (7, 20, 18))]
    air = [*sym("maxillary_sinus_air", (21, -50, -44), (10, 13, 10)),
           ("nasal_cavity_air", (0, -60, -34), (7, 20, 18))]
    teeth = []
    for arch, z in (("upper", -68.0), ("lower", -78.0)):
        for k in range(6):
            x = 3.5 + 5.2 * k
            y = -76.0 + 0.036 * x * x
            yaw = np.rad2deg(np.arctan(2 * 0.036 * x))
            teeth += [(f"tooth_{arch}_{k}_r", (x, y, z), (2.4, 3.0, 4.4), (0, 0, yaw)),
                      (f"tooth_{arch}_{k}_l", (-x, y, z), (2.4, 3.0, 4.4), (0, 0, -yaw))]
    groups = [
        (soft, skin),                                                          # 0: skin (outer)
        (bone, bones),                                                         # 1: bone
        (-bone, cavity),                                                       # 2: bone removed
        (-soft, air),                                                          # 3: air spaces
        (TISSUES["grey_matter"] - soft, [("grey_matter", (0, 10, 36), (60, 80, 64))]),
        (TISSUES["white_matter"] - TISSUES["grey_matter"],
         [("white_matter", (0, 10, 40), (47, 66, 50))]),
        (TISSUES["csf"] - TISSUES["white_matter"],
         sym("ventricle", (10, 6, 45), (6, 28, 11), (0, 10, 0))),
        (TISSUES["fat"] - soft, sym("orbital_fat", (29, -56, -16), (13, 13, 13))),
        (soft - TISSUES["fat"], sym("eye", (29, -58, -16), (9.5, 9.5, 9.5))),
    ] + [(TISSUES["teeth"] - soft, [t]) for t in teeth]
    return make_phantom(groups, outer_group=0)


def _intervals(xp, o, d, centres, semi, rots):
    """Entry/exit parameters of rays o + τd in every ellipsoid.

    Args:
      o, d: [R, 3] ray origins and directions (any length).
      centres, semi: [E, 3]; rots: [E, 3, 3].

    Returns:
      (t_in [E, R], t_out [E, R], hit [E, R] bool); τ in units of |d|.
    """
    m = rots / semi[:, None, :]  # [E, 3, 3]: local = (x − c) @ m_e
    m_flat = xp.reshape(xp.transpose(m, (1, 2, 0)), (3, -1))  # [3, 3E], column j·E + e
    c_loc = xp.einsum("ek,ekj->je", centres, m)  # [3, E]
    n_e = centres.shape[0]
    qo = xp.reshape(m_flat.T @ o.T, (3, n_e, o.shape[0])) - c_loc[:, :, None]  # [3, E, R]
    dd = xp.reshape(m_flat.T @ d.T, (3, n_e, d.shape[0]))
    q0, q1, q2 = qo[0], qo[1], qo[2]
    d0, d1, d2 = dd[0], dd[1], dd[2]
    a = d0 * d0 + d1 * d1 + d2 * d2
    t0 = -(q0 * d0 + q1 * d1 + q2 * d2) / a
    p0, p1, p2 = q0 + t0 * d0, q1 + t0 * d1, q2 + t0 * d2  # closest approach, unit-sphere coords
    disc = 1.0 - (p0 * p0 + p1 * p1 + p2 * p2)
    half = xp.sqrt(xp.maximum(disc, 0.0) / a)
    return t0 - half, t0 + half, disc > 0


def _sorting_network(n: int) -> list[tuple[int, int]]:
    """Comparators (i, j), i < j, of Batcher's merge-exchange sort of n keys (Knuth, Algorithm 5.2.2M)."""
    if n < 2:
        return []
    t = (n - 1).bit_length()
    pairs = []
    p = 1 << (t - 1)
    while p > 0:
        q, r, d = 1 << (t - 1), 0, p
        while True:
            pairs += [(i, i + d) for i in range(n - d) if i & p == r]
            if q == p:
                break
            d, q, r = q - p, q // 2, p
        p //= 2
    return pairs


def _union_length(s, e, valid):
    """Length of the union of intervals [s, e] given as lists of K arrays [R].

    The intervals are sorted by start with a fixed sorting network (cheap for small K, no data-
    dependent control flow), then swept: covered = Σ_i max(0, e_i − max(s_i, max_{j<i} e_j)).
    Invalid intervals become [big, big] and sort to the end, contributing 0.

    Args:
      s, e, valid: lists of K arrays [R] (starts, ends, masks).

    Returns:
      [R] total covered length.
    """
    big = jnp.asarray(jnp.finfo(s[0].dtype).max, s[0].dtype)
    s = [jnp.where(v, a, big) for a, v in zip(s, valid, strict=True)]
    e = [jnp.where(v, b, big) for b, v in zip(e, valid, strict=True)]
    for i, j in _sorting_network(len(s)):
        swap = s[j] < s[i]
        s[i], s[j] = jnp.where(swap, s[j], s[i]), jnp.where(swap, s[i], s[j])
        e[i], e[j] = jnp.where(swap, e[j], e[i]), jnp.where(swap, e[i], e[j])
    total = e[0] - s[0]
    reach = e[0]
    for si, ei in zip(s[1:], e[1:], strict=True):
        total = total + jnp.maximum(ei - jnp.maximum(si, reach), 0.0)
        reach = jnp.maximum(reach, ei)
    return total


def project_rays(phantom: Phantom, origins: jax.Array, dirs: jax.Array) -> jax.Array:
    """Exact line integrals ∫ f(o + τd) dτ over whole lines (closed-form chords).

    Args:
      phantom: the phantom.
      origins: [R, 3] float32 ray points, mm.
      dirs: [R, 3] float32 unit directions.

    Returns:
      [R] float32 line integrals (dimensionless: 1/mm × mm).
    """
    # re-base each origin to the point of the line closest to the CT origin (float32 accuracy)
    o = origins - jnp.sum(origins * dirs, -1, keepdims=True) * dirs
    t_in, t_out, hit = _intervals(jnp, o, dirs, phantom.centres, phantom.semi_axes,
                                  phantom.rotations)
    single = [g[0] for g in phantom.groups if len(g) == 1]
    single_rho = jnp.stack([phantom.densities[gi] for gi, g in enumerate(phantom.groups)
                            if len(g) == 1]) if single else None
    total = jnp.zeros(o.shape[0], o.dtype)
    if single:
        idx = np.asarray(single)
        chord = jnp.where(hit[idx], t_out[idx] - t_in[idx], 0.0)
        total = total + single_rho @ chord
    for gi, g in enumerate(phantom.groups):
        if len(g) > 1:
            total = total + phantom.densities[gi] * _union_length(
                [t_in[m] for m in g], [t_out[m] for m in g], [hit[m] for m in g])
    return total


@jax.jit
def _project_view(phantom: Phantom, geom: XrayGeometry, angle: jax.Array) -> jax.Array:
    o, d = xray_rays(geom, angle)
    nv, nu = geom.n_detector
    return project_rays(phantom, o.reshape(-1, 3), d.reshape(-1, 3)).reshape(nv, nu)


def project_phantom(phantom: Phantom, geometry: XrayGeometry) -> np.ndarray:
    """Exact projections (line integrals) of the phantom for every view of a geometry.

    Args:
      phantom: the phantom.
      geometry: cone- or parallel-beam geometry (rays from :func:`insideout_jax.cameras.xray_rays`).

    Returns:
      [V, nv, nu] float32 line integrals −ln(I/I0), in the order of the geometry's views.
    """
    if not isinstance(geometry, XrayGeometry):
        raise ValueError(f"geometry must be an XrayGeometry, got {type(geometry).__name__}")
    return np.stack([np.asarray(_project_view(phantom, geometry, jnp.asarray(a, jnp.float32)))
                     for a in np.asarray(geometry.views)])


def phantom_density(phantom: Phantom, points: jax.Array) -> jax.Array:
    """Density at points (direct evaluation of the group unions).

    Args:
      points: [..., 3] float32 mm.

    Returns:
      [...] float32 attenuation, 1/mm.
    """
    x = jnp.asarray(points, jnp.float32)
    u = jnp.einsum("...ek,ekj->...ej", x[..., None, :] - phantom.centres, phantom.rotations)
    inside = jnp.sum((u / phantom.semi_axes) ** 2, -1) <= 1.0
    out = jnp.zeros(x.shape[:-1], jnp.float32)
    for gi, g in enumerate(phantom.groups):
        out = out + phantom.densities[gi] * jnp.any(inside[..., np.asarray(g)], -1)
    return out


def _aabb(phantom: Phantom, k: int) -> tuple[np.ndarray, np.ndarray]:
    c = np.asarray(phantom.centres[k], np.float64)
    half = np.sqrt(np.sum((np.asarray(phantom.rotations[k], np.float64)
                           * np.asarray(phantom.semi_axes[k], np.float64)) ** 2, axis=1))
    return c - half, c + half


def phantom_volume(phantom: Phantom, shape_zyx, spacing_zyx, origin_xyz, *,
                   supersample: int = 2) -> np.ndarray:
    """Exact density averaged over k³ regular sub-samples of every voxel.

    Each sub-sample row along x is intersected with every ellipsoid analytically (closed-form
    interval), so the cost scales with the ellipsoids' bounding boxes, not with E × voxels.

    Args:
      shape_zyx: (nz, ny, nx) voxels.
      spacing_zyx: (dz, dy, dx) mm.
      origin_xyz: (x, y, z) mm, centre of voxel [0, 0, 0].
      supersample: k ≥ 1 sub-samples per axis (1 = the density at voxel centres).

    Returns:
      [nz, ny, nx] float32 attenuation, 1/mm.
    """
    shape = tuple(int(v) for v in np.asarray(shape_zyx).ravel())
    if len(shape) != 3 or min(shape) <= 0:
        raise ValueError(f"shape_zyx must be 3 positive integers, got {shape_zyx}")
    spacing = np.asarray(spacing_zyx, np.float64).ravel()
    origin = np.asarray(origin_xyz, np.float64).ravel()
    if spacing.shape != (3,) or np.any(spacing <= 0):
        raise ValueError(f"spacing_zyx must be 3 positive numbers (mm), got {spacing_zyx}")
    if origin.shape != (3,) or not np.all(np.isfinite(origin)):
        raise ValueError(f"origin_xyz must be 3 finite numbers (mm), got {origin_xyz}")
    k = int(supersample)
    if k < 1:
        raise ValueError(f"supersample must be ≥ 1, got {supersample}")
    sp_xyz, n_xyz = spacing[::-1], np.asarray(shape[::-1])
    sub0 = origin + (0.5 / k - 0.5) * sp_xyz  # first sub-sample position per axis (x, y, z)
    step = sp_xyz / k
    cs, ss, rs = (np.asarray(a, np.float64) for a in (phantom.centres, phantom.semi_axes,
                                                       phantom.rotations))
    vol = np.zeros(shape, np.float64)
    for gi, g in enumerate(phantom.groups):
        boxes = [_aabb(phantom, m) for m in g]
        lo = np.min([b[0] for b in boxes], 0)
        hi = np.max([b[1] for b in boxes], 0)
        v0 = np.clip(np.floor((lo - origin) / sp_xyz + 0.5).astype(int), 0, n_xyz)  # voxel range
        v1 = np.clip(np.ceil((hi - origin) / sp_xyz + 0.5).astype(int), 0, n_xyz)
        if np.any(v1 <= v0):
            continue
        n_sub = (v1 - v0) * k
        axes = [sub0[a] + (v0[a] * k + np.arange(n_sub[a])) * step[a] for a in range(3)]
        mask = np.zeros(n_sub[::-1], bool)  # [z, y, x] sub-samples
        for m in g:
            zz, yy = np.meshgrid(axes[2], axes[1], indexing="ij")
            o = np.stack([np.zeros(zz.size), yy.ravel(), zz.ravel()], -1)
            d = np.tile([1.0, 0.0, 0.0], (zz.size, 1))
            t_in, t_out, hit = _intervals(np, o, d, cs[m:m + 1], ss[m:m + 1], rs[m:m + 1])
            t_in = np.where(hit[0], t_in[0], np.inf).reshape(zz.shape)
            t_out = np.where(hit[0], t_out[0], -np.inf).reshape(zz.shape)
            rows = np.nonzero(t_out >= t_in)
            x = axes[0]
            mask[rows] |= (x >= t_in[rows][:, None]) & (x <= t_out[rows][:, None])
        nz, ny, nx = (v1 - v0)[::-1]
        frac = mask.reshape(nz, k, ny, k, nx, k).mean(axis=(1, 3, 5))
        vol[v0[2]:v1[2], v0[1]:v1[1], v0[0]:v1[0]] += float(phantom.densities[gi]) * frac
    return vol.astype(np.float32)


def phantom_surface_points(phantom: Phantom, n: int, *, seed: int = 0
                           ) -> tuple[np.ndarray, np.ndarray]:
    """Points uniformly distributed (by area) on the outer surface, with outward normals.

    The outer surface is the boundary of the union of the outer group: points on a member's
    surface that lie inside another member are discarded.

    Args:
      n: number of points.
      seed: random seed (deterministic output).

    Returns:
      points: [n, 3] float32 mm; normals: [n, 3] float32 unit outward normals.
    """
    if int(n) <= 0:
        raise ValueError(f"n must be positive, got {n}")
    rng = np.random.default_rng(seed)
    members = np.asarray(phantom.groups[phantom.outer_group])
    cs, ss, rs = (np.asarray(a, np.float64)[members] for a in (phantom.centres,
                                                               phantom.semi_axes,
                                                               phantom.rotations))
    # approximate areas (Knud Thomsen) to share the samples between members
    p = 1.6075
    a, b, c = ss[:, 0] ** p, ss[:, 1] ** p, ss[:, 2] ** p
    area = 4 * np.pi * ((a * b + a * c + b * c) / 3) ** (1 / p)
    pts_all, nrm_all = [], []
    total = 0
    m_draw = 3 * int(n)
    while total < n:
        counts = rng.multinomial(m_draw, area / area.sum())
        for k, cnt in enumerate(counts):
            u = rng.normal(size=(cnt, 3))
            u /= np.linalg.norm(u, axis=1, keepdims=True)
            g = np.linalg.norm(u / ss[k], axis=1)  # area element of the map sphere → ellipsoid
            u = u[rng.random(cnt) < g / g.max()]
            x = cs[k] + (u * ss[k]) @ rs[k].T
            nrm = (u / ss[k]) @ rs[k].T
            nrm /= np.linalg.norm(nrm, axis=1, keepdims=True)
            loc = np.einsum("nek,ekj->nej", x[:, None, :] - cs[None], rs) / ss
            r2 = np.sum(loc ** 2, -1)
            r2[:, k] = np.inf
            keep = np.all(r2 > 1.0, axis=1)
            pts_all.append(x[keep]), nrm_all.append(nrm[keep])
            total += int(keep.sum())
    pts, nrm = np.concatenate(pts_all), np.concatenate(nrm_all)
    order = rng.permutation(len(pts))[: int(n)]
    return pts[order].astype(np.float32), nrm[order].astype(np.float32)
