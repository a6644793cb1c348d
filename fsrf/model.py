"""The FSRF network (SPEC section 3): modality encoders, DHF factorization, fusion and the score head.

Axis legend: B batch, T_m frames (tokens) of modality m, d_m input width, M modalities the dataset has
(3 for l, a, v; 1 for transcripts), D common width (``model.width``, default 128).

Missing input arrives as zeros, as in the paper: a dropped frame or token state is zero, an absent
modality is all zeros (a live text encoder sees ``[UNK]`` for a dropped token and skips an absent
utterance, whose C_L is then zero). The network is told only what a real system would know: which
positions are padding. Which positions were dropped is not given to it.

An absent modality carries no information (SPEC section 7): its H_m is one vector for every sample,
whatever its stored values and valid length. Text: C_L = 0 (H_l is the output layer's bias). Audio and
vision: the encoder's output on one zero frame at position 0, computed once per forward pass and
broadcast to the absent rows, which never enter the Transformer.

``model.fusion`` (with ``dhf=False``): ``early`` concatenates the H_m and projects them to Z, one head;
``late`` gives every modality its own head on H_m, the prediction being the mean of the present
modalities' scores (a true late fusion, SPEC section 7), so the fusion must know which are present.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from fsrf import MODALITIES
from fsrf.config import ModelConfig


@dataclass
class Inputs:
    """One batch of inputs; a modality the dataset lacks is None."""

    text: Tensor  # (B, T_l, d_l) cached token states, or (B, T_l) int64 ids for a live encoder
    text_valid: Tensor  # (B, T_l) bool, True on real tokens
    audio: Tensor | None = None  # (B, T_a, d_a)
    audio_valid: Tensor | None = None  # (B, T_a) bool
    vision: Tensor | None = None  # (B, T_v, d_v)
    vision_valid: Tensor | None = None  # (B, T_v) bool

    def valid(self) -> tuple[Tensor, Tensor, Tensor]:
        """Valid masks in (l, a, v) order; an absent modality gets an all-False (B, 1) mask."""
        none = torch.zeros(self.text_valid.shape[0], 1, dtype=torch.bool, device=self.text_valid.device)
        return (self.text_valid,
                self.audio_valid if self.audio_valid is not None else none,
                self.vision_valid if self.vision_valid is not None else none)

    def repeat(self, k: int) -> "Inputs":
        """The batch stacked ``k`` times along B (both MRM views go through the network in one pass)."""
        rep = lambda x: None if x is None else torch.cat([x] * k)  # noqa: E731
        return Inputs(*(rep(getattr(self, f)) for f in
                        ("text", "text_valid", "audio", "audio_valid", "vision", "vision_valid")))

    def to(self, device) -> "Inputs":
        move = lambda x: None if x is None else x.to(device, non_blocking=True)  # noqa: E731
        return Inputs(*(move(getattr(self, f)) for f in
                        ("text", "text_valid", "audio", "audio_valid", "vision", "vision_valid")))


@dataclass
class Output:
    score: Tensor  # (B,) sentiment score s
    z: Tensor  # (B, D) joint representation Z (late fusion, which has none: the mean of the present H_m)
    h: Tensor  # (B, M, D) projected modality features H_m
    ho: Tensor | None  # (B, M, D) modality-homogeneous R_ho (None when dhf=False)
    he: Tensor | None  # (B, M, D) modality-heterogeneous R_he
    noise: Tensor | None  # (B, M, D) noise R_n (None when dhf=False or noise=False)
    scores: Tensor | None = None  # (B, M) each modality's own score (late fusion only; absent ones too)


def mlp(d_in: int, d_hidden: int, d_out: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(d_in, d_hidden), nn.ReLU(), nn.Linear(d_hidden, d_out))


class GroupedMLP(nn.Module):
    """M independent two-layer MLPs, one per modality (``mlp(d_in, d_hidden, d_out)`` each), applied to
    (B, M, d_in) as one batched matmul per layer (``torch.baddbmm`` over the stacked weights) instead of
    M small ones: the per-modality DHF heads cost a fraction of the op calls, with the same values.

    The weights are drawn as M ``mlp`` modules would draw them, in the same order, so a model built with
    the same seed starts from the same parameters as one with a ``ModuleDict`` of ``mlp``s.
    """

    def __init__(self, groups: int, d_in: int, d_hidden: int, d_out: int):
        super().__init__()
        layers = [mlp(d_in, d_hidden, d_out) for _ in range(groups)]  # nn.Linear's init, in modality order
        stack = lambda get: nn.Parameter(torch.stack([get(layer).detach() for layer in layers]))  # noqa: E731
        self.w1 = stack(lambda l: l[0].weight.T)  # (M, d_in, d_hidden)
        self.b1 = stack(lambda l: l[0].bias)  # (M, d_hidden)
        self.w2 = stack(lambda l: l[2].weight.T)  # (M, d_hidden, d_out)
        self.b2 = stack(lambda l: l[2].bias)  # (M, d_out)

    def forward(self, x: Tensor) -> Tensor:
        """(B, M, d_in) -> (B, M, d_out), modality k through its own MLP."""
        hidden = torch.relu(torch.baddbmm(self.b1[:, None], x.transpose(0, 1), self.w1))  # (M, B, d_hidden)
        return torch.baddbmm(self.b2[:, None], hidden, self.w2).transpose(0, 1)  # (B, M, d_out)


class SequenceEncoder(nn.Module):
    """Audio/visual frames -> C_m: a Transformer encoder with sinusoidal positions, output at the last
    valid position (the paper's "last element"), then the linear layer to the common width."""

    def __init__(self, d_in: int, cfg: ModelConfig, max_len: int = 512):
        super().__init__()
        self.inp = nn.Linear(d_in, cfg.seq_width)
        layer = nn.TransformerEncoderLayer(cfg.seq_width, cfg.seq_heads, 2 * cfg.seq_width, cfg.dropout,
                                           batch_first=True)
        self.encoder = nn.TransformerEncoder(layer, cfg.seq_layers, enable_nested_tensor=False)
        self.out = nn.Linear(cfg.seq_width, cfg.width)
        pos = torch.arange(max_len)[:, None]
        div = torch.exp(torch.arange(0, cfg.seq_width, 2) * (-math.log(10000.0) / cfg.seq_width))
        pe = torch.zeros(max_len, cfg.seq_width)
        pe[:, 0::2], pe[:, 1::2] = torch.sin(pos * div), torch.cos(pos * div[: cfg.seq_width // 2])
        self.register_buffer("pe", pe, persistent=False)

    def forward(self, x: Tensor, valid: Tensor, zeroed: Tensor, present: Tensor) -> Tensor:
        """H_m (B, D); ``present`` (B,) bool. An absent row gets ``absent()``, one vector for all rows,
        so neither its stored frames nor its valid length reach the output."""
        rows = present.nonzero().squeeze(1)  # the Transformer runs on present rows only
        if len(rows) == len(x):
            return self.encode_sequences(x, valid, zeroed)
        # Either path uses every parameter of the encoder, as DistributedDataParallel (without
        # find_unused_parameters) requires of every step.
        h = self.absent(x).expand(len(x), -1).clone()  # (B, D)
        if len(rows):
            h[rows] = self.encode_sequences(x[rows], valid[rows], zeroed[rows]).to(h.dtype)
        return h

    def absent(self, x: Tensor) -> Tensor:
        """The representation of an absent modality (D,): the encoder on one zero frame at position 0."""
        hidden = self.inp(x.new_zeros(1, 1, x.shape[-1])) + self.pe[:1]  # (1, 1, W)
        return self.out(self.encoder(hidden)[0, 0])  # (D,)

    def encode_sequences(self, x: Tensor, valid: Tensor, zeroed: Tensor) -> Tensor:
        """(B, T, d_in) frames of present rows -> (B, D), output at the last valid position."""
        x = x.masked_fill(zeroed[..., None], 0.0)  # (B, T, d_in), dropped frames are zeros
        hidden = self.inp(x) + self.pe[: x.shape[1]]  # (B, T, W)
        lengths = valid.sum(1)  # (B,)
        pad = ~valid
        pad[:, 0] &= lengths > 0  # an empty sequence would make attention NaN: let it see one zero frame
        hidden = self.encoder(hidden, src_key_padding_mask=pad)  # (B, T, W)
        last = hidden[torch.arange(len(x), device=x.device), (lengths - 1).clamp(min=0)]  # (B, W)
        return self.out(last)  # (B, D)


class TextEncoder(nn.Module):
    """Language -> C_L, the mean of the word states, then the linear layer to the common width.

    Cached (frozen) mode reads precomputed states; live mode runs the BERT-family ``bert`` module.
    """

    def __init__(self, d_text: int, cfg: ModelConfig, bert: nn.Module | None = None, unk_id: int = 100):
        super().__init__()
        self.bert, self.unk_id = bert, unk_id
        self.out = nn.Linear(d_text, cfg.width)

    def forward(self, text: Tensor, valid: Tensor, zeroed: Tensor, present: Tensor) -> Tensor:
        n_valid = valid.sum(1, keepdim=True).clamp(min=1)  # (B, 1)
        if self.bert is None:
            keep = (valid & ~zeroed & present[:, None])[..., None].to(text.dtype)  # (B, T, 1), absent: none
            c = (text * keep).sum(1) / n_valid  # (B, d_l)
        else:
            ids = text.masked_fill(zeroed & valid, self.unk_id)  # (B, T) dropped words -> [UNK]
            c = torch.zeros(len(ids), self.out.in_features, device=ids.device)
            rows = present.nonzero().squeeze(1)  # an absent utterance costs no encoder pass
            if len(rows):
                states = self.bert(input_ids=ids[rows], attention_mask=valid[rows].long()).last_hidden_state
                c[rows] = (states * valid[rows, :, None]).sum(1) / n_valid[rows]
        return self.out(c.float())  # (B, D)


class FSRF(nn.Module):
    """Encoders -> H_m -> DHF (R_ho, R_he, R_n) -> Z = sum R_ho + sum R_he - sum R_n -> score.

    ``modalities`` names those the dataset has (in l, a, v order); ``dims`` their input widths.
    Ablations (``cfg.dhf``, ``cfg.noise``) and, without DHF, ``cfg.fusion`` change the structure here;
    ``cfg.das`` only the losses.
    """

    def __init__(self, cfg: ModelConfig, *, dims: dict[str, int], modalities: tuple[str, ...] = MODALITIES,
                 bert: nn.Module | None = None, unk_id: int = 100):
        super().__init__()
        self.cfg, self.modalities = cfg, modalities
        self.index = [MODALITIES.index(m) for m in modalities]
        D = cfg.width
        self.encoders = nn.ModuleDict()
        self.encoders["l"] = TextEncoder(dims["l"], cfg, bert, unk_id)
        for m in modalities[1:]:
            self.encoders[m] = SequenceEncoder(dims[m], cfg)
        if cfg.dhf:
            self.shared = mlp(D, D, D)  # E_ho, one for all modalities
            self.specific = GroupedMLP(len(modalities), 2 * D, D, D)  # E_he(H_m, R_ho_m), one per modality
            if cfg.noise:
                self.noise = GroupedMLP(len(modalities), D, D, D)  # E_n per modality
            self.head = mlp(D, D, 1)
        elif cfg.fusion == "early":
            self.fuse = nn.Sequential(nn.Linear(len(modalities) * D, D), nn.ReLU())
            self.head = mlp(D, D, 1)
        else:  # late: one predictor per modality, no joint layer
            self.heads = nn.ModuleDict({m: mlp(D, D, 1) for m in modalities})

    def forward(self, x: Inputs, present: Tensor, zeroed: tuple[Tensor, Tensor, Tensor]) -> Output:
        """``present`` (B, 3) bool and ``zeroed`` per modality (B, T_m) bool come from a ``missing.View``."""
        return self.factorize(self.encode(x, present, zeroed), present)

    def encode(self, x: Inputs, present: Tensor, zeroed: tuple[Tensor, Tensor, Tensor]) -> Tensor:
        """H (B, M, D): each modality encoded on its own, so H_m depends only on modality m's input."""
        feats = [self.encode_modality(x, m, present[:, MODALITIES.index(m)], zeroed[MODALITIES.index(m)])
                 for m in self.modalities]
        return torch.stack(feats, 1)  # (B, M, D)

    def encode_modality(self, x: Inputs, m: str, present: Tensor, zeroed: Tensor) -> Tensor:
        """H_m (B, D) of modality ``m`` alone; ``present`` (B,) and ``zeroed`` (B, T_m) bool are m's parts
        of a ``missing.View`` (the test protocol re-encodes only the modalities a condition changes)."""
        if m == "l":
            return self.encoders[m](x.text, x.text_valid, zeroed, present)
        return self.encoders[m](getattr(x, _SEQ[m]), getattr(x, _SEQ[m] + "_valid"), zeroed, present)

    def factorize(self, h: Tensor, present: Tensor) -> Output:
        """DHF, fusion and head on H (B, M, D); ``present`` (B, 3) bool in (l, a, v) order, as ``forward``
        takes it. Only late fusion reads it (the mean over the present modalities' scores): elsewhere an
        absent modality enters as its fixed H_m, as in training."""
        ho = he = noise = None
        if not self.cfg.dhf and self.cfg.fusion == "late":
            scores = torch.cat([self.heads[m](h[:, k]) for k, m in enumerate(self.modalities)], 1)  # (B, M)
            w = present[:, self.index].to(scores.dtype)  # (B, M), 1 where present
            n = w.sum(1, keepdim=True).clamp(min=1)  # (B, 1); a view always keeps one modality
            # No joint representation exists: Z is the mean of the present H_m, for analysis only.
            z = (h * w[..., None].to(h.dtype)).sum(1) / n.to(h.dtype)  # (B, D)
            return Output(score=(scores * w).sum(1) / n.squeeze(1), z=z, h=h, ho=None, he=None, noise=None,
                          scores=scores)
        if self.cfg.dhf:
            ho = self.shared(h)  # (B, M, D)
            he = self.specific(torch.cat([h, ho], -1))  # (B, M, D)
            z = ho.sum(1) + he.sum(1)  # (B, D)
            if self.cfg.noise:
                noise = self.noise(h)  # (B, M, D)
                z = z - noise.sum(1)
        else:
            z = self.fuse(h.flatten(1))  # (B, D)
        return Output(score=self.head(z).squeeze(-1), z=z, h=h, ho=ho, he=he, noise=noise)


_SEQ = {"a": "audio", "v": "vision"}
