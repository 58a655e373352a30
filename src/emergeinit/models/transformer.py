"""The paper's translation model: a post-LN encoder–decoder transformer (Vaswani et al.; fairseq's
``transformer_iwslt_de_en`` layer order): LayerNorm after each residual sum, sinusoidal
positions, tied output projection. Token ids are the caller's; only the padding id matters here.

Conventions the initializers rely on: encoder layers' classes set ``emergeinit_encoder_layer``,
decoder layers' ``emergeinit_decoder_layer``; attention modules hold plain ``q_proj``/``k_proj``/
``v_proj``/``out_proj`` Linears; each layer's ``ffn`` (class sets ``emergeinit_block``) holds
``fc1``/``fc2``; embeddings are ``nn.Embedding``. ``layer_norm=False`` drops every LayerNorm, as
the T-Fixup paper does.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import List, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["Attention", "FeedForward", "EncoderLayer", "DecoderLayer", "Seq2SeqTransformer",
           "DecoderState", "sinusoidal_positions"]


class Attention(nn.Module):
    """Multi-head attention on plain Linears, computed with ``F.scaled_dot_product_attention``."""

    def __init__(self, dim: int, heads: int, dropout: float = 0.0):
        super().__init__()
        if dim % heads:
            raise ValueError(f"dim {dim} is not divisible by heads {heads}")
        self.heads, self.dropout = heads, dropout
        self.q_proj = nn.Linear(dim, dim)
        self.k_proj = nn.Linear(dim, dim)
        self.v_proj = nn.Linear(dim, dim)
        self.out_proj = nn.Linear(dim, dim)

    def _split(self, x: torch.Tensor) -> torch.Tensor:
        return x.view(x.size(0), x.size(1), self.heads, -1).transpose(1, 2)

    def keys_values(self, kv: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """Keys and values of ``kv`` [B, T, D], split into heads: [B, H, T, D/H] each."""
        return self._split(self.k_proj(kv)), self._split(self.v_proj(kv))

    def attend(self, x: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
               mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Queries from ``x`` [B, Tq, D] attend keys/values already projected (:meth:`keys_values`)."""
        return self._attend(self._split(self.q_proj(x)), k, v, mask, x.shape)

    def _attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: Optional[torch.Tensor],
                shape: torch.Size) -> torch.Tensor:
        out = F.scaled_dot_product_attention(
            q, k, v, attn_mask=mask, dropout_p=self.dropout if self.training else 0.0
        )
        return self.out_proj(out.transpose(1, 2).reshape(shape))

    def forward(self, x: torch.Tensor, memory: Optional[torch.Tensor] = None,
                mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        """``mask``: bool, True where a query may attend a key, broadcastable to [B, H, Tq, Tk]."""
        q = self._split(self.q_proj(x))  # q, k, v in this order: the order the initializers trace
        k, v = self.keys_values(x if memory is None else memory)
        return self._attend(q, k, v, mask, x.shape)


class FeedForward(nn.Module):
    """The position-wise MLP block fc1 → ReLU → fc2 (the paper's two-layer FFN block)."""

    emergeinit_block = True

    def __init__(self, dim: int, hidden: int, activation_dropout: float = 0.0):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)
        self.activation_dropout = activation_dropout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.dropout(F.relu(self.fc1(x)), self.activation_dropout, self.training)
        return self.fc2(h)


def _norm(dim: int, enabled: bool) -> nn.Module:
    return nn.LayerNorm(dim) if enabled else nn.Identity()


class EncoderLayer(nn.Module):
    """x = LN(x + Drop(SelfAttn(x))); x = LN(x + Drop(FFN(x)))."""

    emergeinit_encoder_layer = True

    def __init__(self, dim: int, heads: int, ffn_dim: int, dropout: float, attention_dropout: float,
                 activation_dropout: float, layer_norm: bool = True):
        super().__init__()
        self.self_attn = Attention(dim, heads, attention_dropout)
        self.self_attn_norm = _norm(dim, layer_norm)
        self.ffn = FeedForward(dim, ffn_dim, activation_dropout)
        self.ffn_norm = _norm(dim, layer_norm)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        x = self.self_attn_norm(x + self.dropout(self.self_attn(x, mask=mask)))
        return self.ffn_norm(x + self.dropout(self.ffn(x)))


