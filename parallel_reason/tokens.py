"""Control tokens: add the grammar's tags to a Hugging Face tokenizer as single
tokens and give their new embedding rows a sensible start.

The tags are added as *normal* added tokens (``special=False``): TRL and most
decoding code call ``decode(..., skip_special_tokens=True)``, which would silently
drop tags registered as special tokens and destroy the structure of a completion.
"""

from __future__ import annotations

import logging

import torch

from .format import ALL_TAGS, CONTROL_TAGS

log = logging.getLogger(__name__)


def _name_ids(tokenizer, tag: str) -> list[int]:
    """Ids of the tag's text tokenized as ordinary text, e.g. ``</Thread>`` as
    ``"</" + "Thread" + ">"``; works whether or not the tag is already a token."""
    inner = tag.strip("<>")
    pieces = ["</" if inner.startswith("/") else "<", inner.lstrip("/"), ">"]
    ids: list[int] = []
    for piece in pieces:
        ids.extend(tokenizer(piece, add_special_tokens=False)["input_ids"])
    return ids


def missing_tags(tokenizer, tags: tuple[str, ...] = CONTROL_TAGS) -> list[str]:
    """Tags (default: the required ones) that are not yet a single token of ``tokenizer``."""
    vocab = tokenizer.get_vocab()
    return [t for t in tags if t not in vocab]


def add_control_tokens(tokenizer, model=None, pad_to_multiple_of: int = 64) -> list[str]:
    """Add the control tags (and the optional ``<Result>``) to ``tokenizer`` and, if ``model`` is given, resize its
    embeddings (rounded up to ``pad_to_multiple_of`` rows) and initialise each new
    tag row (input embeddings and, when untied, output embeddings) as the mean
    embedding of the tag's name tokenized as text.

    Idempotent: a second call adds no token and changes no weight. Returns the tags
    that were added to the tokenizer by this call.
    """
    from transformers import AddedToken

    # name ids are computed before the tags exist, but _name_ids works either way
    name_ids = {tag: _name_ids(tokenizer, tag) for tag in ALL_TAGS}
    added = missing_tags(tokenizer, ALL_TAGS)
    if added:
        tokenizer.add_tokens(
            [
                AddedToken(t, special=False, normalized=False, single_word=False, lstrip=False, rstrip=False)
                for t in added
            ]
        )
        still = missing_tags(tokenizer, ALL_TAGS)
        if still:
            raise RuntimeError(f"tokenizer did not accept {still} as single tokens")
    if model is not None:
        resize_and_init(tokenizer, model, name_ids, pad_to_multiple_of)
    return added


def resize_and_init(
    tokenizer, model, name_ids: dict[str, list[int]] | None = None, pad_to_multiple_of: int = 64
) -> None:
    """Grow the model's embeddings to fit the tokenizer and initialise the rows of
    tags that were not covered by the old embedding matrix."""
    if name_ids is None:
        name_ids = {tag: _name_ids(tokenizer, tag) for tag in ALL_TAGS if tag in tokenizer.get_vocab()}
    emb = model.get_input_embeddings()
    old_rows = emb.weight.shape[0]
    need = len(tokenizer)
    if need <= old_rows:
        return  # already fits: nothing to do (idempotence)
    model.resize_token_embeddings(need, pad_to_multiple_of=pad_to_multiple_of)
    new_in = model.get_input_embeddings().weight
    out_emb = model.get_output_embeddings()
    tied = out_emb is None or out_emb.weight.data_ptr() == new_in.data_ptr()
    with torch.no_grad():
        for tag, ids in name_ids.items():
            tid = tokenizer.convert_tokens_to_ids(tag)
            if tid < old_rows:
                continue  # row existed before: keep the trained weights
            src = [i for i in ids if i < old_rows]
            if not src:
                log.warning("no pre-existing token to initialise %s from; keeping resize default", tag)
                continue
            new_in[tid] = new_in[src].mean(dim=0)
            if not tied:
                out_emb.weight[tid] = out_emb.weight[src].mean(dim=0)


def tag_token_ids(tokenizer) -> dict[str, int]:
    """tag -> token id, the optional tags included when the tokenizer has them; raises
    if a required tag is not a single token."""
    miss = missing_tags(tokenizer)
    if miss:
        raise ValueError(f"tokenizer lacks control tokens {miss}; call add_control_tokens first")
    vocab = tokenizer.get_vocab()
    return {t: int(vocab[t]) for t in ALL_TAGS if t in vocab}


def load_tokenizer(name_or_path: str, **kwargs):
    """``AutoTokenizer.from_pretrained`` that keeps the saved text pipeline.

    transformers 5 builds some architectures' tokenizers (Qwen2 among them) from the
    vocabulary and merges with the architecture's own pre-tokenizer, ignoring the
    one in ``tokenizer.json``. For a tokenizer trained with another pre-tokenizer
    (our tiny ones keep whole numbers together, for example) that silently changes
    how text is split. When a local ``tokenizer.json`` is there, its pre-tokenizer,
    normalizer and decoder are put back."""
    from pathlib import Path

    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(name_or_path, **kwargs)
    saved = Path(str(name_or_path)) / "tokenizer.json"
    backend = getattr(tok, "backend_tokenizer", None)
    if backend is None or not saved.is_file():
        return tok
    from tokenizers import Tokenizer

    ref = Tokenizer.from_file(str(saved))
    for part in ("pre_tokenizer", "normalizer", "decoder"):
        want = getattr(ref, part)
        if str(getattr(backend, part)) != str(want):
            log.info("%s: restoring the saved %s (the tokenizer class rebuilt a different one)", saved, part)
            setattr(backend, part, want)
    return tok
