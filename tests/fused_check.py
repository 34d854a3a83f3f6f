"""Run by test_attention.py in a fresh interpreter with TRITON_INTERPRET=1: the Crysformer
with and without the fused kernel on padded random crystals (``compile``: the kernel inside a
``torch.compile`` graph); prints the relative errors and the kernel launches."""

import json
import sys
from unittest import mock

import torch
from test_attention import random_crystals, randomise_norm, relative_error

from dao_core import fused_attention
from dao_core.model import Crysformer, CrysformerConfig

preset, n, b = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
compiled = sys.argv[4:] == ["compile"]
torch.manual_seed(0)
net = Crysformer(CrysformerConfig.preset(preset)).eval()
randomise_norm(net, 0)
x = random_crystals(5, torch.float32, b=b, n=n)
launches = []


class CountingKernel:
    """The kernel, counting its launches (looked up by the operator at run time)."""

    def __getitem__(self, grid: tuple):
        launches.append(grid)
        return kernel[grid]


kernel = fused_attention._attention_kernel
with torch.no_grad():
    with mock.patch.object(fused_attention, "enabled", return_value=False):
        ref = net(*x)
    with mock.patch.object(fused_attention, "_attention_kernel", CountingKernel()):
        out = (torch.compile(net, fullgraph=True) if compiled else net)(*x)
print(
    json.dumps(
        {
            "used_kernel": len(launches) == net.cfg.layers,
            "relative": [relative_error(got, want) for got, want in zip(out, ref, strict=True)],
            "padding_silent": bool(torch.all(out.coord[3, 2:] == 0)),
        }
    )
)
