"""Image defenses, attacks, certification statistics, sanity flags and the paper-scale suites.

Everything runs on small slices of the bundled digits or on tiny fixtures, one thread."""
import gzip
import pickle
import struct
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy.stats import norm
from statsmodels.stats.proportion import proportion_confint
from torch import nn

from benchmark.certify import certify, gaussian_radius, lower_confidence_bound, predict
from benchmark.data import load_task
from benchmark.data.base import Split, Task
from benchmark.errors import UsageError
from benchmark.evaluate import BuildContext, run_suite
from benchmark.interfaces import ABSTAIN, DefendedModel, Differentiable, Randomized
from benchmark.leaderboard import build_leaderboard, render_markdown
from benchmark.models import build_model
from benchmark.registry import ATTACKS, DEFENSES
from benchmark.specs import ModelSpec, TaskSpec
from benchmark.store import Store
from benchmark.suite import load_suite, resolve_config
from benchmark.train import fit
from benchmark import sanity

TINY_CNN = ModelSpec.make("smallcnn", {"width": 16, "feature_dim": 64})



@pytest.fixture(scope="module")
def digits():
    """The bundled digits (1,258 training images), cut to 60 test images."""
    full = load_task(TaskSpec.make("digits", {"seed": 0}))
    return Task("digits", "image", 10, full.train, full.test.subset(range(60), "test"))


def build_defense(name, task, tmp_path, model=TINY_CNN, **params):
    entry = DEFENSES.get(name)
    config = resolve_config(entry.obj.defaults, params, name)
    context = BuildContext(tmp_path, f"{name}-test", 0, torch.device("cpu"))
    torch.manual_seed(0)
    return entry.obj().build(task, model, config, context)


def make_attack(name, **params):
    entry = ATTACKS.get(name)
    return entry.obj(resolve_config(entry.obj.defaults, params, name))


def accuracy(model, xs, ys):
    return float((model.predict(xs) == ys).mean())


# ---- certification statistics ----

def test_lower_confidence_bound_is_the_one_sided_clopper_pearson_bound():
    for k, n, alpha in [(0, 10, 0.05), (7, 10, 0.05), (990, 1000, 0.001), (100, 100, 0.01)]:
        expected = proportion_confint(k, n, alpha=2 * alpha, method="beta")[0] if k else 0.0
        assert lower_confidence_bound(k, n, alpha) == pytest.approx(expected, abs=1e-12)


def test_cohen_predict_and_certify():
    assert predict([90, 5, 5], alpha=0.001) == 0
    assert predict([40, 38, 22], alpha=0.05) == ABSTAIN
    assert predict([0, 0, 0], alpha=0.05) == ABSTAIN
    prediction, p_lower = certify([1, 99, 0], [10, 980, 10], alpha=0.001)
    assert prediction == 1 and p_lower == pytest.approx(lower_confidence_bound(980, 1000, 0.001))
    assert gaussian_radius(p_lower, 0.5) == pytest.approx(0.5 * norm.ppf(p_lower))
    # Selection picks class 0 but estimation does not bound it above 1/2: abstain.
    assert certify([60, 40], [450, 550], alpha=0.001)[0] == ABSTAIN
    assert gaussian_radius(0.5, 1.0) == 0.0


# ---- AutoAttack is the reference algorithm ----

class Unfoolable(nn.Module):
    """Logits that ignore the input except for a vanishing term (so gradients exist), with the
    true class far ahead: no attack can succeed, so every attack runs its full budget."""

    def __init__(self, num_classes=10):
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(1))
        self.num_classes = num_classes
        self.calls = 0

    def forward(self, x):
        self.calls += 1
        logits = torch.zeros(len(x), self.num_classes) + 1e-3 * x.flatten(1).sum(1, keepdim=True)
        logits[:, 0] += 100.0
        return logits


def test_autoattack_standard_is_the_reference():
    from pyautoattack import AutoAttack
    from pyautoattack.autopgd_base import APGDAttack, APGDAttack_targeted
    from pyautoattack.square import SquareAttack

    attack = make_attack("autoattack", eps=8 / 255)
    model = Unfoolable()
    built = attack.build(model, 10, "cpu", seed=0)
    assert type(built) is AutoAttack and built.version == "standard"
    assert built.attacks_to_run == ["apgd-ce", "apgd-t", "fab-t", "square"]
    assert type(built.apgd) is APGDAttack and type(built.apgd_targeted) is APGDAttack_targeted
    assert built.apgd.n_iter == 100 and built.apgd_targeted.n_iter == 100
    assert built.apgd_targeted.n_target_classes == 9 and built.fab.n_target_classes == 9
    assert type(built.square) is SquareAttack and built.square.n_queries == 5000
    assert built.apgd.norm == "Linf" and built.apgd.eps == pytest.approx(8 / 255)
    # APGD really runs its 100 iterations (plus its initial evaluations) when nothing breaks.
    x = torch.rand(4, 1, 8, 8)
    y = torch.zeros(4, dtype=torch.long)
    built.apgd.loss = "ce"
    model.calls = 0
    adversarial = built.apgd.perturb(x, y)
    assert model.calls >= 100
    assert (adversarial - x).abs().max() <= 8 / 255 + 1e-6
    assert "standard: APGD-CE, APGD-T, FAB-T, Square" in attack.describe()


def test_autoattack_refuses_a_modified_standard_version():
    with pytest.raises(UsageError, match="only apply to version = 'custom'"):
        make_attack("autoattack", n_iter=10)
    with pytest.raises(UsageError, match="non-empty list"):
        make_attack("autoattack", version="custom")
    with pytest.raises(UsageError, match="unknown: pgd"):
        make_attack("autoattack", version="custom", attacks=["pgd"])


def test_cheap_autoattack_on_three_classes(digits):
    """The custom APGD-CE + APGD-T runs on a 3-class model (targets capped at 2, padded DLR) and
    returns adversarials inside the budget that fool at least as often as nothing."""
    xs = digits.train.xs[:20]
    ys = digits.train.ys[:20] % 3
    model = build_model(TINY_CNN, Task("d3", "image", 3, Split(xs, ys), Split(xs, ys)))
    fit(model, xs, ys, epochs=3, batch_size=20, lr=1e-2)
    from benchmark.defended import ClassifierModel

    defended = ClassifierModel(model, 3)
    attack = make_attack("autoattack", version="custom", attacks=["apgd-ce", "apgd-t"], eps=0.3,
                         n_iter=10, n_target_classes=9)
    built = attack.build(nn.Identity(), 3, "cpu", 0)
    assert built.apgd_targeted.n_target_classes == 2 and built.apgd.n_iter == 10
    outcomes = attack.run(defended, xs, ys, seed=0)
    adversarial = np.stack([o.adversarial for o in outcomes])
    assert np.abs(adversarial - xs).max() <= 0.3 + 1e-5
    assert accuracy(defended, adversarial, ys) <= accuracy(defended, xs, ys)
    assert outcomes[0].queries == 10 + 10 * 2


