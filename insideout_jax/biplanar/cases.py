"""Biplanar registration cases (RadGS-Reg, SEED_SYSTEMS §1): a bony-structure crop of a CT and
simulated intra-operative AP/lateral X-rays of it under random rigid poses.

Frames. The CT crop lives in the CT frame. The C-arm frame is the world of the intra-operative
views: its isocentre is the crop centre c, and the structure sits at T(p) = R(p − c) + c + t
there, T the (unknown) CT → C-arm pose. Moving the object by T is the same as moving the C-arm
by T⁻¹, so a DRR of the posed CT is the CT's DRR in the views moved by T⁻¹ (exact: no resampling).

Regime (stated in every report): patient-specific — the X-rays are DRRs of the same CT that is
registered (RadGS-Reg's stage P3), of the cropped structure only (its "vertebral-level" crop),
with the acquisition noise model of the pipeline (Poisson photons + read noise).
"""

from __future__ import annotations

import dataclasses

import jax.numpy as jnp
import numpy as np
import scipy.ndimage as ndi
from skimage.filters import threshold_otsu

from insideout_jax.cameras import XrayGeometry, carm_geometry, view_frame
from insideout_jax.data.ctobject import ct_volume_projections
from insideout_jax.data.scanner import detector_noise
from insideout_jax.registration.metrics import mtre
from insideout_jax.registration.pose import invert_pose, pose_matrix, random_poses
from insideout_jax.registration.warp import grid_points, sample_volume

__all__ = ["BiplanarConfig", "StructureCrop", "Case", "structure_crop", "move_view_poses", "move_views", "make_case",
           "field_grid", "centroid", "triangulate_centroid"]


@dataclasses.dataclass(frozen=True)
class BiplanarConfig:
    """Constants of the biplanar experiment (SEED_SYSTEMS §1.3, §1.7; [D] marks our decisions).

    crop_mm / crop_voxel_mm: the structure cube [D] (48–64 mm suggested) and its voxel.
    field_mm / field_voxel_mm: the C-arm-frame reconstruction cube around the isocentre [D]: it
      holds the crop under the training poses (±50 mm per axis and ±20° about the crop centre).
    n_detector, dsd, dso: the C-arm (paper 976², DSD 1124 mm; DSO 750 mm [D]); pixels chosen so the
      detector covers the field at the isocentre plus 20 % [D].
    perturb_deg: AP (90°) and lateral (0°) view perturbations, each axis U(±15°) [S §3.1].
    max_rot_deg, max_trans_mm: poses U[−20°, 20°] × U[−50, 50] mm per axis [S §3.1].
    photons, read_noise: acquisition noise (the pipeline's model).
    """

    crop_mm: float = 64.0
    crop_voxel_mm: float = 2.0
    field_mm: float = 208.0
    field_voxel_mm: float = 4.0
    n_detector: int = 128
    dsd: float = 1124.0
    dso: float = 750.0
    perturb_deg: float = 15.0
    max_rot_deg: float = 20.0
    max_trans_mm: float = 50.0
    photons: float = 1e5
    read_noise: float = 10.0

    @property
    def pixel_mm(self) -> float:
        return 1.2 * self.field_mm * (self.dsd / self.dso) / self.n_detector


@dataclasses.dataclass(frozen=True, eq=False)
class StructureCrop:
    """A cube of attenuation (1/mm) around one bony structure, in the CT frame.

    Attributes:
      data: [n, n, n] float32; spacing_zyx, origin_xyz: its grid (mm).
      centre: [3] the cube's centre (the rotation centre of every pose), mm.
      bone_level: the Otsu level of the crop's positive voxels (bone vs soft tissue), 1/mm.
      targets: [N, 3] bone voxel centres (attenuation > bone_level): the mTRE targets.
    """

    data: np.ndarray
    spacing_zyx: tuple
    origin_xyz: tuple
    centre: np.ndarray
    bone_level: float
    targets: np.ndarray

    @property
    def centroid(self) -> np.ndarray:
        """[3] the crop's attenuation-weighted centroid, mm."""
        return centroid(self.data, self.spacing_zyx, self.origin_xyz)

    @property
    def half_size(self) -> float:
        """Half the cube's side, mm (its voxel count × spacing / 2)."""
        return 0.5 * self.data.shape[0] * self.spacing_zyx[0]

    @property
    def radius(self) -> float:
        """RMS distance of the targets from the centre, mm (rotation ↔ mm scale)."""
        return float(np.sqrt(np.mean(np.sum((self.targets - self.centre) ** 2, -1))))


