import pytest
import torch

from alexnet.config.sections import TrainParams
from alexnet.training.optim import PaperSGD, PlateauSchedule, make_optimizer, set_lr


def _run(opt_factory, lrs, seed=0):
    torch.manual_seed(seed)
    model = torch.nn.Linear(6, 3)
    opt = opt_factory(model.parameters())
    gen = torch.Generator().manual_seed(1)
    for lr in lrs:
        set_lr(opt, lr)
        x = torch.randn(8, 6, generator=gen)
        loss = model(x).square().mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    return [p.detach().clone() for p in model.parameters()]


def test_paper_rule_matches_the_formula_step_by_step():
    torch.manual_seed(0)
    w = torch.randn(5, requires_grad=True)
    opt = PaperSGD([w], lr=0.1, momentum=0.9, weight_decay=0.01)
    v = torch.zeros(5)
    w_ref = w.detach().clone()
    for step in range(4):
        g = torch.randn(5)
        w.grad = g.clone()
        opt.step()
        v = 0.9 * v - 0.01 * 0.1 * w_ref - 0.1 * g  # §5
        w_ref = w_ref + v
        torch.testing.assert_close(w.detach(), w_ref, rtol=0, atol=1e-6, msg=f"step {step}")


def test_paper_rule_equals_torch_sgd_at_constant_lr_and_differs_after_a_drop():
    hyper = dict(momentum=0.9, weight_decay=5e-4)
    paper = _run(lambda p: PaperSGD(p, lr=0.01, **hyper), [0.01] * 6)
    torch_sgd = _run(lambda p: torch.optim.SGD(p, lr=0.01, **hyper), [0.01] * 6)
    for a, b in zip(paper, torch_sgd):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    # After a drop the paper's velocity keeps its old scale for a while; torch's rescales at once.
    paper = _run(lambda p: PaperSGD(p, lr=0.01, **hyper), [0.01] * 3 + [0.001] * 3)
    torch_sgd = _run(lambda p: torch.optim.SGD(p, lr=0.01, **hyper), [0.01] * 3 + [0.001] * 3)
    assert any((a - b).abs().max() > 1e-5 for a, b in zip(paper, torch_sgd))


def test_paper_sgd_state_round_trips():
    first = _run(lambda p: PaperSGD(p, lr=0.01, momentum=0.9, weight_decay=5e-4), [0.01] * 4)
    torch.manual_seed(0)
    model = torch.nn.Linear(6, 3)
    opt = PaperSGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)
    gen = torch.Generator().manual_seed(1)

    def step():
        loss = model(torch.randn(8, 6, generator=gen)).square().mean()
        opt.zero_grad()
        loss.backward()
        opt.step()

    step(), step()
    state = opt.state_dict()
    opt = PaperSGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)
    opt.load_state_dict(state)
    step(), step()
    for a, b in zip(first, model.parameters()):
        assert torch.equal(a, b.detach())


def test_plateau_schedule_drops_three_times_then_stops():
    sched = PlateauSchedule(0.01, factor=0.1, patience=1, drops=3)
    actions = [sched.step(e) for e in [0.9, 0.8, 0.8, 0.8]]
    assert actions == ["keep", "keep", "keep", "drop"]
    assert sched.lr == pytest.approx(0.001)
    actions = [sched.step(e) for e in [0.7, 0.7, 0.7, 0.7, 0.7, 0.7, 0.7]]
    assert actions == ["keep", "keep", "drop", "keep", "drop", "keep", "stop"]
    assert sched.lr == pytest.approx(1e-5)
    assert sched.drops_done == 3


def test_plateau_schedule_state_round_trips():
    a = PlateauSchedule(0.01, factor=0.1, patience=2, drops=3)
    for e in [0.5, 0.6, 0.6, 0.6]:
        a.step(e)
    b = PlateauSchedule(0.01, factor=0.1, patience=2, drops=3)
    b.load_state_dict(a.state_dict())
    assert [a.step(0.7) for _ in range(5)] == [b.step(0.7) for _ in range(5)]


def test_the_train_section_builds_the_optimizer_and_schedule_it_names():
    w = [torch.zeros(2, requires_grad=True)]
    train = TrainParams(lr=0.02, momentum=0.8, weight_decay=1e-3, lr_factor=0.5, lr_patience=0, lr_drops=1)
    for rule, kind in [("paper", PaperSGD), ("pytorch", torch.optim.SGD)]:
        opt = make_optimizer(w, train.model_copy(update={"update_rule": rule}))
        assert type(opt) is kind
        group = opt.param_groups[0]
        assert (group["lr"], group["momentum"], group["weight_decay"]) == (0.02, 0.8, 1e-3)
    sched = PlateauSchedule.of(train)
    assert [sched.step(e) for e in (0.5, 0.5, 0.5)] == ["keep", "drop", "stop"]
    assert sched.lr == pytest.approx(0.01)