def test_autoattack_derandomizes_randomized_defenses():
    from attacks.vision.autoattack import FixedDraws

    noisy = lambda x: x.flatten(1)[:, :3] + torch.randn(len(x), 3)  # noqa: E731
    model = FixedDraws(type("M", (nn.Module,), {"forward": lambda self, x: noisy(x)})(), 4, 7)
    x = torch.rand(5, 1, 4, 4)
    torch.manual_seed(0)
    before = torch.rand(1)
    torch.manual_seed(0)
    first, second = model(x), model(x)
    assert torch.equal(first, second)                 # one fixed function
    assert torch.equal(torch.rand(1), before)         # the global generator is left as it was
    assert torch.allclose(first.exp().sum(1), torch.ones(5), atol=1e-5)  # log mean softmax


# ---- attacks ----

def test_cw_loss_and_projections():
    from attacks.vision.perturb import cw_margin_loss, project

    logits = torch.tensor([[3.0, 1.0, 0.0], [0.0, 2.0, 1.0]])
    loss = cw_margin_loss(logits, torch.tensor([0, 0]), confidence=50.0)
    assert loss.tolist() == [-(3 - 1 + 50), -(0 - 2 + 50)]
    x = torch.rand(3, 1, 4, 4)
    far = x + 10 * torch.randn_like(x)
    assert ((project(far, x, "linf", 0.1) - x).abs().max() <= 0.1 + 1e-6)
    inside = project(far, x, "l2", 0.5)
    assert ((inside - x).flatten(1).norm(dim=1) <= 0.5 + 1e-5).all()
    assert inside.min() >= 0 and inside.max() <= 1


def test_white_box_attacks_reach_vanilla(digits, tmp_path):
    vanilla = build_defense("vanilla", digits, tmp_path, epochs=3, lr=1e-2)
    xs, ys = digits.test.xs[:40], digits.test.ys[:40]
    assert accuracy(vanilla, xs, ys) > 0.7
    for name, params in [("cw", {"eps": 0.3}), ("eot-pgd", {"eps": 0.3, "eot_samples": 3}),
                         ("bpda-pgd", {"eps": 0.3})]:
        outcomes = make_attack(name, **params).run(vanilla, xs, ys, seed=0)
        adversarial = np.stack([o.adversarial for o in outcomes])
        assert np.abs(adversarial - xs).max() <= 0.3 + 1e-5
        assert accuracy(vanilla, adversarial, ys) < 0.3, name
        # A deterministic model gets one draw per step: EOT reduces to PGD's cost.
        assert outcomes[0].queries == 20


def test_targeted_pgd_reaches_its_target(digits, tmp_path):
    """Each target mode picks a class other than the true one (most / least likely by the model's
    clean probabilities, random from the batch's seed), and the attack drives predictions to it far
    more often than untargeted PGD at the same budget lands there."""
    vanilla = build_defense("vanilla", digits, tmp_path, epochs=3, lr=1e-2)
    xs, ys = digits.test.xs[:40], digits.test.ys[:40]
    probs = vanilla.probs(xs)
    others = np.where(np.eye(10, dtype=bool)[ys], np.nan, probs)
    budget = {"eps": 0.3, "steps": 10}
    untargeted = np.stack([o.adversarial for o in make_attack("pgd", **budget).run(vanilla, xs, ys, seed=0)])
    untargeted_predictions = vanilla.predict(untargeted)
    for target, expected in [("most-likely", np.nanargmax(others, axis=1)),
                             ("least-likely", np.nanargmin(others, axis=1)), ("random", None)]:
        outcomes = make_attack("pgd-targeted", target=target, **budget).run(vanilla, xs, ys, seed=3)
        targets = np.array([o.extra["target"] for o in outcomes])
        assert (targets != ys).all() and ((0 <= targets) & (targets < 10)).all()
        if expected is not None:
            assert (targets == expected).all(), target
        else:  # the batch's seed draws them: the same seed the same targets, spread over classes
            again = make_attack("pgd-targeted", target=target, **budget).run(vanilla, xs, ys, seed=3)
            assert [o.extra["target"] for o in again] == targets.tolist()
            assert len(set(targets.tolist())) >= 5
        adversarial = np.stack([o.adversarial for o in outcomes])
        assert np.abs(adversarial - xs).max() <= 0.3 + 1e-5
        hits = np.mean(vanilla.predict(adversarial) == targets)
        if target != "most-likely":  # untargeted PGD mostly lands on the most likely class anyway
            assert hits > np.mean(untargeted_predictions == targets) + 0.3, (target, hits)
        assert hits > 0.5, (target, hits)
    with pytest.raises(UsageError, match="target must be one of most-likely, random, least-likely"):
        make_attack("pgd-targeted", eps=0.1)


@pytest.mark.parametrize("name", ["gn", "un"])
def test_noise_attacks_stay_in_the_ball_and_the_image_range(digits, name):
    """GN: N(0, sigma^2) clipped to the l-inf ball; UN: uniform in the ball; both then clipped to
    [0, 1], seeded by the batch, and never a model query."""
    attack = make_attack(name, eps=0.1, **({"sigma": 0.08} if name == "gn" else {}))
    xs, ys = digits.test.xs[:30], digits.test.ys[:30]
    outcomes = attack.run(None, xs, ys, seed=5)
    adversarial = np.stack([o.adversarial for o in outcomes])
    assert np.abs(adversarial - xs).max() <= 0.1 + 1e-6
    assert adversarial.min() >= 0 and adversarial.max() <= 1
    assert all(o.queries == 0 for o in outcomes)
    assert np.array_equal(adversarial, np.stack([o.adversarial for o in attack.run(None, xs, ys, seed=5)]))
    assert not np.array_equal(adversarial, np.stack([o.adversarial for o in attack.run(None, xs, ys, seed=6)]))
    # On mid-grey images nothing meets the box: the noise's own distribution shows.
    grey = np.full((200, 1, 8, 8), 0.5, dtype=np.float32)
    delta = np.stack([o.adversarial for o in attack.run(None, grey, np.zeros(200, int), seed=1)]) - 0.5
    on_faces = np.mean(np.isclose(np.abs(delta), 0.1, atol=1e-6))
    if name == "gn":  # P(|N(0, 0.08^2)| > 0.1) = 2 (1 - Phi(1.25)) = 0.211
        assert on_faces == pytest.approx(2 * (1 - norm.cdf(1.25)), abs=0.02)
        assert np.std(delta) == pytest.approx(0.062, abs=0.004)  # the clipped normal's spread
    else:
        assert on_faces < 0.01 and np.mean(np.abs(delta)) == pytest.approx(0.05, abs=0.003)
    with pytest.raises(UsageError, match="eps must be >= 0"):
        make_attack(name, eps=-0.1)
    if name == "gn":
        with pytest.raises(UsageError, match="sigma must be > 0"):
            make_attack("gn", sigma=0.0)


