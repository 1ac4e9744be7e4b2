"""The CT of the biplanar experiment as attenuation per mm: a CT file or an object folder's CT."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from insideout_jax.data.ctobject import hu_to_attenuation
from insideout_jax.io.importers import load_volume
from insideout_jax.io.volumes import read_volume

__all__ = ["load_attenuation"]


def load_attenuation(ct, object_name, *, repo: Path, spacing=None, quantity=None, offset: float = 0.0,
                     flip_z: bool = False) -> tuple[str, np.ndarray, tuple, tuple]:
    """(name, [nz, ny, nx] float32 attenuation 1/mm, spacing_zyx, origin_xyz).

    ``ct``: a volume file (``spacing`` and ``quantity`` where the file does not record them; HU
    are converted with :func:`~insideout_jax.data.ctobject.hu_to_attenuation` after subtracting
    ``offset``). ``object_name``: ``data/<name>/ct/volume.tif`` (a name or a folder path) — the
    CT the user has, never ``truth/``.

    Raises:
      ValueError: for a quantity that is not attenuation or HU.
    """
    if object_name is not None:
        folder = Path(object_name) if Path(object_name).is_dir() else repo / "data" / object_name
        vol = read_volume(folder / "ct" / "volume.tif")
        name = folder.name
    else:
        vol = load_volume(ct, spacing_zyx=None if spacing is None else tuple(spacing), quantity=quantity)
        name = Path(ct).stem.split("_")[0] if Path(ct).suffix else Path(ct).name
    data = np.asarray(vol.data, np.float32) - np.float32(offset)
    if flip_z:
        data = data[::-1].copy()
    if vol.quantity == "HU":
        data = hu_to_attenuation(data)
    elif vol.quantity != "attenuation":
        raise ValueError(f"the CT holds {vol.quantity!r}: the experiment needs attenuation or HU (--quantity)")
    return name, np.asarray(data, np.float32), tuple(vol.spacing_zyx), tuple(vol.origin_xyz)
