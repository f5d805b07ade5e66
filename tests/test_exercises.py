"""Every exercise checker accepts its reference and rejects a wrong answer with a
message."""

import math

import pytest
import torch

from diffusion_lib.exercises import REGISTRY, check, compare


def test_every_chapter_has_at_least_three_exercises():
    for ch in (
        "ch01",
        "ch02",
        "ch03",
        "ch04",
        "ch05",
        "ch06",
        "ch07",
        "ch08",
        "ch09",
        "ch10",
        "ch11",
        "ch12",
        "ch13",
    ):
        assert sum(name.startswith(ch + ".") for name in REGISTRY) >= 3, ch


@pytest.mark.parametrize("name", sorted(REGISTRY))
def test_reference_passes_and_wrong_answers_fail(name):
    ex = REGISTRY[name]
    assert check(name, ex.reference, verbose=False).passed

    def wrong(**kw):
        out = ex.reference(**kw)
        if torch.is_tensor(out):
            return out * 1.1 + 0.1 if out.is_floating_point() else out + 1
        if isinstance(out, (tuple, list)):
            return type(out)(
                o * 1.1 + 0.1 if torch.is_tensor(o) and o.is_floating_point() else o + 1
                for o in out
            )
        if isinstance(out, dict):
            return {k: v + 1 for k, v in out.items()}
        return out + 1

    result = check(name, wrong, verbose=False)
    assert not result.passed and result.message


def test_checker_messages():
    def stub(**kw):
        raise NotImplementedError

    name = sorted(REGISTRY)[0]
    assert "not attempted" in check(name, stub, verbose=False).message
    assert (
        "raised ZeroDivisionError"
        in check(name, lambda **kw: 1 / 0, verbose=False).message
    )
    assert "shape" in compare(torch.zeros(2), torch.zeros(3), 1e-5)
    assert "largest error" in compare(torch.zeros(3), torch.ones(3), 1e-5)
    assert compare((torch.ones(2), 1), (torch.ones(2), 1), 1e-5) is None
    unknown = check("ch99.nothing", stub)  # check never raises, even for a typo
    assert not unknown.passed and "unknown exercise" in unknown.message


@pytest.mark.parametrize(
    "error", [SystemExit(3), KeyboardInterrupt(), GeneratorExit()], ids=repr
)
def test_check_never_raises_even_a_base_exception(error):
    def student(**kw):
        raise error

    result = check("ch02.extract", student)
    assert not result.passed and f"raised {type(error).__name__}" in result.message


@pytest.mark.parametrize("bad", [0, -1, 2.5, True, "5"])
def test_check_refuses_a_number_of_trials_that_checks_nothing(bad):
    reference = REGISTRY["ch02.extract"].reference
    result = check("ch02.extract", reference, trials=bad)
    assert not result.passed and "trials must be a positive integer" in result.message


def test_check_wants_the_exact_dtype():
    """float64 where float32 is asked (or int32 where int64 is) is a wrong answer."""
    reference = REGISTRY["ch05.cfg_combine"].reference
    result = check("ch05.cfg_combine", lambda **kw: reference(**kw).double())
    assert not result.passed and "dtype float64, expected float32" in result.message
    steps = REGISTRY["ch04.timesteps"].reference
    result = check("ch04.timesteps", lambda **kw: steps(**kw).int())
    assert not result.passed and "dtype int32, expected int64" in result.message


def test_a_student_who_changes_the_shared_schedule_cannot_fail_the_next_answer():
    """ch04's inputs share one NoiseSchedule; an answer that scribbles on it is wrong,
    and the next, correct answer still passes."""
    ex = REGISTRY["ch04.posterior_mean"]

    def vandal(schedule, **kw):
        out = ex.reference(schedule=schedule, **kw)
        for value in vars(schedule).values():
            if torch.is_tensor(value):
                value.mul_(0.5)
        return out

    from diffusion_lib.exercises import ch04
    from diffusion_lib.schedules import NoiseSchedule

    check("ch04.posterior_mean", vandal)
    fresh = NoiseSchedule.make("linear", 1000)
    for key, value in vars(ch04._SCHEDULE).items():
        if torch.is_tensor(value):
            assert torch.equal(value, getattr(fresh, key)), key
    for name in ("ch04.posterior_mean", "ch04.ddpm_step", "ch04.ddim_step"):
        assert check(name, REGISTRY[name].reference).passed, name


def test_check_stops_a_slow_answer_at_its_timeout():
    import time

    def slow(**kw):
        while True:
            time.sleep(0.01)

    start = time.perf_counter()
    result = check("ch02.extract", slow, timeout=0.5)
    assert not result.passed and "time limit of 0.5 s" in result.message
    assert time.perf_counter() - start < 5
    bad = check("ch02.extract", slow, timeout=float("nan"))
    assert not bad.passed and "timeout must be" in bad.message


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_nan_or_inf_in_an_answer_is_reported_not_raised(bad):
    reference = REGISTRY["ch05.cfg_combine"].reference

    def student(**kw):
        out = reference(**kw)
        out[0, 1, 2, 3] = bad
        return out

    result = check("ch05.cfg_combine", student)
    kind = "NaN" if bad != bad else "inf"
    assert not result.passed
    assert f"your answer contains {kind} at index (0, 1, 2, 3)" in result.message


def test_float32_answer_to_a_float64_exercise_is_told_to_use_float64():
    reference = REGISTRY["ch02.alphas_cumprod"].reference
    result = check("ch02.alphas_cumprod", lambda **kw: reference(**kw).float())
    assert not result.passed and "use float64" in result.message


def test_timesteps_accept_any_usual_rounding():
    """Inputs avoid exact .5 ties, where round-half-even and round-half-up disagree."""

    def half_up(num_train_timesteps, num_steps):
        T, n = num_train_timesteps, num_steps
        return torch.tensor([math.floor(T - i * T / n + 0.5) - 1 for i in range(n)])

    def torch_round(num_train_timesteps, num_steps):
        i = torch.arange(num_steps)
        ratio = num_train_timesteps / num_steps
        return (num_train_timesteps - i * ratio).round().long() - 1

    for seed in range(5):
        for student in (half_up, torch_round):
            assert check("ch04.timesteps", student, trials=20, seed=seed).passed


def test_every_exercise_has_a_common_mistake():
    assert all(REGISTRY[name].mistakes for name in REGISTRY), [
        name for name in sorted(REGISTRY) if not REGISTRY[name].mistakes
    ]


@pytest.mark.parametrize("name", sorted(REGISTRY))
def test_checker_rejects_every_common_mistake(name):
    """Each catalogued student mistake is told apart from the reference, with a real
    explanation (not "not attempted")."""
    mistakes = REGISTRY[name].mistakes
    assert mistakes, f"{name} lists no common mistakes"
    for description, mistake in mistakes.items():
        assert isinstance(description, str) and description, name
        result = check(name, mistake)
        assert not result.passed, f"{name}: the mistake {description!r} passes"
        assert result.message and "not attempted" not in result.message, (
            name,
            description,
            result.message,
        )
