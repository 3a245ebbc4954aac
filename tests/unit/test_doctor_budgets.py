"""doctor's budget check: a restoring create gives up at create_timeout_s and cold-starts, and all
of it must end inside kubelet's runtime-request-timeout, read from kubelet's own config."""
from __future__ import annotations

import pytest

from runtime.model.settings import Settings
from runtime.node import doctor


@pytest.mark.parametrize("line, seconds", [
    ("runtimeRequestTimeout: 2m0s", 120), ('runtimeRequestTimeout: "10m"', 600), ("runtimeRequestTimeout: 90s", 90),
    ("runtimeRequestTimeout: 1h", 3600), ("evictionHard: {}", doctor.KUBELET_DEFAULT_S),
])
def test_kubelets_timeout_is_read_from_its_config(tmp_path, line, seconds):
    path = tmp_path / "config.yaml"
    path.write_text(f"kind: KubeletConfiguration\n{line}\n")
    assert doctor.kubelet_timeout_s(str(path)) == seconds


def test_the_defaults_fit_kubelets_two_minutes_and_a_larger_budget_is_warned_about(monkeypatch):
    monkeypatch.setattr(doctor, "kubelet_timeout_s", lambda: 120)
    assert [s for s, _, _ in doctor._budgets(Settings())] == ["OK"]
    late = doctor._budgets(Settings(create_timeout_s=300))
    assert late[0][0] == "WARN" and "does not fit kubelet's runtimeRequestTimeout (120s)" in late[0][2]
    starved = doctor._budgets(Settings(pull_timeout_s=100))
    assert starved[-1][0] == "WARN" and "leaves no time" in starved[-1][2]
