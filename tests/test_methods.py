"""Methods as plug-ins: every method through the one loop on real data, each method's own
mechanics (EMA, cross targets, uncertainty mask), resume, safe checkpoints, the stage-1 key."""
import json

import numpy as np
import pytest
import torch
from PIL import Image

from diffseg import checkpoint, cli, config
from diffseg.errors import ConfigError, DataError
from diffseg.loop import Loop, fit
from diffseg.methods import METHODS, Step, build_method, stage1_key
from diffseg.methods.cps import cross
from diffseg.runtime import Runtime

ALL = list(METHODS)
QUIET = {"log": lambda m: None}


def records(run):
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def without_time(rows):
    return [{k: v for k, v in r.items() if k != "seconds"} for r in rows]


@pytest.fixture
def glas_tiny(shared_data):
    return config.load("debug", {"data.dataset": "glas", "data.size": 32, "model.width": 4, "model.depth": 2,
                                 "pretrain.epochs": 1, "pretrain.iters_per_epoch": 2, "train.epochs": 2,
                                 "train.iters_per_epoch": 2, "train.batch_size": 4, "pretrain.batch_size": 4,
                                 "diffusion_cps.diffusion.steps": 50, "diffusion_cps.diffusion.start_t": 49})


# the two kinds of predictor: a diffusion segmenter's mask pathway, and a plain network
ONE_PER_KIND_OF_PREDICTOR = ("diffusion_cps", "supervised")


@pytest.mark.parametrize("name", ALL)
def test_every_method_trains_on_real_glas_and_its_run_folder_evaluates_and_predicts(name, glas_tiny, shared_data,
                                                                                     tmp_path, capsys):
    run = tmp_path / name
    sets = [f"{k}={v}" for k, v in config.to_flat(glas_tiny).items() if k.startswith(("data.", "model.", "pretrain.",
                                                                                       "train.", "diffusion_cps."))]
    assert cli.main(["debug", "--dataset", "glas", "--data-root", str(shared_data), "--run-dir", str(run),
                     "--set", f"method={name}", *sets]) == 0
    assert "final test dice" in capsys.readouterr().out
    for item in ("config.yaml", "environment.json", "splits.json", "metrics.jsonl", "summary.json",
                 "checkpoints/last.pt", "checkpoints/best.pt"):
        assert (run / item).exists(), item
    assert (run / "pretrained.pt").exists() == (name == "diffusion_cps")
    assert list((run / "tb").glob("events.out.tfevents.*"))
    summary = json.loads((run / "summary.json").read_text())
    assert summary["method"] == name and summary["selected"]["predictor"] in METHODS[name].predictors
    assert summary["test"]["n"] == 80 and 0 <= summary["test"]["dice"] <= 1
    stages = [r["stage"] for r in records(run)]
    assert stages == [s.name for s in METHODS[name].stages for _ in range(getattr(glas_tiny, s.section).epochs)] + [
        "final"]
    train = [r for r in records(run) if r["stage"] == "train"]
    assert all(f"val_dice_{p}" in r for r in train for p in METHODS[name].predictors)
    if name not in ONE_PER_KIND_OF_PREDICTOR:
        return  # eval and predict are one code path for every predictor of a kind
    assert cli.main(["eval", str(run), "--split", "test", "--data-root", str(shared_data)]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["method"] == name and result["dice"] == pytest.approx(summary["test"]["dice"])
    images = tmp_path / "new"
    images.mkdir()
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (45, 61, 3), dtype=np.uint8)).save(images / "a.png")
    assert cli.main(["predict", str(run), "--input", str(images), "--output", str(tmp_path / "out")]) == 0
    assert np.array(Image.open(tmp_path / "out" / "a.png")).shape == (45, 61)


