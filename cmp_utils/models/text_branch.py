"""The text branch: word embedding, Bi-LSTM over time (the release's TF cell and initialisers as options) and
max pooling over time."""

from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

# ---------------------------------------------------------------------------------------------
# Text branch
# ---------------------------------------------------------------------------------------------

PADDED_STEPS = ("exclude", "zeros")
WORD_EMBEDDING_INITS = ("xavier", "normal")
LSTM_INITS = ("tf", "pytorch")
LSTM_BACKWARDS = ("time", "batch_reversed")
INITIAL_STATE_INITS = ("glorot", "zeros")
LSTM_BIASES = ("single", "two")
LSTM_INPUT_DROPOUTS = ("per_direction", "shared")
#: Rows of the release's word-embedding table (``train_image_text.py`` flag ``vocab_size``); its Xavier
#: bound sqrt(6 / (rows + word_dim)) comes from this size, whatever the vocabulary's.
RELEASE_VOCABULARY_ROWS = 12000
TF_FORGET_BIAS = 1.0  # tf.contrib.rnn.BasicLSTMCell(forget_bias=1.0), the release's default


def xavier_bound(fan_in: int, fan_out: int) -> float:
    """Glorot / Xavier uniform bound sqrt(6 / (fan_in + fan_out)) (TF's ``glorot_uniform_initializer``)."""
    return (6.0 / (fan_in + fan_out)) ** 0.5


def _check_choice(name: str, value: str, choices: Sequence[str]) -> str:
    if value not in choices:
        raise ValueError(f"parameter {name}={value!r} is not one of {tuple(choices)}")
    return value


def tf_lstm_kernel_to_torch(
    kernel: torch.Tensor, bias: torch.Tensor, input_size: int, forget_bias: float = TF_FORGET_BIAS
) -> dict[str, torch.Tensor]:
    """TF ``BasicLSTMCell`` variables -> one direction of a PyTorch ``nn.LSTM``.

    TF keeps one fused ``kernel`` of shape (input + units, 4·units), rows = [input; hidden],
    column blocks in gate order (i, j, f, o) (j = the cell input), one ``bias`` (4·units,), and
    adds ``forget_bias`` to the forget gate at run time. PyTorch keeps ``weight_ih`` (4·units,
    input), ``weight_hh`` (4·units, units) in gate order (i, f, g, o) and two biases whose sum is
    used. Returns ``{"weight_ih", "weight_hh", "bias_ih", "bias_hh"}``; ``forget_bias`` goes into
    ``bias_ih``'s forget slice, ``bias_hh`` is zero.
    """
    units = kernel.shape[1] // 4
    if kernel.shape != (input_size + units, 4 * units) or bias.shape != (4 * units,):
        raise ValueError(
            f"TF LSTM kernel {tuple(kernel.shape)} / bias {tuple(bias.shape)} do not fit "
            f"input_size={input_size}: expected ({input_size} + units, 4·units) and (4·units,)"
        )
    gate_i, gate_j, gate_f, gate_o = kernel.t().chunk(4, dim=0)  # each (units, input + units)
    bias_i, bias_j, bias_f, bias_o = bias.chunk(4)
    weights = torch.cat([gate_i, gate_f, gate_j, gate_o], dim=0)  # PyTorch order i, f, g, o
    return {
        "weight_ih": weights[:, :input_size].contiguous(),
        "weight_hh": weights[:, input_size:].contiguous(),
        "bias_ih": torch.cat([bias_i, bias_f + forget_bias, bias_j, bias_o]),
        "bias_hh": torch.zeros_like(bias),
    }


