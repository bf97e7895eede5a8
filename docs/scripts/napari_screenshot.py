"""Take the screenshot of the napari plugin shown on the guide page (docs/guide/napari.md).

The viewer opens the real confocal sample shipped with psfmap, runs the Blind deblur widget on
it (model zernike3, 20 RL-TV iterations) and shows, side by side, the image with the mosaic
of its estimated local PSFs over it, and the restored image; the widget is docked on the right.

Qt runs offscreen; the canvas needs OpenGL, which an X display gives (on a machine without a
screen, run it under Xvfb: ``xvfb-run -a python docs/scripts/napari_screenshot.py``)::

    QT_QPA_PLATFORM=offscreen xvfb-run -a .venv/bin/python docs/scripts/napari_screenshot.py
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

OUTPUT = Path(__file__).resolve().parents[1] / "images" / "napari_blind_deblur.png"


def main(output: Path = OUTPUT, model: str = "zernike3", timeout: float = 300.0,
         viewer=None) -> Path:
    """Run the widget in a viewer (a new one, closed at the end, unless ``viewer`` is given)
    and save the window's screenshot to ``output``."""
    os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
    import napari
    from qtpy.QtWidgets import QApplication

    from psfmap.napari import BlindDeblurWidget, sample_data

    own = viewer is None
    if own:
        viewer = napari.Viewer(show=False, title="psfmap in napari")
    viewer.window.resize(1500, 720)
    (data, kwargs, _), = sample_data()
    image = viewer.add_image(data, **kwargs)
    widget = BlindDeblurWidget(viewer)
    viewer.window.add_dock_widget(widget, name="Blind deblur (psfmap)", area="right")
    widget.image.value, widget.model.value = image, model
    widget.run()
    app, start = QApplication.instance(), time.perf_counter()
    while widget.is_running:  # the work runs in a thread worker: keep the event loop going
        if time.perf_counter() - start > timeout:
            widget.cancel()
            raise TimeoutError(f"Blind deblur took more than {timeout:.0f} s")
        app.processEvents()
        time.sleep(0.02)
    app.processEvents()
    if widget.last_error:
        raise RuntimeError(widget.last_error)
    # grid view: [image + its PSF map] | [restored]; the parameter heat maps stay hidden
    name = image.name
    order = [name, f"{name} PSF map"] + [
        layer.name for layer in viewer.layers
        if layer.name not in (name, f"{name} PSF map", f"{name} deblurred")
    ] + [f"{name} deblurred"]
    for index, layer_name in enumerate(order):
        viewer.layers.move(viewer.layers.index(layer_name), index)
    # napari 0.9 moved grid and camera to viewer.canvas and viewer.scene
    grid = viewer.canvas.grid if hasattr(viewer, "canvas") else viewer.grid
    camera = viewer.scene.camera if hasattr(viewer, "scene") else viewer.camera
    grid.enabled = True
    grid.stride = len(order) - 1
    viewer.layers.selection.active = viewer.layers[f"{name} PSF map"]
    app.processEvents()
    viewer.reset_view()
    # reset_view fits the grid to the canvas's size before the window's layout (the window is
    # never shown): zoom in to fill the canvas of the docked window
    camera.zoom *= 1.45
    app.processEvents()
    output.parent.mkdir(parents=True, exist_ok=True)
    viewer.screenshot(str(output), canvas_only=False)
    if own:
        viewer.close()
    return output


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-o", "--output", type=Path, default=OUTPUT)
    parser.add_argument("--model", default="zernike3")
    arguments = parser.parse_args()
    print(main(arguments.output, arguments.model))
