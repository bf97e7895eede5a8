"""``psfmap train``: train a PSF-regression CNN (reproduces the shipped weights)."""

from __future__ import annotations

import json
from pathlib import Path

from psfmap.cli import UsageError, command_parser
from psfmap.cli._common import check_number, check_outputs, progress_bar, summary


def add_parser(subparsers):
    parser = command_parser(
        subparsers,
        "train",
        "Train the CNN that regresses PSF-model parameters and validity from image patches.",
        "psfmap train --model gaussian1 --steps 4000 --seed 0 -o gaussian1.pt",
    )
    parser.add_argument("--model", required=True,
                        help="PSF family: gaussian1, gaussian2, zernike1, zernike2, zernike3; "
                             "or deepblur-zernike7 / deepblur-beads12 (both Deep-Blur networks, "
                             "--config, --seed and --threads apply)")
    parser.add_argument("--steps", type=int, default=None,
                        help="optimisation steps (default: the shipped model's, which replays its "
                             "recorded schedule; else 2000)")
    parser.add_argument("--minutes", type=float, default=None,
                        help="wall-time budget; lowers --steps to what fits (recorded)")
    parser.add_argument("--seed", type=int, default=None, help="seed (default: shipped, else 0)")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch threads (default: the config's, 2 for the shipped models; "
                             "else 1)")
    parser.add_argument("--config", default=None,
                        help="JSON training config to start from (a checkpoint's .json works)")
    parser.add_argument("--no-shared-data", action="store_true",
                        help="train without ../shared/data/sharp even when it is present")
    parser.add_argument("-o", "--output", required=True, help="weights file to write (.pt)")
    parser.set_defaults(reads_own_outputs=True)  # the summary reads the written card
    return parser


def _base_config(args) -> dict:
    """The shipped model's config when there is one (so the command reproduces it)."""
    from psfmap.blind.estimator import PRETRAINED

    if args.config is not None:
        path = Path(args.config)
        if not path.is_file():
            raise UsageError(f"--config {args.config!r} does not exist")
        try:
            text = json.loads(path.read_text())
        except (UnicodeDecodeError, json.JSONDecodeError) as error:
            raise UsageError(f"--config {args.config!r} is not valid JSON ({error})") from None
        config = text.get("config", text) if isinstance(text, dict) else None
        if not isinstance(config, dict):
            raise UsageError(f"--config {args.config!r} must hold a JSON object (a training "
                             "config, or a checkpoint's .json card)")
        return dict(config)
    shipped = PRETRAINED / f"{args.model}.json"
    if shipped.is_file():
        return dict(json.loads(shipped.read_text())["config"])
    return {"model": args.model, "data": {"shared_data": True}}


def run(args) -> int:
    from psfmap.blind.checkpoint import checkpoint_card_path
    from psfmap.psf import FAMILIES
    from psfmap.training.loop import train

    if args.model.startswith("deepblur-"):  # Deep-Blur: psfmap.training.deepblur
        return _train_deepblur(args)
    if args.model not in FAMILIES:
        raise UsageError(f"--model must be one of {', '.join(FAMILIES)}, got {args.model!r}")
    if args.steps is not None and args.steps < 1:
        raise UsageError(f"--steps must be >= 1, got {args.steps}")
    if args.threads is not None and args.threads < 1:
        raise UsageError(f"--threads must be >= 1, got {args.threads}")
    check_number(args.minutes, "--minutes", minimum=0, strict=True)
    check_number(args.seed, "--seed", minimum=0)
    try:
        card = checkpoint_card_path(args.output)
    except ValueError as error:
        raise UsageError(f"-o: {error}") from None
    check_outputs(args, [args.config], [args.output, card])
    config = _base_config(args)
    if config.get("model", args.model) != args.model:
        raise UsageError(f"--config is for the model {config['model']!r}, not {args.model!r}")
    config["model"] = args.model
    if args.steps is not None or args.minutes is not None:
        config["schedule"] = []  # a new run length: the recorded schedule no longer applies
    if args.steps is not None:
        config["steps"] = args.steps
    if args.seed is not None:
        config["seed"] = args.seed
    if args.threads is not None:
        config["threads"] = args.threads
    if args.no_shared_data:
        config.setdefault("data", {})["shared_data"] = False
    steps = int(config.get("steps", 2000))
    with progress_bar(args, steps, f"train {args.model}") as bar:
        def progress(step, total, stats):
            bar.total = total
            bar.update(1)
            bar.set_postfix(loss=f"{stats['loss']:.3f}")

        path = train(config, args.output, minutes=args.minutes, progress=progress)
    written = json.loads(card.read_text())
    best = written["metrics"]["validation"]
    summary(args, f"wrote {path} ({written['config']['steps']} steps, validation R² "
                  f"{best['r2_mean']:.3f}, validity accuracy {best['validity_accuracy']:.3f})")
    return 0


def _train_deepblur(args) -> int:
    from psfmap.training.deepblur import CONFIGS, train_all

    name = args.model[len("deepblur-"):]
    if name not in CONFIGS:
        raise UsageError(f"--model deepblur-NAME: NAME must be one of {', '.join(CONFIGS)}, "
                         f"got {name!r}")
    if args.steps is not None or args.minutes is not None:
        raise UsageError("--steps/--minutes do not apply to Deep-Blur models; set "
                         "identify.steps / deblur.steps / time_limit in --config")
    check_outputs(args, [args.config], [args.output])
    path = train_all(name, args.output, config=args.config, threads=args.threads or 1,
                     seed=args.seed)
    summary(args, f"wrote {path} and {path.with_suffix('.json').name} (Deep-Blur {name}: "
                  "identification and unrolled networks)")
    return 0
