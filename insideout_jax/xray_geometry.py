"""X-ray scanner geometry: the circular cone/parallel beam and general per-view (C-arm) poses.

Convention (TIGRE / R²-Gaussian, all lengths mm, angles radians). A view has an orthonormal frame
(e_r, e_u, e_v) with e_r × e_u = e_v and an isocentre ``iso`` (CT frame) on its central ray:

- source S = iso + DSO·e_r (cone beam);
- detector centre D = iso + (DSO − DSD)·e_r;
- detector axes e_u (columns) and e_v (rows); the detector plane is perpendicular to e_r;
- centre of detector pixel (row i, column j) = D + (j − (nu−1)/2 + ou/du)·du·e_u
  + (i − (nv−1)/2 + ov/dv)·dv·e_v, with (ov, ou) the view's detector offset.

**Circular scan** (``poses=None``): z is the rotation axis and view angle θ has
e_r = (cos θ, sin θ, 0), e_u = (−sin θ, cos θ, 0), e_v = (0, 0, 1), iso = −offset_origin (a CT-frame
point p sits at p + offset_origin in the scanner frame) and the shared ``offset_detector``.

**General poses** (``poses`` [V, 5, 3], e.g. a C-arm): per view the rows e_r, e_u, e_v, iso and
(ov, ou, 0); the circular form is the special case :func:`circular_poses`. A 3×4 projection matrix
(:func:`projection_matrices`, :func:`geometry_from_projection_matrices`) maps a homogeneous CT-frame
point to w·(j, i, 1) with w = (S − p)·e_r > 0 the depth along the central ray.

Cone beam: the ray of a pixel runs from S through the pixel centre. Parallel beam: every ray has
direction −e_r and passes through the pixel centre of the same detector grid placed at the
isocentre (D = iso); it is the DSO → ∞ limit of the cone beam with DSD − DSO fixed. Ray origins are
returned in the CT frame and directions are unit vectors; a line integral is ∫ f(o + τ·d) dτ over
the whole line (the object lies between source and detector).

Detector pixel coordinates are returned as (column, row) = (j, i), in pixels, with pixel centres at
integer values (as array indices), i.e. ``uv[..., 0]`` indexes u / columns.

A *view* argument below is either a scalar angle θ (circular geometries) or one [5, 3] pose; use
``geometry.views`` (or :func:`view_params`) to get the right one for each view.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

__all__ = [
    "XrayGeometry", "make_xray_geometry", "xray_frame", "view_frame", "view_params", "circular_poses",
    "xray_source", "xray_rays", "xray_project", "xray_project_jacobian", "xray_pixel_centers",
    "carm_poses", "carm_geometry", "projection_matrices", "geometry_from_projection_matrices",
]


def _finite_array(x, shape, name) -> np.ndarray:
    a = np.asarray(x, dtype=np.float64)
    if a.shape != shape:
        raise ValueError(f"{name} must have shape {shape}, got {a.shape}")
    if not np.all(np.isfinite(a)):
        raise ValueError(f"{name} must be finite, got {a}")
    return a


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class XrayGeometry:
    """Cone- or parallel-beam scanner geometry (see the module docstring for the convention).

    Attributes:
      dso: [] float32 source → isocentre distance, mm (unused in parallel mode).
      dsd: [] float32 source → detector distance, mm (unused in parallel mode).
      d_detector: [2] float32 pixel size (dv, du), mm.
      offset_detector: [2] float32 detector offset (ov, ou), mm (circular scans; zero with poses).
      offset_origin: [3] float32 object offset (x, y, z), mm (circular scans; zero with poses).
      angles: [V] float32 view angles θ, radians; with ``poses`` the azimuth of each e_r about z
        (informational: the poses define the views).
      mode: "cone" or "parallel" (static).
      n_detector: (nv, nu) detector rows and columns (static).
      poses: None (circular scan) or [V, 5, 3] float32 per-view (e_r, e_u, e_v, iso, (ov, ou, 0)).
    """

    dso: jax.Array
    dsd: jax.Array
    d_detector: jax.Array
    offset_detector: jax.Array
    offset_origin: jax.Array
    angles: jax.Array
    mode: str = dataclasses.field(metadata=dict(static=True))
    n_detector: tuple = dataclasses.field(metadata=dict(static=True))
    poses: jax.Array | None = None

    @property
    def n_views(self) -> int:
        return self.angles.shape[-1]

    @property
    def views(self) -> jax.Array:
        """[V] angles (circular) or [V, 5, 3] poses: one view argument per view."""
        return self.angles if self.poses is None else self.poses

    def select(self, idx) -> XrayGeometry:
        """The geometry of views ``idx`` (int indices or a boolean mask)."""
        idx = np.asarray(idx)
        return self.replace(angles=self.angles[idx],
                            poses=None if self.poses is None else self.poses[idx])

    def replace(self, **kw) -> XrayGeometry:
        return dataclasses.replace(self, **kw)


def _check_poses(poses, n_views=None) -> np.ndarray:
    p = np.asarray(poses, np.float64)
    if p.ndim != 3 or p.shape[1:] != (5, 3) or p.shape[0] == 0:
        raise ValueError(f"poses must have shape [V, 5, 3] (rows e_r, e_u, e_v, iso, (ov, ou, 0)), got {p.shape}")
    if not np.all(np.isfinite(p)):
        raise ValueError("poses must be finite")
    frames = p[:, :3]
    gram = np.einsum("vij,vkj->vik", frames, frames)
    bad = np.abs(gram - np.eye(3)).max(axis=(1, 2)) > 1e-4
    handed = np.abs(np.cross(p[:, 0], p[:, 1]) - p[:, 2]).max(axis=1) > 1e-4
    if bad.any() or handed.any():
        v = int(np.flatnonzero(bad | handed)[0])
        raise ValueError(f"poses[{v}]: rows e_r, e_u, e_v must be orthonormal with e_r × e_u = e_v "
                         f"(a mirrored detector: flip the projection's columns and negate e_u), got {p[v, :3]}")
    if np.abs(p[:, 4, 2]).max() > 0:
        raise ValueError("poses[:, 4] is the detector offset (ov, ou, 0): its third entry must be 0")
    return p


def make_xray_geometry(*, mode: str, n_detector, d_detector, angles=None, dso: float | None = None,
                       dsd: float | None = None, offset_detector=(0.0, 0.0),
                       offset_origin=(0.0, 0.0, 0.0), poses=None) -> XrayGeometry:
    """Validated :class:`XrayGeometry`: a circular scan (``angles``) or general views (``poses``).

    Raises:
      ValueError: naming the field, for an unknown mode, non-positive DSO/DSD or pixel sizes,
        DSD ≤ DSO, a detector size that is not two positive integers, non-finite values, poses
        that are not orthonormal right-handed frames, or poses together with angles or offsets.
    """
    if mode not in ("cone", "parallel"):
        raise ValueError(f"mode must be 'cone' or 'parallel', got {mode!r}")
    nd = tuple(int(v) for v in np.asarray(n_detector).ravel())
    if len(nd) != 2 or min(nd) <= 0 or not np.allclose(np.asarray(n_detector, float), nd):
        raise ValueError(f"n_detector must be two positive integers [nv, nu], got {n_detector}")
    dd = _finite_array(d_detector, (2,), "d_detector")
    if np.any(dd <= 0):
        raise ValueError(f"d_detector must be positive [dv, du] in mm, got {dd}")
    od = _finite_array(offset_detector, (2,), "offset_detector")
    oo = _finite_array(offset_origin, (3,), "offset_origin")
    if poses is not None:
        if angles is not None:
            raise ValueError("give either angles (circular scan) or poses (general views), not both")
        if np.any(od != 0) or np.any(oo != 0):
            raise ValueError("with poses, the detector offset and isocentre are per view (poses rows 3"
                             " and 4): offset_detector and offset_origin must stay zero")
        pz = _check_poses(poses)
        ang = np.arctan2(pz[:, 0, 1], pz[:, 0, 0])
    else:
        if angles is None:
            raise ValueError("a geometry needs angles (circular scan) or poses (general views)")
        ang = np.asarray(angles, np.float64)
        if ang.ndim != 1 or ang.size == 0 or not np.all(np.isfinite(ang)):
            raise ValueError(f"angles must be a non-empty 1-D list of finite radians, got shape {ang.shape}")
    if mode == "cone":
        if dso is None or dsd is None:
            raise ValueError("cone beam needs DSO and DSD (mm)")
        if not (np.isfinite(dso) and dso > 0):
            raise ValueError(f"DSO must be positive (mm), got {dso}")
        if not (np.isfinite(dsd) and dsd > dso):
            raise ValueError("DSD must be larger than DSO (the detector lies beyond the axis), got"
                             f" DSD={dsd}, DSO={dso}")
    dso_v = 0.0 if dso is None else float(dso)
    dsd_v = 0.0 if dsd is None else float(dsd)
    f32 = lambda v: jnp.asarray(v, jnp.float32)  # noqa: E731
    return XrayGeometry(f32(dso_v), f32(dsd_v), f32(dd), f32(od), f32(oo), f32(ang), mode, nd,
                        None if poses is None else f32(pz))


def xray_frame(angle):
    """(e_r, e_u, e_v) of view angle θ: axis → source, detector columns, detector rows (+z)."""
    c, s = jnp.cos(angle), jnp.sin(angle)
    z = jnp.zeros_like(c)
    e_r = jnp.stack([c, s, z], -1)  # axis → source
    e_u = jnp.stack([-s, c, z], -1)
    e_v = jnp.stack([z, z, jnp.ones_like(c)], -1)
    return e_r, e_u, e_v


def view_frame(geom: XrayGeometry, view) -> tuple:
    """(e_r, e_u, e_v, iso, ov, ou) of one view: a scalar angle or a [5, 3] pose."""
    view = jnp.asarray(view)
    if view.ndim == 0:
        e_r, e_u, e_v = xray_frame(view)
        return (e_r, e_u, e_v, -geom.offset_origin, geom.offset_detector[0], geom.offset_detector[1])
    if view.shape != (5, 3):
        raise ValueError(f"a view is an angle or a [5, 3] pose, got shape {view.shape}")
    return view[0], view[1], view[2], view[3], view[4, 0], view[4, 1]


def view_params(geometry: XrayGeometry, views=None) -> jax.Array:
    """[V] angles or [V, 5, 3] poses of the selected views: None (all), int indices, float angles
    (circular geometries) or [V, 5, 3] poses."""
    if views is None:
        return geometry.views
    v = views if isinstance(views, jax.Array) else np.asarray(views)
    if jnp.issubdtype(v.dtype, jnp.integer):
        if v.ndim > 1:
            raise ValueError(f"views must be a 1-D list of view indices, got shape {v.shape}")
        return geometry.views[jnp.atleast_1d(jnp.asarray(v))]
    if not jnp.issubdtype(v.dtype, jnp.floating):
        raise ValueError(f"views must be integer indices, float angles (rad) or poses, got dtype {v.dtype}")
    if v.ndim == 3 and v.shape[1:] == (5, 3):
        return jnp.asarray(v, jnp.float32)
    if geometry.poses is not None:
        raise ValueError("this geometry's views are poses: select them by index or pass [V, 5, 3] poses, not angles")
    if v.ndim > 1:
        raise ValueError(f"views must be a 1-D list of view indices or angles, got shape {v.shape}")
    return jnp.atleast_1d(jnp.asarray(v, jnp.float32))


def circular_poses(geometry: XrayGeometry) -> np.ndarray:
    """[V, 5, 3] float64 poses of the views of any geometry (the circular scan written as poses)."""
    if geometry.poses is not None:
        return np.asarray(geometry.poses, np.float64)
    a = np.asarray(geometry.angles, np.float64)
    c, s, z = np.cos(a), np.sin(a), np.zeros_like(a)
    iso = np.broadcast_to(-np.asarray(geometry.offset_origin, np.float64), (a.size, 3))
    od = np.asarray(geometry.offset_detector, np.float64)
    off = np.broadcast_to(np.array([od[0], od[1], 0.0]), (a.size, 3))
    return np.stack([np.stack([c, s, z], -1), np.stack([-s, c, z], -1), np.stack([z, z, z + 1], -1),
                     iso, off], axis=1)


def xray_source(geom: XrayGeometry, view) -> jax.Array:
    """[3] source position in the CT frame (cone beam) of one view."""
    e_r, _, _, iso, _, _ = view_frame(geom, view)
    return iso + geom.dso * e_r


def xray_pixel_centers(geom: XrayGeometry, view) -> jax.Array:
    """[nv, nu, 3] detector pixel centres in the CT frame of one view."""
    nv, nu = geom.n_detector
    dv, du = geom.d_detector[0], geom.d_detector[1]
    e_r, e_u, e_v, iso, ov, ou = view_frame(geom, view)
    centre = iso + ((geom.dso - geom.dsd) * e_r if geom.mode == "cone" else 0.0)
    cu = (jnp.arange(nu, dtype=e_r.dtype) - (nu - 1) / 2) * du + ou
    cv = (jnp.arange(nv, dtype=e_r.dtype) - (nv - 1) / 2) * dv + ov
    return centre + cu[None, :, None] * e_u + cv[:, None, None] * e_v


def xray_rays(geom: XrayGeometry, view) -> tuple[jax.Array, jax.Array]:
    """Rays of every detector pixel of one view.

    Returns:
      origins: [nv, nu, 3] ray origins in the CT frame (the source for cone beam; for parallel
        beam the pixel centre moved back by max(DSO, 1e4 mm) towards the source side).
      dirs: [nv, nu, 3] unit directions pointing from the source side to the detector.
    """
    pix = xray_pixel_centers(geom, view)
    e_r = view_frame(geom, view)[0]
    if geom.mode == "cone":
        src = xray_source(geom, view)
        d = pix - src
        d = d / jnp.linalg.norm(d, axis=-1, keepdims=True)
        return jnp.broadcast_to(src, pix.shape), d
    back = jnp.maximum(geom.dso, 1e4)
    d = jnp.broadcast_to(-e_r, pix.shape)
    return pix + back * e_r, d


def xray_project(geom: XrayGeometry, view, points: jax.Array) -> tuple[jax.Array, jax.Array]:
    """World (CT frame) points → detector pixel coordinates of one view.

    Args:
      points: [..., 3] mm.

    Returns:
      uv: [..., 2] (column j, row i) in pixels, pixel centres at integers.
      depth: [...] distance from the source along the central ray (cone), or along the beam
        from the isocentre plane (parallel: −((p − iso)·e_r)), mm.
    """
    nv, nu = geom.n_detector
    e_r, e_u, e_v, iso, ov, ou = view_frame(geom, view)
    p = points - iso
    pr, pu, pv = p @ e_r, p @ e_u, p @ e_v
    if geom.mode == "cone":
        depth = geom.dso - pr
        mag = geom.dsd / depth
    else:
        depth = -pr
        mag = jnp.ones_like(pr)
    dv, du = geom.d_detector[0], geom.d_detector[1]
    j = (mag * pu - ou) / du + (nu - 1) / 2
    i = (mag * pv - ov) / dv + (nv - 1) / 2
    return jnp.stack([j, i], axis=-1), depth


def xray_project_jacobian(geom: XrayGeometry, view, points: jax.Array) -> jax.Array:
    """Jacobian ∂(j, i)/∂p of :func:`xray_project`, closed form.

    Args:
      points: [..., 3] mm.

    Returns:
      [..., 2, 3] pixels per mm.
    """
    e_r, e_u, e_v, iso, _, _ = view_frame(geom, view)
    p = points - iso
    dv, du = geom.d_detector[0], geom.d_detector[1]
    if geom.mode == "cone":
        depth = geom.dso - p @ e_r
        mag = geom.dsd / depth
        pu = p @ e_u
        pv = p @ e_v
        # ∂(M·pu)/∂p = M e_u + pu · ∂M/∂p, with ∂M/∂p = DSD/depth² · e_r
        dm = (geom.dsd / depth**2)[..., None] * e_r
        row_j = mag[..., None] * e_u + pu[..., None] * dm
        row_i = mag[..., None] * e_v + pv[..., None] * dm
    else:
        shape = points.shape[:-1] + (3,)
        row_j = jnp.broadcast_to(e_u, shape)
        row_i = jnp.broadcast_to(e_v, shape)
    return jnp.stack([row_j / du, row_i / dv], axis=-2)


# ----------------------------------------------------------------------------------------------
# C-arm views and projection matrices
# ----------------------------------------------------------------------------------------------


def carm_poses(primary_deg, secondary_deg=0.0, *, isocentre=(0.0, 0.0, 0.0)) -> np.ndarray:
    """[V, 5, 3] poses of C-arm views: the source at azimuth ``primary`` about z (0° = +x, the
    lateral view of the seed's convention; 90° = +y, antero-posterior), then tilted by
    ``secondary`` towards +z about the detector's column axis e_u (cranial/caudal).

    e_r = cos β·e_r(α) + sin β·z, e_u = e_u(α), e_v = e_r × e_u; iso = ``isocentre``; no offset.
    """
    a = np.deg2rad(np.atleast_1d(np.asarray(primary_deg, np.float64)))
    b = np.deg2rad(np.broadcast_to(np.asarray(secondary_deg, np.float64), a.shape))
    c, s, z = np.cos(a), np.sin(a), np.zeros_like(a)
    er0, eu, ev0 = np.stack([c, s, z], -1), np.stack([-s, c, z], -1), np.stack([z, z, z + 1], -1)
    er = np.cos(b)[:, None] * er0 + np.sin(b)[:, None] * ev0
    ev = np.cross(er, eu)
    iso = np.broadcast_to(_finite_array(isocentre, (3,), "isocentre"), er.shape)
    return np.stack([er, eu, ev, iso, np.zeros_like(er)], axis=1)


def carm_geometry(primary_deg, secondary_deg=0.0, *, dsd: float = 1124.0, dso: float = 750.0,
                  n_detector=(976, 976), pixel_mm: float, isocentre=(0.0, 0.0, 0.0)) -> XrayGeometry:
    """Cone-beam C-arm views (:func:`carm_poses`) with a square detector of ``pixel_mm`` pixels.

    The defaults are RadGS-Reg's simulator (976², 1124 mm source–detector); its DSO is not
    published, 750 mm is a typical C-arm's (SEED_SYSTEMS §1.3).
    """
    return make_xray_geometry(mode="cone", n_detector=n_detector, d_detector=(pixel_mm, pixel_mm),
                              dso=dso, dsd=dsd, poses=carm_poses(primary_deg, secondary_deg,
                                                                 isocentre=isocentre))


def projection_matrices(geometry: XrayGeometry) -> np.ndarray:
    """[V, 3, 4] float64 cone-beam projection matrices: P·(p, 1) = w·(j, i, 1), w = depth (mm)."""
    if geometry.mode != "cone":
        raise ValueError("projection matrices describe cone-beam views; this geometry is parallel")
    poses = circular_poses(geometry)
    nv, nu = geometry.n_detector
    dv, du = (float(v) for v in np.asarray(geometry.d_detector))
    dso, dsd = float(geometry.dso), float(geometry.dsd)
    out = []
    for er, eu, ev, iso, off in poses:
        src = iso + dso * er
        cu, cv = (nu - 1) / 2 - off[1] / du, (nv - 1) / 2 - off[0] / dv
        m = np.stack([dsd / du * eu - cu * er, dsd / dv * ev - cv * er, -er])
        out.append(np.concatenate([m, -(m @ src)[:, None]], axis=1))
    return np.stack(out)


def geometry_from_projection_matrices(matrices, *, n_detector, d_detector, dso: float,
                                      centre=(0.0, 0.0, 0.0), rtol: float = 1e-3) -> XrayGeometry:
    """A posed cone-beam geometry from [V, 3, 4] projection matrices (any scale per matrix).

    Args:
      matrices: P with P·(p, 1) ∝ (j, i, 1), pixel centres at integer (column j, row i).
      n_detector: (nv, nu); d_detector: (dv, du) mm (the matrices fix DSD/du, not du).
      dso: source → isocentre distance, mm (places iso on each central ray; images do not
        depend on it).
      centre: a CT-frame point in front of every source (sets the sign of each matrix).
      rtol: tolerance on skew, pixel aspect and a common DSD.

    Raises:
      ValueError: naming the view, for skewed pixels, a focal length that disagrees with the
        pixel size or between views, or a mirrored image.
    """
    mats = np.asarray(matrices, np.float64)
    if mats.ndim != 3 or mats.shape[1:] != (3, 4) or not np.all(np.isfinite(mats)):
        raise ValueError(f"projection matrices must be finite with shape [V, 3, 4], got {mats.shape}")
    nv, nu = (int(v) for v in n_detector)
    dv, du = (float(v) for v in _finite_array(d_detector, (2,), "d_detector"))
    c = np.append(_finite_array(centre, (3,), "centre"), 1.0)
    poses, dsds = [], []
    for k, p in enumerate(mats):
        p = p / np.linalg.norm(p[2, :3])
        if p[2] @ c <= 0:
            p = -p
        m = p[:, :3]
        er = -m[2]
        cu, cv = m[0] @ m[2], m[1] @ m[2]
        fu_eu, fv_ev = m[0] - cu * m[2], m[1] - cv * m[2]
        fu, fv = np.linalg.norm(fu_eu), np.linalg.norm(fv_ev)
        eu, ev = fu_eu / fu, fv_ev / fv
        if abs(eu @ ev) > rtol:
            raise ValueError(f"matrix {k}: skewed pixels (e_u·e_v = {eu @ ev:.2e}) are not supported")
        if abs(fu * du - fv * dv) > rtol * fu * du:
            raise ValueError(f"matrix {k}: focal lengths {fu:.6g}, {fv:.6g} px do not match the pixel"
                             f" size (dv, du) = ({dv}, {du}) mm")
        if np.abs(np.cross(er, eu) - ev).max() > 1e-3:
            raise ValueError(f"matrix {k}: the image is mirrored relative to this convention (e_r × e_u"
                             " = −e_v): flip the projections' columns and use j → nu − 1 − j")
        src = -np.linalg.solve(m, p[:, 3])
        off = np.array([((nv - 1) / 2 - cv) * dv, ((nu - 1) / 2 - cu) * du, 0.0])
        poses.append(np.stack([er, eu, ev, src - dso * er, off]))
        dsds.append(fu * du)
    dsd = float(np.mean(dsds))
    if np.ptp(dsds) > rtol * dsd:
        raise ValueError(f"the matrices' source–detector distances differ ({min(dsds):.6g}–{max(dsds):.6g}"
                         " mm); one geometry has one DSD")
    return make_xray_geometry(mode="cone", n_detector=(nv, nu), d_detector=(dv, du), dso=dso, dsd=dsd,
                              poses=np.asarray(poses))
