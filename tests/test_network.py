"""No test touches the network: pytest-socket refuses connections beyond localhost
(pyproject addopts), and quick mode blocks them inside notebook kernels
(diffusion_lib.setup)."""

import socket
import subprocess
import sys

import pytest
import torch


def test_pytest_process_cannot_connect_out():
    from pytest_socket import SocketConnectBlockedError

    with pytest.raises(SocketConnectBlockedError):
        socket.create_connection(("93.184.216.34", 80), timeout=2)


def test_quick_mode_blocks_the_network_in_a_fresh_process():
    code = (
        "import diffusion_lib as dl, socket\n"
        "dl.setup(mode='quick', verbose=False)\n"
        "try:\n"
        "    socket.create_connection(('93.184.216.34', 80), timeout=2)\n"
        "except RuntimeError as e:\n"
        "    print('blocked:', e)\n"
        "s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)\n"
        "try:\n"
        "    s.connect(('10.0.0.1', 80))\n"
        "except RuntimeError as e:\n"
        "    print('blocked:', e)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120
    )
    assert out.stdout.count("blocked: network access is disabled") == 2, (
        out.stdout + out.stderr
    )


def test_setup_modes():
    import diffusion_lib as dl

    cfg = dl.setup(mode="cpu", verbose=False)
    assert cfg.pick(quick=1, cpu=2, gpu=3) == 2 and not cfg.train_from_scratch
    with pytest.raises(ValueError, match="expected one of"):
        dl.setup(mode="turbo")


def test_from_scratch_is_gpu_modes_default_and_can_be_chosen(monkeypatch):
    import diffusion_lib as dl
    from diffusion_lib.setup import RunMode

    monkeypatch.delenv("DIFFUSION_FROM_SCRATCH", raising=False)
    cpu = torch.device("cpu")
    assert RunMode("gpu", cpu, 0).train_from_scratch
    assert not RunMode("gpu", cpu, 0, from_scratch=False).train_from_scratch
    assert not dl.setup(mode="cpu", verbose=False).train_from_scratch
    assert dl.setup(mode="cpu", verbose=False, from_scratch=True).train_from_scratch
    monkeypatch.setenv("DIFFUSION_FROM_SCRATCH", "1")
    cfg = dl.setup(mode="cpu", verbose=False)
    assert cfg.train_from_scratch and cfg.pick(quick=1, cpu=2, gpu=3) == 2
    monkeypatch.setenv("DIFFUSION_FROM_SCRATCH", "0")
    assert not dl.setup(mode="cpu", verbose=False).train_from_scratch
    monkeypatch.setenv("DIFFUSION_FROM_SCRATCH", "yes")
    with pytest.raises(ValueError, match="must be 1 .* or 0"):
        dl.setup(mode="cpu", verbose=False)


def test_full_float32_turns_tf32_convolutions_off():
    from diffusion_lib.setup import full_float32

    conv = torch.backends.cudnn.conv
    before = conv.fp32_precision
    try:
        conv.fp32_precision = "tf32"  # PyTorch's default
        restore = full_float32()
        assert conv.fp32_precision == "ieee"
        assert torch.get_float32_matmul_precision() == "highest"
        restore()
        assert conv.fp32_precision == "tf32"
    finally:
        conv.fp32_precision = before
