"""One FSRF run: prepare data, train with MRM and the FSRF losses, select the best epoch, evaluate.

This module knows nothing of Ray, Tune or MLflow: ``fit`` takes a validated ``RunConfig`` and returns
the metrics; a caller that wants per-epoch reports or checkpoints passes ``report``.

Checkpoint selection (one rule for every run, ``fsrf.protocol.SELECTION_RULE``): the epoch with the best
validation objective, the mean ``Non0_F1_score`` over the seven Table I conditions and the ten intra-curve
points (data with fewer modalities: the Table I conditions it has, ``l`` alone for text). Test metrics
are computed once, for that epoch only, and add the burst curve and the per-modality conditions
(``intra_<m>_<p>``, ``rates_...``) that the objective never reads. The conditions and how a model is
scored under them live in ``fsrf.protocol``.
"""

from __future__ import annotations

import copy
import sys
import time
import warnings
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Callable

import numpy as np
import torch
import torch.nn.functional as F

from fsrf import health, losses
from fsrf.config import RunConfig, flatten
from fsrf.data import SPLITS, Split, fingerprint, load_dataset
from fsrf.missing import Schedule, mrm_views, zeroed_masks
from fsrf.model import FSRF, Inputs
if TYPE_CHECKING:
    from fsrf.text import FrozenText
from fsrf.protocol import (HEADLINE, OBJECTIVE, ZEROED, complete_condition, conditions_for, evaluate,
                           per_modality_conditions, shuffled_controls, shuffled_floor)


@dataclass
class SplitTensors:
    """One split as tensors (CPU), ready to be batched."""

    inputs: Inputs
    labels: torch.Tensor  # (N,) float32
    # Frozen encoder only: the token ids and encoder that re-encode the utterances with dropped words as
    # [UNK] (SPEC 7; ``fsrf.protocol.word_states``), and, for the training split, MRM's drop patterns.
    words: FrozenText | None = field(default=None, repr=False)
    patterns: WordDropPatterns | None = field(default=None, repr=False)

    def __len__(self) -> int:
        return len(self.labels)

    def batch(self, idx: torch.Tensor) -> Inputs:
        x = self.inputs
        take = lambda t: None if t is None else t[idx]  # noqa: E731
        text = x.text[idx]
        return Inputs(text.float() if text.is_floating_point() else text, x.text_valid[idx],
                      take(x.audio), take(x.audio_valid), take(x.vision), take(x.vision_valid))


