"""The cold-diffusion parts of the command line: `undiffuse degrade` (a degradation's ladder) and
`undiffuse samplers --cold` (the cold samplers and degradations). Training, sampling and restoring
cold runs go through the shared commands."""
from __future__ import annotations

import argparse
from pathlib import Path

from ..checks import check_output_file
from ..cli_flags import DeprecatedAlias


def list_cold() -> int:
    from .degradations import DEGRADATIONS
    from .samplers import COLD_SAMPLERS

    about = {"naive": "Algorithm 1: x_{s-1} = D(R(x_s, s), s - 1)",
             "improved": "Algorithm 2: x_{s-1} = x_s - D(x0_hat, s) + D(x0_hat, s - 1) (the default)",
             "direct": "one-shot restoration R(x_t, t)"}
    print("Cold Diffusion (Bansal et al. 2022): train with --process NAME[:KEY=VALUE...]; samplers:")
    for name in COLD_SAMPLERS:
        print(f"  {name:10s} {about.get(name, '')}")
    print("degradations (settings):")
    for name, cls in DEGRADATIONS.items():
        print(f"  {name:10s} {', '.join(f'{k}={v}' for k, v in cls().settings().items())}")
    return 0


def add_degrade(sub) -> None:
    p = sub.add_parser("degrade", help="draw a cold degradation's ladder D(x0, t), t = 0..T",
                       description="Draw the ladder of a cold degradation (Bansal et al. 2022): one row "
                                   "per image, one column per severity t, evenly spaced from 0 to T.")
    p.add_argument("source", metavar="IMAGE_OR_DATASET",
                   help="an image file, or a dataset: mnist, digits, photos (tiles of scikit-learn's "
                        "sample photographs, colour), or an image folder")
    p.add_argument("--process", required=True,
                   help="blur, mask, pixelate, desaturate, snow, fade or gaussian, with settings as in "
                        "blur:T=20:sigma=7 (`undiffuse samplers --cold` lists them)")
    p.add_argument("--max-severity", dest="max_severity", type=int, default=None,
                   help="T, the last severity, overriding the spec's (default: its own)")
    p.add_argument("--steps", dest="max_severity", type=int, action=DeprecatedAlias, new="--max-severity",
                   help=argparse.SUPPRESS)
    p.add_argument("--n", type=int, default=8, help="images (rows) drawn from a dataset")
    p.add_argument("--columns", type=int, default=11, help="severities shown, 0 and T included")
    p.add_argument("--seed", type=int, default=0, help="picks the images and the random state (mask, snow, ...)")
    p.add_argument("--image-size", type=int, default=None,
                   help="resize to this size (an image file: centre square, default at most 128 px)")
    p.add_argument("--out", default="ladder.png", help="where to write the PNG")


def _ladder_images(source: str, n: int, seed: int, image_size: int | None):
    """(B, C, H, W) images in [-1, 1]: one image file, or ``n`` images of a dataset."""
    import torch

    from ..data import IMAGE_EXTENSIONS, load_dataset
    from ..data.base import check_image_size, resize_images

    check_image_size(image_size)
    if n < 1:
        raise ValueError(f"--n must be at least 1, got {n}")
    path = Path(source).expanduser()
    if path.suffix.lower() in IMAGE_EXTENSIONS and not path.exists():
        raise FileNotFoundError(f"image {path} does not exist")
    if path.is_file() and path.suffix.lower() in IMAGE_EXTENSIONS:
        from PIL import Image

        from ..data.base import square_image

        try:
            with Image.open(path) as img:
                x = square_image(img)
        except OSError as e:
            raise ValueError(f"cannot read image {path}: {e}") from None
        side = x.shape[-1]
        return resize_images(x, image_size or min(side, 128)) if (image_size or side > 128) else x
    if source.strip().lower() == "photos":
        from .degradations.fade import load_source

        x = load_source("photos")
        x = resize_images(x, image_size) if image_size else x
    else:
        data = load_dataset(source, image_size=image_size)
        if data.x.ndim != 4:
            raise ValueError(f"{source} holds {data.x.shape[1]}-D points, not images; degrade draws images")
        x = data.x
    return x[torch.randperm(len(x), generator=torch.Generator().manual_seed(seed))[:n]]


def cmd_degrade(args) -> int:
    import torch

    from .degradations import degradation_from_config, make_degradation
    from ..viz import save_labelled_grid

    check_output_file(args.out, "--out")
    deg = make_degradation(args.process)
    if args.max_severity is not None:
        deg = degradation_from_config({**deg.config(), "num_steps": args.max_severity})
    if args.columns < 2:
        raise ValueError(f"--columns must be at least 2 (t = 0 and T), got {args.columns}")
    x = _ladder_images(args.source, args.n, args.seed, args.image_size)
    with torch.no_grad():
        ts, frames = deg.ladder(x, args.columns, generator=torch.Generator().manual_seed(args.seed))
    path = save_labelled_grid([frames[:, i] for i in range(len(x))], args.out, col_labels=[str(t) for t in ts])
    print(f"{deg.name} (T = {deg.num_steps}): {len(x)} images x {len(ts)} severities -> {path}")
    return 0
