#!/usr/bin/env python3
"""Side-by-side table of one GPU run: aiec (examples/bench.rs --json), PyTorch
eager and torch.compile (python/benchmarks/bench_eager.py --json), and the memory
floor (the two activation passes' minimal bytes / the copy bandwidth measured
in the aiec run).

    python3 scripts/compare_bench.py AIEC.json TORCH.json
"""
import json
import sys


def main(aiec_path, torch_path):
    aiec = json.load(open(aiec_path))
    torch = json.load(open(torch_path))
    steps = {(r["preset"], r["dtype"]): r for r in aiec
             if r.get("impl") == "aiec" and r.get("backend", "").startswith("cuda")}
    passes = {(r["preset"], r["dtype"]): r for r in aiec
              if r.get("impl") == "aiec-pass" and r.get("backend", "").startswith("cuda")}
    ref = {(r["preset"], r["dtype"], r["impl"]): r for r in torch.get("results", [])}
    if not steps:
        print("no CUDA rows in", aiec_path)
        return 1
    hdr = (f"{'preset':<13}{'dtype':<6}{'aiec ms':>9}{'eager ms':>10}{'compile ms':>11}{'floor ms':>10}"
           f"{'eager/aiec':>11}{'compile/aiec':>13}{'floor/aiec':>11}{'fwd_x %copy':>12}{'bwd_x %copy':>12}")
    print(hdr)
    print("-" * len(hdr))
    for (preset, dtype), r in steps.items():
        floor = r["min_bytes"] / (r["copy_GBps"] * 1e9) * 1e3
        eager = ref.get((preset, dtype, "eager"), {}).get("step_ms")
        comp = ref.get((preset, dtype, "compile"), {}).get("step_ms")
        p = passes.get((preset, dtype), {})

        def ms(v):
            return f"{v:.3f}" if v else "-"

        def ratio(a, b):
            return f"{a / b:.2f}x" if a and b else "-"

        fx = f"{100 * p['fwd_x_GBps'] / p['copy_GBps']:.0f}%" if p else "-"
        bx = f"{100 * p['bwd_x_GBps'] / p['copy_GBps']:.0f}%" if p else "-"
        print(f"{preset:<13}{dtype:<6}{ms(r['step_ms']):>9}{ms(eager):>10}{ms(comp):>11}{ms(floor):>10}"
              f"{ratio(eager, r['step_ms']):>11}{ratio(comp, r['step_ms']):>13}"
              f"{100 * floor / r['step_ms']:>10.0f}%{fx:>12}{bx:>12}")
    print(f"copy bandwidth: aiec run {next(iter(steps.values()))['copy_GBps']:.0f} GB/s, "
          f"torch run {torch.get('copy_GBps', 0):.0f} GB/s ({torch.get('torch', '?')} on {torch.get('device', '?')})")
    return 0


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:3]))