def test_block_share_measures_the_perturbation_on_the_colour_blocks(digits, tmp_path):
    from attacks.vision.block_share import colour_block_share

    ctoy = load_task(TaskSpec.make("ctoy", {"seed": 0, "size": 16, "n_train": 30, "n_test": 20}))
    xs, ys = ctoy.test.xs[:8], ctoy.test.ys[:8]
    shape = (xs == 1.0).all(axis=1, keepdims=True)
    assert 0.1 < shape.mean() < 0.7  # both regions are there
    blocks_only = np.where(shape, xs, xs * 0.5)
    shape_only = np.where(shape, 0.7, xs)
    assert np.allclose(colour_block_share(blocks_only, xs), 1.0)
    assert np.allclose(colour_block_share(shape_only, xs), 0.0)
    # a uniform shift of every channel of every pixel spreads by area
    assert np.allclose(colour_block_share(xs - 0.05, xs), 1 - shape.reshape(8, -1).mean(1))
    model = build_defense("vanilla", ctoy, tmp_path, epochs=1)
    attack = make_attack("pgd-block-share", eps=0.5, steps=3)
    outcomes = attack.run(model, xs, ys, seed=0)
    shares = np.array([o.extra["colour_block_share"] for o in outcomes])
    adversarial = np.stack([o.adversarial for o in outcomes])
    assert np.allclose(shares, colour_block_share(adversarial, xs)) and ((0 < shares) & (shares < 1)).all()
    with pytest.raises(UsageError, match="needs RGB images"):
        attack.run(model, digits.test.xs[:4], digits.test.ys[:4], seed=0)


def test_real_cpu_ciiv_fidelity_rows():
    """The CiiV ablations run on digits under another label with digits' own task, model, training
    settings and test sample (so claims pair the same images), and only their clean and PGD-10
    cells; the targeted PGD-10 entries differ from the untargeted one by their target alone."""
    suite = load_suite("real-cpu")
    digits_ciiv = next(c for c in suite.cells if c.task_label == "digits" and c.defense_label == "ciiv"
                       and c.attack_label == "pgd-10-linf")
    ablation = [c for c in suite.cells if c.task_label == "digits-ciiv-ablation"]
    assert {(c.defense_label.split("@")[0], c.attack_label) for c in ablation} == {
        (d, a) for d in ("ciiv-retiaug", "ciiv-n1") for a in (None, "pgd-10-linf")}
    assert len(ablation) == 12  # three training seeds each
    for cell in ablation:
        assert (cell.task, cell.model) == (digits_ciiv.task, digits_ciiv.model)
        if cell.attack_label:
            assert (cell.protocol, cell.attack) == (digits_ciiv.protocol, digits_ciiv.attack)
        changed = {k: v for k, v in cell.defense.params.items() if digits_ciiv.defense.params[k] != v}
        assert changed == ({"w_reg": 0.0} if cell.defense_label.startswith("ciiv-retiaug")
                           else {"num_samples": 1})
    untargeted = digits_ciiv.attack.params
    for target in ("most-likely", "random", "least-likely"):
        cell = next(c for c in suite.cells if c.attack_label == f"pgd-10-{target}")
        assert cell.attack.name == "pgd-targeted"
        assert cell.attack.params == {**untargeted, "target": target}
    assert not [c for c in suite.cells if c.attack_label == "pgd-block-share" and c.task_label != "ctoy"]


# ---- defenses ----

def test_adversarial_training_defenses_train_and_deploy(digits, tmp_path):
    for name, params in [("madry", {"eps": 0.2, "steps": 2}), ("trades", {"eps": 0.2, "steps": 2}),
                         ("mixup", {}), ("causaladv-m", {"eps": 0.2, "steps": 2, "lambda": 0.3}),
                         ("causaladv-t", {"eps": 0.2, "steps": 2, "lambda": 0.3}),
                         ("causaladv-m", {"eps": 0.2, "steps": 2, "lambda": 0.3,
                                          "objective": "reference"})]:
        model = build_defense(name, digits, tmp_path, epochs=3, lr=3e-3, **params)
        assert isinstance(model, DefendedModel) and isinstance(model, Differentiable)
        assert accuracy(model, digits.test.xs, digits.test.ys) > 0.2, name
    assert DEFENSES.get("trades").obj.defaults["beta"] == 6.0
    # CausalAdv: the paper's beta weighs the natural style term (1.0, App. D); TRADES' is its own key.
    for name, trades_beta in [("causaladv-m", 1.0), ("causaladv-t", 6.0)]:
        defaults = DEFENSES.get(name).obj.defaults
        assert (defaults["objective"], defaults["beta"], defaults["trades_beta"]) == (
            "paper", 1.0, trades_beta)


def _causaladv_trainer(digits, objective, mode="m", lam=1.0):
    from defenses.vision.causaladv import CausalAdvTrainer, _CausalAdv

    torch.manual_seed(0)
    model = build_model(TINY_CNN, digits)
    config = {**_CausalAdv.defaults, "eps": 0.2, "steps": 3, "objective": objective,
              "trades_beta": 6.0 if mode == "t" else 1.0, "lambda": lam}
    trainer = CausalAdvTrainer(model, digits.num_classes, config, mode, seed=0)
    trainer.on_epoch_start(config["epochs"])  # full lambda and ratio
    return model, trainer