def _densest_bone_centre(att, spacing_zyx, origin_xyz, crop_mm) -> np.ndarray:
    """Centre (mm) of the crop-sized box holding the most bone (Otsu level of positive voxels)."""
    level = threshold_otsu(att[att > 0])
    sp = np.asarray(spacing_zyx, np.float64)
    size = np.maximum(np.round(crop_mm / sp).astype(int), 1)
    score = ndi.uniform_filter((att > level).astype(np.float32), size=tuple(size), mode="constant")
    k = np.array(np.unravel_index(int(np.argmax(score)), att.shape), np.float64)
    return np.asarray(origin_xyz, np.float64) + (k * sp)[::-1]


def structure_crop(volume, spacing_zyx, origin_xyz=(0.0, 0.0, 0.0), *, cfg: BiplanarConfig,
                   centre=None) -> StructureCrop:
    """The structure of an attenuation volume: a cube resampled (trilinear) to ``crop_voxel_mm``,
    segmented to the bone (Otsu level of the cube's positive voxels) dilated by two voxels inside
    the inscribed sphere, with edges softened over one voxel.

    Args:
      volume: [nz, ny, nx] attenuation, 1/mm (≥ 0 outside the object).
      centre: the cube centre in mm; default: the crop-sized box with the most bone.

    Raises:
      ValueError: for a volume without positive voxels or a crop without bone.
    """
    att = np.asarray(volume, np.float32)
    if att.ndim != 3 or not (att > 0).any():
        raise ValueError(f"the CT must be a 3-D attenuation volume with positive voxels, got shape {att.shape}")
    c = (_densest_bone_centre(att, spacing_zyx, origin_xyz, cfg.crop_mm) if centre is None
         else np.asarray(centre, np.float64))
    n = int(round(cfg.crop_mm / cfg.crop_voxel_mm))
    sp = (cfg.crop_voxel_mm,) * 3
    org = tuple(c - cfg.crop_voxel_mm * (n - 1) / 2)
    pts = grid_points((n, n, n), sp, org)
    data = np.asarray(sample_volume(jnp.asarray(att), pts, spacing_zyx, origin_xyz), np.float32)
    pos = data[data > 0]
    if pos.size < 10:
        raise ValueError(f"the crop around {c.round(1).tolist()} mm holds no object: pass another centre")
    level = float(threshold_otsu(pos))
    bone = data > level
    targets = np.asarray(pts, np.float64)[bone]
    # the structure as a segmentation would give it (RadGS-Reg crops a segmented vertebra): bone
    # dilated by two voxels, inside the inscribed sphere, edges softened over one voxel
    r = np.linalg.norm(np.indices(data.shape) - (n - 1) / 2, axis=0)
    keep = ndi.binary_dilation(bone, iterations=2) & (r <= n / 2 - 1)
    data = (data * ndi.gaussian_filter(keep.astype(np.float32), 1.0)).astype(np.float32)
    return StructureCrop(data, sp, org, c, level, targets)


def field_grid(cfg: BiplanarConfig, centre) -> tuple[tuple, tuple, tuple]:
    """(shape, spacing_zyx, origin_xyz) of the C-arm-frame reconstruction cube around ``centre``."""
    n = int(round(cfg.field_mm / cfg.field_voxel_mm))
    org = tuple(np.asarray(centre, np.float64) - cfg.field_voxel_mm * (n - 1) / 2)
    return (n, n, n), (cfg.field_voxel_mm,) * 3, org


def move_view_poses(poses, rot, b, xp=np):
    """View poses [..., 5, 3] (frame rows, isocentre, detector offsets) moved by the rigid map
    x ↦ rot·x + b: frames rotated, isocentres mapped, offsets unchanged. ``xp``: numpy (float64
    on the host) or jax.numpy (traced)."""
    return xp.concatenate([poses[..., :3, :] @ rot.T, poses[..., 3:4, :] @ rot.T + b, poses[..., 4:, :]], axis=-2)


def move_views(geometry: XrayGeometry, pose, centre) -> XrayGeometry:
    """The posed geometry whose views are moved by the rigid map of ``pose`` about ``centre``."""
    rot, b = (np.asarray(x, np.float64) for x in pose_matrix(jnp.asarray(pose, jnp.float32),
                                                            jnp.asarray(centre, jnp.float32)))
    p = move_view_poses(np.asarray(geometry.poses, np.float64), rot, b)
    return geometry.replace(poses=jnp.asarray(p, jnp.float32))


