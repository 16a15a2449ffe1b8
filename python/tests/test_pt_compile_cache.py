"""TorchInductor's on-disk cache against a changed build of the package.

Inductor keys a compiled graph on the graph's code, which names each custom op
but not the output sizes its fake implementation gives (PyTorch issue 160472):
a cache written by an older build would be reused with that build's sizes, and
the compiled code's size asserts then fail (the keep bits went from contiguous
to row-padded words that way). ``aiec._ops`` therefore adds a digest of the
file that holds the fakes (``_ops.BUILD``) to ``torch.compiler.config.
cache_key_tag``, which every compile cache puts in its keys, and the op names
stay stable (``aiec::...``). Checked here in fresh processes sharing one cache
directory: the same build hits, a build whose ``_ops.py`` differs misses."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import aiec

CHILD = r"""
import json, sys
import torch
from torch._dynamo.utils import counters
import aiec, aiec._ops
from aiec.torch import AIEC

torch.manual_seed(0)
model = torch.nn.Sequential(torch.nn.Linear(6, 8), AIEC(8, num_classes=3))
y = torch.compile(model, fullgraph=True)(torch.randn(2, 4, 6))
y.sum().backward()
print(json.dumps({
    "package": aiec.__file__,
    "build": aiec._ops.BUILD,
    "namespace": aiec._ops.NAMESPACE,
    "counters": {k: dict(counters[k]) for k in ("inductor", "aot_autograd")},
}))
"""


def run_child(cache, path=None):
    env = dict(os.environ, TORCHINDUCTOR_CACHE_DIR=str(cache), AIEC_TORCH_BACKEND="reference")
    env.pop("TORCHINDUCTOR_FORCE_DISABLE_CACHES", None)
    if path is not None:
        env["PYTHONPATH"] = str(path)
    out = subprocess.run([sys.executable, "-c", CHILD], env=env, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-4000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


def hits(r):
    c = r["counters"]
    return c["inductor"].get("fxgraph_cache_hit", 0) + c["aot_autograd"].get("autograd_cache_hit", 0)


def test_a_changed_build_misses_the_inductor_cache_the_same_build_hits(tmp_path):
    cache = tmp_path / "inductor-cache"
    first = run_child(cache)
    assert hits(first) == 0 and first["counters"]["inductor"].get("fxgraph_cache_miss", 0) > 0, first
    again = run_child(cache)
    assert again["build"] == first["build"]
    assert hits(again) > 0, f"the same build should reuse the cache: {again}"

    # Another build: the installed package with one line more in _ops.py.
    changed = tmp_path / "changed"
    shutil.copytree(os.path.dirname(aiec.__file__), changed / "aiec")
    with open(changed / "aiec" / "_ops.py", "a") as f:
        f.write("# another build\n")
    other = run_child(cache, changed)
    assert other["package"].startswith(str(changed)), other
    assert other["build"] != first["build"] and other["namespace"] == first["namespace"] == "aiec"
    assert hits(other) == 0, f"a changed build must not reuse the cache: {other}"