@pytest.mark.parametrize("name", ALL)
def test_resumed_run_equals_an_uninterrupted_one(name, tiny_cfg, tmp_path):
    cfg = config.apply_overrides(tiny_cfg, {"method": name, "train.epochs": 3})
    full = fit(cfg, tmp_path / "full", **QUIET)

    class Killed(Exception):
        pass

    def kill_after_first_epoch(metrics):
        if metrics["epoch"] == 1:
            raise Killed

    with pytest.raises(Killed):
        fit(cfg, tmp_path / "cut", Runtime(report=kill_after_first_epoch), **QUIET)
    resumed = fit(cfg, tmp_path / "cut", **QUIET)
    assert resumed["test"] == full["test"] and resumed["selected"] == full["selected"]
    assert without_time(records(tmp_path / "cut")) == without_time(records(tmp_path / "full"))


def test_mean_teacher_ema_gets_no_gradient_and_moves_by_its_decay(tiny_cfg):
    torch.manual_seed(0)
    cfg = config.apply_overrides(tiny_cfg, {"method": "mean_teacher", "mean_teacher.ema_decay": 0.9})
    method = build_method(cfg, 3)
    student, ema = method.networks["student"], method.networks["ema"]
    x, y = torch.randn(4, 3, 32, 32), (torch.rand(4, 32, 32) > 0.5).long()
    batch = {"labeled": {"image": x, "mask": y}, "unlabeled": {"image": torch.randn(4, 3, 32, 32)}}
    for i in range(3):
        step = Step(0, i, 10, 2)
        before = [p.detach().clone() for p in ema.parameters()]
        loss, terms = method.loss("train", batch, step)
        assert terms["consistency_weight"] > 0
        method.optimizers["student"].zero_grad()
        loss.backward()
        assert all(p.grad is None for p in ema.parameters())  # never a gradient into the EMA network
        method.optimizers["student"].step()
        method.after_step("train", step)
        alpha = min(1 - 1 / (i + 1), 0.9)  # 0 at the first step: the EMA starts as the student
        for b, e, s in zip(before, ema.parameters(), student.parameters()):
            assert torch.allclose(e, alpha * b + (1 - alpha) * s, atol=1e-6)
    assert all(id(p) not in {id(q) for g in method.optimizers["student"].param_groups for q in g["params"]}
               for p in ema.parameters())


def test_cps_cross_targets_carry_no_gradient(tiny_cfg):
    torch.manual_seed(0)
    method = build_method(config.apply_overrides(tiny_cfg, {"method": "cps"}), 3)
    a_net, b_net = method.networks["a"], method.networks["b"]
    assert any(not torch.equal(p, q) for p, q in zip(a_net.parameters(), b_net.parameters()))  # two inits
    x = torch.randn(2, 3, 32, 32)
    a, b = method.scores("a", x), method.scores("b", x)
    cross(a, b).backward()  # a learns from b's hard label...
    assert all(p.grad is None for p in b_net.parameters())  # ...which sends nothing back to b
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in a_net.parameters())


def test_paper_pseudo_labels_carry_no_gradient(tiny_cfg):
    """The student's hard label aligns the teacher's rounds; the teacher's hard label trains the
    student: neither label passes a gradient to the network that made it."""
    from diffseg import losses

    torch.manual_seed(0)
    method = build_method(tiny_cfg, 3)
    x = torch.randn(2, 3, 32, 32)
    label = losses.hard(method.scores("student", x))
    assert not label.requires_grad
    losses.dice_loss(method.scores("teacher", x), label).backward()
    assert all(p.grad is None for p in method.networks["student"].parameters())


