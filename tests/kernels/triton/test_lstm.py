"""The LSTM cell kernel against PyTorch's formula, and GateLSTM on the GPU against the CPU."""

import pytest
import torch

from lowbit.nn.lstm import GateLSTM

pytestmark = pytest.mark.gpu


def _formula(gates_in, gates_hidden, c):
    i, f, g, o = (gates_in.double() + gates_hidden.double()).chunk(4, dim=-1)
    c = torch.sigmoid(f) * c.double() + torch.sigmoid(i) * torch.tanh(g)
    return torch.sigmoid(o) * torch.tanh(c), c


@pytest.mark.parametrize("b,hidden", [(1, 5), (3, 130), (1, 2048), (7, 33), (0, 8)])
def test_cell_kernel_matches_the_formula(b, hidden):
    from lowbit.kernels.triton import lstm_cell

    g = torch.Generator().manual_seed(b * 100 + hidden)
    gates_in, gates_hidden = (torch.randn(b, 4 * hidden, generator=g) * 3 for _ in range(2))
    c = torch.randn(b, hidden, generator=g) * 2
    h_out, c_out = lstm_cell(gates_in.cuda(), gates_hidden.cuda(), c.cuda())
    h_ref, c_ref = _formula(gates_in, gates_hidden, c)
    torch.testing.assert_close(c_out.cpu().double(), c_ref, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(h_out.cpu().double(), h_ref, rtol=1e-5, atol=1e-6)


def test_cell_kernel_refuses_mismatched_shapes_and_dtypes():
    from lowbit.kernels.triton import lstm_cell

    with pytest.raises(ValueError, match=r"gates \[B, 4H\]"):
        lstm_cell(torch.zeros(1, 12, device="cuda"), torch.zeros(1, 12, device="cuda"), torch.zeros(1, 4, device="cuda"))
    with pytest.raises(ValueError, match="one float dtype"):
        lstm_cell(torch.zeros(1, 8, device="cuda"), torch.zeros(1, 8, device="cuda", dtype=torch.float64),
                  torch.zeros(1, 2, device="cuda"))


def test_gate_lstm_on_the_gpu_matches_the_cpu():
    torch.manual_seed(0)
    lstm = GateLSTM.from_lstm(torch.nn.LSTM(12, 40, num_layers=2))
    x = torch.randn(9, 3, 12)
    out_cpu, (h_cpu, c_cpu) = lstm(x)
    out_gpu, (h_gpu, c_gpu) = lstm.cuda()(x.cuda())
    for a, b in ((out_gpu, out_cpu), (h_gpu, h_cpu), (c_gpu, c_cpu)):
        torch.testing.assert_close(a.cpu(), b, rtol=1e-4, atol=1e-5)


def test_gate_lstm_trains_on_the_gpu_through_pytorch():
    torch.manual_seed(0)
    lstm = GateLSTM.from_lstm(torch.nn.LSTM(6, 16))
    x = torch.randn(5, 2, 6)
    lstm(x)[0].square().sum().backward()
    expected = lstm.layers[0].hidden_gates.weight.grad.clone()
    gpu = lstm.cuda()
    gpu.zero_grad()
    gpu(x.cuda())[0].square().sum().backward()
    torch.testing.assert_close(gpu.layers[0].hidden_gates.weight.grad.cpu(), expected, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("graph", [False, True], ids=["eager", "cuda-graph"])
def test_bit_serial_lstm_on_the_gpu_matches_the_cpu(graph, first_output):
    # Both gate matmuls bit-serial. Replayed from a CUDA graph, the input projection (64 rows, many
    # blocks) can still be running when the first steps' kernels are launched early behind it; each must
    # wait before reading what it produced.
    import copy

    import lowbit

    torch.manual_seed(0)
    model = first_output(GateLSTM.from_lstm(torch.nn.LSTM(512, 256)))
    q_cpu = lowbit.quantize(model, "bitserial", calib_data=[torch.randn(64, 1, 512)], weight_bits=8, act_bits=16)
    q_gpu = copy.deepcopy(q_cpu).cuda()
    x = torch.randn(64, 1, 512)
    run = lowbit.CudaGraphModule(q_gpu, x.cuda()) if graph else q_gpu
    with torch.no_grad():
        expected, out = q_cpu(x), run(x.cuda()).cpu()
    torch.testing.assert_close(out, expected, rtol=1e-3, atol=1e-4)


@pytest.mark.parametrize("b,hidden,act_bits,signed", [(1, 2048, 8, True), (1, 130, 16, True), (9, 600, 8, True),
                                                      (2, 33, 5, False)])
def test_cell_kernel_writes_the_planes_the_bit_serial_input_kernel_writes(b, hidden, act_bits, signed):
    """The cell's planes of h (for the next step's bit-serial hidden product) equal, bit for bit, what the
    input kernel makes of the h it stored; with one row the GEMM reads them in order, with nine through its
    ring (ldmatrix order). Some values saturate; a NaN gate is coded 0 and counted."""
    from lowbit.config import IntFormat
    from lowbit.kernels.cuda.bitserial import InputPlanes, empty_input_planes, input_planes, layer_kernels
    from lowbit.kernels.triton import lstm_cell
    from lowbit.numerics.bitlayers import padded_words

    fmt = IntFormat(act_bits, signed=signed)
    words = padded_words(hidden)
    stored = torch.zeros(4, 4 * hidden, words, dtype=torch.int32, device="cuda")  # the layer the planes feed
    cfg, module = layer_kernels(b, stored, act_bits, torch.device("cuda"))
    assert bool(cfg["RING"]) == (b == 9)
    g = torch.Generator().manual_seed(b + hidden)
    gates_in, gates_hidden = (torch.randn(b, 4 * hidden, generator=g).cuda() * 3 for _ in range(2))
    gates_in[0, 3 * hidden + 1] = float("nan")  # unit 1's output gate: h NaN
    c = torch.randn(b, hidden, generator=g).cuda() * 2
    scale = torch.tensor(0.9 / fmt.qmax, device="cuda")  # |h| up to 1: some codes saturate
    flags = torch.zeros(2, dtype=torch.int64, device="cuda")
    target = InputPlanes(scale, fmt.qmin, fmt.qmax, act_bits, *empty_input_planes(b, words, cfg, torch.device("cuda")),
                         flags, cfg["A8"], bool(cfg["RING"]))
    h, c_new = lstm_cell(gates_in, gates_hidden, c, target)
    for a, b_ in zip((h, c_new), lstm_cell(gates_in, gates_hidden, c)):  # the same cell either way
        torch.testing.assert_close(a, b_, rtol=0, atol=0, equal_nan=True)
    flags_ref = torch.zeros(2, dtype=torch.int64, device="cuda")
    xplanes, xsum = input_planes(h, scale, act_bits, fmt.qmin, fmt.qmax, words, flags_ref, cfg, module)
    assert torch.equal(target.xplanes, xplanes) and torch.equal(target.xsum, xsum)
    assert torch.equal(flags, flags_ref) and int(flags[1]) == 1 and int(flags[0]) > 0


def test_bit_serial_lstm_steps_give_the_numbers_of_the_three_kernel_steps(monkeypatch):
    """GateLSTM with a bit-serial hidden product runs two kernels a step (its planes written by the cell
    kernel); the outputs are those of the input kernel + GEMM + cell steps, bit for bit."""
    import lowbit
    from lowbit.nn.bitserial import BitSerialLinear

    torch.manual_seed(0)
    lstm = GateLSTM.from_lstm(torch.nn.LSTM(64, 300, num_layers=2))
    q = lowbit.quantize(lstm, "bitserial", calib_data=[torch.randn(20, 3, 64)], weight_bits=4, act_bits=8).cuda()
    x = torch.randn(12, 3, 64, device="cuda")
    with torch.no_grad():
        fused = q(x)
        monkeypatch.setattr(BitSerialLinear, "recurrence", lambda *args: None)
        plain = q(x)
    assert torch.equal(fused[0], plain[0]) and torch.equal(fused[1][0], plain[1][0]) and torch.equal(fused[1][1], plain[1][1])
