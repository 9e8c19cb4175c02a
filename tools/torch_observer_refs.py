#!/usr/bin/python3
"""Reference ranges and qparams from PyTorch's observers, for edgeq's observer tests.

Needs torch 1.13 and numpy (Debian's python3-torch works; the `python3` on PATH may lack torch):

    /usr/bin/python3 tools/torch_observer_refs.py [--out DIR]

For each case, fixed deterministic float32 batches (numpy, seeded) are fed batch by batch to
torch.ao.quantization.observer.MinMaxObserver and HistogramObserver (bins=2048 and
upsample_rate=128 but in one case, the case's dtype / qscheme / reduce_range), and the range
each observer decides plus calculate_qparams()'s scale and zero point are recorded.

Two HistogramObserver flavours are recorded:
  histogram          1.13's HistogramObserver with one change: forward() passes the float
                     min/max to torch.histc instead of int(min_val)/int(max_val). The int()
                     truncation is a 1.13 bug (values outside [int(min), int(max)] are dropped
                     from the histogram and the bins are then read as if they spanned
                     [min, max]); PyTorch 2.x removed it. edgeq's default mirrors this flavour.
  histogramTorch113  1.13's HistogramObserver exactly as shipped (int() truncation included).
                     edgeq's `legacyTorch113IntBounds` option mirrors this one.
For each flavour the final running histogram is written too (hist_<case>_<flavour>.npy, float32)
with its min_val/max_val, so the histogram combining can be checked on its own.

Outputs (in --out, default test/fixtures/observers under the repo root):
  <case>_<k>.npy     float32 batch k of the case (1-D)
  hist_*.npy         final torch histograms (float32 [bins])
  torch_refs.json    case name -> batches, options, expected {min,max,scale,zeroPoint} per observer
"""

import argparse
import json
import os
import warnings

import numpy as np
import torch
from torch.ao.quantization.observer import HistogramObserver, MinMaxObserver

warnings.filterwarnings("ignore")  # reduce_range deprecation chatter


class FloatBoundsHistogramObserver(HistogramObserver):
    """HistogramObserver 1.13 with forward()'s int() casts of the histc bounds removed."""

    def forward(self, x_orig: torch.Tensor) -> torch.Tensor:
        if x_orig.numel() == 0:
            return x_orig
        x = x_orig.detach()
        min_val = self.min_val
        max_val = self.max_val
        same_values = min_val.item() == max_val.item()
        is_uninitialized = min_val == float("inf") and max_val == float("-inf")
        if is_uninitialized or same_values:
            min_val, max_val = torch.aminmax(x)
            self.min_val.resize_(min_val.shape)
            self.min_val.copy_(min_val)
            self.max_val.resize_(max_val.shape)
            self.max_val.copy_(max_val)
            torch.histc(x, self.bins, min=min_val.item(), max=max_val.item(), out=self.histogram)
        else:
            new_min, new_max = torch.aminmax(x)
            combined_min = torch.min(new_min, min_val)
            combined_max = torch.max(new_max, max_val)
            (combined_min, combined_max, downsample_rate, start_idx) = self._adjust_min_max(
                combined_min, combined_max, self.upsample_rate
            )
            combined_histogram = torch.histc(
                x, self.bins, min=combined_min.item(), max=combined_max.item()
            )
            if combined_min == min_val and combined_max == max_val:
                combined_histogram += self.histogram
            else:
                combined_histogram = self._combine_histograms(
                    combined_histogram, self.histogram, self.upsample_rate,
                    downsample_rate, start_idx, self.bins,
                )
            self.histogram.detach_().resize_(combined_histogram.shape)
            self.histogram.copy_(combined_histogram)
            self.min_val.detach_().resize_(combined_min.shape)
            self.min_val.copy_(combined_min)
            self.max_val.detach_().resize_(combined_max.shape)
            self.max_val.copy_(combined_max)
        return x_orig


def f32(a):
    return np.ascontiguousarray(a, dtype=np.float32)


