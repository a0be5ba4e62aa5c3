import pytest
import torch
from torch import nn

import lowbit
from lowbit.errors import ConfigError
from lowbit.nn.lstm import GateLSTM, unroll_lstms


@pytest.mark.parametrize("layers,batch_first", [(1, False), (2, True)])
def test_gate_lstm_computes_what_nn_lstm_computes(layers, batch_first):
    torch.manual_seed(0)
    lstm = nn.LSTM(7, 5, layers, batch_first=batch_first)
    gate = GateLSTM.from_lstm(lstm)
    x = torch.randn(3, 4, 7)
    state = (torch.randn(layers, 3 if batch_first else 4, 5), torch.randn(layers, 3 if batch_first else 4, 5))
    for args in ((x,), (x, state)):
        out, (h, c) = lstm(*args)
        out2, (h2, c2) = gate(*args)
        for a, b in ((out, out2), (h, h2), (c, c2)):
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_dropout_between_layers_is_kept_for_training():
    """nn.LSTM's dropout acts on the outputs of all layers but the last, in training: p = 1 zeroes the
    second layer's input in both, so the outputs agree whatever the random masks; eval mode has none."""
    torch.manual_seed(0)
    lstm = nn.LSTM(7, 5, 2, dropout=1.0)
    gate = GateLSTM.from_lstm(lstm)
    x = torch.randn(3, 4, 7)
    torch.testing.assert_close(gate.train()(x)[0], lstm.train()(x)[0], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(gate.eval()(x)[0], lstm.eval()(x)[0], rtol=1e-5, atol=1e-6)
    assert not torch.allclose(gate.train()(x)[0], gate.eval()(x)[0])


def test_an_lstm_left_as_it_is_gets_a_hint(first_output):
    torch.manual_seed(0)
    model = nn.Sequential(first_output(nn.LSTM(6, 8, batch_first=True)), nn.Flatten(), nn.Linear(24, 3))
    with pytest.warns(UserWarning, match=r"nn.LSTM '0.inner' stay\(s\) in float: lowbit.nn.unroll_lstms\(model\)"):
        lowbit.quantize(model, "int8", calib_data=[torch.randn(2, 3, 6)], progress=False)


def test_unroll_lstms_makes_the_gates_quantizable(first_output):
    torch.manual_seed(0)
    model = nn.Sequential(nn.LSTM(6, 8, batch_first=True))
    unrolled = unroll_lstms(model)
    assert isinstance(unrolled[0], GateLSTM)
    names = [n for n, _ in lowbit.quantizable_layers(unrolled)]
    assert names == ["0.layers.0.input_gates", "0.layers.0.hidden_gates"]

    wrapped = first_output(unrolled[0])
    q = lowbit.quantize(wrapped, "bitserial", calib_data=[torch.randn(2, 9, 6)], weight_bits=8, act_bits=16)
    x = torch.randn(2, 9, 6)
    torch.testing.assert_close(q(x), wrapped(x), rtol=0.05, atol=0.02)


def test_refuses_what_it_cannot_hold():
    with pytest.raises(ConfigError, match="bidirectional"):
        GateLSTM.from_lstm(nn.LSTM(3, 4, bidirectional=True))
    with pytest.raises(ValueError, match=r"expects \[T, B, 3\]"):
        GateLSTM(3, 4)(torch.randn(2, 5))
