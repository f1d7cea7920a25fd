"""``benchmarks/tool_quality.py --quick`` runs end to end and its output is well-formed.

The figures themselves are not checked here (they are the benchmark's to report); only that every
method ran on every input, the numbers are finite and in range, and the tables were printed.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
METHODS = {"ours_est", "ours_true", "nlm_prev", "cv_nlm", "bm3d"}


def test_quick_mode_is_well_formed(tmp_path: Path, shared_data: Path) -> None:
    out = tmp_path / "quality.json"
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.run(
        [
            sys.executable,
            str(REPO / "benchmarks" / "tool_quality.py"),
            "--quick",
            "--years",
            "20090818,20200831",
            "--data",
            str(shared_data),
            "--json",
            str(out),
        ],
        capture_output=True,
        text=True,
        timeout=600,
        env=env,
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    text = proc.stdout
    for heading in ("Denoising: PSNR dB / SSIM", "Speed:", "Noise estimate error", "Goal ("):
        assert heading in text, heading
    assert "cloud_removal (single image)" in text and "held-out years" in text

    data = json.loads(out.read_text())
    records = data["denoise"]
    assert {(r["year"], r["sigma"]) for r in records} == {
        (y, s) for y in ("20090818", "20200831") for s in (10.0, 25.0)
    }
    for r in records:
        assert r["shape"] == [4, 64, 64]
        assert set(r["methods"]) == METHODS
        assert len(r["sigma_est"]) == 4 and len(r["sigma_err"]) == 4
        for est, err in zip(r["sigma_est"], r["sigma_err"], strict=True):
            assert math.isclose(est - r["sigma"], err, abs_tol=1e-2)
        for m in r["methods"].values():
            assert 10.0 < m["psnr"] < 60.0 and 0.0 < m["ssim"] <= 1.0
            assert m["seconds"] > 0 and m["mpx_s"] > 0
    summary = data["denoise_summary"]
    assert set(summary["speed"]) == METHODS
    assert isinstance(summary["goal_met"], bool) and "worst_gap_db" in summary

    rows = data["clouds"]
    assert {(r["year"], r["model"]) for r in rows} == {
        (y, m) for y in ("20090818", "20200831") for m in ("clear", "blobs", "haze", "cumulus")
    }
    for r in rows:
        assert r["tuning"] == (r["year"] == "20090818")
        assert 0.0 <= r["found_fraction"] <= 1.0
        if r["model"] == "clear":  # the clean tile: no truth, found = false positives
            assert r["true_fraction"] == 0.0 and r["psnr_in"] == math.inf
            assert r["psnr_out"] > 20.0
            continue
        assert 0.0 <= r["iou"] <= 1.0 and 0.0 < r["true_fraction"] < 1.0
        assert math.isfinite(r["psnr_in"]) and math.isfinite(r["psnr_out"])
    assert "clear    false positives" in text
    assert {k.split(":")[0] for k in data["clouds_summary"]} == {"heldout", "tuning"}