@pytest.mark.parametrize("mode", ["m", "t"])
def test_causaladv_paper_attack_maximises_the_classification_loss_only(digits, mode):
    """Eq. 2: the training perturbation attacks h's classification loss, so g cannot change it;
    the reference's attack also maximises the style term, so g does (lambda is large here so the
    style term's gradient decides signs)."""
    x = torch.as_tensor(digits.train.xs[:16])
    y = torch.as_tensor(digits.train.ys[:16])
    for objective, g_matters in [("paper", False), ("reference", True)]:
        model, trainer = _causaladv_trainer(digits, objective, mode, lam=1e3)
        features = model.features(x).detach()
        basis = trainer.basis.update(features, model.head.weight.detach())
        trainer.g(torch.zeros(4, features.shape[1]), y[:4], 0.0, update_covariance=True)
        torch.manual_seed(1)
        before = trainer.adversarial(model, x, y, basis)
        with torch.no_grad():
            for p in trainer.g.parameters():
                p.add_(torch.randn_like(p))
        torch.manual_seed(1)
        after = trainer.adversarial(model, x, y, basis)
        assert (not torch.equal(before, after)) == g_matters, objective


def test_causaladv_paper_objective_trains_g_jointly_with_h(digits):
    """Eq. 11 is minimised over (theta, W_g): g moves along the gradient of the whole loss."""
    model, trainer = _causaladv_trainer(digits, "paper")
    x = torch.as_tensor(digits.train.xs[:32])
    y = torch.as_tensor(digits.train.ys[:32])
    start = [p.detach().clone() for p in trainer.g.parameters()]
    loss = trainer(model, x, y)
    loss.backward()
    gradient = [p.grad.clone() for p in trainer.g.parameters()]
    assert any(g.abs().sum() > 0 for g in gradient)
    trainer(model, x, y)  # the next step applies g's update from the previous loss
    moved = [p.detach() - s for p, s in zip(trainer.g.parameters(), start)]
    assert any(m.abs().sum() > 0 for m in moved)


def test_causaladv_unknown_objective_is_an_error(digits):
    with pytest.raises(UsageError, match="objective must be one of paper, reference"):
        _causaladv_trainer(digits, "printed")


def test_sgd_schedule_and_augmentation():
    from defenses.vision.common import augment

    model = nn.Linear(4, 2)
    rates = []
    from torch.optim.optimizer import register_optimizer_step_pre_hook

    hook = register_optimizer_step_pre_hook(
        lambda optimizer, args, kwargs: rates.append((type(optimizer).__name__,
                                                      optimizer.param_groups[0]["lr"])))
    try:
        xs = np.random.default_rng(0).random((8, 4), dtype=np.float32)
        fit(model, xs, np.arange(8) % 2, epochs=4, batch_size=8, lr=0.1, optimizer="sgd",
            lr_milestones=(1, 3), lr_gamma=0.1)
    finally:
        hook.remove()
    assert [name for name, _ in rates] == ["SGD"] * 4
    assert [lr for _, lr in rates] == pytest.approx([0.1, 0.01, 0.01, 0.001])
    x = torch.rand(5, 3, 8, 8)
    out = augment(x)
    assert out.shape == x.shape and out.min() >= 0
    # A crop of a zero-padded image: every output pixel is an input pixel or padding.
    assert set(np.round(out.numpy().ravel(), 6)) <= set(np.round(x.numpy().ravel(), 6)) | {0.0}


def test_causaladv_style_basis_and_sigma_adjusted_logits():
    from defenses.vision.causaladv import StyleBasis, StylePredictor, normalise

    torch.manual_seed(0)
    features = torch.randn(64, 16).relu()
    weight = torch.randn(3, 16)
    basis = StyleBasis(16, torch.device("cpu"), torch.Generator().manual_seed(0))
    rows = basis.update(features, weight)
    sigma = basis.covariance.cov[0]
    # Every style direction is orthogonal to Sigma w_c: the style carries nothing the head reads
    # under the feature covariance.
    assert (rows @ (sigma @ weight.t())).abs().max() < 1e-5
    assert torch.allclose(rows.norm(dim=1), torch.ones(16), atol=1e-5)
    # The running covariance equals the batch covariance of the normalised features.
    normalised = normalise(features)
    expected = torch.cov(normalised.t(), correction=0)
    assert torch.allclose(sigma, expected, atol=1e-5)
    g = StylePredictor(16, 3)
    labels = torch.arange(64) % 3
    plain = g(normalised @ rows.t(), labels, ratio=0.0, update_covariance=True)
    shifted = g(normalised @ rows.t(), labels, ratio=1.0)
    shift = shifted - plain
    # Eq. 10: no shift for the true class, a non-negative one for the others.
    assert shift.gather(1, labels[:, None]).abs().max() < 1e-6
    assert (shift >= -1e-6).all() and shift.max() > 0


def test_ciiv_layer(digits, tmp_path):
    from defenses.vision.ciiv import CiiVNet, ciiv_regulariser

    base = build_model(TINY_CNN, digits)
    net = CiiVNet(base, [0.0], [1.0], num_samples=3, omega=0.9)
    masks = net.masks(9, 32, 32, "cpu")
    assert masks.shape == (9, 3, 32, 32)
    # Nine distinct centres: each loop's mask is densest near its own centre.
    densest = {tuple(np.unravel_index(m.float().mean(0).numpy().argmax(), (32, 32))) for m in
               torch.stack([net.masks(9, 32, 32, "cpu") for _ in range(20)]).float().mean(0)}
    assert len(densest) >= 5
    # Exposure fires with probability clip((x + omega) / (2 omega), 0, 1).
    x = torch.full((1, 1, 4, 4), 0.3)
    fired = net.exposure(x, 200, bpda=False).mean().item()
    assert fired == pytest.approx((0.3 + 0.9) / 1.8, abs=0.02)
    # BPDA keeps the forward value and has the expectation's gradient 1 / (2 omega).
    x.requires_grad_(True)
    net.exposure(x, 1, bpda=True).sum().backward()
    assert torch.allclose(x.grad, torch.full_like(x, 3 / 1.8), atol=1e-5)
    features = torch.ones(9, 5, 4)
    assert ciiv_regulariser(features, torch.full((9,), 0.7)).item() == pytest.approx(0.0)
    assert ciiv_regulariser(torch.randn(9, 5, 4), torch.full((9,), 0.7)).item() > 0


