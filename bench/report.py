"""Ratio tables (printed side by side), PNG plots and the scaling-on-paper table."""

from __future__ import annotations

from pathlib import Path
from typing import Any

# Published GPU inference throughput of EfficientNet-B0 (224x224; Lite0 has about the same
# FLOPs, 0.39 vs 0.41 GFLOPs, and no squeeze-excite/swish, so it is no slower): NVIDIA
# DeepLearningExamples, PyTorch/Classification/ConvNets/efficientnet/README.md, "Inference
# performance results" (PyTorch 21.03 NGC container), batch 256.
GPU_PUBLISHED = {
    "A100 80GB, AMP (published)": 10239,
    "A100 80GB, TF32 (published)": 5154,
    "V100 16GB, AMP (published)": 6176,
    "V100 16GB, FP32 (published)": 2968,
}
GPU_SOURCE = (
    "NVIDIA DeepLearningExamples, PyTorch/Classification/ConvNets/efficientnet/README.md, "
    "EfficientNet-B0 inference throughput at batch 256"
)


def _fmt(x: Any, nd: int = 2) -> str:
    if isinstance(x, float):
        return f"{x:,.{nd}f}"
    return str(x)


def table(headers: list[str], rows: list[list[Any]]) -> str:
    cells = [[_fmt(c) for c in r] for r in rows]
    widths = [
        max(len(h), *(len(r[i]) for r in cells)) if cells else len(h) for i, h in enumerate(headers)
    ]

    def line(r):
        return "| " + " | ".join(c.ljust(w) for c, w in zip(r, widths)) + " |"

    sep = "|" + "|".join("-" * (w + 2) for w in widths) + "|"
    return "\n".join([line(headers), sep, *(line(r) for r in cells)])


def target(ok: bool) -> str:
    return "met" if ok else "NOT met"


def decode_tables(d: dict) -> str:
    rows = []
    for r in d["dense"]:
        c = r["contenders"]
        rows.append(
            [
                r["resolution"],
                r["frames"],
                c["vmb decord"]["frames_per_cpu_s"],
                c["vmb pyav"]["frames_per_cpu_s"],
                c["decord seq"]["frames_per_cpu_s"],
                c["pyav seq"]["frames_per_cpu_s"],
                r["ratio_vs_best_baseline"],
                target(r["ratio_vs_best_baseline"] >= 1.0),
            ]
        )
    out = "Decode, every frame at 224x224 (frames per CPU-second, 1 decoder thread)\n" + table(
        [
            "video",
            "frames",
            "vmb decord",
            "vmb pyav",
            "decord seq",
            "pyav seq",
            "vmb / best baseline",
            "target >= 1.0",
        ],
        rows,
    )
    rows = [
        [
            s["pattern"],
            f"{s['frames_needed']}/{s['frames_total']}",
            s["fraction_needed"],
            s["ours_cost_vs_full"],
            s["identical_to_sequential"],
            target(s["ours_cost_vs_full"] <= 1.0),
        ]
        for s in d["sparse"]
    ]
    out += f"\n\nSparse sampling on {d['sparse_file']}: CPU cost relative to a full decode\n"
    out += table(
        [
            "pattern",
            "frames needed",
            "fraction",
            "vmb cost",
            "same pixels as sequential",
            "vmb <= 1.0",
        ],
        rows,
    )
    return out


def overlap_table(o: dict) -> str:
    rows = [
        [
            k,
            v["decode_only_clips_per_s"],
            v["model_only_clips_per_s"],
            v["decode_cpu_s_per_clip"] + v["model_cpu_s_per_clip"],
            v["end_to_end_clips_per_s"],
            v["steady_clips_per_s"],
            v["ratio"],
            v["ratio_shared"],
            target(v["ratio"] >= 0.85),
        ]
        for k, v in o["configs"].items()
    ]
    return f"Overlap ({o['clips']} clips, {o.get('cores', '?')} cores)\n" + table(
        [
            "config",
            "decode only clips/s",
            "model only clips/s",
            "CPU s per clip (both)",
            "end to end clips/s",
            "steady clips/s",
            "e2e / min",
            "e2e / core bound",
            "target >= 0.85",
        ],
        rows,
    )


def peers_table(p: dict) -> str:
    rows = [
        [
            k,
            v["clips"],
            v["wall_s"],
            v["clips_per_s"],
            v["vs_plain"],
            v["vs_ray_data"],
            f"{v['top1_agreement']:.1%}",
        ]
        for k, v in p["contenders"].items()
    ]
    return (
        f"Peers: whole process, {p['clips_expected']} clips of 8 frames at 224x224, batch "
        f"{p['batch_size']} (targets: vmb >= 2x plain, >= 3x Ray Data, agreement >= 99%)\n"
        + table(
            [
                "contender",
                "clips",
                "wall s",
                "clips/s",
                "vs plain loop",
                "vs Ray Data",
                "top-1 agreement",
            ],
            rows,
        )
    )