class DecoderLayer(nn.Module):
    """Causal self-attention, cross-attention to the encoder, FFN; each followed by add & LN."""

    emergeinit_decoder_layer = True

    def __init__(self, dim: int, heads: int, ffn_dim: int, dropout: float, attention_dropout: float,
                 activation_dropout: float, layer_norm: bool = True):
        super().__init__()
        self.self_attn = Attention(dim, heads, attention_dropout)
        self.self_attn_norm = _norm(dim, layer_norm)
        self.cross_attn = Attention(dim, heads, attention_dropout)
        self.cross_attn_norm = _norm(dim, layer_norm)
        self.ffn = FeedForward(dim, ffn_dim, activation_dropout)
        self.ffn_norm = _norm(dim, layer_norm)
        self.dropout = nn.Dropout(dropout)

    def forward(self, y: torch.Tensor, memory: torch.Tensor, self_mask: torch.Tensor,
                memory_mask: torch.Tensor) -> torch.Tensor:
        y = self.self_attn_norm(y + self.dropout(self.self_attn(y, mask=self_mask)))
        y = self.cross_attn_norm(y + self.dropout(self.cross_attn(y, memory, mask=memory_mask)))
        return self.ffn_norm(y + self.dropout(self.ffn(y)))

    def step(self, y: torch.Tensor, state: "DecoderState", index: int) -> torch.Tensor:
        """:meth:`forward` for the newest position only (``y`` [B, 1, D]), this layer's
        self-attention keys/values so far and its cross-attention ones in ``state``."""
        k, v = self.self_attn.keys_values(y)
        if state.self_kv[index] is not None:
            k_old, v_old = state.self_kv[index]
            k, v = torch.cat([k_old, k], dim=2), torch.cat([v_old, v], dim=2)
        state.self_kv[index] = (k, v)
        y = self.self_attn_norm(y + self.dropout(self.self_attn.attend(y, k, v)))
        k_mem, v_mem = state.cross_kv[index]
        y = self.cross_attn_norm(y + self.dropout(self.cross_attn.attend(y, k_mem, v_mem, state.memory_mask)))
        return self.ffn_norm(y + self.dropout(self.ffn(y)))


@dataclass
class DecoderState:
    """What incremental decoding keeps between steps: per decoder layer the self-attention keys and
    values of the positions so far (grown each step) and the cross-attention ones of the encoder
    states (computed once), the memory mask, and how many positions have been decoded."""

    cross_kv: List[Tuple[torch.Tensor, torch.Tensor]]
    self_kv: List[Optional[Tuple[torch.Tensor, torch.Tensor]]]
    memory_mask: torch.Tensor
    length: int = 0

    def reorder(self, rows: torch.Tensor) -> None:
        """Keep the decoded prefixes of ``rows`` (beam search); the rows must come from the same
        sentence as their new places, whose encoder keys and values therefore stay."""
        self.self_kv = [None if kv is None else (kv[0].index_select(0, rows), kv[1].index_select(0, rows))
                        for kv in self.self_kv]


def sinusoidal_positions(length: int, dim: int) -> torch.Tensor:
    """[length, dim] sine/cosine position table (sines in the first half, as fairseq)."""
    half = dim // 2
    freq = torch.exp(torch.arange(half, dtype=torch.float32) * -(math.log(10000.0) / max(half - 1, 1)))
    angles = torch.arange(length, dtype=torch.float32)[:, None] * freq[None, :]
    table = torch.cat([angles.sin(), angles.cos()], dim=1)
    return F.pad(table, (0, dim - 2 * half))


