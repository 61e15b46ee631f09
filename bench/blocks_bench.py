"""5. Blocks: forward latency and parameters of every registered model, and CPU inference options.

Part A: each name of ``blocks.list_blocks()`` built at its default configuration (random
weights: latency does not depend on them), one forward at the input size in ``INPUTS`` (batch
1 unless stated), 2 torch threads, median of ``repeats`` after one warm-up. ``--quick``
reduces every input (and says so).

Part B: efficientnet-lite0 inside frame-average, a batch of 8 real clips (8 frames at 224x224,
decoded from the peers archive), eager fp32 against what the model runner can do: channels_last;
BatchNorm folded (``fold_bn``, the runner's default in PyTorch); bf16 autocast; TorchScript
trace + freeze; ``torch.compile`` (default mode; compile time reported; full run only); int8
dynamic quantisation (the spec's ``quantize = "int8"``: Linear layers only); the graph compiled
by OpenVINO in f32 (``runtime = "auto"``, the default on CPU) and bf16 (``precision = "bf16"``),
conversion time from a cold graph cache. Speed ratio vs eager fp32, max |logit difference| and
top-1 agreement with eager fp32, and operator profiles of the PyTorch and OpenVINO paths.
"""

from __future__ import annotations

import inspect
import os
import time
import warnings
from collections.abc import Callable

import torch

from bench.common import Settings, log, median, save

T = 8  # frames per clip


def _clips(b: int, t: int, s: int) -> Callable[[], tuple]:
    return lambda: (torch.randn(b, t, 3, s, s),)


def _inputs(quick: bool) -> dict[str, tuple[str, Callable[[], tuple]]]:
    s = 64 if quick else 224
    g = 64 if quick else 256
    gw = 64 if quick else 448
    fh, fw = (32, 64) if quick else (240, 432)
    return {
        "convpool": (f"(1, 8, 3, {s}, {s})", _clips(1, T, s)),
        "convpool-lstm": (f"(1, 8, 3, {s}, {s})", _clips(1, T, s)),
        "frame-average": (f"(1, 8, 3, {s}, {s})", _clips(1, T, s)),
        "lrcn": (f"(1, 8, 3, {s}, {s})", _clips(1, T, s)),
        "i3d-inflated": (f"(1, 8, 3, {s}, {s})", _clips(1, T, s)),
        "two-stream": (f"(1, 8, 3, {s}, {s})", _clips(1, T, s)),
        "efficientnet-lite0": (f"(8, 3, {s}, {s})", lambda: (torch.randn(8, 3, s, s),)),
        "crn": (
            "objects (1, 16, 512), context (1, 512)",
            lambda: (torch.randn(1, 16, 512), torch.randn(1, 512)),
        ),
        "hcrn-classifier": ("frame feats (1, 8, 16, 2048) + motion", lambda: _hcrn_inputs()),
        "ifnet-eccv": (
            f"2 x (1, 3, {g}, {gw})",
            lambda: (torch.rand(1, 3, g, gw), torch.rand(1, 3, g, gw)),
        ),
        "ifnet-v4": (
            f"2 x (1, 3, {g}, {gw})",
            lambda: (torch.rand(1, 3, g, gw), torch.rand(1, 3, g, gw)),
        ),
        "wrqe": (
            f"(1, 3, 3, {g}, {gw}) + side (1, 3, 10)",
            lambda: (torch.rand(1, 3, 3, g, gw), torch.rand(1, 3, 10)),
        ),
        "fuseformer": (f"(1, 5, 3, {fh}, {fw})", lambda: (torch.rand(1, 5, 3, fh, fw) * 2 - 1,)),
        "fuseformer-block": (
            "tokens (1, 5*720, 512) (a 60x108 map, 5 frames)",
            lambda: (torch.randn(1, 5 * 720, 512), (60, 108)),
        ),
        "soft-split": ("map (1, 128, 60, 108)", lambda: (torch.randn(1, 128, 60, 108),)),
        "soft-composition": ("tokens (1, 20, 36, 512)", lambda: (torch.randn(1, 20, 36, 512),)),
    }


def _hcrn_inputs() -> tuple:
    from blocks.crn import motion_from_frame_features

    frames = torch.randn(1, 8, 16, 2048)
    return frames, motion_from_frame_features(frames)


def _build(name: str) -> torch.nn.Module:
    from blocks.registry import block_info

    info = block_info(name)
    kw = {"pretrained": False} if "pretrained" in inspect.signature(info.builder).parameters else {}
    return info.builder(**kw).eval()


