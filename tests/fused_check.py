"""Run by test_attention.py in a fresh interpreter with TRITON_INTERPRET=1: the Crysformer
with and without the fused kernel on padded random crystals; prints the relative errors."""

import json
import sys
from unittest import mock

import torch
from test_attention import random_crystals, randomise_norm, relative_error

from dao_core import fused_attention
from dao_core.model import Crysformer, CrysformerConfig

preset, n, b = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
torch.manual_seed(0)
net = Crysformer(CrysformerConfig.preset(preset)).eval()
randomise_norm(net, 0)
x = random_crystals(5, torch.float32, b=b, n=n)
calls = mock.Mock(wraps=fused_attention.attention_messages)
with torch.no_grad():
    with mock.patch.object(fused_attention, "enabled", return_value=False):
        ref = net(**x)
    with mock.patch.object(fused_attention, "attention_messages", calls):
        out = net(**x)
print(
    json.dumps(
        {
            "used_kernel": calls.call_count == net.cfg.layers,
            "relative": [relative_error(got, want) for got, want in zip(out, ref, strict=True)],
            "padding_silent": bool(torch.all(out.coord[3, 2:] == 0)),
        }
    )
)
