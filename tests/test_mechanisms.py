"""FSRF's mechanisms as training uses them (SPEC section 7): which loss forms a run uses, the eps it
gives Sinkhorn, the present-modality masks the DHF terms receive, the health metrics every epoch logs,
and the paper presets. The loss functions themselves are tested in test_losses.py, the health metrics
on hand cases in test_health.py; here the seams between them and ``fsrf.train``."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from fsrf import losses
from fsrf.config import flatten, load_config
from fsrf.missing import mrm_views
from fsrf.train import build_model, fit, prepare, sinkhorn_eps, train_losses

ROOT = Path(__file__).resolve().parents[1]
SMALL = ["data.size_scale=0.05", "model.width=16", "model.seq_width=8", "train.threads=1"]


def quiet(_: str) -> None:
    pass


@pytest.fixture(scope="module")
def small():
    cfg = load_config(None, SMALL)
    prep = prepare(cfg)
    torch.manual_seed(0)
    return cfg, prep, build_model(cfg, prep)


def one_step(cfg, prep, model, *, rate=0.5, seed=3, n=16):
    train = prep.splits["train"]
    idx = torch.arange(n)
    return train_losses(cfg, model, train.batch(idx), train.labels[idx], rate=rate,
                        generator=torch.Generator().manual_seed(seed))


def test_the_forms_a_run_uses_are_its_params():
    flat = flatten(load_config(None, []))
    assert flat["loss.noise_entropy_form"] == "prior" and flat["loss.das_feature"] == "divergence"
    assert flat["loss.sinkhorn_eps_relative"] is True and flat["model.fusion"] == "early"
    old = flatten(load_config(None, ["loss.noise_entropy_form=literal", "loss.das_feature=distance"]))
    assert old["loss.noise_entropy_form"] == "literal" and old["loss.das_feature"] == "distance"


@pytest.mark.parametrize("bad, field", [("loss.noise_entropy_form=gaussian", "loss.noise_entropy_form"),
                                        ("loss.das_feature=cost", "loss.das_feature"),
                                        ("model.fusion=late", "model.fusion"),
                                        ("model.fusion=late,model.dhf=false", "model.das")])
def test_bad_forms_are_refused_by_name(bad, field):
    from fsrf.errors import InputError

    with pytest.raises((InputError, ValueError), match=field.split(".")[-1]):
        load_config(None, bad.split(","))


def test_eps_is_relative_to_the_batch_median_cost(small):
    cfg, prep, model = small
    terms = one_step(cfg, prep, model)
    assert float(terms["das/eps"]) == pytest.approx(0.25 * float(terms["das/median_cost"]), rel=1e-12)
    absolute = load_config(None, SMALL + ["loss.sinkhorn_eps_relative=false", "loss.sinkhorn_eps=0.7"])
    assert float(one_step(absolute, prep, model)["das/eps"]) == 0.7
    assert sinkhorn_eps(cfg.loss, 2.0) == 0.5 and sinkhorn_eps(absolute.loss, 2.0) == 0.7


@pytest.mark.parametrize("form, feature", [("prior", "divergence"), ("literal", "distance")])
def test_training_losses_are_the_configured_forms_on_the_present_modalities(small, form, feature):
    """Recompute one step's DHF and DAS terms from the model's outputs under the same two MRM views:
    the noise-entropy form, the Sinkhorn feature and the present masks must be those of the config."""
    base, prep, model = small
    cfg = load_config(None, SMALL + [f"loss.noise_entropy_form={form}", f"loss.das_feature={feature}"])
    model.eval()  # no dropout: the recomputation sees the same network
    terms = one_step(cfg, prep, model, rate=0.7)
    train = prep.splits["train"]
    x = train.batch(torch.arange(16))
    valid = x.valid()
    vp, vq = mrm_views(valid, rate=0.7, overlap=None, generator=torch.Generator().manual_seed(3))
    assert not vp.present.all(), "rate 0.7 should leave some modality absent: this test would not bite"
    from fsrf.missing import zeroed_masks

    out = model(x.repeat(2), torch.cat([vp.present, vq.present]),
                tuple(torch.cat(pair) for pair in zip(zeroed_masks(vp, valid), zeroed_masks(vq, valid))))
    L = cfg.loss
    kw = dict(tau=L.tau, margin=L.margin, mu=L.noise_mu, sigma2=L.noise_sigma2, noise_entropy_form=form)
    dhf_p = losses.dhf_loss(out.ho[:16], out.he[:16], out.noise[:16], present=vp.present, **kw)
    dhf_q = losses.dhf_loss(out.ho[16:], out.he[16:], out.noise[16:], present=vq.present, **kw)
    for key in ("contrastive", "noise_consistency", "noise_entropy"):
        assert float(terms[f"dhf/{key}"]) == pytest.approx(0.5 * float(dhf_p[key] + dhf_q[key]), rel=1e-6), key
    # the same terms without the masks differ: absent modalities would enter them
    unmasked = losses.dhf_loss(out.ho[:16], out.he[:16], out.noise[:16], **kw)
    assert float(unmasked["contrastive"]) != pytest.approx(float(dhf_p["contrastive"]), rel=1e-3)
    eps = 0.25 * losses.median_pairwise_cost(out.z[:16], out.z[16:])
    term = losses.sinkhorn_divergence if feature == "divergence" else losses.sinkhorn_distance
    assert float(terms["das/sinkhorn"]) == pytest.approx(float(term(out.z[:16], out.z[16:], eps)), rel=1e-6)
    model.train()


def test_every_epoch_logs_the_health_metrics_spec_names(small):
    cfg = load_config(None, SMALL + ["train.epochs=2", "train.max_batches=4", "eval.health_every=2"])
    epochs = []
    fit(cfg, prep=small[1], log=quiet, evaluate_test=False, report=lambda e, m, s: epochs.append(m))
    for metrics in epochs:
        for name in ("noise_var", "noise_rank", "he_ho_cos"):
            assert {f"health/{name}", *(f"health/{name}/{m}" for m in "lav")} <= set(metrics), name
            per = [metrics[f"health/{name}/{m}"] for m in "lav"]
            assert metrics[f"health/{name}"] == pytest.approx(sum(per) / 3)
        assert {"health/ho_agreement", "health/das_paired_mass", "health/das_pair_cost_ratio"} <= set(metrics)
        shares = {k: v for k, v in metrics.items() if k.startswith("health/grad_share/")}
        assert set(shares) == {f"health/grad_share/{t}" for t in
                               ("task", "contrastive", "noise_consistency", "noise_entropy", "sinkhorn", "js")}
        assert sum(shares.values()) == pytest.approx(1.0)
        assert 1.0 <= metrics["health/das_paired_mass"] <= 32.0 + 1e-9
    off = load_config(None, SMALL + ["train.epochs=1", "train.max_batches=2", "eval.health_every=0"])
    logged = []
    fit(off, prep=small[1], log=quiet, evaluate_test=False, report=lambda e, m, s: logged.append(m))
    assert not any(k.startswith("health/") for k in logged[0])


def test_switched_off_parts_have_no_health_metric(small):
    cfg = load_config(None, SMALL + ["train.epochs=1", "train.max_batches=2", "model.noise=false"])
    logged = []
    fit(cfg, prep=small[1], log=quiet, evaluate_test=False, report=lambda e, m, s: logged.append(m))
    assert "health/ho_agreement" in logged[0] and not any(k.startswith("health/noise_") for k in logged[0])
    assert "health/grad_share/noise_entropy" not in logged[0] or logged[0]["health/grad_share/noise_entropy"] == 0


def test_the_literal_noise_entropy_collapses_R_n_and_the_prior_form_does_not(small):
    """SPEC 7's finding, reproduced small: a few epochs with eq (3) literal shrink R_n's variance by
    orders of magnitude; the prior form keeps it near the prior's scale."""
    variance = {}
    for form in ("literal", "prior"):
        cfg = load_config(None, SMALL + ["train.epochs=6", "train.batch_size=8", "train.lr=3e-3",
                                         f"loss.noise_entropy_form={form}", "loss.lambda1=1.0"])
        logged = []
        fit(cfg, prep=small[1], log=quiet, evaluate_test=False, report=lambda e, m, s: logged.append(m))
        variance[form] = logged[-1]["health/noise_var"]
    assert variance["literal"] < 1e-3 < variance["prior"], variance
    assert variance["prior"] > 100 * variance["literal"], variance


@pytest.mark.parametrize("preset, lr, batch, epochs, data", [("paper_mosi", 1e-4, 16, 20, "mosi"),
                                                              ("paper_mosei", 2e-4, 32, 30, "mosei")])
def test_paper_presets_have_the_papers_settings(preset, lr, batch, epochs, data):
    cfg = load_config(str(ROOT / "configs" / f"{preset}.yaml"), [])
    assert (cfg.train.lr, cfg.train.batch_size, cfg.train.epochs, cfg.data.preset) == (lr, batch, epochs, data)
    assert cfg.model.width == 128 and cfg.train.grad_clip is None
    assert (cfg.loss.lambda1, cfg.loss.lambda2) == (0.2, 0.1)