def _pixel_point(geometry, view, j, i) -> np.ndarray:
    e_r, e_u, e_v, iso, ov, ou = (np.asarray(x, np.float64) for x in view_frame(geometry, view))
    nv, nu = geometry.n_detector
    dv, du = (float(x) for x in np.asarray(geometry.d_detector))
    centre = iso + (float(geometry.dso) - float(geometry.dsd)) * e_r
    return centre + ((j - (nu - 1) / 2) * du + ou) * e_u + ((i - (nv - 1) / 2) * dv + ov) * e_v


def triangulate_centroid(case: Case) -> np.ndarray:
    """[3] mm: the point closest (least squares) to the rays through each X-ray's
    line-integral-weighted centroid pixel (C-arm frame)."""
    a, rhs = np.zeros((3, 3)), np.zeros(3)
    for k, view in enumerate(np.asarray(case.geometry.poses)):
        p = np.maximum(np.asarray(case.projections[k], np.float64), 0.0)
        i, j = np.indices(p.shape)
        jc, ic = (j * p).sum() / p.sum(), (i * p).sum() / p.sum()
        e_r = np.asarray(view[0], np.float64)
        src = np.asarray(view[3], np.float64) + float(case.geometry.dso) * e_r
        d = _pixel_point(case.geometry, view, jc, ic) - src
        d /= np.linalg.norm(d)
        proj = np.eye(3) - np.outer(d, d)
        a += proj
        rhs += proj @ src
    return np.linalg.solve(a, rhs)


def centroid(vol, spacing_zyx, origin_xyz) -> np.ndarray:
    """[3] mm: the attenuation-weighted centroid of a volume (negative values count as 0)."""
    w = np.maximum(np.asarray(vol, np.float64), 0.0)
    pts = np.asarray(grid_points(w.shape, spacing_zyx, origin_xyz), np.float64)
    return (pts * w[..., None]).sum((0, 1, 2)) / w.sum()


@dataclasses.dataclass(frozen=True, eq=False)
class Case:
    """One registration case: the true CT → C-arm pose, the C-arm views and their X-rays.

    ``start`` is the pose every method starts from, computed from the X-rays alone: identity
    rotation and the translation from the CT's centroid to the triangulated one. ``initial_mtre``
    is the error of the identity pose, ``start_mtre`` that of ``start`` (it bins the capture range).
    """

    index: int
    pose: np.ndarray
    geometry: XrayGeometry
    projections: np.ndarray
    initial_mtre: float
    start: np.ndarray
    start_mtre: float


def make_case(crop: StructureCrop, cfg: BiplanarConfig, seed: int, index: int) -> Case:
    """Case ``index`` of the stream ``seed``: pose, AP/lateral views and noisy DRRs."""
    rng = np.random.default_rng([int(seed), int(index)])
    pose = random_poses(rng, 1, max_rot_deg=cfg.max_rot_deg, max_trans_mm=cfg.max_trans_mm)[0]
    d = rng.uniform(-cfg.perturb_deg, cfg.perturb_deg, (2, 2))
    geom = carm_geometry([90.0 + d[0, 0], 0.0 + d[1, 0]], [d[0, 1], d[1, 1]], dsd=cfg.dsd, dso=cfg.dso,
                         n_detector=(cfg.n_detector,) * 2, pixel_mm=cfg.pixel_mm, isocentre=crop.centre)
    seen = move_views(geom, np.asarray(invert_pose(jnp.asarray(pose, jnp.float32))), crop.centre)
    clean = ct_volume_projections(crop.data, crop.spacing_zyx, crop.origin_xyz, seen)
    noisy, _ = detector_noise(clean, photons=cfg.photons, read_noise=cfg.read_noise,
                              seed=int(rng.integers(2**31)))
    ini = float(mtre(np.zeros(6), pose, crop.centre, crop.targets))
    case = Case(int(index), pose, geom, noisy, ini, np.zeros(6), 0.0)
    start = np.concatenate([np.zeros(3), triangulate_centroid(case) - crop.centroid])
    return dataclasses.replace(case, start=start, start_mtre=float(mtre(start, pose, crop.centre, crop.targets)))
