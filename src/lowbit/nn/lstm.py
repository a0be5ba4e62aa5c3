"""An LSTM whose gate matmuls are nn.Linear layers, so that any scheme can quantize them.

``GateLSTM`` computes what ``nn.LSTM`` computes (one direction, gate order i, f, g, o; the two biases
of a layer summed into ``input_gates``), with the non-linearities in float. The input projections of
all time steps run as one matmul per layer; the hidden projection runs once per step (at batch 1, a
matrix-vector product: where bit-serial kernels pay most). :func:`unroll_lstms` swaps the nn.LSTM
modules of a model for GateLSTMs with the same weights.
"""

from __future__ import annotations

import torch
from torch import nn

from ..errors import ConfigError


class GateLSTMLayer(nn.Module):
    def __init__(self, input_size: int, hidden_size: int):
        super().__init__()
        self.input_gates = nn.Linear(input_size, 4 * hidden_size)
        self.hidden_gates = nn.Linear(hidden_size, 4 * hidden_size, bias=False)

    def forward(self, x: torch.Tensor, h: torch.Tensor, c: torch.Tensor):
        gates_in = self.input_gates(x)  # [T, B, 4H]
        # A quantized hidden layer may offer to run the whole recurrence (a bit-serial one on the GPU: one
        # kernel), or else the steps with the cell (the cell kernel writes its next input).
        sequence = getattr(self.hidden_gates, "lstm_sequence", None)
        done = sequence(gates_in, h, c) if sequence is not None and x.shape[0] else None
        if done is not None:
            return done
        recurrence = getattr(self.hidden_gates, "recurrence", None)
        step = recurrence(gates_in, h, c) if recurrence is not None and x.shape[0] else None
        outputs = []
        for t in range(x.shape[0]):
            h, c = step(gates_in[t], c) if step else _cell(gates_in[t], self.hidden_gates(h), c)
            outputs.append(h)
        return torch.stack(outputs), h, c


def _cell(gates_in: torch.Tensor, gates_hidden: torch.Tensor, c: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """One step's element-wise part: one Triton kernel on CUDA (kernels/triton/lstm.py), else PyTorch."""
    if c.is_cuda:
        from ..kernels.triton import lstm_cell, lstm_cell_fits

        if lstm_cell_fits(gates_in, gates_hidden, c):
            return lstm_cell(gates_in, gates_hidden, c)
    i, f, g, o = (gates_in + gates_hidden).chunk(4, dim=-1)
    c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
    return torch.sigmoid(o) * torch.tanh(c), c


class GateLSTM(nn.Module):
    """Inputs and outputs as nn.LSTM's (sequence first unless ``batch_first``; state (h0, c0) optional;
    ``dropout`` on the outputs of every layer but the last, in training only)."""

    def __init__(self, input_size: int, hidden_size: int, num_layers: int = 1, batch_first: bool = False,
                 dropout: float = 0.0):
        super().__init__()
        self.input_size, self.hidden_size, self.num_layers, self.batch_first = (input_size, hidden_size, num_layers,
                                                                                batch_first)
        self.dropout = dropout
        self.layers = nn.ModuleList(GateLSTMLayer(input_size if i == 0 else hidden_size, hidden_size)
                                    for i in range(num_layers))

    def forward(self, x: torch.Tensor, state: tuple[torch.Tensor, torch.Tensor] | None = None):
        if x.dim() != 3 or x.shape[-1] != self.input_size:
            raise ValueError(f"GateLSTM expects [T, B, {self.input_size}] inputs (batch first: [B, T, ...]), "
                             f"got shape {tuple(x.shape)}")
        if self.batch_first:
            x = x.transpose(0, 1)
        if state is None:
            zeros = x.new_zeros(self.num_layers, x.shape[1], self.hidden_size)
            state = (zeros, zeros)
        hs, cs = [], []
        for i, layer in enumerate(self.layers):
            if i and self.dropout and self.training:
                x = nn.functional.dropout(x, self.dropout, training=True)
            x, h, c = layer(x, state[0][i], state[1][i])
            hs.append(h)
            cs.append(c)
        if self.batch_first:
            x = x.transpose(0, 1)
        return x, (torch.stack(hs), torch.stack(cs))

    @classmethod
    def from_lstm(cls, lstm: nn.LSTM) -> "GateLSTM":
        if lstm.bidirectional or lstm.proj_size:
            raise ConfigError("GateLSTM holds one-direction LSTMs without projections; this nn.LSTM is "
                              f"{'bidirectional' if lstm.bidirectional else f'projected to {lstm.proj_size}'}")
        new = cls(lstm.input_size, lstm.hidden_size, lstm.num_layers, lstm.batch_first, lstm.dropout)
        new.to(lstm.weight_ih_l0.device)
        with torch.no_grad():
            for i, layer in enumerate(new.layers):
                layer.input_gates.weight.copy_(getattr(lstm, f"weight_ih_l{i}"))
                layer.hidden_gates.weight.copy_(getattr(lstm, f"weight_hh_l{i}"))
                if lstm.bias:
                    layer.input_gates.bias.copy_(getattr(lstm, f"bias_ih_l{i}") + getattr(lstm, f"bias_hh_l{i}"))
                else:
                    layer.input_gates.bias.zero_()
        return new


def unroll_lstms(model: nn.Module) -> nn.Module:
    """Replace every nn.LSTM in ``model`` (in place) by the equivalent :class:`GateLSTM`; returns the model."""
    for name, module in list(model.named_modules()):
        for child_name, child in list(module.named_children()):
            if isinstance(child, nn.LSTM):
                setattr(module, child_name, GateLSTM.from_lstm(child))
    if isinstance(model, nn.LSTM):
        return GateLSTM.from_lstm(model)
    return model
