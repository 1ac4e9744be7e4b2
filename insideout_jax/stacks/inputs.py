"""Inputs of the slice-stack command (``experiments/stack.py``): the stack and its labels from
the command's arguments, and ``--set FIELD=VALUE`` overrides of :class:`StackConfig`."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from insideout_jax.io.importers import load_volume

__all__ = ["config_overrides", "load_input"]


def config_overrides(items) -> dict:
    """{field: value} from FIELD=VALUE strings, typed like StackConfig's defaults."""
    import dataclasses

    from insideout_jax.stacks import StackConfig

    fields = {f.name: f for f in dataclasses.fields(StackConfig)}
    out = {}
    for item in items:
        name, sep, value = item.partition("=")
        if not sep or name not in fields or name in ("n_splats", "iterations", "seed"):
            raise ValueError(f"--set {item!r}: expected FIELD=VALUE with FIELD one of "
                             f"{sorted(set(fields) - {'n_splats', 'iterations', 'seed'})} "
                             "(--splats, --iterations and --seed set the others)")
        kind = type(getattr(StackConfig(), name))
        try:
            out[name] = kind(value)
        except ValueError:
            raise ValueError(f"--set {item!r}: {name} takes a {kind.__name__}") from None
    return out


def load_input(args):
    """(raw [Z, Y, X] float32, spacing_zyx, name, labels [L, Z, Y, X] or None, label names) from
    the parsed arguments of ``experiments/stack.py`` (``frames``, ``volume``, ``dicom``,
    ``spacing``, ``axes``, ``axis_flip``, ``labels``, ``downsample``, ``label_thresholds``)."""
    from insideout_jax.stacks import head_labels, read_frame_folder, read_label_folder
    from insideout_jax.stacks.frames import downsample_inplane

    if args.frames:
        if args.spacing is None:
            raise ValueError("--frames needs --spacing DZ DY DX (image files carry no spacing)")
        st = read_frame_folder(args.frames, spacing_zyx=args.spacing)
        lo, hi = st.value_range
        raw, spacing, name = st.frames * (hi - lo) + lo, tuple(args.spacing), Path(args.frames).name
    else:
        path = args.volume or args.dicom
        recorded = args.dicom or Path(path).with_suffix(".json").is_file()  # the file says what it holds
        vol = load_volume(path, spacing_zyx=args.spacing, axes=args.axes, quantity=None if recorded else "density")
        raw, spacing, name = vol.data, vol.spacing_zyx, Path(path).stem
    for ax in args.axis_flip:
        if ax not in "zyx":
            raise ValueError(f"--axis-flip takes letters of zyx, got {args.axis_flip!r}")
        raw = np.flip(raw, "zyx".index(ax))
    labels, names = None, ()
    if args.labels:
        lp = Path(args.labels)
        if lp.is_dir():
            labels = read_label_folder(lp, raw.shape[0])[None]
        else:
            lv = load_volume(lp, spacing_zyx=spacing, axes=args.axes, quantity="density").data
            for ax in args.axis_flip:
                lv = np.flip(lv, "zyx".index(ax))
            labels = (lv != 0)[None]
        names = (lp.stem,)
        if labels.shape[1:] != raw.shape:
            raise ValueError(f"--labels {lp}: shape {labels.shape[1:]} differs from the stack's {raw.shape}")
    f = int(args.downsample)
    if f < 1:
        raise ValueError(f"--downsample must be >= 1, got {f}")
    if f > 1:
        raw, labels, spacing = downsample_inplane(raw, labels, spacing, f)
        name = f"{name}_ds{f}"
    if args.label_thresholds:
        labels, names = head_labels(raw, bone=args.label_thresholds[0], body=args.label_thresholds[1])
    return np.ascontiguousarray(raw, np.float32), tuple(float(s) for s in spacing), name, labels, names
