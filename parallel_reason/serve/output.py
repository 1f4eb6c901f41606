"""Response bodies: choices, log-probs and usage in the OpenAI shapes."""

from __future__ import annotations

from ..layout import Run, critical_path_count, sampled_count
from .engine import linear_entries

#: the runner's finish reasons as OpenAI's (the runner's own is in ``choice.parallel``)
_FINISH = {
    "eos": "stop",
    "stop": "stop",
    "max_new_tokens": "length",
    "unclosed_thread": "length",
    "max_thread_tokens": "length",
}


def finish_reason_of(reason: str | None) -> str | None:
    """OpenAI finish reason of a runner finish reason (guards that end a malformed
    trajectory count as ``stop``)."""
    return None if reason is None else _FINISH.get(reason, "stop")


def logprob_of(box, k: int) -> float | None:
    """Model log-prob of a sampled token (None for runner-written tokens)."""
    if box is None:
        return None
    logprobs = box.logprobs if isinstance(box, Run) else box.head_logprobs
    return None if logprobs is None else float(logprobs[k])


class ChoiceOutput:
    """Builds the choices of one job (request) from its finished rollouts."""

    def __init__(self, runner, job, req, chat: bool):
        self.tok = runner.tokenizer
        self.eos = self.tok.eos_token_id
        self.job = job
        self.req = req
        self.chat = chat
        self.want_lp = bool(req.logprobs) if chat else req.logprobs is not None
        self.as_ids = req.return_tokens_as_token_ids

    def text(self, ids) -> str:
        return self.tok.decode([t for t in ids if t != self.eos], skip_special_tokens=False)

    def piece(self, t: int) -> str:
        if self.as_ids:
            return f"token_id:{t}"
        return "" if t == self.eos else self.tok.decode([t], skip_special_tokens=False)

    def final(self, ro) -> tuple[str, list]:
        """Final text and entries of a finished rollout (cut at its stop string)."""
        entries: list = []
        linear_entries(ro.items, entries, stable=False)
        text = self.text([e[0] for e in entries])
        cut = ro.track.cut
        if cut is not None:
            text = text[:cut]
            n, size = 0, 0
            while n < len(entries) and size < cut:
                size += len(self.text([entries[n][0]]))
                n += 1
            entries = entries[:n]
        return text, entries

    def logprobs(self, ro, entries, offset: int = 0):
        """The ``logprobs`` field for ``entries`` (None when not requested)."""
        if not self.want_lp:
            return None
        tops = ro.track.tops
        if self.chat:
            content = []
            for t, box, k in entries:
                s = self.piece(t)
                alts = tops.get((id(box), k), []) if box is not None else []
                content.append(
                    {
                        "token": s,
                        "logprob": logprob_of(box, k),
                        "bytes": list(s.encode()),
                        "top_logprobs": [
                            {"token": self.piece(a), "logprob": v, "bytes": list(self.piece(a).encode())}
                            for a, v in alts
                        ],
                    }
                )
            return {"content": content}
        toks, lps, top, offs = [], [], [], []
        for t, box, k in entries:
            s = self.piece(t)
            toks.append(s)
            lps.append(logprob_of(box, k))
            alts = tops.get((id(box), k)) if box is not None else None
            top.append({self.piece(a): v for a, v in alts} if alts else None)
            offs.append(offset)
            offset += len(s)
        return {"tokens": toks, "token_logprobs": lps, "top_logprobs": top, "text_offset": offs}

    def extras(self, ro, entries) -> dict:
        """Our fields of a choice: the runner's finish reason and the token counts."""
        out = {
            "stop_reason": ro.track.stop_reason,
            "parallel": {
                "finish_reason": ro.finish_reason,
                "detail": ro.detail,
                "sampled_tokens": sampled_count(ro.items),
                "critical_path": critical_path_count(ro.items),
                "forks": ro.forks,
            },
        }
        if self.req.return_token_ids:
            out["token_ids"] = [e[0] for e in entries]
            out["prompt_token_ids"] = list(ro.prompt_ids)
        return out

    def choice(self, ro) -> dict:
        """A non-streamed choice."""
        text, entries = self.final(ro)
        fr = finish_reason_of(ro.finish_reason)
        i = ro.track.index
        lp = self.logprobs(ro, entries)
        if self.chat:
            body = {"index": i, "message": {"role": "assistant", "content": text}, "logprobs": lp, "finish_reason": fr}
        else:
            body = {"index": i, "text": text, "logprobs": lp, "finish_reason": fr}
        return body | self.extras(ro, entries)


def usage_of(job, out: ChoiceOutput) -> dict:
    """OpenAI usage plus the sampled tokens and the critical path (summed over choices)."""
    prompt = sum(len(row.prompt_ctx.tokens) for row in job.rows)
    completion = sampled = critical = 0
    for ro in job.rollouts:
        entries: list = []
        linear_entries(ro.items, entries, stable=False)
        completion += len(entries)
        sampled += sampled_count(ro.items)
        critical += critical_path_count(ro.items)
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
        "sampled_tokens": sampled,
        "critical_path": critical,
    }
