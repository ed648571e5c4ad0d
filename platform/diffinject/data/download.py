"""Source data fetched with torchvision's downloaders (the only code here that needs the network)."""
from __future__ import annotations

import re
from pathlib import Path

from diffinject.core.errors import DataError


def download_torchvision(dataset, target: Path, url: str, source: str) -> Path:
    """Fetch the train and test sets of the torchvision dataset class `dataset` into `target`.
    A network failure is one DataError naming `url` and the --source alternative."""
    try:
        for train in (True, False):
            dataset(str(target), train=train, download=True)
    except (OSError, RuntimeError) as exc:  # URLError is an OSError; MNIST wraps its mirrors' errors in RuntimeError
        raise DataError(f"could not download {dataset.__name__} from {url} ({_reason(exc)}); without the network, "
                        f"fetch {source} elsewhere and pass the folder holding them with --source DIR") from None
    return Path(target)


def _reason(exc: Exception) -> str:
    found = re.search(r"<urlopen error (.+?)>", str(exc))
    if found:
        return found.group(1)
    text = str(getattr(exc, "reason", "") or exc)
    return text.splitlines()[0] if text.strip() else type(exc).__name__