def make_cases():
    rng = np.random.default_rng(20261127)
    cases = {}

    def add(name, description, batches, dtype="uint8", symmetric=False, reduce_range=False,
            bins=2048, upsample_rate=128):
        cases[name] = dict(description=description, batches=[f32(b) for b in batches],
                           dtype=dtype, symmetric=symmetric, reduce_range=reduce_range,
                           bins=bins, upsample_rate=upsample_rate)

    add("normal", "N(0.2, 1.3^2), 2 batches of 4096",
        [rng.normal(0.2, 1.3, 4096) for _ in range(2)])

    heavy = [0.5 * rng.standard_t(2.0, 4096) for _ in range(3)]
    heavy[1][17] = 40.0
    heavy[2][1234] = -25.0
    add("heavy_tailed", "0.5 * Student-t(2) plus single outliers 40 and -25, 3 batches of 4096", heavy)

    add("relu", "max(0, N(0.5, 1.2^2)): post-ReLU, many exact zeros, 3 batches of 4096",
        [np.maximum(0.0, rng.normal(0.5, 1.2, 4096)) for _ in range(3)])

    add("relu_small", "max(0, N(0.2, 0.4^2)): post-ReLU with max ~1.7 (where 1.13's int() bounds bite), "
        "2 batches of 4096", [np.maximum(0.0, rng.normal(0.2, 0.4, 4096)) for _ in range(2)])

    add("growing", "6 batches of 2048, N(0.1k, (0.5*1.6^k)^2): the range grows every batch, "
        "so the histograms are combined", [rng.normal(0.1 * k, 0.5 * 1.6 ** k, 2048) for k in range(6)])

    add("shrinking", "N(0, 3^2) then 3 x N(0, 1): later batches inside the first range, 4096 each",
        [rng.normal(0.0, 3.0, 4096)] + [rng.normal(0.0, 1.0, 4096) for _ in range(3)])

    add("constant", "2 batches of 2048 values all 0.75", [np.full(2048, 0.75) for _ in range(2)])

    add("constant_then_normal", "a constant batch (all -0.5) then 2 x N(0, 1): torch discards "
        "the histogram while min == max", [np.full(2048, -0.5)] + [rng.normal(0.0, 1.0, 2048) for _ in range(2)])

    add("tiny_range", "0.5 + 1e-4 * N(0, 1), 2 batches of 4096",
        [0.5 + 1e-4 * rng.normal(0.0, 1.0, 4096) for _ in range(2)])

    add("reduce_range", "N(-0.3, 2^2), 2 batches of 4096, quint8 with reduce_range (0..127)",
        [rng.normal(-0.3, 2.0, 4096) for _ in range(2)], reduce_range=True)

    add("int8_symmetric", "0.8 * Student-t(4) - 0.2, 2 batches of 4096, qint8 per_tensor_symmetric",
        [0.8 * rng.standard_t(4.0, 4096) - 0.2 for _ in range(2)], dtype="int8", symmetric=True)

    add("uint8_symmetric", "N(0.4, 1), 2 batches of 4096, quint8 per_tensor_symmetric (zero point 128)",
        [rng.normal(0.4, 1.0, 4096) for _ in range(2)], symmetric=True)

    add("custom_bins", "bins=1000, upsample_rate=100 (not powers of two), 4 batches of 3000 with a "
        "drifting range", [rng.normal(0.5 * k, 1.0 + 0.3 * k, 3000) for k in range(4)],
        bins=1000, upsample_rate=100)

    return cases


def run_observer(obs, batches):
    for b in batches:
        obs(torch.from_numpy(b))
    return obs


def qparams_of(obs):
    scale, zp = obs.calculate_qparams()
    return float(scale.reshape(-1)[0].item()), int(zp.reshape(-1)[0].item())


def main():
    here = os.path.dirname(os.path.abspath(__file__))
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default=os.path.join(here, "..", "test", "fixtures", "observers"))
    args = ap.parse_args()
    os.makedirs(args.out, exist_ok=True)
    torch.set_num_threads(1)

    refs = {
        "generator": "tools/torch_observer_refs.py",
        "torch": torch.__version__,
        "numpy": np.__version__,
        "cases": {},
    }
    for name, c in make_cases().items():
        files = []
        for k, b in enumerate(c["batches"]):
            fn = f"{name}_{k}.npy"
            np.save(os.path.join(args.out, fn), b)
            files.append(fn)
        tdtype = torch.qint8 if c["dtype"] == "int8" else torch.quint8
        qscheme = torch.per_tensor_symmetric if c["symmetric"] else torch.per_tensor_affine
        kw = dict(dtype=tdtype, qscheme=qscheme, reduce_range=c["reduce_range"])
        entry = {
            "description": c["description"],
            "batches": files,
            "options": {"dtype": c["dtype"], "symmetric": c["symmetric"], "reduceRange": c["reduce_range"],
                        "bins": c["bins"], "upsampleRate": c["upsample_rate"]},
        }
        mm = run_observer(MinMaxObserver(**kw), c["batches"])
        scale, zp = qparams_of(mm)
        entry["minmax"] = {"min": mm.min_val.item(), "max": mm.max_val.item(), "scale": scale, "zeroPoint": zp}
        for key, cls in (("histogram", FloatBoundsHistogramObserver), ("histogramTorch113", HistogramObserver)):
            ho = run_observer(cls(bins=c["bins"], upsample_rate=c["upsample_rate"], **kw), c["batches"])
            new_min, new_max = ho._non_linear_param_search()
            scale, zp = qparams_of(ho)
            hfn = f"hist_{name}_{key}.npy"
            np.save(os.path.join(args.out, hfn), f32(ho.histogram.numpy()))
            entry[key] = {
                "min": new_min.item(), "max": new_max.item(), "scale": scale, "zeroPoint": zp,
                "histMin": ho.min_val.item(), "histMax": ho.max_val.item(), "histogramFile": hfn,
                "histogramTotal": float(ho.histogram.sum().item()),
            }
        refs["cases"][name] = entry
        print(f"{name:22s} minmax [{entry['minmax']['min']:.6g}, {entry['minmax']['max']:.6g}]  "
              f"hist [{entry['histogram']['min']:.6g}, {entry['histogram']['max']:.6g}]  "
              f"hist1.13 [{entry['histogramTorch113']['min']:.6g}, {entry['histogramTorch113']['max']:.6g}]")
    with open(os.path.join(args.out, "torch_refs.json"), "w") as f:
        json.dump(refs, f, indent=1, sort_keys=False)
        f.write("\n")


if __name__ == "__main__":
    main()
