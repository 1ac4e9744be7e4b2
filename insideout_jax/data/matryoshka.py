"""The built-in matryoshka: nested thin wooden shells, the kind of object the InsideOut paper shows.

Four dolls nest inside each other; each doll is the union of a body ellipsoid and a head sphere
(an ellipsoid with equal semi-axes), the three outer ones hollow — the wall is the doll minus the
same union with every semi-axis shortened by the wall thickness (3 mm, 2.5 mm, 2 mm: thin walls
of the 2–4 mm a real matryoshka has) — and the smallest one solid. Each inner doll is the one around
it scaled by 0.7 about that doll's neck, so head sits in head and body in body with air all
around: 2.1 mm at the narrowest (the innermost neck), 3–5 mm at the outer necks, more elsewhere.
It floats in its host (a phantom, not a toy that must stand on its floor).
Everything is a :class:`~insideout_jax.data.phantom.Phantom`, so the projections, the volume and the
outer surface are exact (closed-form chords, the same machinery as the skull), and the photos see
the outer doll's surface through the same procedural texture.

The density is one wood, 0.012 /mm (about 0.6 g/cm³ at 60–70 keV), everywhere in the walls and in
the solid core; air between the shells. CT frame: mm, z up; the outer doll is 120 mm wide, 108 mm
deep and 185 mm tall (z from −105 to +80 mm), so it fits the skull's scanner and photo rings.

Near-symmetric, as real dolls are: the bodies are 10 % flatter front to back than side to side, and
the outer doll's head stands 3 mm forward (−y) of its body's axis, so that no rotation but the
identity maps the object onto itself — the fitting stage has an answer to find, barely.
"""

from __future__ import annotations

import numpy as np

from insideout_jax.data.phantom import Phantom, make_phantom

__all__ = ["matryoshka_phantom", "MATRYOSHKA_WOOD", "MATRYOSHKA_WALLS_MM"]

MATRYOSHKA_WOOD = 0.012
"""Attenuation of the dolls' wood, 1/mm."""
MATRYOSHKA_WALLS_MM = (3.0, 2.5, 2.0)
"""Wall thickness of the three hollow dolls, outermost first (mm)."""

_SCALE = 0.7
# the outer doll: body centre z, body semi-axes (a, b, c); head centre z, head radius
_BODY_Z, _BODY_A, _BODY_B, _BODY_C = -35.0, 60.0, 54.0, 70.0
_HEAD_Z, _HEAD_R = 38.0, 42.0
_FACE_FORWARD = 3.0  # mm: the outer doll's head stands this far forward (−y) of the body's axis


def _neck_z(bz: float, a: float, c: float, hz: float, r: float) -> float:
    """Height of the neck: where the body ellipsoid's and the head sphere's circles of latitude
    have the same radius (a²(1 − ((z − bz)/c)²) = r² − (z − hz)², the root between the two)."""
    # (1 − a²/c²) z² + 2(a² bz/c² − hz) z + (hz² − r² + a² − a² bz²/c²) = 0
    k = a * a / (c * c)
    qa, qb, qc = 1.0 - k, 2.0 * (k * bz - hz), hz * hz - r * r + a * a - k * bz * bz
    roots = np.roots([qa, qb, qc]) if abs(qa) > 1e-12 else np.array([-qc / qb])
    roots = roots[np.isreal(roots)].real
    return float(roots[(roots >= hz - r) & (roots <= bz + c)][0])


def _dolls() -> list:
    """[(body centre, body semi-axes, head centre, head semi-axes)] outermost first; each inner
    doll is its host scaled by ``_SCALE`` about the host's neck centre."""
    dolls = [((0.0, 0.0, _BODY_Z), (_BODY_A, _BODY_B, _BODY_C), (0.0, 0.0, _HEAD_Z), (_HEAD_R,) * 3)]
    for _ in MATRYOSHKA_WALLS_MM:
        (bc, bs, hc, hs) = dolls[-1]
        neck = _neck_z(bc[2], float(np.sqrt(bs[0] * bs[1])), bs[2], hc[2], hs[0])
        nb, nh = tuple(_SCALE * v for v in bs), tuple(_SCALE * v for v in hs)
        dolls.append(((0.0, 0.0, neck + _SCALE * (bc[2] - neck)), nb,
                      (0.0, 0.0, neck + _SCALE * (hc[2] - neck)), nh))
    return dolls


def matryoshka_phantom() -> Phantom:
    """The built-in matryoshka (deterministic; see the module docstring). Group 0 (the outer
    doll's body and head) is the outer surface."""
    groups = []
    dolls = _dolls()
    bc, bs, hc, hs = dolls[0]
    dolls[0] = (bc, bs, (hc[0], hc[1] - _FACE_FORWARD, hc[2]), hs)
    for k, (bc, bs, hc, hs) in enumerate(dolls):
        groups.append((MATRYOSHKA_WOOD, [(f"doll{k}_body", bc, bs), (f"doll{k}_head", hc, hs)]))
        if k < len(MATRYOSHKA_WALLS_MM):  # hollow: the same union, shorter by the wall
            w = MATRYOSHKA_WALLS_MM[k]
            groups.append((-MATRYOSHKA_WOOD,
                           [(f"doll{k}_body_cavity", bc, tuple(np.subtract(bs, w))),
                            (f"doll{k}_head_cavity", hc, tuple(np.subtract(hs, w)))]))
    return make_phantom(groups, outer_group=0)
