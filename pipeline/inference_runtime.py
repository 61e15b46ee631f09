"""Where a model's forward runs: eager PyTorch, or the same graph compiled by OpenVINO on CPU.

A runner hands over a ``torch.nn.Module`` whose forward takes the raw batch (uint8 clips, so the
normalisation is part of the graph) and returns a tuple of tensors. ``compile_for_cpu`` traces it
once at the batch's shape, converts the trace to an OpenVINO model and compiles that for the CPU
with the precision and thread count of the model actor.

OpenVINO fuses each convolution with its bias and activation and runs oneDNN kernels with
pre-packed weights, which is where the time goes on CPU (docs/BENCHMARKS.md §3, §5). The graph
computes the same function as the eager module; in ``f32`` the outputs agree to float rounding
(about 1e-6 on the classifier logits), ``bf16`` uses the CPU's bfloat16 units (AMX / AVX-512 BF16)
and can change near-tie top-1 labels.

A converted graph is checked against the eager module once, then cached on disk (``VMB_CACHE_DIR``,
default ``~/.cache/vmb``) under a key made of the weights, the model's source code, the input
shape and the library versions, so only the first job on a machine pays the trace and the check
(a few seconds); later jobs load the graph in ~0.2 s.
"""

from __future__ import annotations

import hashlib
import importlib.util
import inspect
import json
import logging
import os
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from pipeline.model_options import Precision

log = logging.getLogger(__name__)

_OV_PRECISION: dict[Precision, str] = {"fp32": "f32", "bf16": "bf16"}  # -> OpenVINO hint
# Largest |compiled - eager| accepted when a graph is converted, relative to max(1, max |eager|),
# checked in f32 whatever precision the job runs at: f32 differs by summation order only.
_TOLERANCE = 1e-3


class RuntimeUnavailable(RuntimeError):
    """The requested inference runtime cannot run this model here."""


def openvino_available() -> bool:
    return importlib.util.find_spec("openvino") is not None


def cache_dir() -> Path:
    root = os.environ.get("VMB_CACHE_DIR") or os.path.join(os.path.expanduser("~"), ".cache", "vmb")
    return Path(root) / "openvino"


def graph_key(module: torch.nn.Module, example: torch.Tensor) -> str:
    """Content key of a converted graph: everything the trace depends on.

    Weights (every parameter and buffer), the module tree, the source files of its classes,
    the input's dtype and shape (the graph is static), and the torch / OpenVINO versions.
    """
    import openvino

    h = hashlib.sha256()
    for name, tensor in list(module.state_dict().items()):
        h.update(name.encode())
        h.update(str(tuple(tensor.shape)).encode())
        h.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    h.update(repr(module).encode())  # the module tree: classes and layer settings
    sources = sorted({inspect.getsourcefile(type(m)) or "" for m in module.modules()})
    for path in sources:
        if path and os.path.exists(path):
            h.update(Path(path).read_bytes())
    h.update(
        json.dumps(
            {
                "shape": list(example.shape),
                "dtype": str(example.dtype),
                "torch": torch.__version__,
                "openvino": openvino.__version__,
            },
            sort_keys=True,
            default=str,
        ).encode()
    )
    return h.hexdigest()[:32]


def _convert(module: torch.nn.Module, example: torch.Tensor):
    """Trace ``module`` at ``example`` and convert the trace for exactly that input shape.

    The shape is static on purpose: a trace records the Python control flow taken for the
    example's shape, so the graph is only trusted at that shape (smaller batches are padded).
    Uses OpenVINO's PyTorch frontend directly (``openvino.convert_model`` does the same plus usage
    telemetry, which a batch job has no business sending).
    """
    import openvino as ov
    from openvino._offline_transformations import apply_moc_transformations
    from openvino.frontend import FrontEndManager
    from openvino.frontend.pytorch.ts_decoder import TorchScriptPythonDecoder

    with torch.no_grad():
        traced = torch.jit.trace(module, example, check_trace=False)
        decoder = TorchScriptPythonDecoder(traced, shared_memory=False)  # alive until converted
        frontend = FrontEndManager().load_by_framework("pytorch")
        graph = frontend.load(decoder)
        place = graph.get_inputs()[0]
        graph.set_partial_shape(place, ov.PartialShape(list(example.shape)))
        graph.set_element_type(place, ov.Type.u8 if example.dtype == torch.uint8 else ov.Type.f32)
        model = frontend.convert(graph)
    apply_moc_transformations(model, cf=False, smart_reshape=True)
    return model


def _save(model, path: Path) -> None:
    import openvino as ov

    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=path.parent) as tmp:
            tmp_xml = Path(tmp) / path.name
            ov.save_model(model, str(tmp_xml), compress_to_fp16=False)
            os.replace(tmp_xml.with_suffix(".bin"), path.with_suffix(".bin"))
            os.replace(tmp_xml, path)  # the .xml last: its presence means both are complete
    except OSError as err:  # a read-only home is not a reason to fail the job
        log.warning("could not cache the converted graph in %s: %s", path.parent, err)


def _example_batch(example: torch.Tensor) -> torch.Tensor:
    """A deterministic, non-trivial input of the example's shape and dtype."""
    gen = torch.Generator().manual_seed(0)
    if example.dtype == torch.uint8:
        return torch.randint(0, 256, example.shape, generator=gen, dtype=torch.uint8)
    return torch.randn(example.shape, generator=gen, dtype=example.dtype)