def test_ua_mt_mask_shape_and_threshold_ramp(tiny_cfg):
    import math

    torch.manual_seed(0)
    method = build_method(config.apply_overrides(tiny_cfg, {"method": "ua_mt", "ua_mt.passes": 3}), 3)
    x = torch.randn(2, 3, 32, 32)
    mask, thr = method.certain(x, Step(0, 0, 10, 5))
    assert mask.shape == (2, 1, 32, 32) and set(mask.unique().tolist()) <= {0.0, 1.0}
    ln2 = math.log(2)
    ramp = [method.threshold(Step(e, 0, 10, 5)) for e in range(5)] + [method.threshold(Step(5, 0, 10, 5))]
    assert ramp[0] == pytest.approx((0.75 + 0.25 * math.exp(-5)) * ln2)
    assert ramp[-1] == pytest.approx(ln2) and all(a < b for a, b in zip(ramp, ramp[1:]))
    assert thr == pytest.approx(ramp[0])
    # every pixel counts under a threshold above the largest possible entropy, none under zero
    method.threshold = lambda step: 10.0
    assert method.certain(x, Step(0, 0, 10, 5))[0].all()
    method.threshold = lambda step: 0.0
    assert not method.certain(x, Step(0, 0, 10, 5))[0].any()


def test_zero_weights_compute_nothing(tiny_cfg):
    """With the unlabeled weights at zero the paper's method never runs a round or touches the
    unlabeled batch; a baseline with consistency 0 never runs its EMA network."""
    cfg = config.apply_overrides(tiny_cfg, {"diffusion_cps.loss.align": 0, "diffusion_cps.loss.rec": 0, "diffusion_cps.loss.cps": 0})
    method = build_method(cfg, 3)
    calls = []
    method.networks["teacher"].image.forward = lambda *a: calls.append("image")
    x, y = torch.randn(2, 3, 32, 32), (torch.rand(2, 32, 32) > 0.5).long()
    _, terms = method.cotrain_loss(x, y, torch.full((2, 3, 32, 32), float("nan")), Step(0, 0, 2, 2))
    assert not calls and terms["align_l"] == 0 and "cps" not in terms  # the NaN batch was never read
    mt = build_method(config.apply_overrides(tiny_cfg, {"method": "mean_teacher", "mean_teacher.consistency": 0}), 3)
    mt.networks["ema"].forward = lambda *a: calls.append("ema")
    mt.loss("train", {"labeled": {"image": x, "mask": y}, "unlabeled": {"image": x}}, Step(0, 0, 2, 2))
    assert not calls


def test_unlabeled_ramp_length_is_a_setting(tiny_cfg):
    method = build_method(config.apply_overrides(tiny_cfg, {"train.epochs": 10}), 3)
    assert method.unlabeled_weight(Step(0, 0, 5, 10)) == pytest.approx(0.1)  # the paper's: all epochs
    short = build_method(config.apply_overrides(tiny_cfg, {"train.epochs": 10, "loss.ramp_epochs": 2}), 3)
    assert short.unlabeled_weight(Step(0, 0, 5, 10)) == pytest.approx(0.5)
    assert short.unlabeled_weight(Step(5, 0, 5, 10)) == pytest.approx(1.0)


class Payload:
    def __reduce__(self):
        return (print, ("PAYLOAD RAN",))


def test_checkpoint_holding_a_pickled_object_is_refused(tiny_cfg, tmp_path, capsys):
    fit(config.apply_overrides(tiny_cfg, {"method": "supervised"}), tmp_path / "run", **QUIET)
    best = tmp_path / "run" / "checkpoints" / "best.pt"
    assert checkpoint.load(best)["predictor"] == "net"  # a real checkpoint loads weights-only
    state = torch.load(best, weights_only=True)
    state["payload"] = Payload()  # unpickling it would call a function of the sender's choice
    torch.save(state, best)
    with pytest.raises(DataError, match="objects other than tensors"):
        checkpoint.load(best)
    assert cli.main(["eval", str(tmp_path / "run")]) == 2
    captured = capsys.readouterr()
    assert "refused" in captured.err and "PAYLOAD RAN" not in captured.out