@pytest.mark.parametrize("name", ["ciiv", "ciiv-mixup"])
def test_ciiv_trains_and_is_randomized(digits, tmp_path, name):
    model = build_defense(name, digits, tmp_path, epochs=3, lr=1e-2, loops=3,
                          reg_milestones=[1])
    assert isinstance(model, Randomized) and isinstance(model, Differentiable)
    assert accuracy(model, digits.test.xs, digits.test.ys) > 0.3
    probs = model.expected_probs(digits.test.xs[:5], samples=2)
    assert probs.shape == (5, 10) and np.allclose(probs.sum(1), 1, atol=1e-5)
    x = torch.as_tensor(digits.test.xs[:4]).requires_grad_(True)
    model.bpda_logits(x).sum().backward()
    assert x.grad.abs().sum() > 0


def test_randomized_smoothing_certifies(digits, tmp_path):
    model = build_defense("randomized-smoothing", digits, tmp_path, epochs=3, lr=1e-2, sigma=0.25,
                          certify_n0=20, certify_n=200, predict_samples=50)
    assert isinstance(model, Randomized) and model.unit == "l2"
    xs, ys = digits.test.xs[:20], digits.test.ys[:20]
    torch.manual_seed(0)
    certificates = model.certify(xs, ys, alpha=0.05, seed=0)
    assert len(certificates) == 20 and all(c.unit == "l2" and c.samples == 220 for c in certificates)
    for c in certificates:
        if c.abstained:
            assert c.prediction == ABSTAIN and c.radius == 0 and not c.certified
        else:
            assert c.radius == pytest.approx(gaussian_radius(c.p_lower, 0.25)) and c.p_lower >= 0.5
    assert sum(c.certified for c in certificates) >= 5
    assert set(model.predict(xs)) <= set(range(10)) | {ABSTAIN}


# ---- sanity checks ----

def _run(label, attack, params, correct):
    return sanity.Run(label, attack, params, dict(enumerate(correct)))


def test_sanity_checks_flag_violations():
    fgsm = _run("fgsm", "fgsm", {"eps": 0.1}, [0] * 60 + [1] * 40)
    pgd = _run("pgd", "pgd", {"norm": "linf", "eps": 0.1, "steps": 20}, [1] * 70 + [0] * 30)
    pgd5 = _run("pgd5", "pgd", {"norm": "linf", "eps": 0.1, "steps": 5}, [1] * 40 + [0] * 60)
    unbounded = _run("big", "pgd", {"norm": "linf", "eps": 1.0, "steps": 20}, [1] * 30 + [0] * 70)
    square = _run("sq", "autoattack", {"norm": "linf", "eps": 0.1, "attacks": ["square"]}, [0] * 100)
    eot = _run("eot", "eot-pgd", {"norm": "linf", "eps": 0.1}, [1] * 70 + [0] * 30)
    checks = {c.name: c for c in sanity.run_checks([fgsm, pgd, pgd5, unbounded, square, eot])}
    assert all(checks[name].status == "flag" for name in
               ["single-step", "more-steps", "unbounded", "black-box"]), checks
    assert checks["adaptive"].status == "ok"
    # An EOT-PGD-20 stronger than a PGD-5 alone is a step count, not masked gradients.
    eot20 = _run("eot20", "eot-pgd", {"norm": "linf", "eps": 0.1, "steps": 20}, [1] * 30 + [0] * 70)
    assert sanity.check_adaptive([pgd5, eot20]).status == "n/a"
    assert sanity.check_adaptive([pgd, eot20]).status == "flag"
    assert sanity.summarize(list(checks.values())).startswith("FLAG: single-step")
    good = sanity.run_checks([_run("fgsm", "fgsm", {"eps": 0.1}, [1] * 50 + [0] * 50),
                              _run("pgd", "pgd", {"eps": 0.1, "steps": 20}, [1] * 45 + [0] * 55)])
    assert [c.status for c in good] == ["ok", "n/a", "n/a", "n/a", "n/a", "n/a"]
    assert sanity.summarize(good) == "ok (1/6 checks)"
    # Paired on the shared examples when one sample contains the other: AutoAttack on a subset.
    pgd = _run("pgd", "pgd", {"eps": 0.1, "steps": 20}, [0] * 150 + [1] * 50)
    weak = sanity.Run("aa", "autoattack", {"eps": 0.1, "attacks": []},
                      {i: True for i in range(150, 200)} | {i: True for i in range(20)})
    check = sanity.check_autoattack([pgd, weak])
    assert check.status == "flag" and "20 shared" not in check.detail and "70 shared" in check.detail


def test_samples_are_nested():
    from benchmark.evaluate import sample_indices

    large, small = set(sample_indices(539, 200, 0)), set(sample_indices(539, 50, 0))
    assert len(large) == 200 and len(small) == 50 and small <= large
    assert len(sample_indices(30, 50, 0)) == 30


# ---- suites ----

MINI_VISION = """
name = "vision-test"
seed = 0
[protocol]
n_examples = 30
batch_size = 30
judge_draws = 4
[tasks.digits]
model = "smallcnn"
model_params = { width = 8, feature_dim = 32 }
train = { epochs = 3, lr = 3e-3 }
[defenses.vanilla]
[defenses.madry]
params = { eps = 0.2, steps = 2 }
[defenses.randomized-smoothing]
params = { certify_n0 = 16, certify_n = 100, predict_samples = 16 }
[attacks.fgsm]
params = { eps = 0.2 }
[attacks.pgd]
params = { eps = 0.2, steps = 10 }
[attacks.pgd-2]
attack = "pgd"
params = { eps = 0.2, steps = 2 }
[attacks.pgd-unbounded]
attack = "pgd"
params = { eps = 1.0, steps = 10 }
[attacks.autoattack]
params = { version = "custom", attacks = ["apgd-ce", "apgd-t"], eps = 0.2, n_iter = 10, n_target_classes = 2 }
protocol = { n_examples = 10, batch_size = 10 }
[attacks.square]
attack = "autoattack"
params = { version = "custom", attacks = ["square"], eps = 0.2, n_queries = 50 }
protocol = { n_examples = 10, batch_size = 10 }
"""