def _compile(core, model, precision: str, threads: int):
    return core.compile_model(
        model,
        "CPU",
        {
            "INFERENCE_PRECISION_HINT": _OV_PRECISION[precision],
            "INFERENCE_NUM_THREADS": max(1, int(threads)),
            "PERFORMANCE_HINT": "LATENCY",
            # The actor shares its cores with decode processes: let the OS place threads.
            "ENABLE_CPU_PINNING": False,
        },
    )


class ConversionMismatch(RuntimeError):
    """The compiled graph does not compute what the eager module computes."""


class OpenVINOGraph:
    """A module compiled by OpenVINO for the CPU at one input shape.

    Called with a numpy batch of at most the compiled batch size (smaller batches are padded);
    returns the module's outputs as numpy arrays. A freshly converted graph is checked against the
    eager module on a random batch, in f32, before it is used or cached (``ConversionMismatch``).
    """

    def __init__(
        self, module: torch.nn.Module, example: torch.Tensor, *, precision: str, threads: int
    ):
        import openvino as ov

        self.shape = tuple(example.shape)
        self.key = graph_key(module, example)
        core = ov.Core()
        path = cache_dir() / f"{self.key}.xml"
        model, self.cached = None, False
        if path.exists() and path.with_suffix(".bin").exists():
            try:
                model, self.cached = core.read_model(str(path)), True
            except RuntimeError as err:  # a truncated or foreign file: rebuild it
                log.warning("ignoring unreadable cached graph %s: %s", path, err)
        if model is None:
            model = _convert(module, example)
        if not self.cached:
            self._verify(core, model, module, _example_batch(example), threads)
            _save(model, path)
        self.compiled = _compile(core, model, precision, threads)
        self.request = self.compiled.create_infer_request()

    @staticmethod
    def _verify(core, model, module: torch.nn.Module, batch: torch.Tensor, threads: int) -> None:
        with torch.inference_mode():
            expected = module(batch)
        expected = expected if isinstance(expected, (tuple, list)) else (expected,)
        outputs = (
            _compile(core, model, "fp32", threads).create_infer_request().infer([batch.numpy()])
        )
        got = [np.asarray(outputs[i]) for i in range(len(expected))]
        for i, (want, have) in enumerate(zip(expected, got)):
            want = want.float().numpy()
            scale = max(1.0, float(np.abs(want).max()))
            err = float(np.abs(want - have).max())
            if not np.isfinite(err) or err > _TOLERANCE * scale:
                raise ConversionMismatch(
                    f"output {i} differs from the eager model by {err:.3g} "
                    f"(allowed {_TOLERANCE * scale:.3g})"
                )

    def __call__(self, batch: np.ndarray) -> tuple[np.ndarray, ...]:
        n = len(batch)
        if n > self.shape[0] or tuple(batch.shape[1:]) != self.shape[1:]:
            raise ValueError(
                f"batch of shape {tuple(batch.shape)} does not fit the compiled shape {self.shape}"
            )
        if n < self.shape[0]:  # pad to the compiled batch; the padding's outputs are dropped
            padded = np.zeros(self.shape, dtype=batch.dtype)
            padded[:n] = batch
            batch = padded
        outputs = self.request.infer([np.ascontiguousarray(batch)])
        return tuple(np.array(outputs[i][:n]) for i in range(len(self.compiled.outputs)))


def compile_for_cpu(
    module: torch.nn.Module, example: torch.Tensor, *, runtime: str, precision: str, threads: int
) -> Callable[[np.ndarray], Sequence[Any]] | None:
    """An OpenVINO-compiled ``module`` when ``runtime`` asks for it (or ``auto`` allows it).

    Returns None when the forward should stay in PyTorch (``runtime = "torch"``, or ``auto`` where
    OpenVINO is not installed or cannot convert this model). Raises ``RuntimeUnavailable`` when
    ``runtime = "openvino"`` was asked for and cannot be honoured.
    """
    if runtime == "torch":
        return None
    if not openvino_available():
        if runtime == "openvino":
            raise RuntimeUnavailable(
                "runtime 'openvino' needs the openvino package, "
                "which is not installed in this environment"
            )
        return None
    try:
        graph = OpenVINOGraph(module, example, precision=precision, threads=threads)
    except Exception as err:  # conversion of an arbitrary model can fail in many ways
        if runtime == "openvino":
            raise RuntimeUnavailable(
                f"OpenVINO could not convert the model: {type(err).__name__}: {err}"
            ) from err
        log.warning(
            "OpenVINO could not convert the model (%s: %s); running it in PyTorch",
            type(err).__name__,
            str(err).splitlines()[0] if str(err) else "",
        )
        return None
    log.info(
        "model compiled by OpenVINO (%s, %d threads, graph %s, %s)",
        precision,
        threads,
        graph.key,
        "cached" if graph.cached else "converted",
    )
    return graph


__all__ = [
    "ConversionMismatch",
    "OpenVINOGraph",
    "RuntimeUnavailable",
    "cache_dir",
    "compile_for_cpu",
    "graph_key",
    "openvino_available",
]
