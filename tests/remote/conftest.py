"""Fixtures of the remote-scene tests: real servers on loopback, never the internet.

* ``remote_files``: a folder with a COG (GDAL's COG driver: JPEG, 512-px tiles, overviews), a
  strip TIFF without tiles or overviews, and a small tiled TIFF; built once per session.
* ``http_server``: the project's range-capable HTTP server (:class:`RangeServerProcess`)
  serving that folder from a child process, counting requests and bytes. (In the test process
  a server thread could not answer GDAL calls that hold the GIL while they wait: see
  :mod:`zoomearth.scene.rangeserver`.)
* ``moto_server``: a real S3 API (``moto.server`` from moto[server]) in a child process on a
  free port, with a bucket ``cogs`` holding the COG (private) and ``public/cog.tif``
  (public-read).
* ``remote_settings``: settings with private data/cache folders and short timeouts.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import rasterio
import rasterio.shutil
from affine import Affine
from rasterio.windows import Window

from zoomearth.scene.rangeserver import RangeServerProcess

COG_SIDE = 4096
STRIP_SIDE = 1500
CRS = "EPSG:32633"
TRANSFORM = Affine(0.5, 0.0, 500000.0, 0.0, -0.5, 5000000.0)
#: Credentials the moto server accepts (it checks no signature without its auth mode).
AWS_KEYS = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing"}


def fields_pattern(width: int, height: int, row0: int = 0, seed: int = 3) -> np.ndarray:
    """``(3, height, width)`` uint8: coloured fields, roads and noise (compresses like imagery)."""
    rng = np.random.default_rng(seed + row0)
    palette = np.random.default_rng(seed).integers(40, 200, size=(64, 64, 3), dtype=np.int16)
    ys = np.arange(row0, row0 + height)
    xs = np.arange(width)
    img = palette[(ys // 211)[:, None] % 64, (xs // 211)[None, :] % 64]
    road = ((ys % 700) < 8)[:, None] | ((xs % 700) < 8)[None, :]
    img[road] = 150
    img = img + rng.integers(-8, 9, size=img.shape, dtype=np.int16)
    return np.clip(img, 0, 255).astype(np.uint8).transpose(2, 0, 1)


def write_cog(path: Path, side: int = COG_SIDE) -> Path:
    """A Cloud-Optimized GeoTIFF (COG driver: JPEG, 512-px tiles, overviews) of the pattern."""
    src = path.with_name(path.stem + ".src.tif")
    profile = {"driver": "GTiff", "width": side, "height": side, "count": 3, "dtype": "uint8",
               "tiled": True, "blockxsize": 512, "blockysize": 512, "crs": CRS,
               "transform": TRANSFORM}
    with rasterio.open(src, "w", **profile) as dst:
        for row in range(0, side, 512):
            h = min(512, side - row)
            dst.write(fields_pattern(side, h, row), window=Window(0, row, side, h))
    rasterio.shutil.copy(src, path, driver="COG", COMPRESS="JPEG", QUALITY=85, BLOCKSIZE=512,
                         OVERVIEW_RESAMPLING="AVERAGE")
    src.unlink()
    return path


def write_strip(path: Path, side: int = STRIP_SIDE) -> Path:
    """A GeoTIFF in strips, uncompressed, without overviews: not cloud-optimized."""
    profile = {"driver": "GTiff", "width": side, "height": side, "count": 3, "dtype": "uint8",
               "tiled": False, "crs": CRS, "transform": TRANSFORM}
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(fields_pattern(side, side))
    return path


@pytest.fixture(scope="session")
def remote_files(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("remote-files")
    write_cog(root / "cog.tif")
    write_strip(root / "strip.tif")
    (root / "sub").mkdir()
    write_cog(root / "sub" / "small.tif", side=1024)
    return root


@pytest.fixture(scope="session")
def http_server(remote_files: Path) -> Iterator[RangeServerProcess]:
    with RangeServerProcess(remote_files) as server:
        yield server


@pytest.fixture
def remote_settings(tmp_path: Path) -> Any:
    from zoomearth.config import load_settings

    return load_settings(
        flags={"data_dir": tmp_path / "data", "cache_dir": tmp_path / "cache",
               "remote_timeout_s": 5, "remote_max_retries": 1},
        environ={},
    )


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class MotoServer:
    """``python -m moto.server`` on a free loopback port, in a child process."""

    def __init__(self, extra_env: dict[str, str] | None = None) -> None:
        self.port = free_port()
        self.endpoint = f"http://127.0.0.1:{self.port}"
        env = {**os.environ, **(extra_env or {})}
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(self.port)],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            env=env,
        )
        import httpx

        deadline = time.monotonic() + 60
        while True:
            try:
                httpx.get(self.endpoint + "/moto-api/", timeout=2)
                break
            except httpx.HTTPError:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    self.stop()
                    raise RuntimeError("the moto S3 server did not start") from None
                time.sleep(0.1)

    def client(self, service: str = "s3", **keys: str) -> Any:
        import boto3

        return boto3.client(
            service, endpoint_url=self.endpoint, region_name="us-east-1",
            aws_access_key_id=keys.get("AWS_ACCESS_KEY_ID", AWS_KEYS["AWS_ACCESS_KEY_ID"]),
            aws_secret_access_key=keys.get("AWS_SECRET_ACCESS_KEY",
                                           AWS_KEYS["AWS_SECRET_ACCESS_KEY"]),
        )

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


@pytest.fixture(scope="module")
def moto_server(remote_files: Path) -> Iterator[MotoServer]:
    server = MotoServer()
    try:
        s3 = server.client()
        s3.create_bucket(Bucket="cogs")
        s3.upload_file(str(remote_files / "cog.tif"), "cogs", "scenes/cog.tif")
        s3.put_object(Bucket="cogs", Key="public/cog.tif",
                      Body=(remote_files / "sub" / "small.tif").read_bytes(), ACL="public-read")
        yield server
    finally:
        server.stop()


@pytest.fixture
def aws_env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    """No AWS variables from the outside (GDAL reads them from the environment)."""
    for name in list(os.environ):
        if name.startswith("AWS_"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("AWS_REGION", "us-east-1")
    # Never ask an EC2 metadata service for credentials (no test touches the network).
    monkeypatch.setenv("CPL_AWS_AUTODETECT_EC2", "NO")
    return monkeypatch