def test_vision_suite_end_to_end(tmp_path):
    path = tmp_path / "vision.toml"
    path.write_text(MINI_VISION)
    suite = load_suite(path)
    attack_cells = [c for c in suite.cells if c.attack_label == "autoattack"]
    assert attack_cells and all(c.protocol.n_examples == 10 for c in attack_cells)
    assert all(c.protocol.n_examples == 30 for c in suite.cells if c.attack_label == "pgd")
    store = Store(tmp_path / "store.sqlite")
    counts = run_suite(suite, store, tmp_path / "cache", torch.device("cpu"))
    assert counts == {"done": len(suite.cells)}
    board = build_leaderboard(store, suite.name)
    rows = {(t["threat_id"], r["defense"]): r for t in board["tables"] for r in t["rows"]}
    clean_rs = rows[("clean", "randomized-smoothing")]["metrics"]
    assert {"certified_accuracy@0", "certified_accuracy@0.5"} <= set(clean_rs)
    for row in rows.values():
        assert row["sanity_summary"] and [c["name"] for c in row["sanity"]][:6] == list(sanity.CHECKS)
    # Madry's 3 epochs at eps 0.2 on this 8-channel CNN end at chance loss: its rows are flagged
    assert all(row["sanity"][-1]["name"] == "collapsed" and "near ln 10" in row["sanity"][-1]["detail"]
               for (_, defense), row in rows.items() if defense == "madry")
    markdown = render_markdown(board)
    assert "sanity flags" in markdown and "## Sanity checks" in markdown
    assert "certified acc % at r=0.5 (l2)" in markdown
    # A randomized defense's adversarial inputs are judged by 4 fresh draws; a deterministic one's
    # by its one prediction.
    pgd = next(t["threat_id"] for t in board["tables"] if t["attack"] == "pgd")
    judged = rows[(pgd, "randomized-smoothing")]["metrics"]
    assert judged["robust_accuracy_all_draws"]["successes"] <= judged["robust_accuracy"]["successes"]
    assert "robust_accuracy_all_draws" not in rows[(pgd, "vanilla")]["metrics"]
    cell = next(c for c in suite.cells if c.defense_label == "randomized-smoothing" and c.attack_label == "pgd")
    assert {o["extra"]["judge_draws"] for o in store.outcomes(cell.id)} == {4}
    assert "acc under attack, all draws %" in markdown
    # adversarial training records its last epoch's mean loss, kept beside the weights and stored
    # for every cell of the model; the vanilla model's generic loop records none
    records = {c.defense_label: store.training_record(c.id) for c in suite.cells}
    assert records["madry"]["num_classes"] == 10 and records["madry"]["epochs"] == 3
    assert records["madry"]["final_cross_entropy"] > 0 and records["vanilla"] is None


def test_attack_protocol_override_is_validated(tmp_path):
    path = tmp_path / "bad.toml"
    path.write_text(MINI_VISION.replace('protocol = { n_examples = 10, batch_size = 10 }',
                                        'protocol = { n_exampels = 10 }', 1))
    with pytest.raises(UsageError, match="unknown protocol key 'n_exampels'"):
        load_suite(path)


# ---- paper-scale suites, dry run on tiny fixtures ----

def _write_fixtures(root: Path) -> None:
    rng = np.random.default_rng(0)

    def pickle_to(path, value):
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(pickle.dumps(value, protocol=2))

    def batch(n, key, classes):
        return {b"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8),
                key: [i % classes for i in range(n)]}

    folder = root / "cifar10" / "cifar-10-batches-py"
    for i in range(1, 6):
        pickle_to(folder / f"data_batch_{i}", batch(4, b"labels", 10))
    pickle_to(folder / "test_batch", batch(10, b"labels", 10))
    folder = root / "cifar100" / "cifar-100-python"
    pickle_to(folder / "train", batch(100, b"fine_labels", 100))
    pickle_to(folder / "test", batch(100, b"fine_labels", 100))
    folder = root / "mnist"
    folder.mkdir(parents=True)
    for prefix, n in [("train", 20), ("t10k", 10)]:
        for name, array in [(f"{prefix}-images-idx3-ubyte", rng.integers(0, 256, (n, 28, 28))),
                            (f"{prefix}-labels-idx1-ubyte", np.arange(n) % 10)]:
            data = struct.pack(">I", 0x0800 + array.ndim) + struct.pack(
                f">{array.ndim}I", *array.shape) + array.astype(np.uint8).tobytes()
            (folder / f"{name}.gz").write_bytes(gzip.compress(data))


PARAMETERS = {"resnet18": 11.17e6, "wrn": 46.16e6}


@pytest.mark.parametrize("suite_name", ["cifar10-paper", "cifar100-paper", "mnist-paper"])
def test_paper_suites_dry_run(tmp_path, suite_name):
    """The suite parses, every task loads from fixtures in the real formats, the paper models
    build at full size, and every defense config trains one epoch (on a width-4 stand-in model
    and 8 fixture images, so the test stays fast)."""
    _write_fixtures(tmp_path)
    suite = load_suite(suite_name, data_root=tmp_path)
    defenses = {c.defense.name for c in suite.cells}
    assert {"madry", "trades", "mixup", "causaladv-m", "causaladv-t", "ciiv", "ciiv-mixup",
            "randomized-smoothing"} <= defenses
    attacks = {c.attack_label: c.attack for c in suite.cells if c.attack}
    assert attacks["autoattack"].params["version"] == "standard"
    tasks = {}
    for cell in suite.cells:
        if cell.task_label not in tasks:
            tasks[cell.task_label] = (load_task(cell.task, tmp_path), cell.model)
    for label, (task, model_spec) in tasks.items():
        if model_spec.name in PARAMETERS:
            with torch.device("meta"):
                module = build_model(model_spec, task)
            count = sum(p.numel() for p in module.parameters())
            assert count == pytest.approx(PARAMETERS[model_spec.name], rel=0.01), label
            if model_spec.name == "wrn":
                assert model_spec.params == {"depth": 34, "widen_factor": 10}
    label, (task, model_spec) = next(iter(tasks.items()))
    small = Task(task.name, "image", task.num_classes, task.train.subset(range(8)),
                 task.test.subset(range(4)))
    stand_in = ModelSpec.make("resnet18", {"width": 4}) if model_spec.name != "smallcnn" else \
        ModelSpec.make("smallcnn", {"width": 4, "feature_dim": 8})
    seen = set()
    for cell in suite.cells:
        if cell.task_label != label or cell.defense.name in seen:
            continue
        seen.add(cell.defense.name)
        params = {**cell.defense.params, "epochs": 1, "batch_size": 8}
        for key in ("steps", "loops"):
            if key in params:
                params[key] = min(params[key], 2)
        model = build_defense(cell.defense.name, small, tmp_path / cell.defense.name,
                              model=stand_in, **params)
        assert model.predict(small.test.xs).shape == (4,)


