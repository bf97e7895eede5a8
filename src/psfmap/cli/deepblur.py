"""``psfmap deepblur``: blurred image -> coefficients γ̂ of its operator + restored image
(Deep-Blur: identification network, then FISTA unrolled with a learned proximal step)."""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from psfmap.cli import UsageError, command_parser
from psfmap.cli._common import check_outputs, progress_bar, provenance, summary

EXAMPLE = "psfmap deepblur cells.tif --model zernike7 -o restored.tif --save-gamma gamma.json"


def add_parser(subparsers) -> argparse.ArgumentParser:
    parser = command_parser(
        subparsers,
        "deepblur",
        "Identify the coefficients of the blur operator with a network and deblur with an "
        "unrolled FISTA network of the same family (Deep-Blur).",
        EXAMPLE,
    )
    parser.add_argument("image", metavar="IMAGE", help="blurred image (.tif, .ome.tif, ...)")
    parser.add_argument("--model", required=True,
                        help="shipped model name (zernike7, beads12) or a deepblur .json file")
    parser.add_argument("-o", "--output", required=True, help="restored image (.tif)")
    parser.add_argument("--gamma", help="JSON file with the coefficients to use (skip "
                                        "identification): a list, or {\"gamma\": [...]}")
    parser.add_argument("--save-gamma", help="write the coefficients used to this JSON file "
                                             "(and, when identified, the network's raw "
                                             "estimates)")
    parser.add_argument("--plane", type=int, help="frame of a stack to restore, its leading "
                                                  "axes counted in file order (default: all)")
    parser.add_argument("--strict", action="store_true",
                        help="refuse a --gamma outside the admissible set (default: project "
                             "it onto the set with a warning); identified coefficients are "
                             "always projected, quietly, as by psfmap.deepblur.deblur")
    return parser


def _read_gamma(path: str) -> np.ndarray:
    if not Path(path).is_file():
        raise ValueError(f"--gamma file {path!r} does not exist")
    try:
        content = json.loads(Path(path).read_text())
    except json.JSONDecodeError as error:
        raise ValueError(f"--gamma file {path!r} is not JSON ({error})") from None
    if isinstance(content, dict):
        content = content.get("gamma")
    try:
        return np.asarray(content, dtype=np.float64)
    except (TypeError, ValueError):
        raise ValueError(f"--gamma file {path!r} must hold a list of numbers or "
                         "{\"gamma\": [...]}") from None


def run(args) -> int:
    from psfmap.cli._common import read_plane
    from psfmap.deepblur import deblur, identify, load_model
    from psfmap.deepblur.verbs import project_estimates
    from psfmap.io import write_image

    check_outputs(args, [args.image, args.gamma], images=[args.output],
                  files=[args.save_gamma])
    if not Path(args.image).exists():
        raise ValueError(f"image {args.image!r} does not exist")
    try:
        model = load_model(args.model)
    except (ValueError, FileNotFoundError) as error:
        raise UsageError(str(error)) from None
    image, metadata = read_plane(args.image, args.plane, stack=True, args=args)
    frames = np.asarray(image, dtype=np.float32).reshape(-1, *image.shape[-2:])
    start = time.perf_counter()
    identified = None
    if args.gamma is not None:
        gammas = _read_gamma(args.gamma)
        if gammas.ndim != 1 or gammas.size != model.n_params:
            raise ValueError(f"--gamma must hold P = {model.n_params} numbers for the "
                             f"{model.family.name} family, got shape {gammas.shape}")
        gammas = np.repeat(gammas[None], len(frames), axis=0)
    else:  # the network's estimates, projected onto the set as the Python verb does
        identified = np.asarray(identify(frames, model), dtype=np.float64).reshape(
            -1, model.n_params)
        gammas = project_estimates(identified, model.family)
    with progress_bar(args, len(frames), "deepblur") as bar:
        # one call for the stack: its freed buffers are kept from frame to frame
        restored = deblur(frames, model, gammas, outside="raise" if args.strict else "project",
                          callback=lambda _: bar.update(1))
    restored = np.asarray(restored).reshape(image.shape)
    elapsed = time.perf_counter() - start
    description = provenance(metadata, psfmap_command="deepblur", source=Path(args.image).name,
                             model=str(args.model))
    axes = metadata.get("axes")
    write_image(args.output, restored, pixel_size=metadata.get("pixel_size"),
                metadata=description, axes=axes if axes and len(axes) == image.ndim else None,
                inputs=[args.image])
    written = [args.output]
    if args.save_gamma:
        record = {"model": str(args.model), "family": model.family.name,
                  "gamma": np.asarray(gammas).tolist()}
        if identified is not None:  # the network's answers before projection onto the set
            record["gamma_identified"] = identified.tolist()
        target = Path(args.save_gamma)
        temporary = target.with_name(f".{target.name}.tmp")
        temporary.write_text(json.dumps(record, indent=2))
        temporary.replace(target)
        written.append(args.save_gamma)
    moved = 0 if identified is None else int(np.any(identified != gammas, axis=1).sum())
    projected = f", γ̂ of {moved} projected onto the set" if moved else ""
    summary(args, f"deepblur {model.name}: {len(frames)} frame(s) of "
                  f"{image.shape[-2]}x{image.shape[-1]}, P = {model.n_params}{projected}, in "
                  f"{elapsed:.1f} s -> {', '.join(written)}")
    return 0