def _time(fn: Callable[[], object], repeats: int, budget_s: float = 20.0) -> list[float]:
    ts = []
    with torch.inference_mode():
        t0 = time.perf_counter()
        fn()  # warm-up
        first = time.perf_counter() - t0
        n = repeats if first * repeats < budget_s else max(1, int(budget_s / max(first, 1e-6)))
        for _ in range(n):
            t0 = time.perf_counter()
            fn()
            ts.append(time.perf_counter() - t0)
    return ts


def part_a(settings: Settings) -> list[dict]:
    import blocks
    from blocks.registry import param_count

    torch.set_num_threads(2)
    rows = []
    specs = _inputs(settings.quick)
    for name in blocks.list_blocks():
        model = _build(name)
        row = {"name": name, "params": param_count(model)}
        if name not in specs:
            row.update(input="", skipped="no benchmark input defined for this block")
            rows.append(row)
            continue
        label, make = specs[name]
        args = make()
        try:
            ts = _time(lambda m=model, a=args: m(*a), 1 if settings.quick else settings.repeats)
            row.update(input=label, latency_ms=median(ts) * 1000, runs=len(ts))
        except (RuntimeError, ValueError, TypeError) as err:
            row.update(input=label, skipped=f"{type(err).__name__}: {str(err)[:200]}")
        rows.append(row)
        log(f"blocks: {name} {row.get('latency_ms', row.get('skipped'))}")
    return rows


def _real_clips(n: int) -> torch.Tensor:
    """(n, 8, 3, 224, 224) encoder-normalised clips decoded from the peers archive."""
    from bench import inputs
    from pipeline.decode import iter_clips, open_reader
    from pipeline.probe import probe_video
    from pipeline.sampling import plan_clips
    from pipeline.spec import SamplingSpec

    spec = SamplingSpec(clip_len=8, frame_interval=4, size=224)
    out = []
    for path in inputs.videos(inputs.peers_archive(False)) + inputs.videos(
        inputs.sweep_archive(False)
    ):
        probe = probe_video(str(path))
        plans = plan_clips(probe.num_frames, probe.fps, spec)[:2]
        out.extend(
            f
            for _, f in iter_clips(
                open_reader("decord", str(path), probe, (224, 224)), plans, (224, 224)
            )
        )
        if len(out) >= n:
            break
    x = torch.from_numpy(__import__("numpy").stack(out[:n])).permute(0, 1, 4, 2, 3).float()
    return (x - 127.0) / 128.0  # (n, 8, 3, 224, 224)