def test_best_checkpoint_keeps_the_epoch_with_the_highest_validation_pgd_accuracy(digits, tmp_path):
    """checkpoint = "best" (Rice et al. 2020): selected on a validation split carved from the
    training data, so the test split never chooses the model."""
    from defenses.vision.common import BestCheckpoint, validation_split

    train_index, validation_index = validation_split(len(digits.train), seed=0)
    assert not set(train_index) & set(validation_index)
    assert len(validation_index) == round(0.1 * len(digits.train))
    assert set(train_index) | set(validation_index) == set(range(len(digits.train)))
    seen = []
    original = BestCheckpoint.update

    def recording(self, epoch):
        original(self, epoch)
        seen.append(self)

    BestCheckpoint.update = recording
    try:
        model = build_defense("madry", digits, tmp_path, epochs=4, lr=3e-3, eps=0.2, steps=2,
                              checkpoint="best")
    finally:
        BestCheckpoint.update = original
    keeper = seen[-1]
    assert len(keeper.history) == 4
    assert keeper.robust_accuracy() == max(keeper.history)
    assert model.module is keeper.module
    with pytest.raises(UsageError, match="checkpoint must be one of last, best"):
        build_defense("madry", digits, tmp_path / "other", epochs=1, eps=0.2, steps=2,
                      checkpoint="first")


def test_autoattack_rand_is_the_reference_version_for_randomized_defenses(digits, tmp_path):
    """version = "rand": APGD-CE and APGD-DLR with EOT over 20 draws, on the defense's own random
    draws through its BPDA surrogate; refused for a deterministic model (nothing to average)."""
    from benchmark.errors import NotApplicable

    attack = make_attack("autoattack", version="rand", eps=0.2)
    built = attack.build(Unfoolable(), 10, "cpu", seed=0)
    assert built.version == "rand" and built.attacks_to_run == ["apgd-ce", "apgd-dlr"]
    assert built.apgd.eot_iter == 20 and built.apgd.n_restarts == 1 and built.apgd.n_iter == 100
    assert attack.queries(10) == 2 * 100 * 20
    assert "20 random draws" in attack.describe() and "BPDA" in attack.describe()
    with pytest.raises(UsageError, match="draws does not apply to version = 'rand'"):
        make_attack("autoattack", version="rand", draws=4)
    smoothed = build_defense("randomized-smoothing", digits, tmp_path, epochs=5, lr=3e-3,
                             predict_samples=20, predict_alpha=0.1)
    right = np.flatnonzero(smoothed.predict(digits.test.xs[:40]) == digits.test.ys[:40])[:4]
    assert len(right)
    xs, ys = digits.test.xs[right], digits.test.ys[right]
    calls = []
    surrogate = smoothed.logits
    smoothed.logits = lambda x: calls.append(1) or surrogate(x)  # count the draws it takes
    outcomes = attack.run(smoothed, xs, ys, seed=0)
    assert len(calls) > 100 * 20  # fresh draws at every EOT step, no fixed-draw cap
    adversarial = np.stack([o.adversarial for o in outcomes])
    assert np.abs(adversarial - xs).max() <= 0.2 + 1e-5
    deterministic = build_defense("vanilla", digits, tmp_path / "vanilla", epochs=1)
    with pytest.raises(NotApplicable, match="deterministic"):
        attack.run(deterministic, xs, ys, seed=0)


def test_eps_warmup_ramps_the_training_budget_from_zero(digits, tmp_path):
    """eps_warmup_epochs = W: the training attack's eps (and step size) is eps * epoch / W until
    epoch W, so epoch 0 trains on natural inputs; 0 (the default) is the full budget throughout and
    is left out of a suite's spec, so entries without it keep their cell ids."""
    import torch.nn.functional as F
    from defenses.vision.common import AttackBudget
    from defenses.vision.madry import madry_loss

    config = resolve_config(DEFENSES.get("madry").obj.defaults,
                            {"eps": 0.2, "steps": 4, "eps_warmup_epochs": 4}, "madry")
    budget = AttackBudget("madry", config)
    seen = []
    for epoch in range(6):
        budget.on_epoch_start(epoch)
        seen.append((round(budget.eps, 6), round(budget.step_size, 6)))
    assert seen == [(0.0, 0.0), (0.05, 0.03125), (0.1, 0.0625), (0.15, 0.09375), (0.2, 0.125),
                    (0.2, 0.125)]
    full = AttackBudget("madry", {**config, "eps_warmup_epochs": 0})
    assert (full.eps, full.step_size) == (0.2, 0.125)
    with pytest.raises(UsageError, match="eps_warmup_epochs must be a non-negative integer"):
        AttackBudget("madry", {**config, "eps_warmup_epochs": -1})

    # at epoch 0 of a warm-up, Madry's loss is the cross-entropy of the natural inputs
    torch.manual_seed(0)
    model = build_model(TINY_CNN, digits).eval()
    x, y = torch.as_tensor(digits.train.xs[:32]), torch.as_tensor(digits.train.ys[:32])
    budget.on_epoch_start(0)
    assert torch.equal(madry_loss(budget, 4)(model, x, y), F.cross_entropy(model(x), y))

    # the option is in a spec only when it is not its default; training with it runs end to end
    suite = tmp_path / "warmup.toml"
    body = ('name = "warmup"\n[tasks.digits]\nmodel = "smallcnn"\n[defenses.madry]\n'
            'params = {{ epochs = 1, eps = 0.2, steps = 2{} }}\n')
    specs = []
    for extra in ("", ", eps_warmup_epochs = 0", ", eps_warmup_epochs = 2"):
        suite.write_text(body.format(extra))
        specs.append(load_suite(str(suite)).cells[0].defense)
    assert specs[0] == specs[1] != specs[2] and specs[2].params["eps_warmup_epochs"] == 2
    assert "eps_warmup_epochs" not in specs[0].params
    for name in ("madry", "trades", "causaladv-m"):
        model = build_defense(name, digits, tmp_path / name, epochs=2, lr=3e-3, eps=0.2,
                              steps=2, eps_warmup_epochs=2)
        assert accuracy(model, digits.test.xs, digits.test.ys) > 0.2, name


# ---- CiiV's Table 1 variants and baselines (issue 17) ----

