"""OME-NGFF 0.4 metadata for the labels we write, checked against the specification's schema.

Why not ome-zarr-py: it pulls in dask, fsspec[s3], aiohttp, requests and
``ome-zarr-models``, whose pydantic pin (<2.13) conflicts with the pydantic napari runs
on; our writer only needs one image-label group with one resolution level.  So the
writer keeps ``zarr`` and builds the attributes here; :func:`validate_labels_attrs`
checks them against the NGFF 0.4 ``image`` (multiscales) and ``label`` (image-label)
JSON schemas (transcribed below, validated with ``jsonschema``) plus the rules the
schemas leave to prose: 2 to 5 axes, 2 or 3 of them space, time first, channel before
space, one scale (then optionally one translation) per dataset with one value per axis.
A writer bug therefore fails before anything is written instead of producing a folder
other OME-Zarr tools cannot read.
"""
from __future__ import annotations

from typing import Any

VERSION = "0.4"
AXES_BY_NDIM = {2: ["y", "x"], 3: ["z", "y", "x"], 4: ["t", "z", "y", "x"], 5: ["t", "c", "z", "y", "x"]}
AXIS_TYPE = {"t": "time", "c": "channel", "z": "space", "y": "space", "x": "space"}

_SCALE = {"type": "object", "required": ["type", "scale"],
          "properties": {"type": {"const": "scale"},
                         "scale": {"type": "array", "minItems": 2, "items": {"type": "number"}}}}
_TRANSLATION = {"type": "object", "required": ["type", "translation"],
                "properties": {"type": {"const": "translation"},
                               "translation": {"type": "array", "minItems": 2, "items": {"type": "number"}}}}
_TRANSFORMS = {"type": "array", "minItems": 1, "maxItems": 2,
               "prefixItems": [_SCALE, _TRANSLATION], "items": False}

#: NGFF 0.4 image.schema (the ``multiscales`` part), as JSON Schema 2020-12.
MULTISCALES_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["multiscales"],
    "properties": {"multiscales": {
        "type": "array", "minItems": 1, "uniqueItems": True,
        "items": {
            "type": "object",
            "required": ["datasets", "axes"],
            "properties": {
                "version": {"const": VERSION},
                "name": {"type": "string"},
                "axes": {"type": "array", "minItems": 2, "maxItems": 5, "items": {
                    "type": "object", "required": ["name"],
                    "properties": {"name": {"type": "string"},
                                   "type": {"type": "string"},
                                   "unit": {"type": "string"}}}},
                "datasets": {"type": "array", "minItems": 1, "items": {
                    "type": "object", "required": ["path", "coordinateTransformations"],
                    "properties": {"path": {"type": "string"},
                                   "coordinateTransformations": _TRANSFORMS}}},
                "coordinateTransformations": _TRANSFORMS,
            },
        },
    }},
}

#: NGFF 0.4 label.schema (``image-label``), as JSON Schema 2020-12.
IMAGE_LABEL_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["image-label"],
    "properties": {"image-label": {
        "type": "object",
        "properties": {
            "version": {"const": VERSION},
            "colors": {"type": "array", "minItems": 1, "items": {
                "type": "object", "required": ["label-value"],
                "properties": {"label-value": {"type": "integer"},
                               "rgba": {"type": "array", "minItems": 4, "maxItems": 4,
                                        "items": {"type": "integer", "minimum": 0, "maximum": 255}}}}},
            "properties": {"type": "array", "minItems": 1, "items": {
                "type": "object", "required": ["label-value"],
                "properties": {"label-value": {"type": "integer"}}}},
            "source": {"type": "object", "properties": {"image": {"type": "string"}}},
        },
    }},
}


def multiscales(name: str, ndim: int, scale: list[float], translate: list[float]) -> list[dict[str, Any]]:
    """One-level ``multiscales`` for an ``ndim`` labels array at dataset path ``0``."""
    axes = AXES_BY_NDIM[ndim]
    transforms: list[dict[str, Any]] = [{"type": "scale", "scale": list(scale)}]
    if any(t != 0.0 for t in translate):
        transforms.append({"type": "translation", "translation": list(translate)})
    return [{"version": VERSION, "name": name,
             "axes": [{"name": a, "type": AXIS_TYPE[a]} for a in axes],
             "datasets": [{"path": "0", "coordinateTransformations": transforms}]}]


def validate_labels_attrs(attrs: dict[str, Any], ndim: int | None = None) -> None:
    """Raise ValueError naming the first way ``attrs`` breaks NGFF 0.4 image + image-label."""
    import jsonschema

    for schema in (MULTISCALES_SCHEMA, IMAGE_LABEL_SCHEMA):
        try:
            jsonschema.Draft202012Validator(schema).validate(attrs)
        except jsonschema.ValidationError as exc:
            where = "/".join(str(p) for p in exc.absolute_path) or "top level"
            raise ValueError(f"NGFF {VERSION} metadata invalid at {where}: {exc.message}") from None
    for ms in attrs["multiscales"]:
        axes = ms["axes"]
        names = [a["name"] for a in axes]
        types = [a.get("type") for a in axes]
        if len(set(names)) != len(names):
            raise ValueError(f"NGFF {VERSION}: axis names repeat: {names}")
        n_space = types.count("space")
        if not 2 <= n_space <= 3 or types[-n_space:] != ["space"] * n_space:
            raise ValueError(f"NGFF {VERSION}: 2 or 3 space axes must come last, got {types}")
        if types.count("time") > 1 or types.count("channel") > 1:
            raise ValueError(f"NGFF {VERSION}: at most one time and one channel axis, got {types}")
        if "time" in types and types.index("time") != 0:
            raise ValueError(f"NGFF {VERSION}: the time axis must be first, got {types}")
        if ndim is not None and len(axes) != ndim:
            raise ValueError(f"NGFF {VERSION}: {len(axes)} axes for a {ndim}-D array")
        for d in ms["datasets"]:
            for t in d["coordinateTransformations"]:
                values = t.get("scale", t.get("translation"))
                if len(values) != len(axes):
                    raise ValueError(f"NGFF {VERSION}: dataset {d['path']!r} {t['type']} has {len(values)} "
                                     f"values for {len(axes)} axes")