class Seq2SeqTransformer(nn.Module):
    """Post-LN encoder–decoder transformer; ``forward(src, tgt_in)`` returns logits [B, T, V].

    ``share_embeddings``: one embedding matrix for source and target (joint vocabulary);
    ``tie_output``: the output projection is the target embedding (applied functionally, as in
    fairseq; untied it is a Linear ``output_proj``). Parameters start as
    fairseq does (Xavier-uniform Linears, zero biases, embeddings N(0, dim^-1/2), the ``pad_id``
    row 0); the harness re-initializes by name afterwards. ``pad_id`` tokens are masked out.
    """

    def __init__(
        self,
        vocab_size: int,
        *,
        dim: int = 512,
        ffn_dim: int = 1024,
        heads: int = 4,
        encoder_layers: int = 6,
        decoder_layers: int = 6,
        dropout: float = 0.3,
        attention_dropout: float = 0.0,
        activation_dropout: float = 0.0,
        share_embeddings: bool = True,
        tie_output: bool = True,
        layer_norm: bool = True,
        max_positions: int = 1024,
        pad_id: int = 0,
    ):
        super().__init__()
        self.pad_id, self.dim = pad_id, dim
        self.src_embed = nn.Embedding(vocab_size, dim, padding_idx=pad_id)
        self.tgt_embed = self.src_embed if share_embeddings else nn.Embedding(vocab_size, dim, padding_idx=pad_id)
        self.register_buffer("positions", sinusoidal_positions(max_positions, dim), persistent=False)
        self.embed_scale = math.sqrt(dim)
        self.dropout = nn.Dropout(dropout)
        args = (dim, heads, ffn_dim, dropout, attention_dropout, activation_dropout, layer_norm)
        self.encoder_layers = nn.ModuleList(EncoderLayer(*args) for _ in range(encoder_layers))
        self.decoder_layers = nn.ModuleList(DecoderLayer(*args) for _ in range(decoder_layers))
        # tied: logits = y @ E_tgt^T computed functionally, as fairseq does, so the embedding is
        # not a weight layer that Linear initializers (Xavier over V×d) would redraw
        self.output_proj = None if tie_output else nn.Linear(dim, vocab_size, bias=False)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Embedding):
                nn.init.normal_(m.weight, 0.0, self.dim ** -0.5)
                with torch.no_grad():
                    m.weight[self.pad_id].zero_()

    def _embed(self, embedding: nn.Embedding, tokens: torch.Tensor) -> torch.Tensor:
        x = embedding(tokens) * self.embed_scale + self.positions.narrow(0, 0, tokens.size(1))
        return self.dropout(x)

    def encode(self, src: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """Encoder states [B, S, D] and the key mask [B, 1, 1, S] (True = real token)."""
        mask = (src != self.pad_id)[:, None, None, :]
        x = self._embed(self.src_embed, src)
        for layer in self.encoder_layers:
            x = layer(x, mask)
        return x, mask

    def decode(self, tgt_in: torch.Tensor, memory: torch.Tensor, memory_mask: torch.Tensor) -> torch.Tensor:
        """Logits [B, T, V] for every target prefix (causal self-attention)."""
        t = tgt_in.size(1)  # written so that torch.fx can trace the model
        causal = tgt_in.new_ones((t, t), dtype=torch.bool).tril()
        y = self._embed(self.tgt_embed, tgt_in)
        for layer in self.decoder_layers:
            y = layer(y, memory, causal, memory_mask)
        return self._output(y)

    def _output(self, y: torch.Tensor) -> torch.Tensor:
        if self.output_proj is None:
            return F.linear(y, self.tgt_embed.weight)
        return self.output_proj(y)

    def start_decoding(self, memory: torch.Tensor, memory_mask: torch.Tensor) -> DecoderState:
        """The state of incremental decoding (:meth:`decode_step`) for encoder states ``memory``:
        each layer's cross-attention keys and values are computed here, once per sentence."""
        cross = [layer.cross_attn.keys_values(memory) for layer in self.decoder_layers]
        return DecoderState(cross, [None] * len(self.decoder_layers), memory_mask)

    def decode_step(self, tokens: torch.Tensor, state: DecoderState) -> torch.Tensor:
        """Logits [B, V] of the next token after ``tokens`` [B] (the newest of each prefix), the
        earlier ones being in ``state``: :meth:`decode`'s last position, computed for that position
        alone (cached self-attention keys/values, no causal mask needed)."""
        t = state.length
        y = self.tgt_embed(tokens[:, None]) * self.embed_scale + self.positions.narrow(0, t, 1)
        y = self.dropout(y)
        for index, layer in enumerate(self.decoder_layers):
            y = layer.step(y, state, index)
        state.length = t + 1
        return self._output(y)[:, 0]

    def forward(self, src: torch.Tensor, tgt_in: torch.Tensor) -> torch.Tensor:
        memory, mask = self.encode(src)
        return self.decode(tgt_in, memory, mask)
