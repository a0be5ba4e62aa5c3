"""The one-kernel bit-serial LSTM recurrence (bitserial_lstm.cu): it compiles wherever NVRTC is installed,
and on a GPU gives the numbers of the two-kernel steps (binary GEMM + cell kernel) bit for bit."""

import importlib.util
from pathlib import Path

import pytest
import torch

import lowbit
from lowbit.kernels.cuda import SOURCE_DIR, compile_cubin
from lowbit.nn.bitserial import BitSerialLinear
from lowbit.nn.lstm import GateLSTM

needs_nvrtc = pytest.mark.skipif(importlib.util.find_spec("cuda") is None, reason="needs cuda-bindings (NVRTC)")


@needs_nvrtc
@pytest.mark.parametrize("arch", ["sm_80", "sm_90"])
@pytest.mark.parametrize("a8,nt", [(8, 1), (8, 4), (16, 2), (16, 4)])
def test_kernel_compiles_with_nvrtc(arch, a8, nt):
    source = (Path(SOURCE_DIR) / "bitserial_lstm.cu").read_text()
    assert len(compile_cubin(source, "bitserial_lstm.cu", [f"-DA8={a8}", f"-DNT={nt}", "-DKS=4"], arch)) > 0


def _quantized_lstm(inputs: int, hidden: int, batch: int, weight_bits: int, act_bits: int, seed: int = 0):
    torch.manual_seed(seed)
    lstm = GateLSTM.from_lstm(torch.nn.LSTM(inputs, hidden))
    return lowbit.quantize(lstm, "bitserial", calib_data=[torch.randn(16, batch, inputs)], weight_bits=weight_bits,
                           act_bits=act_bits).cuda()


def _hidden_layer(model) -> BitSerialLinear:
    return model.layers[0].hidden_gates


def _run_both(model, x, monkeypatch):
    """(one kernel, two kernels a step) outputs, each with the hidden layer's saturation/NaN counts."""
    layer = _hidden_layer(model)
    runs = []
    for one_kernel in (True, False):
        layer.input_flags.zero_()
        with monkeypatch.context() as patch:
            if one_kernel:
                patch.setattr(BitSerialLinear, "recurrence", lambda *args: pytest.fail("ran the steps"))
            else:
                patch.setattr(BitSerialLinear, "lstm_sequence", lambda *args: None)
            with torch.no_grad():
                out, (h, c) = model(x)
        runs.append((out, h, c, layer.input_flags.clone()))
    return runs


@pytest.mark.gpu
@pytest.mark.parametrize("hidden,batch,weight_bits,act_bits,active,steps", [
    (2048, 1, 8, 8, 8, 6),    # the char LM's layer: 128 blocks, the weight planes 128 KiB a block
    (300, 3, 4, 8, 4, 9),     # hidden not a multiple of 16 or 32; three rows
    (80, 2, 8, 16, 3, 5),     # 16-bit inputs (two column tiles a row); 3 of 8 bitlayers
    (33, 4, 6, 8, 1, 4),      # four rows, one bitlayer
    (512, 1, 16, 16, 16, 3),  # 16-bit weights and inputs
])
def test_one_kernel_gives_the_numbers_of_the_two_kernel_steps(hidden, batch, weight_bits, act_bits, active, steps,
                                                              monkeypatch):
    model = _quantized_lstm(24, hidden, batch, weight_bits, act_bits)
    lowbit.set_bitlayers(model, active)
    x = torch.randn(steps, batch, 24, device="cuda")
    (out1, h1, c1, f1), (out2, h2, c2, f2) = _run_both(model, x, monkeypatch)
    assert torch.equal(out1, out2) and torch.equal(h1, h2) and torch.equal(c1, c2)
    assert torch.equal(f1, f2)


@pytest.mark.gpu
def test_saturated_and_nan_hidden_states_are_counted_as_the_steps_count_them(monkeypatch):
    model = _quantized_lstm(16, 200, 2, 4, 8)
    layer = _hidden_layer(model)
    layer.input_scale.fill_(0.3 / layer.input_format.qmax)  # |h| above 0.3 saturates
    x = torch.randn(7, 2, 16, device="cuda") * 4
    (out1, _, c1, f1), (out2, _, c2, f2) = _run_both(model, x, monkeypatch)
    assert torch.equal(out1, out2) and torch.equal(c1, c2)
    assert torch.equal(f1, f2) and int(f1[0]) > 0 and int(f1[1]) == 0
    model.layers[0].input_gates.weight_scale[3 * 200 + 1] = float("nan")  # unit 1's output gate: h NaN, coded 0
    monkeypatch.setattr(BitSerialLinear, "_flags_due", lambda self: False)
    (out1, _, c1, f1), (out2, _, c2, f2) = _run_both(model, x, monkeypatch)
    torch.testing.assert_close(out1, out2, rtol=0, atol=0, equal_nan=True)
    assert torch.equal(c1, c2) and torch.equal(f1, f2) and int(f1[1]) == 7 * 2  # every step, both rows


@pytest.mark.gpu
def test_shapes_the_kernel_cannot_take_run_the_steps():
    """Five rows of 8-bit inputs need five column tiles (a warp takes four): the steps run, and agree
    with the CPU."""
    from lowbit.kernels.cuda.bitserial import _lstm_plan

    model = _quantized_lstm(16, 64, 5, 8, 8)
    layer = _hidden_layer(model)
    n_stored, _, words = layer.bitlayers.shape
    device = layer.bitlayers.device
    assert _lstm_plan(5, 64, n_stored, words, 8, 8, device) is None
    assert _lstm_plan(4, 64, n_stored, words, 8, 8, device) is not None
    x = torch.randn(6, 5, 16)
    with torch.no_grad():
        expected = model.cpu()(x)[0]
        out = model.cuda()(x.cuda())[0].cpu()
    torch.testing.assert_close(out, expected, rtol=1e-3, atol=1e-4)


@pytest.mark.gpu
def test_one_kernel_replays_from_a_cuda_graph(monkeypatch, first_output):
    model = first_output(_quantized_lstm(32, 256, 1, 4, 8))
    monkeypatch.setattr(BitSerialLinear, "recurrence", lambda *args: pytest.fail("ran the steps"))
    x = torch.randn(20, 1, 32, device="cuda")
    with torch.no_grad():
        eager = model(x)
        graph = lowbit.CudaGraphModule(model, x)
        first, second = graph(x).clone(), graph(x)
    assert torch.equal(first, eager) and torch.equal(second, eager)
