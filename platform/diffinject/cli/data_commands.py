"""`diffinject data build` and `diffinject data check`: build a dataset's folder (an embedded one
offline, or a downloaded one), and check a folder against its dataset's layout."""
from __future__ import annotations

import argparse
from pathlib import Path

from diffinject.config.rules import SEED, check_options
from diffinject.core.errors import DiffInjectError
from diffinject.core.preflight import check_data_root, check_output_dir


def cmd_data_build(args: argparse.Namespace) -> None:
    from diffinject.data.embedded import EMBEDDED
    from diffinject.data.registry import get_dataset_spec, normalize_ratio

    check_options(args, {"seed": SEED})
    spec = get_dataset_spec(args.name)
    if spec.name not in (*EMBEDDED, "cmnist", "cifar10c"):
        raise DiffInjectError(f"{spec.name} cannot be built here: {spec.source}")
    for ratio in args.ratios:
        normalize_ratio(spec, ratio)
    root = Path(args.data_root)
    check_output_dir(root, "--data-root")
    if args.name in EMBEDDED:
        from diffinject.data.embedded import build_embedded

        out = build_embedded(args.name, root, ratios=args.ratios, seed=args.seed)
    elif args.name == "cmnist":
        from diffinject.data.colored_mnist import build_colored_mnist, download_mnist

        source = download_mnist(root / "_downloads") if args.download else args.source
        if source is None:
            raise DiffInjectError("cmnist needs --source DIR (MNIST IDX files) or --download")
        out = build_colored_mnist(Path(source), root, ratios=args.ratios, seed=args.seed)
    else:
        from diffinject.data.corrupted_cifar import build_corrupted_cifar10, download_cifar10

        source = download_cifar10(root / "_downloads") if args.download else args.source
        if source is None:
            raise DiffInjectError("cifar10c needs --source DIR (cifar-10-batches-py) or --download")
        out = build_corrupted_cifar10(Path(source), root, ratios=args.ratios, seed=args.seed, progress=True)
    print(f"wrote {out}")


def cmd_data_check(args: argparse.Namespace) -> None:
    from diffinject.data.layout import load_image, read_layout
    from diffinject.data.registry import get_dataset_spec, normalize_ratio

    spec = get_dataset_spec(args.name)
    ratios = [normalize_ratio(spec, args.ratio)] if args.ratio else list(spec.ratios)
    check_data_root(args.data_root)
    for ratio in ratios:
        index = read_layout(Path(args.data_root), spec, ratio)
        size = None
        for records in index.splits.values():
            for record in records:
                pixels = load_image(record.path, spec, size)
                size = size or (pixels.shape[1], pixels.shape[0])
        print(f"{spec.name} @ {ratio}%: images {size[0]}x{size[1]}, all readable")
        print(f"  {'split':<6} {'class':>5} {'aligned':>8} {'conflicting':>12}")
        shares = []
        for split, per_class in index.counts().items():
            for c, (aligned, conflicting) in per_class.items():
                print(f"  {split:<6} {c:>5} {aligned:>8} {conflicting:>12}")
            total_a = sum(a for a, _ in per_class.values())
            total_c = sum(b for _, b in per_class.values())
            print(f"  {split:<6} {'all':>5} {total_a:>8} {total_c:>12}")
            shares.append(f"{split} {total_c / max(total_a + total_c, 1):.3f}")
        # a valid split as biased as the training split makes valid selection favour the most biased weights
        print(f"  bias-conflicting share: {', '.join(shares)}")
