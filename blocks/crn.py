"""Conditional Relation Network (CRN) and the HCRN visual hierarchy as a video classifier head.

Le et al., "Hierarchical Conditional Relation Networks for Video Question Answering", CVPR 2020,
arXiv 2002.10698; official code: github.com/thaolmk54/hcrn-videoqa (``model/CRN.py``,
``model/HCRN.py``). This is an independent re-implementation whose parameter names match the
official ``CRN`` module, so an official ``CRN`` state dict loads strictly into :class:`CRN`.

CRN semantics (kept exactly as in the official code; verified against it by a golden test):

* Objects: ``N`` features ``(B, N, D)`` or ``(B, N, L, D)``; condition ``(B, D_cond)``.
* Scales. ``max_subset_size`` (``m``) is really "how many scales, largest subsets first":

  - ``m == N`` and ``N > 2``: subsets of size ``k = N-1, N-2, ..., 2`` (``N-2`` scales; the
    full set is skipped). The official module still allocates a fusion layer for ``k = N`` at
    index 0 and never uses it; we keep that unused layer so checkpoints load strictly.
  - otherwise (``m < N``, ``m > N`` or ``N == 2``): ``min(N-1, m)`` scales ``k = N, N-1, ...``
    — the full set *is* included, and the smallest subsets are dropped.

  :meth:`CRN.scale_sizes` returns the list for a given ``N``.
* Per scale ``k``: ``S = min(spl_resolution, C(N, k))`` distinct subsets are drawn without
  replacement from the lexicographic list of ``k``-subsets; for each, ``g = mean`` of the member
  features, ``h = ELU(W_k [g ‖ cond])`` (times ``sigmoid(G_k [g ‖ cond])`` when ``gating``);
  the scale output is the mean of ``h`` over the ``S`` subsets.
* Sampling. The official code draws with the global ``np.random``. Here a ``torch.Generator``
  decides: in eval mode every forward re-seeds a fresh generator with ``config.seed`` (so eval is
  reproducible and identical call to call); in training a generator owned by the module, seeded
  once with ``config.seed``, advances so each step samples afresh. A caller may pass its own
  ``generator`` to ``forward`` instead. When ``spl_resolution >= C(N, k)`` every subset is used
  and the result does not depend on the generator at all.
* Output. The official module returns a Python list of per-scale tensors; :meth:`CRN.forward`
  stacks them into ``(B, n_scales, D)`` (or ``(B, n_scales, L, D)``), largest ``k`` first, and
  :meth:`CRN.forward_list` returns the official list.

HCRN (``hcrn-classifier``): the official visual hierarchy with the question branch replaced by a
classification head (see :class:`HCRNClassifier`).
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from functools import lru_cache

import torch
from torch import nn

from blocks.registry import register_block

_HCRN_PAPER = (
    "Le et al., Hierarchical Conditional Relation Networks for Video Question Answering, CVPR 2020"
)
_HCRN_REPO = "https://github.com/thaolmk54/hcrn-videoqa"


@dataclass(frozen=True, kw_only=True)
class CRNConfig:
    """Configuration of one CRN unit (field names follow the official constructor).

    Attributes:
        module_dim: feature width ``D`` of objects and outputs.
        num_objects: number of input objects ``N`` the unit is built for.
        max_subset_size: number of scales, largest first (see the module docstring).
        gating: multiply each relation by a sigmoid gate computed from the same input.
        spl_resolution: subsets sampled per scale.
        cond_dim: width of the conditioning feature; None means ``module_dim`` (official).
        seed: seed of the subset-sampling generator.
    """

    module_dim: int = 512
    num_objects: int = 16
    max_subset_size: int = 16
    gating: bool = False
    spl_resolution: int = 1
    cond_dim: int | None = None
    seed: int = 0

    def __post_init__(self) -> None:
        if self.num_objects < 2:
            raise ValueError(f"num_objects must be >= 2, got {self.num_objects}")
        if self.max_subset_size < 1 or self.spl_resolution < 1 or self.module_dim < 1:
            raise ValueError("max_subset_size, spl_resolution and module_dim must be positive")


@lru_cache(maxsize=256)
def _subsets(num_objects: int, k: int) -> torch.Tensor:
    """Every ``k``-subset of ``range(num_objects)``, lexicographic: ``(C(N, k), k)`` int64."""
    return torch.tensor(list(itertools.combinations(range(num_objects), k)), dtype=torch.long)


def crn_scale_sizes(num_objects: int, max_subset_size: int) -> list[int]:
    """Subset sizes ``k`` the official CRN evaluates for ``num_objects`` inputs, in output order."""
    scales = list(range(num_objects, 1, -1))  # N, N-1, ..., 2
    start = 1 if len(scales) > 1 and max_subset_size == num_objects else 0
    return scales[start : min(len(scales), max_subset_size)]


class CRN(nn.Module):
    """Conditional Relation Network unit.

    Inputs:
        objects: ``(B, N, D)`` or ``(B, N, L, D)`` with ``N == config.num_objects``.
        cond: ``(B, D_cond)``; for 4-D objects also ``(B, 1, D_cond)`` or ``(B, L, D_cond)``.
    Outputs:
        ``(B, n_scales, D)`` or ``(B, n_scales, L, D)``, scales ordered as
        :meth:`scale_sizes` (largest subsets first).
    """

    def __init__(self, config: CRNConfig) -> None:
        super().__init__()
        self.config = config
        dim = config.module_dim
        in_dim = dim + (config.cond_dim if config.cond_dim is not None else dim)
        num_layers = min(config.num_objects, config.max_subset_size + 1) - 1
        # Index i serves scale index i of the official loop (index 0 unused when m == N).
        self.k_objects_fusion = nn.ModuleList(nn.Linear(in_dim, dim) for _ in range(num_layers))
        if config.gating:
            self.gate_k_objects_fusion = nn.ModuleList(
                nn.Linear(in_dim, dim) for _ in range(num_layers)
            )
        self.activation = nn.ELU()
        self._train_generator = torch.Generator().manual_seed(config.seed)

    def scale_sizes(self, num_objects: int | None = None) -> list[int]:
        """Subset sizes ``k`` of the output scales, largest first."""
        n = self.config.num_objects if num_objects is None else num_objects
        return crn_scale_sizes(n, self.config.max_subset_size)

    def _layer_index(self, n: int) -> int:
        """Fusion-layer index of the first output scale (1 when the full set is skipped)."""
        return 1 if n > 2 and self.config.max_subset_size == n else 0

    def sample_subsets(self, k: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """Subsets used at scale ``k``: ``(S, k)`` indices, ``S = min(spl_resolution, C(N, k))``.

        Uses every subset (in lexicographic order) when ``spl_resolution`` covers them all. Without
        ``generator``, the eval default is a fresh generator seeded with ``config.seed``.
        """
        all_subsets = _subsets(self.config.num_objects, k)  # (C(N,k), k)
        count = all_subsets.shape[0]
        if self.config.spl_resolution >= count:
            return all_subsets
        if generator is None:
            generator = self._default_generator()
        pick = torch.randperm(count, generator=generator)[: self.config.spl_resolution]
        return all_subsets[pick]  # (S, k)

    def _default_generator(self) -> torch.Generator:
        if self.training:
            return self._train_generator
        return torch.Generator().manual_seed(self.config.seed)

    def _check(self, objects: torch.Tensor, cond: torch.Tensor) -> None:
        n, dim = self.config.num_objects, self.config.module_dim
        cond_dim = self.config.cond_dim if self.config.cond_dim is not None else dim
        if objects.dim() not in (3, 4) or objects.shape[1] != n or objects.shape[-1] != dim:
            raise ValueError(
                f"CRN expected objects of shape (B, {n}, {dim}) or (B, {n}, L, {dim}), "
                f"got {tuple(objects.shape)}"
            )
        batch = objects.shape[0]
        ok = cond.dim() == 2 and cond.shape == (batch, cond_dim)
        if objects.dim() == 4 and cond.dim() == 3:
            ok = (
                cond.shape[0] == batch
                and cond.shape[1] in (1, objects.shape[2])
                and cond.shape[2] == cond_dim
            )
        if not ok:
            raise ValueError(
                f"CRN expected cond of shape ({batch}, {cond_dim})"
                + (f" or ({batch}, 1|L, {cond_dim})" if objects.dim() == 4 else "")
                + f", got {tuple(cond.shape)}"
            )

    def forward_list(
        self, objects: torch.Tensor, cond: torch.Tensor, generator: torch.Generator | None = None
    ) -> list[torch.Tensor]:
        """The official output format: one ``(B, D)`` (or ``(B, L, D)``) tensor per scale."""
        self._check(objects, cond)
        if objects.dim() == 4:
            if cond.dim() == 2:
                cond = cond.unsqueeze(1)  # (B, 1, Dc)
            cond = cond.expand(-1, objects.shape[2], -1)  # (B, L, Dc)
        if generator is None:
            generator = self._default_generator()  # one draw sequence for all scales of this call
        n = objects.shape[1]
        first_layer = self._layer_index(n)
        outputs = []
        for offset, k in enumerate(self.scale_sizes(n)):
            idx = self.sample_subsets(k, generator).to(objects.device)  # (S, k)
            members = objects[:, idx]  # (B, S, k, [L,] D)
            g = members.mean(dim=2)  # (B, S, [L,] D)
            c = cond.unsqueeze(1).expand(-1, g.shape[1], *cond.shape[1:])  # (B, S, [L,] Dc)
            h_in = torch.cat([g, c], dim=-1)  # (B, S, [L,] D + Dc)
            layer = first_layer + offset
            h = self.activation(self.k_objects_fusion[layer](h_in))
            if self.config.gating:
                h = h * torch.sigmoid(self.gate_k_objects_fusion[layer](h_in))
            outputs.append(h.mean(dim=1))  # (B, [L,] D)
        return outputs

    def forward(
        self, objects: torch.Tensor, cond: torch.Tensor, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        return torch.stack(
            self.forward_list(objects, cond, generator), dim=1
        )  # (B, n_scales, [L,] D)


@register_block(
    "crn",
    paper=_HCRN_PAPER,
    arxiv="2002.10698",
    repo=_HCRN_REPO,
    input_layout="objects (B, N, D) or (B, N, L, D) + cond (B, D_cond) -> (B, n_scales, [L,] D)",
    value_range="any real-valued features",
    tiny_config={"module_dim": 8, "num_objects": 5, "max_subset_size": 5, "spl_resolution": 2},
    example_inputs=lambda b: (
        torch.randn(b, 5, 8, generator=torch.Generator().manual_seed(0)),
        torch.randn(b, 8, generator=torch.Generator().manual_seed(1)),
    ),
    weights_licence="Apache-2.0 (official code); no bundled weights",
    needs_weights=False,
    description="Conditional relation network over k-subsets of a feature set",
)
def build_crn(**config) -> CRN:
    """Build a :class:`CRN` from :class:`CRNConfig` fields."""
    return CRN(CRNConfig(**config))


# --------------------------------------------------------------------------- HCRN classifier


@dataclass(frozen=True, kw_only=True)
class HCRNClassifierConfig:
    """HCRN visual hierarchy with a classification head.

    Attributes:
        vision_dim: width of the per-frame appearance features.
        motion_dim: width of the per-clip motion features; None means ``vision_dim`` (official,
            and what :func:`motion_from_frame_features` produces).
        module_dim: internal width.
        num_clips: clips per video (official ``k_max_clip_level``, 8).
        frames_per_clip: frames per clip (official ``k_max_frame_level``, 16).
        spl_resolution: subsets sampled per CRN scale.
        num_classes: logits produced by the head.
        dropout: dropout of the head (official 0.15).
        seed: seed of the CRN subset sampling.
    """

    vision_dim: int = 2048
    motion_dim: int | None = None
    module_dim: int = 512
    num_clips: int = 8
    frames_per_clip: int = 16
    spl_resolution: int = 1
    num_classes: int = 400
    dropout: float = 0.15
    seed: int = 0

    def __post_init__(self) -> None:
        if self.num_clips < 3 or self.frames_per_clip < 3:
            raise ValueError(
                "HCRN needs num_clips >= 3 and frames_per_clip >= 3 (its CRNs skip the full set "
                f"and keep subsets down to size 2), got {self.num_clips} and {self.frames_per_clip}"
            )


def motion_from_frame_features(frame_feats: torch.Tensor) -> torch.Tensor:
    """A motion feature per clip derived from appearance features when no motion stream exists.

    The official HCRN motion feature comes from a 3-D CNN (ResNeXt-101) over each clip. Without
    one, the pipeline should use the mean absolute difference of consecutive frame features in
    the clip: it is zero for a static clip and grows with appearance change, per feature
    dimension, and keeps the width ``D`` so ``motion_dim == vision_dim``. (A signed mean of
    differences would telescope to ``(last - first) / (F - 1)`` and miss back-and-forth motion.)

    Inputs:
        frame_feats: ``(B, num_clips, F, D)`` with ``F >= 2``.
    Outputs:
        ``(B, num_clips, D)``.
    """
    if frame_feats.dim() != 4 or frame_feats.shape[2] < 2:
        raise ValueError(
            "expected frame features of shape (B, num_clips, F>=2, D), "
            f"got {tuple(frame_feats.shape)}"
        )
    return (frame_feats[:, :, 1:] - frame_feats[:, :, :-1]).abs().mean(dim=2)  # (B, C, D)


class HCRNClassifier(nn.Module):
    """HCRN visual hierarchy (motion-conditioned CRNs at clip and video level) + classifier.

    Follows the official ``InputUnitVisual`` with its question-conditioned CRNs removed:

    1. clip level: frame features are projected (``appearance_feat_proj``); each clip's frames go
       through ``clip_level_motion_cond`` (CRN over ``F`` frames, conditioned on the clip's
       projected motion, ``clip_level_motion_proj``) → ``F-2`` relation features per clip.
       All clips share one subset draw per scale (they are folded into the batch); the official
       loop draws per clip.
    2. video level: an LSTM (``sequence_encoder``) over the clips' motion features gives the
       final hidden state, projected by ``video_level_motion_proj``; ``video_level_motion_cond``
       (CRN over the ``C`` clip outputs, each ``(F-2, D)``) gives ``(C-2) * (F-2)`` tokens.
    3. pooling: softmax attention over the tokens (the official ``FeatureAggregation`` without
       the question term), then the official output MLP (Dropout, Linear, ELU, BatchNorm1d,
       Dropout, Linear) with ``D`` inputs instead of ``2D``.

    Inputs:
        frame_feats: ``(B, num_clips, frames_per_clip, vision_dim)``.
        motion_feats: ``(B, num_clips, motion_dim)`` or None (then derived with
            :func:`motion_from_frame_features`, which needs ``motion_dim == vision_dim``).
    Outputs:
        logits ``(B, num_classes)``; :meth:`forward_features` gives the pooled ``(B, module_dim)``.
    """

    def __init__(self, config: HCRNClassifierConfig) -> None:
        super().__init__()
        self.config = config
        dim = config.module_dim
        motion_dim = config.motion_dim if config.motion_dim is not None else config.vision_dim
        f, c = config.frames_per_clip, config.num_clips
        self.appearance_feat_proj = nn.Linear(config.vision_dim, dim)
        self.clip_level_motion_proj = nn.Linear(motion_dim, dim)
        self.clip_level_motion_cond = CRN(
            CRNConfig(
                module_dim=dim,
                num_objects=f,
                max_subset_size=f,
                gating=False,
                spl_resolution=config.spl_resolution,
                seed=config.seed,
            )
        )
        self.sequence_encoder = nn.LSTM(motion_dim, dim, batch_first=True)
        self.video_level_motion_proj = nn.Linear(dim, dim)
        self.video_level_motion_cond = CRN(
            CRNConfig(
                module_dim=dim,
                num_objects=c,
                max_subset_size=c,
                gating=False,
                spl_resolution=config.spl_resolution,
                seed=config.seed + 1,
            )
        )
        self.activation = nn.ELU()
        self.attn_proj = nn.Linear(dim, dim)
        self.attn = nn.Linear(dim, 1)
        self.head = nn.Sequential(
            nn.Dropout(config.dropout),
            nn.Linear(dim, dim),
            nn.ELU(),
            nn.BatchNorm1d(dim),
            nn.Dropout(config.dropout),
            nn.Linear(dim, config.num_classes),
        )
        self._motion_dim = motion_dim

    def _check(self, frame_feats: torch.Tensor, motion_feats: torch.Tensor | None) -> None:
        cfg = self.config
        expected = (cfg.num_clips, cfg.frames_per_clip, cfg.vision_dim)
        if frame_feats.dim() != 4 or tuple(frame_feats.shape[1:]) != expected:
            raise ValueError(
                f"expected frame features of shape (B, {cfg.num_clips}, {cfg.frames_per_clip}, "
                f"{cfg.vision_dim}), got {tuple(frame_feats.shape)}"
            )
        if motion_feats is None:
            if self._motion_dim != cfg.vision_dim:
                raise ValueError(
                    "motion features can only be derived when motion_dim == vision_dim"
                )
            return
        want = (frame_feats.shape[0], cfg.num_clips, self._motion_dim)
        if tuple(motion_feats.shape) != want:
            raise ValueError(
                f"expected motion features of shape {want}, got {tuple(motion_feats.shape)}"
            )

    def tokens(
        self, frame_feats: torch.Tensor, motion_feats: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Video-level relation tokens ``(B, (C-2)*(F-2), module_dim)`` before pooling."""
        self._check(frame_feats, motion_feats)
        if motion_feats is None:
            motion_feats = motion_from_frame_features(frame_feats)
        b, c, f, _ = frame_feats.shape
        dim = self.config.module_dim
        appearance = self.appearance_feat_proj(frame_feats).reshape(b * c, f, dim)  # (B*C, F, D)
        clip_motion = self.clip_level_motion_proj(motion_feats).reshape(b * c, dim)  # (B*C, D)
        clip_rel = self.clip_level_motion_cond(appearance, clip_motion)  # (B*C, F-2, D)
        clip_rel = clip_rel.reshape(b, c, f - 2, dim)  # (B, C, F-2, D)

        _, (h_n, _) = self.sequence_encoder(motion_feats)  # h_n: (1, B, D)
        video_motion = self.video_level_motion_proj(h_n[-1])  # (B, D)
        video_rel = self.video_level_motion_cond(clip_rel, video_motion)  # (B, C-2, F-2, D)
        return video_rel.reshape(b, (c - 2) * (f - 2), dim)  # (B, (C-2)*(F-2), D)

    def forward_features(
        self, frame_feats: torch.Tensor, motion_feats: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Attention-pooled video feature ``(B, module_dim)``."""
        tokens = self.tokens(frame_feats, motion_feats)  # (B, K, D)
        weights = torch.softmax(
            self.attn(self.activation(self.attn_proj(tokens))), dim=1
        )  # (B, K, 1)
        return (weights * tokens).sum(dim=1)  # (B, D)

    def forward(
        self, frame_feats: torch.Tensor, motion_feats: torch.Tensor | None = None
    ) -> torch.Tensor:
        return self.head(self.forward_features(frame_feats, motion_feats))  # (B, num_classes)


def _hcrn_example_inputs(batch: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    frames = torch.randn(batch, 3, 4, 12, generator=g)  # (B, C, F, D)
    return frames, motion_from_frame_features(frames)


@register_block(
    "hcrn-classifier",
    paper=_HCRN_PAPER,
    arxiv="2002.10698",
    repo=_HCRN_REPO,
    input_layout="frame features (B, num_clips, frames_per_clip, D) + motion "
    "(B, num_clips, D_motion) -> logits (B, num_classes)",
    value_range="any real-valued features (e.g. pooled CNN features of decoded frames)",
    tiny_config={
        "vision_dim": 12,
        "module_dim": 8,
        "num_clips": 3,
        "frames_per_clip": 4,
        "spl_resolution": 2,
        "num_classes": 5,
    },
    example_inputs=_hcrn_example_inputs,
    weights_licence="Apache-2.0 (official code); no bundled weights (train your own)",
    needs_weights=True,
    description="HCRN clip/video-level CRN hierarchy over frame features + classification head",
    tasks=("classify", "embed"),
    input_kind="frame-features",
    feature_dim=HCRNClassifierConfig.module_dim,
    untrained_head=True,
    frame_encoder="efficientnet-lite0",
    frame_encoder_dim_key="vision_dim",
)
def build_hcrn_classifier(**config) -> HCRNClassifier:
    """Build an :class:`HCRNClassifier` from :class:`HCRNClassifierConfig` fields."""
    return HCRNClassifier(HCRNClassifierConfig(**config))


__all__ = [
    "CRN",
    "CRNConfig",
    "HCRNClassifier",
    "HCRNClassifierConfig",
    "crn_scale_sizes",
    "motion_from_frame_features",
]
