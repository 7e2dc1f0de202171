"""RoBERTa (Liu et al., 2019) as LAION-CLAP's text encoder, and its byte-level BPE tokenizer.

Re-derived from Hugging Face transformers' ``RobertaModel`` and slow ``RobertaTokenizer``
(Apache-2.0; read in 4.57), whose key names (``embeddings.word_embeddings``,
``encoder.layer.N.attention.self.query``, ``pooler.dense``, ...) load here under CLAP's
``text_branch.`` prefix.

Encoder (roberta-base: 12 layers, width 768, 12 heads, FFN 3072, exact GELU, LayerNorm
eps 1e-5, post-norm): word + token-type (type 0) + position embeddings, then LayerNorm;
position ids count the non-padding tokens from ``pad_token_id + 1`` = 2 and give padding
tokens ``pad_token_id`` itself, as Hugging Face's ``create_position_ids_from_input_ids``.
Attention ignores padded keys. CLAP reads the pooler output: ``tanh(dense(h[:, 0]))``.

Tokenizer (GPT-2's scheme): the literal special tokens (``<s>``, ``</s>``, ``<pad>``,
``<unk>``, ``<mask>``, which also swallows the whitespace before it) are split out first;
the rest is cut by GPT-2's regular expression (contractions, optional space + letters,
optional space + digits, optional space + other symbols, whitespace runs), each piece's
UTF-8 bytes are mapped to printable characters (`clipsonic.tokenizer.byte_symbols`, the same
map) and merged by the BPE ranks of ``merges.txt``; symbols missing from ``vocab.json``
become ``<unk>``. No lower-casing, no Unicode normalisation. A text becomes
``<s> ids </s>``, cut to the context (77 for CLAP, the end token kept), right-padded with
``<pad>``; its attention mask marks the real tokens.

No package on PyPI ships roberta-base's ``vocab.json`` (50 265 entries) and ``merges.txt``
(50 000 merges): they come from huggingface.co/roberta-base and are read from a folder.
"""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from clipsonic.config import Config
from clipsonic.errors import ClipsonicError
from clipsonic.nn import LayerNorm
from clipsonic.tokenizer import byte_symbols, merge_pairs

VOCAB_FILE = "vocab.json"
MERGES_FILE = "merges.txt"
TOKENIZER_SOURCE = "huggingface.co/roberta-base"
START, END, PAD, UNKNOWN, MASK = "<s>", "</s>", "<pad>", "<unk>", "<mask>"
SPECIAL_TOKENS = (START, END, PAD, UNKNOWN, MASK)
PIECE_PATTERN = r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""


@dataclasses.dataclass(frozen=True)
class RobertaConfig(Config):
    """The text encoder's sizes, named as in Hugging Face's config. Defaults: roberta-base."""

    vocab_size: int = 50265
    hidden_size: int = 768
    num_hidden_layers: int = 12
    num_attention_heads: int = 12
    intermediate_size: int = 3072
    max_position_embeddings: int = 514
    type_vocab_size: int = 1
    layer_norm_eps: float = 1e-5
    pad_token_id: int = 1

    PRESETS = {
        "roberta-base": {},
        "tiny": {"vocab_size": 1000, "hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2,
                 "intermediate_size": 64, "max_position_embeddings": 80},
    }

    def __post_init__(self) -> None:
        if self.hidden_size % self.num_attention_heads:
            raise ValueError(f"hidden_size {self.hidden_size} is not divisible by {self.num_attention_heads} heads")


# ---------------------------------------------------------------- encoder


class Embeddings(nn.Module):
    def __init__(self, config: RobertaConfig) -> None:
        super().__init__()
        self.pad_token_id = config.pad_token_id
        self.word_embeddings = nn.Embedding(config.vocab_size, config.hidden_size)
        self.position_embeddings = nn.Embedding(config.max_position_embeddings, config.hidden_size)
        self.token_type_embeddings = nn.Embedding(config.type_vocab_size, config.hidden_size)
        self.LayerNorm = LayerNorm(config.hidden_size, eps=config.layer_norm_eps)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        """Token ids [B, L] -> [B, L, W]."""
        real = ids.ne(self.pad_token_id).long()
        positions = torch.cumsum(real, dim=1) * real + self.pad_token_id
        x = self.word_embeddings(ids) + self.token_type_embeddings.weight[0]
        return self.LayerNorm(x + self.position_embeddings(positions))