@pytest.mark.parametrize("attack", ["fgsm", "pgd"])
def test_ciiv_at_trains_on_its_own_adversarial_examples(digits, tmp_path, attack):
    import torch.nn.functional as F
    from defenses.vision.ciiv_at import CiiVAdversarialLoss

    model = build_defense("ciiv-at", digits, tmp_path, epochs=3, lr=1e-2, loops=3,
                          reg_milestones=[1], attack=attack, eps=0.2)
    assert isinstance(model, Randomized)
    assert set(model.predict(digits.test.xs)) <= set(range(10))
    config = resolve_config(DEFENSES.get("ciiv-at").obj.defaults,
                            {"loops": 3, "attack": attack, "eps": 0.2}, "ciiv-at")
    loss = CiiVAdversarialLoss(config)
    x, y = torch.as_tensor(digits.train.xs[:100]), torch.as_tensor(digits.train.ys[:100])
    torch.manual_seed(1)
    adversarial = loss.adversarial(model.module, x, y)
    assert (adversarial - x).abs().max() <= 0.2 + 1e-6 and (adversarial - x).abs().max() > 0.1

    def cross_entropy(inputs):  # the deployed 3-loop average, the same draws for both inputs
        torch.manual_seed(2)
        with torch.no_grad():
            return float(F.cross_entropy(model.module(inputs, loops=3)[0], y))
    assert cross_entropy(adversarial) > cross_entropy(x) + 0.1


def test_ciiv_at_rejects_bad_attacks(digits, tmp_path):
    with pytest.raises(UsageError, match="attack must be one of fgsm, pgd"):
        build_defense("ciiv-at", digits, tmp_path, epochs=1, attack="cw")
    with pytest.raises(UsageError, match="steps and step_size apply to attack = 'pgd' only"):
        build_defense("ciiv-at", digits, tmp_path, epochs=1, attack="fgsm", steps=5)
    with pytest.raises(UsageError, match="need eps >= 0"):
        build_defense("ciiv-at", digits, tmp_path, epochs=1, eps=-0.1)


def test_fgsm_at_trains_and_rejects_bad_eps(digits, tmp_path):
    import torch.nn.functional as F
    from defenses.vision.common import EpochCrossEntropy
    from defenses.vision.fgsm_at import fgsm_loss

    model = build_defense("fgsm-at", digits, tmp_path, epochs=1, lr=1e-2, eps=0.2)
    assert set(model.predict(digits.test.xs)) <= set(range(10))
    # the training loss is the cross-entropy at x + eps * sign of the gradient at x itself
    module = model.module
    x, y = torch.as_tensor(digits.train.xs[:64]), torch.as_tensor(digits.train.ys[:64])
    x.requires_grad_(True)
    grad, = torch.autograd.grad(F.cross_entropy(module(x), y), x)
    by_hand = F.cross_entropy(module((x + 0.2 * grad.sign()).clamp(0, 1).detach()), y)
    torch.manual_seed(3)  # a random start (Madry's) would not give the same value
    loss = fgsm_loss(0.2, EpochCrossEntropy())(module, x.detach(), y)
    assert float(loss.detach()) == pytest.approx(float(by_hand.detach()), abs=1e-5)
    with pytest.raises(UsageError, match="fgsm-at: need eps >= 0"):
        build_defense("fgsm-at", digits, tmp_path, epochs=1, eps=-0.1)


def test_bpfc_quantisation_on_hand_made_levels():
    from defenses.vision.bpfc import bit_plane_quantise

    x = torch.tensor([0, 10, 100, 255, 200]) / 255.0
    # k = 5: v - v mod 32 + 16; -8 wraps as Python's modulo does (to -16) and clips to 0, 263 goes
    # to 272 and clips to 255.
    assert (bit_plane_quantise(x, 5, torch.zeros(5)) * 255).round().tolist() == [16, 16, 112, 240, 208]
    noise = torch.tensor([-8.0, -8.0, 8.0, 8.0, -8.0])
    assert (bit_plane_quantise(x, 5, noise) * 255).round().tolist() == [0, 16, 112, 255, 208]
    # k = 7 keeps only the top bit: 64 or 192.
    assert (bit_plane_quantise(x, 7, torch.zeros(5)) * 255).round().tolist() == [64, 64, 64, 192, 192]


def test_bpfc_trains_and_rejects_bad_bits(digits, tmp_path):
    model = build_defense("bpfc", digits, tmp_path, epochs=1, lr=1e-2, reg_milestones=[])
    assert set(model.predict(digits.test.xs)) <= set(range(10))
    assert accuracy(model, digits.test.xs, digits.test.ys) > 0.3
    with pytest.raises(UsageError, match="bits must be an integer from 2 to 7"):
        build_defense("bpfc", digits, tmp_path, epochs=1, bits=8)


def test_real_cpu_ciiv_baseline_rows():
    """CiiV's Table 1 variants and baselines run on digits under their own label, with digits'
    task, model and test sample, only clean, FGSM, PGD-20 and EOT-PGD, three seeds each."""
    suite = load_suite("real-cpu")
    digits_ciiv = next(c for c in suite.cells if c.task_label == "digits" and c.defense_label == "ciiv"
                       and c.attack_label == "pgd-linf")
    rows = [c for c in suite.cells if c.task_label == "digits-ciiv-baselines"]
    defenses = {"ciiv-at-fgsm": "ciiv-at", "ciiv-at-pgd-10": "ciiv-at", "at-fgsm": "fgsm-at",
                "rs-10-trials": "randomized-smoothing", "bpfc": "bpfc"}
    assert {(c.defense_label.split("@")[0], c.attack_label) for c in rows} == {
        (d, a) for d in defenses for a in (None, "fgsm", "pgd-linf", "eot-pgd")}
    assert len(rows) == 5 * 4 * 3
    for cell in rows:
        assert cell.defense.name == defenses[cell.defense_label.split("@")[0]]
        assert (cell.task, cell.model) == (digits_ciiv.task, digits_ciiv.model)
        if cell.attack_label == "pgd-linf":
            assert cell.attack == digits_ciiv.attack
            assert cell.protocol.n_examples == digits_ciiv.protocol.n_examples
    smoothing = next(c for c in rows if c.defense_label == "rs-10-trials")
    assert smoothing.defense.params["predict_samples"] == 10 and smoothing.defense.params["sigma"] == 0.25
    ciiv_pgd = next(c for c in rows if c.defense_label == "ciiv-at-pgd-10")
    changed = {k: v for k, v in ciiv_pgd.defense.params.items()
               if digits_ciiv.defense.params.get(k, "absent") != v}
    assert changed == {"attack": "pgd", "eps": 0.2, "steps": 10, "step_size": None}