def part_b(settings: Settings) -> dict:
    import tempfile

    import blocks

    torch.set_num_threads(2)
    batch = 2 if settings.quick else 8
    x = torch.randn(batch, T, 3, 224, 224) if settings.quick else _real_clips(batch)
    base = blocks.create_block("frame-average").eval()
    with torch.inference_mode():
        ref = base(x)

    def eager():
        return base

    def channels_last():
        return blocks.create_block("frame-average").eval().to(memory_format=torch.channels_last)

    def folded():
        m = blocks.create_block("frame-average").eval()
        m.encoder.fold_batchnorm()
        return m.to(memory_format=torch.channels_last)

    def bf16_autocast():
        m = folded()

        def f(v):
            with torch.autocast("cpu", dtype=torch.bfloat16):
                return m(v).float()

        return f

    def jit_freeze():
        m = channels_last()
        with torch.inference_mode(), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            flat = x[:1].flatten(0, 1).contiguous(memory_format=torch.channels_last)
            enc = torch.jit.optimize_for_inference(
                torch.jit.freeze(torch.jit.trace(m.encoder, flat))
            )

        def f(v):
            b, t = v.shape[:2]
            logits = enc(v.flatten(0, 1).contiguous(memory_format=torch.channels_last))  # (B*T, K)
            return logits.view(b, t, -1).mean(1)  # the head is linear: mean of logits = head(mean)

        return f

    def compiled():
        return torch.compile(folded(), dynamic=False)

    def int8_dynamic():
        m = blocks.create_block("frame-average").eval()
        return torch.ao.quantization.quantize_dynamic(
            m, {torch.nn.Linear, torch.nn.LSTM}, dtype=torch.qint8
        )

    def openvino(precision: str):
        from pipeline.inference_runtime import OpenVINOGraph

        def make():
            graph = OpenVINOGraph(folded().requires_grad_(False), x, precision=precision, threads=2)
            return lambda v: torch.from_numpy(graph(v.numpy())[0])

        return make

    variants: dict[str, Callable[[], Callable]] = {
        "eager fp32": eager,
        "channels_last": channels_last,
        "folded BN (runtime=torch, fp32)": folded,
        "folded BN + bf16 autocast (runtime=torch, bf16)": bf16_autocast,
        "TorchScript freeze (+cl)": jit_freeze,
        "int8 dynamic (spec quantize)": int8_dynamic,
        "OpenVINO f32 (runtime=auto, default)": openvino("fp32"),
        "OpenVINO bf16 (precision=bf16)": openvino("bf16"),
    }
    if not settings.quick:
        variants["torch.compile (folded BN, +cl)"] = compiled
    built, build_s = {}, {}
    with tempfile.TemporaryDirectory(prefix="vmb-graphs-") as cache:
        previous = os.environ.get("VMB_CACHE_DIR")
        os.environ["VMB_CACHE_DIR"] = cache  # cold: the conversion is part of the build time
        try:
            for name, make in variants.items():
                t0 = time.perf_counter()
                fn = make()
                with torch.inference_mode():
                    out = fn(x)  # first call: includes compilation for torch.compile
                build_s[name] = time.perf_counter() - t0
                built[name] = (fn, out.float())
                log(f"blocks: built {name} in {build_s[name]:.1f} s")
        finally:
            if previous is None:
                os.environ.pop("VMB_CACHE_DIR", None)
            else:
                os.environ["VMB_CACHE_DIR"] = previous
    repeats = 1 if settings.quick else settings.repeats
    times: dict[str, list[float]] = {k: [] for k in built}
    with torch.inference_mode():
        for _ in range(repeats):  # interleaved
            for name, (fn, _) in built.items():
                t0 = time.perf_counter()
                fn(x)
                times[name].append(time.perf_counter() - t0)
    eager_s = median(times["eager fp32"])
    rows = {}
    for name, (_fn, out) in built.items():
        s = median(times[name])
        rows[name] = {
            "latency_ms": s * 1000,
            "frames_per_s": batch * T / s,
            "speed_vs_eager": eager_s / s,
            "max_abs_logit_diff": float((out - ref).abs().max()),
            "top1_agreement": float((out.argmax(-1) == ref.argmax(-1)).float().mean()),
            "build_or_compile_s": build_s[name],
        }
    profiles = {
        "folded BN (runtime=torch, fp32)": profile(built["folded BN (runtime=torch, fp32)"][0], x),
        "OpenVINO f32 (runtime=auto, default)": openvino_profile(folded(), x),
    }
    return {
        "input": f"({batch}, {T}, 3, 224, 224) "
        + ("random" if settings.quick else "real decoded clips"),
        "threads": 2,
        "variants": rows,
        "profiles": profiles,
    }


def openvino_profile(module: torch.nn.Module, x: torch.Tensor, top: int = 6) -> list[dict]:
    """OpenVINO's per-layer counters for one inference, summed per executed kernel type."""
    import openvino as ov

    from pipeline.inference_runtime import _convert

    core = ov.Core()
    compiled = core.compile_model(
        _convert(module.requires_grad_(False), x),
        "CPU",
        {"INFERENCE_PRECISION_HINT": "f32", "INFERENCE_NUM_THREADS": 2, "PERF_COUNT": True},
    )
    request = compiled.create_infer_request()
    request.infer([x.numpy()])
    request.infer([x.numpy()])  # the second call: no first-run allocations
    per_type: dict[str, list[float]] = {}
    for info in request.profiling_info:
        if info.status == info.Status.EXECUTED:
            key = f"{info.node_type} ({info.exec_type})"
            per_type.setdefault(key, []).append(info.real_time.total_seconds() * 1000)
    total = sum(sum(v) for v in per_type.values()) or 1.0
    rows = sorted(per_type.items(), key=lambda kv: sum(kv[1]), reverse=True)[:top]
    return [
        {"op": k, "self_cpu_ms": sum(v), "share": sum(v) / total, "calls": len(v)} for k, v in rows
    ]


def profile(fn: Callable, x: torch.Tensor, top: int = 6) -> list[dict]:
    """torch.profiler: the operators taking most self CPU time in one forward."""
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    with torch.inference_mode(), torch_profile(activities=[ProfilerActivity.CPU]) as prof:
        fn(x)
    events = sorted(prof.key_averages(), key=lambda e: e.self_cpu_time_total, reverse=True)
    total = sum(e.self_cpu_time_total for e in events) or 1
    return [
        {
            "op": e.key,
            "self_cpu_ms": e.self_cpu_time_total / 1000,
            "share": e.self_cpu_time_total / total,
            "calls": e.count,
        }
        for e in events[:top]
    ]


def run(settings: Settings) -> dict:
    payload = {
        "models": part_a(settings),
        "frame_average_cpu_options": part_b(settings),
        "reduced_inputs": settings.quick,
    }
    save("blocks", settings, payload)
    return payload
