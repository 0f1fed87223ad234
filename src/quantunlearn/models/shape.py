"""The dimensions of a Llama decoder, without torch: what the cost model
(`quantunlearn.study.costs`) computes memory and FLOPs from.

A Llama with untied embeddings has, per decoder layer, q and o projections (hidden x hidden), k
and v (hidden x kv_hidden, kv_hidden = head_dim x key/value heads), gate/up/down (3 x hidden x
intermediate) and two RMSNorm weights; plus the token embedding and ``lm_head`` (vocab x hidden
each) and a final RMSNorm.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class LlamaShape:
    vocab: int
    hidden: int
    intermediate: int
    layers: int
    heads: int
    kv_heads: int | None = None

    @property
    def kv_hidden(self) -> int:
        return self.hidden // self.heads * (self.kv_heads or self.heads)

    @property
    def layer_params(self) -> int:
        h, kv, i = self.hidden, self.kv_hidden, self.intermediate
        return 2 * h * h + 2 * h * kv + 3 * h * i + 2 * h

    @property
    def params(self) -> int:
        """Every parameter: embeddings + lm_head + layers + the final norm."""
        return 2 * self.vocab * self.hidden + self.layers * self.layer_params + self.hidden

    @property
    def linear_shapes(self) -> dict[str, tuple[int, int]]:
        """(in, out) features of each projection of one decoder layer, by its module name."""
        h, kv, i = self.hidden, self.kv_hidden, self.intermediate
        return {
            "q_proj": (h, h),
            "k_proj": (h, kv),
            "v_proj": (h, kv),
            "o_proj": (h, h),
            "gate_proj": (h, i),
            "up_proj": (h, i),
            "down_proj": (i, h),
        }

    @classmethod
    def from_config(cls, config: dict) -> LlamaShape:
        """From a transformers Llama ``config.json`` dict."""
        heads = config["num_attention_heads"]
        return cls(
            vocab=config["vocab_size"],
            hidden=config["hidden_size"],
            intermediate=config["intermediate_size"],
            layers=config["num_hidden_layers"],
            heads=heads,
            kv_heads=config.get("num_key_value_heads", heads),
        )


#: Llama-2-7B (MUSE's NEWS and BOOKS models; 6,738,415,616 parameters)
LLAMA2_7B = LlamaShape(vocab=32000, hidden=4096, intermediate=11008, layers=32, heads=32)
#: Llama-3-8B(-Instruct) (RWKU; 8,030,261,248 parameters)
LLAMA3_8B = LlamaShape(
    vocab=128256, hidden=4096, intermediate=14336, layers=32, heads=32, kv_heads=8
)
