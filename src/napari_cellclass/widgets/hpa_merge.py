"""Seed-002 RGB merge of an HPA set as a magicgui widget.

Each of red, green and blue starts on its own channel (by the HPA reader's
metadata, else by the layer's name), so a freshly opened set is merged without
touching the form; a choice the user made is kept.
"""
from __future__ import annotations

from typing import Any

import napari.layers
import napari.types
from magicgui import magic_factory


def hpa_rgb_merge(
    red: napari.layers.Image,
    green: napari.layers.Image,
    blue: napari.layers.Image,
    yellow: napari.layers.Image | None = None,
) -> napari.types.LayerDataTuple:
    """RGB image of the set: yellow split half into red, half into green (values in [0, 1])."""
    from ..io.hpa_reader import rgb_merge

    rgb = rgb_merge(red.data, green.data, blue.data, None if yellow is None else yellow.data)
    set_id = red.metadata.get("hpa_set_id", "") if hasattr(red, "metadata") else ""
    name = f"{set_id} RGB merge".strip()
    return (rgb, {"name": name, "rgb": True, "metadata": {"hpa_set_id": set_id, "merge": "yellow/2 -> red, green"}}, "image")


def channel_rank(layer: Any, colour: str) -> int:
    """0: the reader says this layer is ``colour``; 1: its name says so; 2: any other image."""
    if getattr(layer, "metadata", {}).get("hpa_channel") == colour:
        return 0
    return 1 if colour in layer.name.lower() else 2


def _init(widget: Any) -> None:
    """After every refresh of the layer lists, an input the user has not set takes its own channel."""
    touched: set[str] = set()
    refreshing = [False]

    def mark(colour: str):
        def changed(*_: Any) -> None:
            if not refreshing[0]:
                touched.add(colour)
        return changed

    for colour in ("red", "green", "blue"):
        getattr(widget, colour).changed.connect(mark(colour))
    refresh = widget.reset_choices

    def reset_choices(*args: Any) -> None:
        refreshing[0] = True
        try:
            refresh(*args)
            for colour in ("red", "green", "blue"):
                combo = getattr(widget, colour)
                layers = [v for v in combo.choices if v is not None]
                if colour in touched or not layers:
                    continue
                best = min(layers, key=lambda ly: channel_rank(ly, colour))  # first of the best rank
                if combo.value is None or channel_rank(combo.value, colour) > channel_rank(best, colour):
                    combo.value = best
        finally:
            refreshing[0] = False

    widget.reset_choices = reset_choices
    reset_choices()


hpa_rgb_merge_widget = magic_factory(hpa_rgb_merge, call_button="Merge", widget_init=_init)
