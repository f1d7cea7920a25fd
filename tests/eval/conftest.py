"""Fixtures of the evaluation tests: WordNet, small images named like the LRS-GRO sample's."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

#: Sizes of the synthetic stand-ins for the sample's six images: orientations fit the records'
#: boxes (long-side-1024 frame), sides are small so the runs are fast.
GRO_IMAGE_SIZES: dict[str, tuple[int, int]] = {
    "0838.png": (1024, 1024),
    "0245.png": (2048, 1280),
    "test-606.png": (1536, 2048),
    "41.tif": (1024, 1024),
    "9332.tif": (768, 1024),
    "0335.png": (1536, 1024),
}


@pytest.fixture(scope="session")
def wordnet_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A cache folder with WordNet installed from the Debian packages (skips when absent).

    ``make test`` installs ``wordnet-base`` and ``wordnet-sense-index`` when missing, so in CI
    this never skips (and the CI policy would fail an unexpected skip).
    """
    from zoomearth.eval import scoring

    if not (scoring.DEBIAN_WORDNET_DIR / "index.sense").is_file():
        pytest.skip("WordNet missing: apt-get install wordnet-base wordnet-sense-index")
    cache = tmp_path_factory.mktemp("wordnet-cache")
    scoring.wordnet(cache)
    return cache


@pytest.fixture(scope="session")
def gro_records(shared_data: Path) -> Path:
    """The 76 real LRS-GRO sample records."""
    return shared_data / "benchmarks" / "lrs_gro_sample.jsonl"


@pytest.fixture(scope="session")
def gro_images(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Gradient images named like the sample records' ``image_name`` (PNG and TIFF)."""
    from PIL import Image

    folder = tmp_path_factory.mktemp("gro-images")
    for i, (name, (w, h)) in enumerate(GRO_IMAGE_SIZES.items()):
        yy, xx = np.mgrid[0:h, 0:w]
        rgb = np.stack([(xx // 4) % 256, (yy // 4) % 256, np.full_like(xx, 40 * i)], axis=-1)
        Image.fromarray(rgb.astype(np.uint8)).save(folder / name)
    return folder