def tf_lstm_init_(lstm: nn.LSTM) -> nn.LSTM:
    """Initialise every direction of ``lstm`` as the release's ``BasicLSTMCell`` starts.

    Release (``modules.py``, the text branch: ``tf.contrib.rnn.BasicLSTMCell`` inside
    ``tf.nn.bidirectional_dynamic_rnn``): the fused kernel (input + units, 4·units) is drawn
    Glorot-uniform (TF's default variable initialiser), fan_in = input + units,
    fan_out = 4·units; the bias is zero and ``forget_bias`` = 1.0 is added to the forget gate.
    The kernel is drawn in TF's layout and mapped by :func:`tf_lstm_kernel_to_torch`.
    """
    units, input_size = lstm.hidden_size, lstm.input_size
    suffixes = ["", "_reverse"] if lstm.bidirectional else [""]
    with torch.no_grad():
        for layer in range(lstm.num_layers):
            layer_input = input_size if layer == 0 else units * len(suffixes)
            for suffix in suffixes:
                kernel = nn.init.xavier_uniform_(torch.empty(layer_input + units, 4 * units))
                mapped = tf_lstm_kernel_to_torch(kernel, torch.zeros(4 * units), layer_input)
                for name, value in mapped.items():
                    getattr(lstm, f"{name}_l{layer}{suffix}").copy_(value)
    return lstm


def _gather_steps(values: torch.Tensor, order: torch.Tensor) -> torch.Tensor:
    """``values`` (batch, T, dim) with each row's steps taken in ``order`` (batch, T): out[b, t] = values[b, order[b, t]]."""
    return values.gather(1, order[:, :, None].expand(-1, -1, values.shape[2]))


