import pytest

from benchmark.errors import UsageError
from benchmark.metrics import BACKDOOR, METRICS, metric


def test_every_metric_declares_a_direction_and_kind():
    for declared in METRICS.values():
        assert declared.direction in (-1, 0, 1)
        assert declared.kind in ("rate", "mean", "median")
        assert declared.tables


def test_certified_accuracy_at_a_radius_is_derived_from_certified_accuracy():
    at = metric("certified_accuracy@0.5")
    assert at.direction == 1 and at.kind == "rate" and "0.5" in at.label


@pytest.mark.parametrize("key", ["accuracy", "certified_accuracy@", "certified_accuracy@big"])
def test_an_undeclared_metric_is_an_error(key):
    with pytest.raises(UsageError, match="unknown metric"):
        metric(key)


def test_backdoor_tables_read_attack_success_on_triggered_inputs():
    assert "triggered" in METRICS["attack_success_rate"].help_in(BACKDOOR)
    assert METRICS["attack_success_rate"].label_in(BACKDOOR) == "ASR %"
