"""parallel_reason.wrappers: one unwrap helper for DDP/DeepSpeed/FSDP, torch.compile and PEFT."""

from __future__ import annotations

import torch

from parallel_reason.wrappers import is_peft, unwrap_model


class Inner(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = torch.nn.Linear(2, 2)

    def forward(self, x):
        return self.lin(x)


class DDPLike(torch.nn.Module):
    def __init__(self, module):
        super().__init__()
        self.module = module


class PeftLike:
    """Duck-typed PEFT wrapper (get_base_model), not a peft.PeftModel."""

    def __init__(self, base):
        self.base = base

    def get_base_model(self):
        return self.base


def test_unwrap_ddp_and_compile():
    inner = Inner()
    assert unwrap_model(inner) is inner
    assert unwrap_model(DDPLike(DDPLike(inner))) is inner
    compiled = torch.compile(inner)
    assert unwrap_model(DDPLike(compiled)) is inner


def test_peft_kept_unless_asked():
    inner = Inner()
    wrapped = DDPLike(PeftLike(inner))
    assert isinstance(unwrap_model(wrapped), PeftLike)
    assert unwrap_model(wrapped, peft=True) is inner
    assert not is_peft(inner) and not is_peft(PeftLike(inner))