def test_stage1_invariant_same_key_same_teacher(tiny_cfg, tmp_path):
    """Configs that differ only in keys stage 1 does not read (labeled subset, stage-2 settings,
    losses) share a key, and their pretrained teachers are identical; another key differs."""
    numerics = {"workers": 1, "device": "cpu", "amp": False}
    a = config.apply_overrides(tiny_cfg, {"train.epochs": 1})
    b = config.apply_overrides(a, {"data.labeled_ratio": 0.5, "train.lr": 0.05, "diffusion_cps.loss.cps": 0.3, "diffusion_cps.rounds": 1,
                                   "diffusion_cps.diffusion.sample_steps": 2, "train.iters_per_epoch": 3})
    c = config.apply_overrides(a, {"pretrain.lr": 0.005})
    assert stage1_key(a, numerics) == stage1_key(b, numerics) != stage1_key(c, numerics)
    assert stage1_key(a, numerics) != stage1_key(a, numerics | {"workers": 2})
    teachers = {}
    for name, cfg in (("a", a), ("b", b), ("c", c)):
        fit(cfg, tmp_path / name, **QUIET)
        teachers[name] = checkpoint.load(tmp_path / name / "pretrained.pt")
    assert teachers["a"]["key"] == teachers["b"]["key"]
    for k, v in teachers["a"]["networks"]["teacher"].items():
        assert torch.equal(v, teachers["b"]["networks"]["teacher"][k]), k
    assert any(not torch.equal(v, teachers["c"]["networks"]["teacher"][k])
               for k, v in teachers["a"]["networks"]["teacher"].items())


def test_loading_a_shared_stage1_continues_exactly_like_running_it(tiny_cfg, tmp_path):
    ran = fit(tiny_cfg, tmp_path / "ran", **QUIET)
    messages = []
    loaded = fit(tiny_cfg, tmp_path / "loaded", pretrained=tmp_path / "ran" / "pretrained.pt", log=messages.append)
    assert any("stage 1 skipped" in m for m in messages)
    assert loaded["test"] == ran["test"] and loaded["selected"] == ran["selected"]
    with pytest.raises(DataError, match="no stage 1"):
        Loop(config.apply_overrides(tiny_cfg, {"method": "cps"}), tmp_path / "x",
             pretrained=tmp_path / "ran" / "pretrained.pt")


def test_method_key_and_moved_keys(tiny_cfg):
    with pytest.raises(ConfigError, match="method.*choose one of diffusion_cps, supervised"):
        config.apply_overrides(tiny_cfg, {"method": "fixmatch"})
    for key, hint in (("device", "--device"), ("amp", "--no-amp"), ("data.root", "--data-root"),
                      ("data.cache_dir", "--cache-dir"), ("data.num_workers", "--loader-workers")):
        with pytest.raises(ConfigError, match=f"'{key}' is no longer a config key.*{hint}"):
            config.apply_overrides(tiny_cfg, {key: "x"})


def test_train_without_config_is_an_error(capsys):
    with pytest.raises(SystemExit) as exit_:
        cli.main(["train"])
    assert exit_.value.code == 2 and "--config" in capsys.readouterr().err


def test_study_searches_over_method_with_method_specific_keys_under_when():
    import optuna

    from tune.study import parse_study, suggest

    study = parse_study({"config": "debug", "trials": 4, "space": {
        "method": {"choice": ["diffusion_cps", "mean_teacher", "cps"]},
        "diffusion_cps.rounds": {"int": [1, 3], "when": {"method": ["diffusion_cps"]}},
        "mean_teacher.ema_decay": {"float": [0.9, 0.999], "when": {"method": ["mean_teacher"]}},
        "cps.consistency": {"float": [0.05, 1.0], "log": True, "when": {"method": ["cps"]}}}})
    ot = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=1))
    seen = set()
    for _ in range(30):
        trial = ot.ask()
        suggest(trial, study.space)
        params = trial.params
        seen.add(params["method"])
        assert ("diffusion_cps.rounds" in params) == (params["method"] == "diffusion_cps")
        assert ("mean_teacher.ema_decay" in params) == (params["method"] == "mean_teacher")
        assert ("cps.consistency" in params) == (params["method"] == "cps")
        cfg = study.trial_config(params, "t")
        assert cfg.method == params["method"]
        ot.tell(trial, 0.5)
    assert seen == {"diffusion_cps", "mean_teacher", "cps"}
