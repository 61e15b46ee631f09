"""Every job spec in jobs/ runs end to end (real decode, real model actors, real Parquet and media).

Models that need weights get a checkpoint of the block at its default architecture saved by the
test (random initialisation: the outputs are meaningless, the plumbing is real).
"""

from __future__ import annotations

from pathlib import Path

import decord
import pytest
import torch

import blocks
from pipeline.job import run_job
from pipeline.spec import load_spec
from tests.pipeline.jobs_util import clip_key_counts, read_table
from tests.videos import make_video

JOBS = Path(__file__).resolve().parents[2] / "jobs"


@pytest.fixture(scope="module")
def small_archive(tmp_path_factory):
    root = tmp_path_factory.mktemp("kinds")
    make_video(root / "a.mp4", num_frames=20, size=(96, 64), fps=10.0, pattern="photo", seed=1)
    return root


def _checkpoint(tmp_path: Path, name: str, **config) -> str:
    torch.manual_seed(0)
    path = tmp_path / f"{name}.pth"
    torch.save(blocks.create_block(name, **config).state_dict(), path)
    return str(path)


CASES = {
    "classify.toml": ([], None),
    "embed.toml": ([], None),
    "motion.toml": (["models.0.options.interpolate=true", "sampling.size=[64, 96]"], "ifnet-v4"),
    "enhance.toml": (["sampling.size=[64, 96]", "sampling.clip_len=4"], "wrqe"),
    "inpaint.toml": (["sampling.size=[64, 96]", "sampling.clip_len=3"], "fuseformer"),
}


def test_every_job_spec_is_covered():
    assert {p.name for p in JOBS.glob("*.toml")} == set(CASES)


@pytest.mark.parametrize("job", sorted(CASES))
def test_job_spec_runs(ray_session, small_archive, tmp_path, job):
    overrides, needs = CASES[job]
    out = tmp_path / "out"
    sets = [
        f'input="{small_archive}"',
        f'output="{out}"',
        "mlflow.enabled=false",
        "sampling.size=[64, 96]" if "sampling.size=[64, 96]" not in overrides else "",
    ] + overrides
    if needs:
        sets.append(f'models.0.weights="{_checkpoint(tmp_path, needs)}"')
    spec, text = load_spec(JOBS / job, [s for s in sets if s])
    result = run_job(spec, spec_text=text)
    assert result.exit_code == 0 and result.summary["videos_ok"] == 1, result.summary
    clips = read_table(str(out), "clips").to_pylist()
    assert clips and set(clip_key_counts(read_table(str(out), "clips")).values()) == {1}
    row = clips[0]
    if job == "classify.toml":
        assert len(row["labels"]) == 5 and len(row["feature"]) == 1280
    elif job == "embed.toml":
        assert row["labels"] == [] and len(row["feature"]) == 1280
    elif job == "motion.toml":
        metrics = dict(row["metrics"])
        assert {"flow_mean", "flow_p90", "motion_score"} <= set(metrics)
        vr = decord.VideoReader(row["media_uri"])
        assert len(vr) == 2 * spec.sampling.clip_len - 1  # frames interleaved with midpoints
    else:
        vr = decord.VideoReader(row["media_uri"])
        assert len(vr) == spec.sampling.clip_len and vr[0].shape == (64, 96, 3)
        assert row["metrics"]


def test_generative_job_without_weights_fails_fast(tmp_path, small_archive):
    from pipeline.models import ModelConfigError

    spec, _ = load_spec(
        JOBS / "motion.toml",
        [f'input="{small_archive}"', f'output="{tmp_path / "o"}"', 'models.0.weights=""'],
    )
    with pytest.raises(ModelConfigError, match="needs weights"):
        run_job(spec)


def test_weights_from_an_mlflow_model_uri(ray_session, small_archive, tmp_path, isolated_env):
    from pipeline.model_registry import register_weights

    version = register_weights(
        _checkpoint(tmp_path, "ifnet-v4"), "rife-test", isolated_env, aliases=["prod"]
    )
    for uri in (f"models:/rife-test/{version}", "models:/rife-test@prod"):
        out = tmp_path / f"out-{uri.rsplit('/', 1)[-1]}"
        spec, _ = load_spec(
            JOBS / "motion.toml",
            [
                f'input="{small_archive}"',
                f'output="{out}"',
                "mlflow.enabled=false",
                "sampling.size=[64, 96]",
                f'models.0.weights="{uri}"',
            ],
        )
        result = run_job(spec)
        assert result.summary["videos_ok"] == 1 and result.summary["clips"] > 0


def test_pyav_backend_gives_the_same_clips(ray_session, small_archive, tmp_path):
    rows = {}
    for backend in ("decord", "pyav"):
        out = tmp_path / backend
        spec, _ = load_spec(
            JOBS / "embed.toml",
            [
                f'input="{small_archive}"',
                f'output="{out}"',
                "mlflow.enabled=false",
                "sampling.size=[64, 96]",
                f'decode.backend="{backend}"',
            ],
        )
        run_job(spec)
        rows[backend] = sorted(
            (r["clip_index"], r["start_frame"], r["end_frame"], r["feature"])
            for r in read_table(str(out), "clips").to_pylist()
        )
    assert [r[:3] for r in rows["decord"]] == [r[:3] for r in rows["pyav"]]
    for a, b in zip(
        rows["decord"], rows["pyav"]
    ):  # same frames decoded, resized by different scalers
        cos = sum(x * y for x, y in zip(a[3], b[3])) / (
            sum(x * x for x in a[3]) ** 0.5 * sum(y * y for y in b[3]) ** 0.5
        )
        assert cos > 0.95


def test_bf16_precision_option_runs_and_bad_precision_is_refused(
    ray_session, small_archive, tmp_path
):
    from pipeline.models import ClassifyModel, ModelConfigError
    from pipeline.spec import ModelSpec

    out = tmp_path / "bf16"
    spec, _ = load_spec(
        JOBS / "classify.toml",
        [
            f'input="{small_archive}"',
            f'output="{out}"',
            "mlflow.enabled=false",
            "sampling.size=[64, 96]",
            'models.0.options.precision="bf16"',
        ],
    )
    assert run_job(spec).summary["videos_ok"] == 1
    assert all(len(r["labels"]) == 5 for r in read_table(str(out), "clips").to_pylist())
    with pytest.raises(ModelConfigError, match="precision"):
        ClassifyModel(
            ModelSpec(name="frame-average", options={"precision": "fp8"}), output=str(out)
        )
