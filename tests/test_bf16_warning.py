"""bf16 on a CPU without native bf16 is emulated and far slower than fp32: say so up front."""

import pytest
import torch

from prlbench.cli import _warn_slow_bf16
from prlbench.engine.evaluate import slow_bf16_warning


@pytest.fixture
def native(monkeypatch):
    def set_native(value: bool) -> None:
        monkeypatch.setattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", lambda: value)
    return set_native


def test_bf16_on_a_cpu_without_native_bf16_is_named_with_the_fix(native):
    native(False)
    why = slow_bf16_warning("cpu", "bf16")
    assert why is not None and "no AVX-512 BF16 or AMX" in why and "--precision fp32" in why
    assert slow_bf16_warning("cpu", "fp32") is None  # fp32 is never slow for this reason
    assert slow_bf16_warning("cuda", "bf16") is None  # a GPU has its own bf16 units


def test_a_cpu_with_native_bf16_gets_no_warning(native):
    native(True)
    assert slow_bf16_warning("cpu", "bf16") is None


def test_train_and_compare_print_it_before_any_work(native, capsys):
    native(False)
    _warn_slow_bf16("cpu", "bf16")
    err = " ".join(capsys.readouterr().err.split())
    assert "warning:" in err and "emulated" in err
    _warn_slow_bf16("cpu", "fp32")
    assert capsys.readouterr().err == ""