def sweep_table(s: dict) -> str:
    rows = [
        [k, v["clips"], v["wall_s"], v["clips_per_s"], v["load"]] for k, v in s["sweep"].items()
    ]
    return f"Settings sweep: vmb run, whole process, {s['clips_expected']} clips\n" + table(
        ["setting", "clips", "wall s", "clips/s", "load"], rows
    )


def memory_table(m: dict) -> str:
    mib = 1024 * 1024
    rows = [
        [
            f"{k} videos",
            v["clips"],
            v["peak_rss_bytes"] / mib,
            v["peak_driver_rss_bytes"] / mib,
            v["peak_object_store_bytes"] / mib,
            v["peak_processes"],
            v["wall_s"],
        ]
        for k, v in m["runs"].items()
    ]
    store = m.get("object_store_growth", float("nan"))
    return (
        f"Memory: growth of peak RSS (driver + Ray processes) {m['rss_growth']:.2f}x, "
        f"{target(m['rss_growth'] <= 1.2)} (target <= 1.2); of peak object-store use "
        f"{store:.2f}x, {target(store <= 1.2)} (target <= 1.2)\n"
        + table(
            [
                "archive",
                "clips",
                "peak RSS MiB",
                "driver MiB",
                "object store MiB",
                "processes",
                "wall s",
            ],
            rows,
        )
    )


def blocks_tables(b: dict) -> str:
    rows = [
        [
            r["name"],
            f"{r['params']:,}",
            r.get("input", ""),
            r["latency_ms"] if "latency_ms" in r else "skipped: " + r.get("skipped", ""),
        ]
        for r in b["models"]
    ]
    out = (
        "Blocks: default configs, one forward, 2 threads"
        + (" (REDUCED inputs: --quick)" if b.get("reduced_inputs") else "")
        + "\n"
        + table(["model", "params", "input", "latency ms"], rows)
    )
    fa = b["frame_average_cpu_options"]
    rows = [
        [
            k,
            v["latency_ms"],
            v["frames_per_s"],
            v["speed_vs_eager"],
            v["max_abs_logit_diff"],
            f"{v['top1_agreement']:.0%}",
            v["build_or_compile_s"],
        ]
        for k, v in fa["variants"].items()
    ]
    out += f"\n\nframe-average (efficientnet-lite0) on CPU, input {fa['input']}\n" + table(
        [
            "variant",
            "latency ms",
            "frames/s",
            "speed vs eager",
            "max |logit diff|",
            "top-1 agree",
            "build/compile s",
        ],
        rows,
    )
    for name, ops in fa.get("profiles", {}).items():
        how = (
            "OpenVINO per-layer counters, one inference"
            if "OpenVINO" in name
            else "torch.profiler, self CPU time of one forward"
        )
        out += f"\n\nprofile, {name} ({how})\n" + table(
            ["operator", "self CPU ms", "share", "calls"],
            [[o["op"], o["self_cpu_ms"], f"{o['share']:.0%}", o["calls"]] for o in ops],
        )
    return out


def scaling_rows(decode: dict | None, blocks: dict | None) -> list[list[Any]]:
    """Decode cores per GPU = GPU frames/s x decoded frames per model frame / per-core decode."""
    if not decode:
        return []
    rows = []
    per_core = {
        r["resolution"]: r["contenders"]["vmb decord"]["frames_per_cpu_s"] for r in decode["dense"]
    }
    # classify sampling: 8 frames every 4th spans 29 frames per 8 used; the decoder skips the
    # frames no clip needs at the measured fraction of a full decode's cost
    classify = [s for s in decode.get("sparse", []) if s["pattern"].startswith("every 4th")]
    ratio = 29 / 8 * (classify[0]["ours_cost_vs_full"] if classify else 1.0)
    for gpu, fps in GPU_PUBLISHED.items():
        rows.append(
            [
                gpu,
                fps,
                *[
                    fps * ratio / per_core[res]
                    for res in ("360p", "720p", "1080p")
                    if res in per_core
                ],
            ]
        )
    if blocks:
        v = blocks["frame_average_cpu_options"]["variants"]
        best = max(v.values(), key=lambda r: r["frames_per_s"])["frames_per_s"]
        rows.append(
            [
                "this CPU, 2 threads (measured, fastest variant)",
                best,
                *[
                    best * ratio / per_core[res]
                    for res in ("360p", "720p", "1080p")
                    if res in per_core
                ],
            ]
        )
    return rows