class SelfAttention(nn.Module):
    def __init__(self, width: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.query = nn.Linear(width, width)
        self.key = nn.Linear(width, width)
        self.value = nn.Linear(width, width)

    def forward(self, x: torch.Tensor, keys_kept: torch.Tensor) -> torch.Tensor:
        """`x` [B, L, W], `keys_kept` bool [B, 1, 1, L] -> [B, L, W]."""
        batch, length, width = x.shape

        def heads(t: torch.Tensor) -> torch.Tensor:
            return t.view(batch, length, self.heads, -1).transpose(1, 2)  # B L W -> B H L D

        out = F.scaled_dot_product_attention(heads(self.query(x)), heads(self.key(x)), heads(self.value(x)),
                                             attn_mask=keys_kept)
        return out.transpose(1, 2).reshape(batch, length, width)  # B H L D -> B L W


class ResidualOutput(nn.Module):
    """Hugging Face's ``*Output`` modules: ``LayerNorm(dense(x) + residual)``."""

    def __init__(self, width_in: int, width: int, eps: float) -> None:
        super().__init__()
        self.dense = nn.Linear(width_in, width)
        self.LayerNorm = LayerNorm(width, eps=eps)

    def forward(self, x: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
        return self.LayerNorm(self.dense(x) + residual)


class Attention(nn.Module):
    def __init__(self, config: RobertaConfig) -> None:
        super().__init__()
        self.self = SelfAttention(config.hidden_size, config.num_attention_heads)  # the key name is "self"
        self.output = ResidualOutput(config.hidden_size, config.hidden_size, config.layer_norm_eps)

    def forward(self, x: torch.Tensor, keys_kept: torch.Tensor) -> torch.Tensor:
        return self.output(self.self(x, keys_kept), x)


class Intermediate(nn.Module):
    def __init__(self, config: RobertaConfig) -> None:
        super().__init__()
        self.dense = nn.Linear(config.hidden_size, config.intermediate_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.gelu(self.dense(x))


class Layer(nn.Module):
    def __init__(self, config: RobertaConfig) -> None:
        super().__init__()
        self.attention = Attention(config)
        self.intermediate = Intermediate(config)
        self.output = ResidualOutput(config.intermediate_size, config.hidden_size, config.layer_norm_eps)

    def forward(self, x: torch.Tensor, keys_kept: torch.Tensor) -> torch.Tensor:
        x = self.attention(x, keys_kept)
        return self.output(self.intermediate(x), x)


class Encoder(nn.Module):
    def __init__(self, config: RobertaConfig) -> None:
        super().__init__()
        self.layer = nn.ModuleList(Layer(config) for _ in range(config.num_hidden_layers))

    def forward(self, x: torch.Tensor, keys_kept: torch.Tensor) -> torch.Tensor:
        for layer in self.layer:
            x = layer(x, keys_kept)
        return x


class Pooler(nn.Module):
    def __init__(self, config: RobertaConfig) -> None:
        super().__init__()
        self.dense = nn.Linear(config.hidden_size, config.hidden_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.tanh(self.dense(x[:, 0]))


class RobertaModel(nn.Module):
    """`forward` maps token ids and their attention mask [B, L] to the pooler output [B, W]."""

    def __init__(self, config: RobertaConfig) -> None:
        super().__init__()
        self.config = config
        self.embeddings = Embeddings(config)
        self.encoder = Encoder(config)
        self.pooler = Pooler(config)

    def forward(self, ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        if ids.dim() != 2 or ids.shape != attention_mask.shape:
            raise ValueError(f"expected ids and attention_mask [B, L], got {tuple(ids.shape)} and "
                             f"{tuple(attention_mask.shape)}")
        # Padding sits at the end and no real token attends to it, so dropping the columns that
        # are padding in every row changes no output at the first position, and saves the work.
        length = max(int(attention_mask.sum(dim=1).max()), 1)
        ids, attention_mask = ids[:, :length], attention_mask[:, :length]
        keys_kept = attention_mask.bool()[:, None, None, :]  # [B, 1, 1, L], broadcast over heads and queries
        return self.pooler(self.encoder(self.embeddings(ids), keys_kept))


# ---------------------------------------------------------------- tokenizer


class RobertaTokenizer:
    """Hugging Face's slow ``RobertaTokenizer`` (defaults: no prefix space) from a vocabulary and merges."""

    def __init__(self, vocab: dict[str, int], merges: list[tuple[str, str]]) -> None:
        import regex

        missing = [token for token in SPECIAL_TOKENS if token not in vocab]
        if missing:
            raise ClipsonicError(f"the RoBERTa vocabulary has no {', '.join(missing)}")
        self.vocab = vocab
        self.ranks = {pair: rank for rank, pair in enumerate(merges)}
        self.byte_to_symbol = byte_symbols()
        self.pattern = regex.compile(PIECE_PATTERN)
        self.special_pattern = regex.compile("(" + "|".join(regex.escape(token) for token in SPECIAL_TOKENS) + ")")
        self.start_id, self.end_id, self.pad_id = vocab[START], vocab[END], vocab[PAD]
        self.unknown_id = vocab[UNKNOWN]
        self._cache: dict[str, list[str]] = {}

    @classmethod
    def from_dir(cls, folder: str | os.PathLike) -> RobertaTokenizer:
        """Read ``vocab.json`` and ``merges.txt`` from `folder`; a missing file is a ClipsonicError
        that says where the files come from."""
        folder = Path(folder)
        for name in (VOCAB_FILE, MERGES_FILE):
            if not (folder / name).is_file():
                raise ClipsonicError(f"{folder}: no {name}: the RoBERTa tokenizer needs roberta-base's {VOCAB_FILE} "
                                     f"and {MERGES_FILE} from {TOKENIZER_SOURCE} in this folder (pass tokenizer_dir)")
        try:
            vocab = json.loads((folder / VOCAB_FILE).read_text(encoding="utf-8"))
        except json.JSONDecodeError as error:
            raise ClipsonicError(f"{folder / VOCAB_FILE}: not valid JSON ({error})") from None
        if not isinstance(vocab, dict) or not all(isinstance(index, int) for index in vocab.values()):
            raise ClipsonicError(f"{folder / VOCAB_FILE}: not a token -> id mapping")
        # Hugging Face skips the first line ("#version: 0.2") and the last element of the split,
        # the empty string after the final newline (so a file without one loses its last merge).
        lines = (folder / MERGES_FILE).read_text(encoding="utf-8").split("\n")[1:-1]
        merges = [tuple(line.split()) for line in lines]
        return cls(vocab, merges)

    @property
    def max_id(self) -> int:
        return max(self.vocab.values())

    def bpe(self, piece: str) -> list[str]:
        """Merge the symbols of one byte-mapped piece, lowest-ranked adjacent pair first."""
        cached = self._cache.get(piece)
        if cached is not None:
            return cached
        word = merge_pairs(list(piece), self.ranks)
        self._cache[piece] = word
        return word

    def encode(self, text: str) -> list[int]:
        """Token ids of `text`, without the start and end tokens."""
        parts = self.special_pattern.split(text)  # odd indices are special tokens
        for index in range(1, len(parts), 2):
            if parts[index] == MASK:  # <mask> is declared lstrip: it takes the whitespace before it
                parts[index - 1] = parts[index - 1].rstrip()
        ids: list[int] = []
        for index, part in enumerate(parts):
            if index % 2:
                ids.append(self.vocab[part])
                continue
            for piece in self.pattern.findall(part):
                mapped = "".join(self.byte_to_symbol[byte] for byte in piece.encode("utf-8"))
                ids.extend(self.vocab.get(symbol, self.unknown_id) for symbol in self.bpe(mapped))
        return ids

    def __call__(self, texts: list[str], context_length: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Token ids and attention masks, both int64 [B, context_length], as Hugging Face's
        ``tokenizer(texts, padding="max_length", truncation=True, max_length=context_length)``."""
        if isinstance(texts, str):
            raise TypeError("expected a list of texts, got one string")
        ids = torch.full((len(texts), context_length), self.pad_id, dtype=torch.long)
        mask = torch.zeros(len(texts), context_length, dtype=torch.long)
        for row, text in enumerate(texts):
            tokens = [self.start_id, *self.encode(text)[:context_length - 2], self.end_id]
            ids[row, :len(tokens)] = torch.tensor(tokens)
            mask[row, :len(tokens)] = 1
        return ids, mask
