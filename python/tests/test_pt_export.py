"""Deploying what was trained: an evaluation forward without targets is the
threshold as ATen ops (no custom op in the graph), so a model exports with
``torch.export`` (saved, loaded and run in a fresh process, by a build of the
package that need not be this one) and with ``torch.onnx.export(...,
dynamo=True)`` (run by onnxruntime); the custom ops that stay in training
graphs have stable names (``aiec::...``); and ``torch.compile`` of a
multi-layer published-style model traces the masked gather as an op of
data-dependent size. Before: ONNX export failed (``ConversionError``, and the
TorchScript exporter ``UnsupportedOperatorError ... aiec_af858301f0ea::threshold``)
and exported programs named a digest of the build."""

from __future__ import annotations

import copy
import os
import subprocess
import sys

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from aiec import _ops
from aiec.torch import AIEC, AIECFused


class Vit(nn.Module):
    """A small ViT-style classifier: patch embedding, blocks of attention and an
    MLP whose activation is ``act``, a class-token head."""

    def __init__(self, make, d=16, hidden=32, classes=5, depth=2):
        super().__init__()
        self.embed = nn.Linear(12, d)
        self.cls = nn.Parameter(torch.zeros(1, 1, d))
        self.attn = nn.ModuleList([nn.MultiheadAttention(d, 2, batch_first=True) for _ in range(depth)])
        self.fc1 = nn.ModuleList([nn.Linear(d, hidden) for _ in range(depth)])
        self.act = nn.ModuleList([make(hidden, classes) for _ in range(depth)])
        self.fc2 = nn.ModuleList([nn.Linear(hidden, d) for _ in range(depth)])
        self.head = nn.Linear(d, classes)

    def forward(self, x):
        h = torch.cat([self.cls.expand(x.shape[0], -1, -1), self.embed(x)], 1)
        for attn, fc1, act, fc2 in zip(self.attn, self.fc1, self.act, self.fc2):
            h = h + attn(h, h, h, need_weights=False)[0]
            h = h + fc2(act(fc1(h)))
        return self.head(h[:, 0])


def trained(make, steps=3):
    """A model trained a few steps through the AIEC modules (so that tau, W and
    the counters are a trained model's), then put in eval mode."""
    torch.manual_seed(0)
    model = Vit(make)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    g = torch.Generator().manual_seed(1)
    for _ in range(steps):
        x, t = torch.randn(6, 4, 12, generator=g), torch.randint(0, 5, (6,), generator=g)
        h = torch.cat([model.cls.expand(6, -1, -1), model.embed(x)], 1)
        logits = []
        for attn, fc1, act, fc2 in zip(model.attn, model.fc1, model.act, model.fc2):
            h = h + attn(h, h, h, need_weights=False)[0]
            y = act(fc1(h), t, logits, []) if isinstance(act, AIEC) else act(fc1(h), t)
            h = h + fc2(y)
        loss = F.cross_entropy(model.head(h[:, 0]), t)
        loss = loss + sum(F.cross_entropy(z, t) for z in logits) if logits else loss
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model.eval()


MAKERS = {
    "AIEC": lambda c, k: AIEC(c, k, tau=0.05, global_pool="token", update_interval=1),
    "AIECFused": lambda c, k: AIECFused(c, k, tau=0.05, global_pool="token", update_interval=1),
}


def custom_ops(graph_module):
    return sorted(
        {str(n.target) for n in graph_module.graph.nodes if n.op == "call_function" and "aiec" in str(n.target)}
    )


@pytest.mark.parametrize("kind", sorted(MAKERS))
def test_the_eval_forward_has_no_custom_op_and_matches_the_training_kernels(use_backend, kind):
    use_backend("reference")
    model = trained(MAKERS[kind])
    x = torch.randn(3, 4, 12)
    ep = torch.export.export(model, (x,))
    assert custom_ops(ep.graph_module) == [], "an eval forward without targets needs no custom op"
    # The ATen threshold gives what the kernels give: the training-mode op on the same input.
    h = torch.randn(3, 5, 32) * 0.1
    h[0, 0, :4] = torch.tensor([0.05, float("nan"), -0.0, 0.0500001])
    y_op, _ = _ops.threshold(h, 0.05, "token", 32)
    assert torch.equal(_ops.threshold_aten(h, 0.05).isnan(), y_op.isnan())
    assert torch.equal(torch.nan_to_num(_ops.threshold_aten(h, 0.05)), torch.nan_to_num(y_op))
    for half in (torch.float16, torch.bfloat16):
        hh = h.to(half)
        assert torch.equal(
            torch.nan_to_num(_ops.threshold_aten(hh, 0.3)),
            torch.nan_to_num(hh.float().where(hh.float() > 0.3, 0).to(half)),
        )