def scaling_table(decode: dict | None, blocks: dict | None) -> str:
    rows = scaling_rows(decode, blocks)
    if not rows:
        return ""
    return (
        "Scaling on paper: decode cores needed per accelerator for frame-average "
        "(classify sampling: 29 frames decoded per 8 used, unneeded ones skipped at the "
        "measured cost)\n"
        + table(
            ["model host", "model frames/s", "cores @360p", "cores @720p", "cores @1080p"], rows
        )
        + f"\nGPU figures: {GPU_SOURCE}."
    )


def plots(results: dict[str, dict], out_dir: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out_dir.mkdir(parents=True, exist_ok=True)
    written = []

    def save(fig, name):
        path = out_dir / name
        fig.tight_layout()
        fig.savefig(path, dpi=110)
        plt.close(fig)
        written.append(path)

    if "decode" in results:
        d = results["decode"]
        names = ["vmb decord", "vmb pyav", "decord seq", "pyav seq"]
        fig, ax = plt.subplots(figsize=(7, 3.6))
        res = [r["resolution"] for r in d["dense"]]
        for i, n in enumerate(names):
            ax.bar(
                [j + i * 0.2 for j in range(len(res))],
                [r["contenders"][n]["frames_per_cpu_s"] for r in d["dense"]],
                0.2,
                label=n,
            )
        ax.set_xticks([j + 0.3 for j in range(len(res))], res)
        ax.set_ylabel("frames per CPU-second at 224x224")
        ax.set_title("Decode per core")
        ax.legend()
        save(fig, "decode.png")
        fig, ax = plt.subplots(figsize=(7, 3.6))
        sp = d["sparse"]
        xs = range(len(sp))
        ax.bar(
            [x - 0.2 for x in xs],
            [s["fraction_needed"] for s in sp],
            0.4,
            label="fraction of frames needed",
        )
        ax.bar(
            [x + 0.2 for x in xs],
            [s["ours_cost_vs_full"] for s in sp],
            0.4,
            label="vmb cost / full decode",
        )
        ax.axhline(1.0, color="k", lw=0.8)
        ax.set_xticks(list(xs), [s["pattern"].split(" (")[0] for s in sp], fontsize=8)
        ax.set_title("Sparse sampling cost")
        ax.legend(fontsize=8)
        save(fig, "sparse.png")
    if "peers" in results:
        p = results["peers"]["contenders"]
        fig, ax = plt.subplots(figsize=(7, 3.4))
        ax.barh(
            list(p),
            [v["clips_per_s"] for v in p.values()],
            color=["grey", "grey", "C0", "C2", "C1"][: len(p)],
        )
        ax.set_xlabel("clips/s, whole process (start-up included)")
        ax.invert_yaxis()
        ax.set_title("End to end against the peers")
        save(fig, "peers.png")
    if "blocks" in results:
        v = results["blocks"]["frame_average_cpu_options"]["variants"]
        fig, ax = plt.subplots(figsize=(7, 3.4))
        ax.barh(list(v), [r["speed_vs_eager"] for r in v.values()])
        ax.axvline(1.0, color="k", lw=0.8)
        ax.set_xlabel("speed vs eager fp32 (2 threads)")
        ax.invert_yaxis()
        ax.set_title("frame-average / efficientnet-lite0 CPU options")
        save(fig, "cpu_options.png")
    if "memory" in results:
        m = results["memory"]["runs"]
        fig, ax = plt.subplots(figsize=(6, 3.2))
        ax.bar([f"{k} videos" for k in m], [v["peak_rss_bytes"] / 2**20 for v in m.values()])
        ax.set_ylabel("peak RSS, driver + Ray (MiB)")
        ax.set_title("Memory vs archive size")
        save(fig, "memory.png")
    return written


def render(results: dict[str, dict]) -> str:
    parts = []
    if "decode" in results:
        parts.append(decode_tables(results["decode"]))
    if "overlap" in results:
        parts.append(overlap_table(results["overlap"]))
    if "peers" in results:
        parts.append(peers_table(results["peers"]))
    if "sweep" in results:
        parts.append(sweep_table(results["sweep"]))
    if "memory" in results:
        parts.append(memory_table(results["memory"]))
    if "blocks" in results:
        parts.append(blocks_tables(results["blocks"]))
    s = scaling_table(results.get("decode"), results.get("blocks"))
    if s:
        parts.append(s)
    return "\n\n".join(parts)