@dataclass
class WordDropPatterns:
    """K drop patterns per training sample, encoded once with the dropped ids as ``[UNK]`` (SPEC 7): what a
    training view that drops a sample's words reads with the frozen encoder (``missing.word_drop: unk``).

    Pattern k of sample i drops each real token independently with probability u_ik ~ U(0, 1), the same
    rule as MRM's intra draw (``fsrf.missing.intra_drop`` with a per-sample ratio), so the patterns span
    the severities of the test curve. The draws come from their own generator seeded by the run's
    ``seed`` (not the data seed: the patterns are a training draw like MRM's masks, so the seeds of a
    robustness study differ in them too; a tuning study's trials share one seed and one encoding).
    """

    drop: torch.Tensor  # (K, N, T_l) bool, True on a dropped real token
    states: tuple[np.ndarray, ...]  # K memory-mapped (N, T_l, d_l) float16 arrays, from the disk cache
    seed: int  # the run seed they were drawn with

    def take(self, k: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        """States (R, T_l, d_l) float32 of pattern ``k[r]`` of sample ``rows[r]`` (both (R,) int64)."""
        out = torch.empty(len(rows), *self.states[0].shape[1:])
        for j in torch.unique(k).tolist():
            sel = (k == j).nonzero().squeeze(1)
            out[sel] = torch.from_numpy(np.asarray(self.states[j][rows[sel].numpy()], dtype=np.float32))
        return out


_PATTERN_STREAM = 0x554E4B  # "UNK": the patterns' generator is seeded by (seed, this), apart from MRM's


def word_drop_patterns(words: FrozenText, *, k: int, seed: int) -> WordDropPatterns:
    """``k`` drop patterns per sample of ``words`` (see ``WordDropPatterns``), encoded or read from the cache.

    Cost: one encoder pass over k x N utterances on the first run with a seed, none afterwards (measured,
    MiniLM on 2 shared CPU cores: 8.5-12 s for k = 4 of MOSI's 1284 training utterances). Memory:
    memory-mapped, k x N x T_l x d_l float16 on disk (MOSI 1284 x 50 x 384: 49 MB per pattern; MOSEI's
    16326: 627 MB per pattern, 2.5 GB for k = 4), of which a step reads the rows it uses.
    """
    from fsrf.missing import intra_drop

    state = np.random.SeedSequence([seed % 2**32, _PATTERN_STREAM]).generate_state(1)[0]
    gen = torch.Generator().manual_seed(int(state))
    valid = torch.from_numpy(words.mask).bool()  # (N, T_l)
    drop = torch.stack([intra_drop(valid, torch.rand(len(valid), generator=gen, dtype=torch.float64), generator=gen)
                        for _ in range(k)])  # (K, N, T_l)
    states = tuple(words.unk_states(d.numpy(), label=f"word-drop pattern {j + 1}/{k}") for j, d in enumerate(drop))
    return WordDropPatterns(drop, states, seed)


def patterns_for(cfg: RunConfig, train: SplitTensors) -> WordDropPatterns | None:
    """The training split's drop patterns that ``cfg`` asks for (built, or read from the disk cache, if the
    split has none for this seed and count): None with a live encoder, ``missing.word_drop: zeroed`` or
    an MRM schedule that never drops words. A ``Prepared`` shared between configs gets the right ones."""
    m = cfg.missing
    drops_words = Schedule(m.schedule, m.p0, m.p1, m.at).max_rate() * m.modality_scale.l > 0
    if train.words is None or m.word_drop != "unk" or not drops_words:
        return None
    have = train.patterns
    if have is None or have.seed != cfg.seed or len(have.states) != m.unk_patterns:
        train.patterns = word_drop_patterns(train.words, k=m.unk_patterns, seed=cfg.seed)
    return train.patterns


@dataclass
class Prepared:
    """Everything a run needs besides the model: tensors per split and what describes the data."""

    splits: dict[str, SplitTensors]
    dims: dict[str, int]
    modalities: tuple[str, ...]
    data_fingerprint: str
    encoder_path: str
    encoder_id: str
    raw: dict[str, Split] = field(repr=False, default_factory=dict)


def _valid_from_lengths(lengths: np.ndarray, t: int) -> torch.Tensor:
    return torch.arange(t)[None, :] < torch.from_numpy(np.asarray(lengths))[:, None]  # (N, T)


def prepare(cfg: RunConfig, *, splits: dict[str, Split] | None = None) -> Prepared:
    """Load the data named by ``cfg.data`` and turn it into tensors (text via the encoder or its cache).

    With the frozen encoder each split keeps its token ids and the encoder (``SplitTensors.words``), so
    that the protocol's word drops are encoded as [UNK]; with ``missing.word_drop: unk`` and an MRM that
    can drop words, the training split also gets ``missing.unk_patterns`` drop patterns per sample
    (``word_drop_patterns``, seeded by ``cfg.seed``). Both are cached on disk like the complete states.
    """
    from fsrf import text as text_mod

    d = cfg.data
    if splits is None:
        splits = load_dataset(d)
    enc_path = text_mod.resolve_path(cfg.encoder.path)
    encoder = None if cfg.encoder.finetune else text_mod.FrozenEncoder(enc_path, cache_dir=cfg.encoder.cache_dir)
    modalities = splits["train"].modalities
    dims: dict[str, int] = {}
    out = {}
    for name in SPLITS:
        sp = splits[name]
        words = None
        if cfg.encoder.finetune:
            ids, mask = text_mod.tokenize(sp.text, text_mod.load_tokenizer(enc_path), d.max_tokens)
            text = torch.from_numpy(ids)
        else:
            words = text_mod.FrozenText.of(sp.text, encoder, max_tokens=d.max_tokens, name=name)
            mask = words.mask
            text = torch.from_numpy(np.array(words.states))  # (N, T_l, d_l) float16
            dims["l"] = text.shape[-1]
        x = Inputs(text, torch.from_numpy(mask).bool())
        if sp.audio is not None:
            x.audio = torch.from_numpy(sp.audio)
            x.audio_valid = _valid_from_lengths(sp.audio_lengths, sp.audio.shape[1])
            dims["a"] = sp.audio.shape[-1]
        if sp.vision is not None:
            x.vision = torch.from_numpy(sp.vision)
            x.vision_valid = _valid_from_lengths(sp.vision_lengths, sp.vision.shape[1])
            dims["v"] = sp.vision.shape[-1]
        out[name] = SplitTensors(x, torch.from_numpy(sp.labels).float(), words)
    patterns_for(cfg, out["train"])
    if cfg.encoder.finetune:
        from transformers import AutoConfig

        dims["l"] = AutoConfig.from_pretrained(enc_path).hidden_size
    encoder_id = encoder.id if encoder is not None else text_mod.identity(enc_path)
    return Prepared(out, dims, modalities, fingerprint(splits), enc_path, encoder_id, splits)


def build_model(cfg: RunConfig, prep: Prepared) -> FSRF:
    bert, unk = None, 100
    if cfg.encoder.finetune:
        from fsrf import text as text_mod

        bert = text_mod.load_encoder(prep.encoder_path)
        unk = text_mod.load_tokenizer(prep.encoder_path).unk_token_id
        frozen = [bert.embeddings] + list(bert.encoder.layer[: cfg.encoder.freeze_layers])
        for module in frozen if cfg.encoder.freeze_layers else []:
            for p in module.parameters():
                p.requires_grad_(False)
    return FSRF(cfg.model, dims=prep.dims, modalities=prep.modalities, bert=bert, unk_id=unk)


def train_losses(cfg: RunConfig, model: torch.nn.Module, x: Inputs, y: torch.Tensor, *, rate: float,
                 generator: torch.Generator, patterns: WordDropPatterns | None = None,
                 index: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
    """Losses of one MRM step: two views of the batch through the network in one pass.

    ``patterns`` (``patterns_for``) and ``index`` (B,), the batch's rows of the training split: with the
    frozen encoder and ``missing.word_drop: unk``, a view that drops some of a sample's words reads one of
    that sample's [UNK]-encoded drop patterns instead (SPEC 7), chosen uniformly with ``generator`` after
    all of ``mrm_views``' draws (so every mask of the step is the one it would be without patterns); MRM
    decides whether the words are hit, the pattern which ones. Without patterns dropped words' cached
    states are zeroed (``word_drop: zeroed``), and a live encoder reads them as [UNK] by itself.
    """
    valid = x.valid()
    scale = cfg.missing.modality_scale
    vp, vq = mrm_views(valid, rate=rate, overlap=cfg.missing.overlap, modality_scale=(scale.l, scale.a, scale.v),
                       available=getattr(model, "module", model).modalities,
                       generator=generator)
    present = torch.cat([vp.present, vq.present])  # (2B, 3)
    zeroed = tuple(torch.cat(pair) for pair in zip(zeroed_masks(vp, valid), zeroed_masks(vq, valid)))
    both = x.repeat(2)
    B = len(y)
    if patterns is not None:
        k = torch.randint(len(patterns.states), (2 * B,), generator=generator)  # (2B,), after mrm_views' draws
        hit = torch.cat([vp.drop[0].any(1), vq.drop[0].any(1)]).cpu()  # (2B,) rows that lose words (present)
        rows = hit.nonzero().squeeze(1)
        if len(rows):
            text = both.text.clone()  # (2B, T_l, d_l)
            text[rows.to(text.device)] = patterns.take(k[rows], index.cpu()[rows % B]).to(text)
            both.text = text
            zeroed = (zeroed[0].masked_fill(hit.to(zeroed[0].device)[:, None], False), *zeroed[1:])
    out = model(both, present, zeroed)
    sp, sq = out.score[:B], out.score[B:]
    L = cfg.loss
    dhf_p = dhf_q = das = None
    cols = getattr(model, "module", model).index  # the model's modalities as columns of present; DDP wraps it
    if cfg.model.dhf:
        # SPEC 7: the DHF terms see the modalities present in each view only (columns in the model's order)
        kw = dict(tau=L.tau, margin=L.margin, mu=L.noise_mu, sigma2=L.noise_sigma2, use_noise=cfg.model.noise,
                  noise_entropy_form=L.noise_entropy_form)
        noise = out.noise if cfg.model.noise else None
        dhf_p = losses.dhf_loss(out.ho[:B], out.he[:B], None if noise is None else noise[:B],
                                present=vp.present[:, cols], **kw)
        dhf_q = losses.dhf_loss(out.ho[B:], out.he[B:], None if noise is None else noise[B:],
                                present=vq.present[:, cols], **kw)
    if cfg.model.das:
        T = L.js_temperature
        median = losses.median_pairwise_cost(out.z[:B], out.z[B:])  # the cost scale eps is measured against
        eps = sinkhorn_eps(L, median)
        das = losses.das_loss(out.z[:B], out.z[B:], losses.polarity_probs(sp, T), losses.polarity_probs(sq, T),
                              eps=eps, feature=L.das_feature)
    if cfg.model.fusion == "late" and not cfg.model.dhf:  # each modality's predictor, its own task loss
        task_p = late_fusion_task_loss(out.scores[:B], y, present=vp.present[:, cols])
        task_q = late_fusion_task_loss(out.scores[B:], y, present=vq.present[:, cols])
    else:
        task_p, task_q = F.mse_loss(sp, y), F.mse_loss(sq, y)
    terms = losses.total_loss(task_p, task_q, dhf_p=dhf_p, dhf_q=dhf_q, das=das,
                              lambda1=L.lambda1, lambda2=L.lambda2)
    if cfg.model.das:  # diagnostics, no gradient
        terms["das/median_cost"] = torch.tensor(median, dtype=torch.float64)
        terms["das/eps"] = torch.tensor(eps, dtype=torch.float64)
    return terms


def late_fusion_task_loss(scores: torch.Tensor, y: torch.Tensor, *, present: torch.Tensor) -> torch.Tensor:
    """The task loss of one view for late fusion (``model.fusion = "late"``): the mean, over the modalities
    present in some sample of the view, of each modality's own MSE over the samples in which it is present.

    ``scores`` (B, M) are the per-modality predictions (``Output.scores``), ``y`` (B,), ``present`` (B, M)
    bool in the model's modality order. Each predictor learns to predict the label from its modality
    alone, as a late fusion's unimodal models do; the MSE of the fused mean would let the predictors
    correct one another, so that each alone (a one-modality test condition) would be off. With every
    modality present (late fusion is trained without MRM) it is the mean of the M per-modality MSEs.
    Absent pairs are weighted by 0 rather than left out, so that every head stays in the graph (DDP).
    """
    w = present.to(scores.dtype)  # (B, M)
    n = w.sum(0)  # (M,) samples in which each modality is present
    per_modality = ((scores - y[:, None]) ** 2 * w).sum(0) / n.clamp(min=1)  # (M,)
    seen = (n > 0).to(scores.dtype)  # (M,)
    return (per_modality * seen).sum() / seen.sum().clamp(min=1)


def sinkhorn_eps(loss_cfg, median_cost: float) -> float:
    """Eq (7)'s eps for one batch: ``loss.sinkhorn_eps`` times the batch's median pairwise cost between
    the two views' Z when ``loss.sinkhorn_eps_relative`` (the default), else as given (units of C)."""
    if not loss_cfg.sinkhorn_eps_relative:
        return float(loss_cfg.sinkhorn_eps)
    return float(loss_cfg.sinkhorn_eps) * max(float(median_cost), 1e-8)  # a collapsed batch keeps eps > 0


@dataclass
class RunResult:
    val: dict[str, float]  # validation metrics at the selected epoch
    test: dict[str, float]  # test metrics at the selected epoch
    best_epoch: int
    history: list[dict[str, float]]
    wall_time_s: float
    stop_reason: str
    notes: list[str]
    prepared: Prepared = field(repr=False)
    model: FSRF = field(repr=False)

    def to_json(self, cfg: RunConfig) -> dict:
        return {"config": flatten(cfg), "best_epoch": self.best_epoch, "epochs_run": len(self.history),
                "stop_reason": self.stop_reason, "wall_time_s": round(self.wall_time_s, 2),
                "selection": f"epoch with the best {OBJECTIVE}",
                "modalities": list(self.prepared.modalities), "data_fingerprint": self.prepared.data_fingerprint,
                "encoder": self.prepared.encoder_id, "notes": self.notes,
                "val": self.val, "test": self.test, "history": self.history}


def seed_everything(seed: int) -> None:
    import random

    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


Report = Callable[[int, dict[str, float], Callable[[], dict]], None]


def choose_device(use_gpu: bool, *, index: int | None = None, log: Callable[[str], None] | None = None,
                  cuda=torch.cuda) -> torch.device:
    """The device a run trains on: ``cuda:<index>`` when ``train.use_gpu`` is set and CUDA has that device,
    else the CPU, said in one line through ``log`` when a GPU was asked for and no CUDA device exists.

    ``index`` is the device's position among those this process sees: a Ray trial sees only the GPUs Ray
    assigned to it (``CUDA_VISIBLE_DEVICES``), so a trial holding a share of one GPU trains on ``cuda:0``
    whichever GPU of the node it is (``studies.worker.local_gpu_index``). None: the current CUDA device
    (what Ray Train's backend and torchrun set per process). ``cuda`` is ``torch.cuda``; the tests pass a
    stand-in to exercise the choice on a machine without CUDA.
    """
    if not use_gpu:
        return torch.device("cpu")
    count = cuda.device_count() if cuda.is_available() else 0
    if count == 0:
        if log is not None:
            build = "a CPU-only build" if torch.version.cuda is None else f"built for CUDA {torch.version.cuda}"
            log(f"train.use_gpu is set but no CUDA device exists here (torch {torch.__version__}, {build}): "
                "training on CPU")
        return torch.device("cpu")
    index = cuda.current_device() if index is None else index
    if not 0 <= index < count:  # a wrong CUDA_VISIBLE_DEVICES: never train on another trial's GPU
        raise RuntimeError(f"CUDA device {index} requested but this process sees {count} device(s)")
    return torch.device(f"cuda:{index}")


def fit(cfg: RunConfig, *, prep: Prepared | None = None, report: Report | None = None,
        resume: dict | None = None, evaluate_test: bool = True, log: Callable[[str], None] | None = None,
        device: torch.device | None = None) -> RunResult:
    """Train one configuration and evaluate it under the whole protocol.

    ``report(epoch, metrics, state)`` is called after every epoch with the epoch's train and validation
    metrics; ``state()`` returns a dict that ``resume=`` accepts to continue from that epoch.
    ``device``: where to train (a Ray trial passes the GPU Ray assigned to it); default
    ``choose_device(cfg.train.use_gpu)``, which says through ``log`` when it falls back to the CPU.
    """
    start = time.time()
    log = log or (lambda s: print(s, file=sys.stderr, flush=True))
    if cfg.train.threads:
        torch.set_num_threads(cfg.train.threads)
    seed_everything(cfg.seed)
    prep = prep or prepare(cfg)
    notes = []
    if len(prep.modalities) == 1:
        notes.append(f"data has only {'+'.join(prep.modalities)}: Table I conditions other than 'l' and "
                     "avg_missing are not evaluated; eq (1) and the pairwise part of eq (2) need two or more "
                     "modalities and are zero")
    elif len(prep.modalities) < 3:
        have = [c.name for c in conditions_for(prep.modalities, burst=False) if c.kind == "table"]
        notes.append(f"data has only {'+'.join(prep.modalities)}: of Table I only {', '.join(have)} are "
                     "evaluated, and avg_missing (the mean over the paper's six) is not")
    device = device if device is not None else choose_device(cfg.train.use_gpu, log=log)
    model = build_model(cfg, prep).to(device)
    # Data parallelism for whoever started a process group (Ray Train, torchrun); the loop needs no Ray.
    distributed = torch.distributed.is_available() and torch.distributed.is_initialized()
    rank, world = (torch.distributed.get_rank(), torch.distributed.get_world_size()) if distributed else (0, 1)
    net = torch.nn.parallel.DistributedDataParallel(model) if world > 1 else model
    enc_params = [p for n, p in model.named_parameters() if n.startswith("encoders.l.bert.") and p.requires_grad]
    rest = [p for n, p in model.named_parameters() if not n.startswith("encoders.l.bert.")]
    groups = [{"params": rest, "lr": cfg.train.lr}]
    if enc_params:
        groups.append({"params": enc_params, "lr": cfg.encoder.lr})
    opt = torch.optim.Adam(groups, weight_decay=cfg.train.weight_decay)
    schedule = Schedule(cfg.missing.schedule, cfg.missing.p0, cfg.missing.p1, cfg.missing.at)
    gen = torch.Generator().manual_seed(cfg.seed)
    train, valid = prep.splits["train"], prep.splits["valid"]
    patterns = patterns_for(cfg, train)  # SPEC 7: MRM's word drops as [UNK] with the frozen encoder
    best = {"score": -np.inf, "epoch": -1, "state": None, "val": {}}
    history: list[dict[str, float]] = []
    first_epoch = 0
    if resume:
        model.load_state_dict(resume["model"])
        opt.load_state_dict(resume["optimizer"])
        gen.set_state(resume["generator"])
        torch.set_rng_state(resume["torch_rng"])  # dropout draws from the global generator
        best, history, first_epoch = resume["best"], resume["history"], resume["epoch"] + 1

    def state(epoch: int) -> dict:
        return {"epoch": epoch, "model": model.state_dict(), "optimizer": opt.state_dict(),
                "generator": gen.get_state(), "torch_rng": torch.get_rng_state(), "best": best, "history": history}

    objective = OBJECTIVE
    complete = f"val/{HEADLINE}/{complete_condition(prep.modalities).name}"
    epoch_conditions = conditions_for(prep.modalities, burst=False)  # what the objective reads
    # the whole protocol: with the burst curve and the per-modality conditions the objective never reads
    full_conditions = (conditions_for(prep.modalities)
                       + per_modality_conditions(prep.modalities, rates=cfg.eval.modality_rates)
                       + (list(ZEROED) if cfg.eval.zeroed_curve else []))  # words lost the SPEC 2 way
    total_nonconverged = 0
    # Mechanism health (SPEC 7): two fixed MRM views of validation (rate 0.5, the eval mask seed), the
    # same every epoch and for every variant, and gradient shares sampled every `health_every` steps
    # (not under DDP: autograd.grad outside backward would confuse its gradient reducer).
    health_on = cfg.eval.health_every > 0
    if health_on:
        health_views = mrm_views(valid.inputs.valid(), rate=0.5, available=prep.modalities,
                                 generator=torch.Generator().manual_seed(cfg.eval.mask_seed))
    for epoch in range(first_epoch, cfg.train.epochs):
        t0 = time.time()
        model.train()
        rate = schedule.rate(epoch, cfg.train.epochs)
        order = torch.randperm(len(train), generator=gen)  # the same on every rank (same seed)
        order = order[: len(order) // world * world][rank::world]  # equal shards keep ranks in step
        sums: dict[str, float] = {}
        n_batches = nonconverged = 0
        shares: list[dict[str, float]] = []
        for i in range(0, len(order) - 1, cfg.train.batch_size):
            idx = order[i: i + cfg.train.batch_size]
            if len(idx) < 2:  # eq (2) and (3) need two samples
                continue
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=cfg.train.bf16), \
                    warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always", RuntimeWarning)
                terms = train_losses(cfg, net, train.batch(idx).to(device), train.labels[idx].to(device),
                                     rate=rate, generator=gen, patterns=patterns, index=idx)
            # Sinkhorn warns on every non-converged step: count per epoch instead of flooding the log.
            nonconverged += sum("sinkhorn" in str(w.message) for w in caught)
            if not torch.isfinite(terms["total"]):  # a step on it would turn the weights NaN, and the next
                # step fail somewhere less clear (the noise entropy's Cholesky): stop here, saying why
                raise FloatingPointError(f"train/total is {float(terms['total'].detach())} at epoch {epoch + 1}, "
                                         f"step {n_batches + 1}")
            if health_on and n_batches % cfg.eval.health_every == 0:
                parts = health.loss_parts(terms, lambda1=cfg.loss.lambda1, lambda2=cfg.loss.lambda2)
                # under DDP the shares are not measured (NaN, same names): see health_on above
                shares.append(health.grad_shares(parts, health.shared_parameters(net)) if world == 1
                              else dict.fromkeys(parts, float("nan")))
            opt.zero_grad(set_to_none=True)
            terms["total"].backward()
            if cfg.train.grad_clip is not None:
                torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.train.grad_clip)
            opt.step()
            for k, v in terms.items():
                sums[k] = sums.get(k, 0.0) + float(v.detach())
            n_batches += 1
            if cfg.train.max_batches and n_batches >= cfg.train.max_batches:
                break
        metrics = {f"train/{k}": v / max(n_batches, 1) for k, v in sums.items()}
        metrics["train/missing_rate"] = rate
        if cfg.model.das:
            metrics["train/das/sinkhorn_nonconverged"] = nonconverged
            total_nonconverged += nonconverged
            if nonconverged > 0.1 * n_batches:
                log(f"warning: Sinkhorn did not converge in {nonconverged}/{n_batches} steps of epoch {epoch + 1} "
                    f"(loss.sinkhorn_eps={cfg.loss.sinkhorn_eps}, median cost "
                    f"{metrics['train/das/median_cost']:.3g}): consider a larger loss.sinkhorn_eps")
        kept: dict = {}  # the complete input's H of this validation pass, reused by the health metrics
        metrics.update(evaluate(model, valid, epoch_conditions, modalities=prep.modalities,
                                mask_seed=cfg.eval.mask_seed, batch_size=cfg.eval.batch_size, prefix="val",
                                keep=kept))
        if health_on:
            metrics.update(health.measure(model, valid, views=health_views, batch_size=cfg.train.batch_size,
                                          eps_fn=lambda median: sinkhorn_eps(cfg.loss, median),
                                          complete_h=kept.get("complete_h"), view_rows=cfg.eval.health_rows))
            for k in shares[0] if shares else ():
                metrics[f"health/grad_share/{k}"] = float(np.mean([sh[k] for sh in shares]))
        metrics["epoch_time_s"] = time.time() - t0
        if metrics[objective] > best["score"]:
            best = {"score": metrics[objective], "epoch": epoch,
                    "state": copy.deepcopy(model.state_dict()), "val": metrics}
        history.append({"epoch": epoch, **{k: v for k, v in metrics.items() if k.startswith(("train/", "health/"))},
                        objective: metrics[objective], complete: metrics[complete]})
        log(f"epoch {epoch + 1}/{cfg.train.epochs}  train/total {metrics.get('train/total', float('nan')):.4f}  "
            f"val objective {metrics[objective]:.4f}  (best {best['score']:.4f} @ {best['epoch'] + 1})  "
            f"rate {rate:.2f}  {metrics['epoch_time_s']:.1f} s")
        metrics["epoch"] = epoch + 1
        metrics["best_epoch"] = best["epoch"] + 1
        for key in (objective, complete, f"val/{HEADLINE}/avg_missing"):
            if key in best["val"]:
                metrics[f"best/{key}"] = best["val"][key]  # the value at the selected epoch so far
        if report is not None:
            report(epoch, metrics, lambda e=epoch: state(e))

    if total_nonconverged:
        notes.append(f"Sinkhorn reached its iteration cap without converging in {total_nonconverged} training "
                     f"steps (loss.sinkhorn_eps={cfg.loss.sinkhorn_eps}); the non-converged plans were used")
    model.load_state_dict(best["state"])
    test = {}
    if evaluate_test:
        test = evaluate(model, prep.splits["test"], full_conditions, modalities=prep.modalities,
                        mask_seed=cfg.eval.mask_seed, batch_size=cfg.eval.batch_size, prefix="test")
        if cfg.eval.shuffled_floor:  # leakage floor: each present modality's content permuted (protocol.Shuffled)
            test.update(shuffled_floor(model, prep.splits["test"], shuffled_controls(prep.modalities),
                                       modalities=prep.modalities, seed=cfg.eval.mask_seed,
                                       batch_size=cfg.eval.batch_size, prefix="test"))
    # The selected epoch's validation metrics, now with the burst curve and the per-modality conditions
    # that per-epoch validation skips.
    val = evaluate(model, valid, full_conditions, modalities=prep.modalities, mask_seed=cfg.eval.mask_seed,
                   batch_size=cfg.eval.batch_size, prefix="val")
    return RunResult(val, test, best["epoch"], history, time.time() - start, "completed", notes, prep, model)