@pytest.mark.parametrize("kind", sorted(MAKERS))
def test_torch_export_saved_and_loaded_in_a_fresh_process(use_backend, kind, tmp_path):
    use_backend("reference")
    model = trained(MAKERS[kind])
    x = torch.randn(3, 4, 12)
    want = model(x)
    path = tmp_path / "model.pt2"
    torch.export.save(torch.export.export(model, (x,)), str(path))
    torch.save(x, tmp_path / "x.pt")
    child = (
        "import sys, torch\n"
        "ep = torch.export.load(sys.argv[1])\n"
        "y = ep.module()(torch.load(sys.argv[2]))\n"
        "torch.save(y, sys.argv[3])\n"
        "assert 'aiec' not in sys.modules, 'loading the program imported aiec'\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", child, str(path), str(tmp_path / "x.pt"), str(tmp_path / "y.pt")],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=str(tmp_path),
    )
    assert out.returncode == 0, out.stderr[-3000:]
    assert torch.equal(torch.load(tmp_path / "y.pt"), want)


@pytest.mark.parametrize("kind", sorted(MAKERS))
def test_onnx_export_runs_in_onnxruntime(use_backend, kind, tmp_path):
    ort = pytest.importorskip("onnxruntime", reason="onnxruntime is installed by scripts/test-python.sh")
    pytest.importorskip("onnxscript")
    use_backend("reference")
    model = trained(MAKERS[kind])
    x = torch.randn(3, 4, 12)
    want = model(x)
    path = tmp_path / "model.onnx"
    torch.onnx.export(model, (x,), str(path), dynamo=True)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (got,) = session.run(None, {session.get_inputs()[0].name: x.numpy()})
    assert torch.allclose(torch.from_numpy(got), want, rtol=1e-4, atol=1e-5), (got, want)


def test_the_ops_have_stable_names():
    """Exported training graphs name ``aiec::...``, the same for every build."""
    assert _ops.NAMESPACE == "aiec"
    for op in ("threshold", "activation", "activation_backward", "fused_count", "fused_gate", "fused_backward"):
        assert hasattr(torch.ops.aiec, op), op
    tag = torch.compiler.config.cache_key_tag
    assert f"aiec-{_ops.BUILD}" in tag.split(","), tag


def test_a_multi_layer_published_style_model_compiles_as_one_graph(use_backend):
    """The masked gather is a custom op of data-dependent size: with dynamo's
    ``capture_dynamic_output_shape_ops`` the whole 4-layer model is one graph
    (the published ``values[masks]`` breaks the graph at every layer), and the
    compiled forward gives eager's values, counters and masked values."""
    use_backend("reference")
    from torch._dynamo.utils import counters

    class Net(nn.Module):
        def __init__(self, depth=4):
            super().__init__()
            self.fc = nn.ModuleList([nn.Linear(8, 8) for _ in range(depth)])
            self.act = nn.ModuleList([AIEC(8, 3, global_pool="token", update_interval=1) for _ in range(depth)])
            self.head = nn.Linear(8, 3)

        def forward(self, x, t):
            logits, values = [], []
            for fc, act in zip(self.fc, self.act):
                x = x + act(fc(x), t, logits, values)
            return self.head(x[:, 0]), logits, values

    torch.manual_seed(3)
    eager = Net()
    compiled_model = copy.deepcopy(eager)
    x, t = torch.randn(6, 3, 8), torch.randint(0, 3, (6,))
    torch._dynamo.reset()
    counters.clear()
    with torch._dynamo.config.patch(capture_dynamic_output_shape_ops=True):
        got = torch.compile(compiled_model, backend="aot_eager")(x, t)
    assert sum(counters["graph_break"].values()) == 0, dict(counters["graph_break"])
    assert counters["stats"]["unique_graphs"] == 1
    want = eager(x, t)
    assert torch.equal(got[0], want[0])
    for a, b in zip(got[2], want[2]):
        assert torch.equal(a, b)
    for a, b in zip(compiled_model.act, eager.act):
        assert torch.equal(a.counters.activation_counts, b.counters.activation_counts)
    assert sum(v.numel() for v in want[2]) > 0, "nothing masked: the gather is not tested"
    if os.environ.get("AIEC_SHOW_BREAKS"):
        print(dict(counters["graph_break"]))