class TextEncoder(nn.Module):
    """$\\psi(T)$: word embedding -> Bi-LSTM over time -> max pooling over time.

    * word embedding ``vocab_size x word_dim`` (12000 x 512 in the paper), row ``pad_id`` = padding;
    * one bidirectional LSTM layer, ``hidden_size`` units per direction (512); the backward
      direction starts at each sentence's own last token (each direction runs as one fused LSTM
      over the padded batch, the backward one on every sentence reversed within its length);
    * learned initial states $h_0, c_0$ (one per direction), as in the release (``modules.py``);
    * dropout ``dropout`` (0.3 = the release's keep-probability 0.7) on the LSTM inputs and outputs;
    * max pooling over time of the concatenated outputs: (batch, 2·hidden_size).

    Options (release default first; the others are deviations found in public ports, kept to
    measure them):

    * ``word_embedding_init``: ``"xavier"`` = Glorot uniform, as the release's ``modules.py``
      creates the table; ``"normal"`` = ``nn.Embedding``'s N(0, 1) (about 80x larger at 512-d).
    * ``lstm_init``: ``"tf"`` = :func:`tf_lstm_init_` (Glorot kernels, forget-gate bias 1.0);
      ``"pytorch"`` = ``nn.LSTM``'s uniform(±1/sqrt(hidden)).
    * ``lstm_backward``: ``"time"`` = a true backward LSTM (reads each sentence from its last
      token); ``"batch_reversed"`` = a port's bug: the "backward" LSTM reads forwards in time,
      on the batch in reversed order (reversed back afterwards), so it is a second forward LSTM.
    * ``initial_state_init``: ``"glorot"`` = the release's learned initial states ``init_state_{0,1}``
      (``tf.get_variable`` of shape (units,) with no initialiser: Glorot uniform, bound
      sqrt(6 / (2·units)) = sqrt(3 / units)); ``"zeros"``.
    * ``lstm_bias``: ``"single"`` = one trained bias per gate, as TF's ``BasicLSTMCell``: ``bias_hh``
      stays at zero and is frozen (``requires_grad=False``), ``bias_ih`` is the cell's bias;
      ``"two"`` = ``nn.LSTM``'s two trained biases (Adam then moves their sum about twice as fast).
    * ``lstm_input_dropout``: ``"per_direction"`` = each direction draws its own input-dropout mask
      (the release wraps each direction's cell in its own ``DropoutWrapper``); ``"shared"`` = one
      mask on the word embeddings feeds both directions.
    * ``word_embedding_init_rows``: the row count whose Xavier bound sqrt(6 / (rows + word_dim)) draws
      the table (12000 = the release's table, :data:`RELEASE_VOCABULARY_ROWS`); ``None`` = ``vocab_size``.
    * ``padded_steps`` (training only): ``"exclude"`` (default here) = steps past a sentence's end
      take no part in the max; ``"zeros"`` = the release at batch 16: padded steps output zeros
      that take part in the max (a sentence shorter than its batch's longest gets its feature
      floored at 0). **In eval mode padded steps are always excluded**: the release encodes test
      captions one at a time (batch 1, no padding), so its test features never see padding.
    """

    def __init__(
        self,
        vocab_size: int,
        word_dim: int = 512,
        hidden_size: int = 512,
        dropout: float = 0.3,
        pad_id: int = 0,
        padded_steps: str = "exclude",
        word_embedding_init: str = "xavier",
        lstm_init: str = "tf",
        lstm_backward: str = "time",
        initial_state_init: str = "glorot",
        lstm_bias: str = "single",
        lstm_input_dropout: str = "per_direction",
        word_embedding_init_rows: int | None = RELEASE_VOCABULARY_ROWS,
    ):
        super().__init__()
        _check_choice("padded_steps", padded_steps, PADDED_STEPS)
        _check_choice("initial_state_init", initial_state_init, INITIAL_STATE_INITS)
        _check_choice("lstm_bias", lstm_bias, LSTM_BIASES)
        _check_choice("lstm_input_dropout", lstm_input_dropout, LSTM_INPUT_DROPOUTS)
        if word_embedding_init_rows is not None and word_embedding_init_rows < 1:
            raise ValueError(
                f"parameter word_embedding_init_rows={word_embedding_init_rows!r} must be a positive "
                "row count or None (the vocabulary's size)"
            )
        _check_choice("word_embedding_init", word_embedding_init, WORD_EMBEDDING_INITS)
        _check_choice("lstm_init", lstm_init, LSTM_INITS)
        _check_choice("lstm_backward", lstm_backward, LSTM_BACKWARDS)
        if vocab_size < 2:
            raise ValueError(f"parameter vocab_size={vocab_size} is too small; pass len(vocabulary)")
        self.word_embedding = nn.Embedding(vocab_size, word_dim, padding_idx=pad_id)
        if word_embedding_init == "xavier":
            with torch.no_grad():
                rows = vocab_size if word_embedding_init_rows is None else word_embedding_init_rows
                self.word_embedding.weight.uniform_(-xavier_bound(rows, word_dim), xavier_bound(rows, word_dim))
                self.word_embedding.weight[pad_id].zero_()  # the padding row stays 0 (it never reaches the LSTM)
        self.lstm = nn.LSTM(word_dim, hidden_size, num_layers=1, batch_first=True, bidirectional=True)
        if lstm_init == "tf":
            tf_lstm_init_(self.lstm)
        if lstm_bias == "single":  # TF's one bias per gate: bias_hh stays 0 and never trains
            for suffix in ("", "_reverse"):
                getattr(self.lstm, f"bias_hh_l0{suffix}").data.zero_()
                getattr(self.lstm, f"bias_hh_l0{suffix}").requires_grad_(False)
        self.initial_hidden = nn.Parameter(torch.zeros(2, 1, hidden_size))  # h_0 per direction
        self.initial_cell = nn.Parameter(torch.zeros(2, 1, hidden_size))  # c_0 per direction
        if initial_state_init == "glorot":  # each (units,) variable on its own: fan_in = fan_out = units
            with torch.no_grad():
                for state in (self.initial_hidden, self.initial_cell):
                    state.uniform_(-xavier_bound(hidden_size, hidden_size), xavier_bound(hidden_size, hidden_size))
        self.input_dropout = nn.Dropout(dropout)
        self.output_dropout = nn.Dropout(dropout)
        self.padded_steps = padded_steps
        self.lstm_input_dropout = lstm_input_dropout
        self.word_embedding_init, self.lstm_init, self.lstm_backward = word_embedding_init, lstm_init, lstm_backward
        self.output_dim = 2 * hidden_size
        # A one-direction template that runs each direction with that direction's weights swapped in at
        # call time (:meth:`run_direction_fused`); kept out of the module tree so it owns no parameters.
        self._forward_template = [nn.LSTM(word_dim, hidden_size, num_layers=1, batch_first=True)]

    def run_direction_fused(self, words: torch.Tensor, suffix: str, direction: int) -> torch.Tensor:
        """One LSTM direction over the padded ``words`` (batch, T, word_dim), read forwards in time with
        the weights ``*_l0{suffix}``: (batch, T, hidden); steps past a sentence's end are not meaningful."""
        template = self._forward_template[0]
        parameters = {
            f"{name}_l0": getattr(self.lstm, f"{name}_l0{suffix}")
            for name in ("weight_ih", "weight_hh", "bias_ih", "bias_hh")
        }
        batch = words.shape[0]
        initial = (
            self.initial_hidden[direction : direction + 1].expand(-1, batch, -1).contiguous(),
            self.initial_cell[direction : direction + 1].expand(-1, batch, -1).contiguous(),
        )
        if words.device.type == "cpu" and torch.is_autocast_enabled("cpu"):
            # oneDNN has no bf16 LSTM at the pinned AVX2 ISA (cmp_utils.core.numerics): on the CPU the
            # recurrence stays fp32 under bf16 autocast; on CUDA, cuDNN runs it in the autocast dtype.
            with torch.autocast("cpu", enabled=False):
                outputs, _ = torch.func.functional_call(template, parameters, (words.float(), initial))
            return outputs
        outputs, _ = torch.func.functional_call(template, parameters, (words, initial))
        return outputs

    def step_outputs(self, token_ids: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """Per-step Bi-LSTM outputs (batch, T, 2·hidden) before dropout; padded steps are 0.

        ``token_ids`` (batch, T) long, padded with ``pad_id``; ``lengths`` (batch,) >= 1.
        Columns ``[:hidden]`` = forward direction, ``[hidden:]`` = backward direction.
        """
        if token_ids.dim() != 2:
            raise ValueError(f"token_ids must be (batch, T), got shape {tuple(token_ids.shape)}")
        lengths_cpu = lengths.detach().to("cpu", torch.long)
        if bool((lengths_cpu < 1).any()):
            raise ValueError("every sentence needs at least one token (lengths >= 1)")
        embedded = self.word_embedding(token_ids)  # (batch, T, word_dim)
        words = self.input_dropout(embedded)  # the forward direction's input
        # the backward direction's input: its own mask (release: one DropoutWrapper per direction) or the same
        words_backward = self.input_dropout(embedded) if self.lstm_input_dropout == "per_direction" else words
        steps = torch.arange(words.shape[1], device=words.device)
        lengths_here = lengths_cpu.to(words.device)
        valid = steps[None, :] < lengths_here[:, None]  # (batch, T)
        if self.lstm_backward == "batch_reversed":  # a second forward LSTM, on the batch in reversed order
            forward = self.run_direction_fused(words, "", 0)  # (batch, T, hidden)
            flipped = self.run_direction_fused(words_backward.flip(0), "_reverse", 1)
            return torch.cat([forward, flipped.flip(0)], dim=-1).masked_fill(~valid[:, :, None], 0.0)
        # Each direction runs as one fused LSTM over the padded batch (oneDNN on the CPU, cuDNN on CUDA),
        # which is 2-3x faster than a packed sequence stepped by ATen, and exactly the same recurrence:
        # the forward direction reads tokens 0..L-1 before any padding; the backward direction reads
        # each sentence reversed within its own length (its padding moved behind it), and its outputs
        # are put back in time order. Outputs of padded steps are set to 0, as a packed LSTM leaves them.
        reverse_order = torch.where(valid, lengths_here[:, None] - 1 - steps[None, :], steps[None, :])  # (batch, T)
        forward = self.run_direction_fused(words, "", 0)  # (batch, T, hidden)
        backward = self.run_direction_fused(_gather_steps(words_backward, reverse_order), "_reverse", 1)
        outputs = torch.cat([forward, _gather_steps(backward, reverse_order)], dim=-1)  # (batch, T, 2·hidden)
        return outputs.masked_fill(~valid[:, :, None], 0.0)  # zeros past each length

    def forward(self, token_ids: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """``token_ids`` (batch, T), ``lengths`` (batch,) -> $\\psi(T)$ (batch, 2·hidden)."""
        outputs = self.output_dropout(self.step_outputs(token_ids, lengths))
        if self.padded_steps == "exclude" or not self.training:  # eval: as the release's batch-1 test encoding
            steps = torch.arange(outputs.shape[1], device=outputs.device)
            padded = steps[None, :] >= lengths.to(outputs.device)[:, None]  # (batch, T)
            outputs = outputs.masked_fill(padded[:, :, None], float("-inf"))
        return outputs.max(dim=1).values
