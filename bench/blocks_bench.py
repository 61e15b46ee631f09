"""5. Blocks: forward latency and parameters of every registered model, and CPU inference options.

Part A: each name of ``blocks.list_blocks()`` built at its default configuration (random
weights: latency does not depend on them), one forward at the input size in ``INPUTS`` (batch
1 unless stated), 2 torch threads, median of ``repeats`` after one warm-up. ``--quick``
reduces every input (and says so).

Part B: efficientnet-lite0 inside frame-average, a batch of 8 real clips (8 frames at 224x224,
decoded from the peers archive), eager fp32 against: channels_last; bf16 autocast; bf16
weights (the ``bench.proto`` prototype); TorchScript trace + freeze (folds BatchNorm into the
convolutions); ``torch.compile`` (default mode; compile time reported; full run only); int8
dynamic quantisation (the spec's ``quantize = "int8"``: Linear layers only). Speed ratio vs
eager fp32, max |logit difference| and top-1 agreement with eager fp32.
"""

from __future__ import annotations

import inspect
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
        "crn": ("objects (1, 16, 512), context (1, 512)",
                lambda: (torch.randn(1, 16, 512), torch.randn(1, 512))),
        "hcrn-classifier": ("frame feats (1, 8, 16, 2048) + motion",
                            lambda: _hcrn_inputs()),
        "ifnet-eccv": (f"2 x (1, 3, {g}, {gw})", lambda: (torch.rand(1, 3, g, gw), torch.rand(1, 3, g, gw))),
        "ifnet-v4": (f"2 x (1, 3, {g}, {gw})", lambda: (torch.rand(1, 3, g, gw), torch.rand(1, 3, g, gw))),
        "wrqe": (f"(1, 3, 3, {g}, {gw}) + side (1, 3, 10)",
                 lambda: (torch.rand(1, 3, 3, g, gw), torch.rand(1, 3, 10))),
        "fuseformer": (f"(1, 5, 3, {fh}, {fw})", lambda: (torch.rand(1, 5, 3, fh, fw) * 2 - 1,)),
        "fuseformer-block": ("tokens (1, 5*720, 512) (a 60x108 map, 5 frames)",
                             lambda: (torch.randn(1, 5 * 720, 512),)),
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
    for path in inputs.videos(inputs.peers_archive(False)) + inputs.videos(inputs.sweep_archive(False)):
        probe = probe_video(str(path))
        plans = plan_clips(probe.num_frames, probe.fps, spec)[:2]
        out.extend(f for _, f in iter_clips(open_reader("decord", str(path), probe, (224, 224)), plans, (224, 224)))
        if len(out) >= n:
            break
    x = torch.from_numpy(__import__("numpy").stack(out[:n])).permute(0, 1, 4, 2, 3).float()
    return (x - 127.0) / 128.0  # (n, 8, 3, 224, 224)


def part_b(settings: Settings) -> dict:
    import blocks
    from bench.proto import apply_bf16

    torch.set_num_threads(2)
    batch = 2 if settings.quick else 8
    if settings.quick:
        x = torch.randn(batch, T, 3, 224, 224)
    else:
        x = _real_clips(batch)
    base = blocks.create_block("frame-average").eval()
    with torch.inference_mode():
        ref = base(x)
    variants: dict[str, Callable[[], Callable]] = {}

    def eager():
        return base

    def channels_last():
        m = blocks.create_block("frame-average").eval().to(memory_format=torch.channels_last)
        return m

    def bf16_autocast():
        m = channels_last()

        def f(v):
            with torch.autocast("cpu", dtype=torch.bfloat16):
                return m(v).float()
        return f

    def bf16_weights():
        return apply_bf16(blocks.create_block("frame-average").eval())

    def fold_bn_fp32():
        from bench.proto import fold_bn

        m = channels_last()
        fold_bn(m.encoder)
        return m

    def bf16_fold_bn():
        from bench.proto import fold_bn

        m = blocks.create_block("frame-average").eval()
        fold_bn(m.encoder)
        return apply_bf16(m)

    def jit_freeze():
        m = channels_last()
        with torch.inference_mode(), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            flat = x[:1].flatten(0, 1).contiguous(memory_format=torch.channels_last)
            enc = torch.jit.optimize_for_inference(torch.jit.freeze(torch.jit.trace(m.encoder, flat)))

        def f(v):
            b, t = v.shape[:2]
            logits = enc(v.flatten(0, 1).contiguous(memory_format=torch.channels_last))  # (B*T, K)
            return logits.view(b, t, -1).mean(1)  # the head is linear: mean of logits = head(mean)
        return f

    def compiled():
        m = channels_last()
        f = torch.compile(m, dynamic=False)
        return f

    def int8_dynamic():
        m = blocks.create_block("frame-average").eval()
        return torch.ao.quantization.quantize_dynamic(m, {torch.nn.Linear, torch.nn.LSTM},
                                                      dtype=torch.qint8)

    variants = {"eager fp32": eager, "channels_last": channels_last, "bf16 autocast (+cl)": bf16_autocast,
                "bf16 weights (+cl) [proto]": bf16_weights,
                "folded BN fp32 (+cl) [proto]": fold_bn_fp32,
                "bf16 weights + folded BN (+cl) [proto]": bf16_fold_bn,
                "TorchScript freeze (+cl)": jit_freeze,
                "int8 dynamic (spec quantize)": int8_dynamic}
    if not settings.quick:
        variants["torch.compile (+cl)"] = compiled
    built, build_s = {}, {}
    for name, make in variants.items():
        t0 = time.perf_counter()
        fn = make()
        with torch.inference_mode():
            out = fn(x)  # first call: includes compilation for torch.compile
        build_s[name] = time.perf_counter() - t0
        built[name] = (fn, out.float())
        log(f"blocks: built {name} in {build_s[name]:.1f} s")
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
    for name, (fn, out) in built.items():
        s = median(times[name])
        rows[name] = {"latency_ms": s * 1000, "frames_per_s": batch * T / s, "speed_vs_eager": eager_s / s,
                      "max_abs_logit_diff": float((out - ref).abs().max()),
                      "top1_agreement": float((out.argmax(-1) == ref.argmax(-1)).float().mean()),
                      "build_or_compile_s": build_s[name]}
    profiles = {name: profile(built[name][0], x)
                for name in ("channels_last", "bf16 weights + folded BN (+cl) [proto]")}
    return {"input": f"({batch}, {T}, 3, 224, 224) {'random' if settings.quick else 'real decoded clips'}",
            "threads": 2, "variants": rows, "profiles": profiles}


def profile(fn: Callable, x: torch.Tensor, top: int = 6) -> list[dict]:
    """torch.profiler: the operators taking most self CPU time in one forward."""
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    with torch.inference_mode(), torch_profile(activities=[ProfilerActivity.CPU]) as prof:
        fn(x)
    events = sorted(prof.key_averages(), key=lambda e: e.self_cpu_time_total, reverse=True)
    total = sum(e.self_cpu_time_total for e in events) or 1
    return [{"op": e.key, "self_cpu_ms": e.self_cpu_time_total / 1000, "share": e.self_cpu_time_total / total,
             "calls": e.count} for e in events[:top]]


def run(settings: Settings) -> dict:
    payload = {"models": part_a(settings), "frame_average_cpu_options": part_b(settings),
               "reduced_inputs": settings.quick}
    save("blocks", settings, payload)
    return payload
