#!/usr/bin/python3
"""Export the ResNet-18 benchmark model for edgeq (not committed: bench/models/ is git-ignored).

torchvision resnet18(weights=None) with fixed-seed random weights. Every
BatchNorm also gets fixed-seed random statistics and affine parameters
(running_mean ~ N(0, 0.1), running_var ~ U(0.5, 1.5), weight ~ U(0.5, 1.5),
bias ~ N(0, 0.1)) so that BN is not the identity. No pretrained weights are
downloaded: the model is for latency/size/agreement benchmarks, not accuracy.

With random weights the pooled features share a large common component
(post-ReLU, all positive) and the random classifier then picks the same one or
two classes for every image, which makes fp32-vs-int8 agreement checks
meaningless. So the classifier bias is re-centred on the calibration images:
fc.bias -= fc.weight @ mean(pooled features of resnet18_calib.npy). The eval
images then spread over a few dozen classes ("distinct_predictions" in the
JSON). Everything stays deterministic.

    /usr/bin/python3 tools/export_resnet18.py [--data-dir DIR] [--out DIR]

Writes into --out (default bench/models under the repo root):
  resnet18.onnx         opset 13, input `input` [N,3,224,224], output `logits` [N,1000]
                        (default EVAL export: BatchNorm folded into Conv)
  resnet18_calib.npy    float32 [32,3,224,224]: Fashion-MNIST t10k images 0..31
  resnet18_eval.npy     float32 [64,3,224,224]: Fashion-MNIST t10k images 32..95
  resnet18_torch.json   torch fp32 top-1 class index per eval image ("predictions")
Images: pixel/255, bilinearly resized 28 -> 224 (align_corners=False), replicated
to 3 channels, ImageNet-normalized (mean 0.485,0.456,0.406; std 0.229,0.224,0.225).
"""

import argparse
import json
import os
import sys

import numpy as np
import torch
import torch.nn.functional as F
import torchvision

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from make_fixtures import DEFAULT_DATA_DIR, REPO_ROOT, read_idx, run_ort  # noqa: E402

DEFAULT_OUT = os.path.join(REPO_ROOT, "bench", "models")
OPSET = 13
N_CALIB = 32
N_EVAL = 64
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def build_model(calib):
    torch.manual_seed(0)
    model = torchvision.models.resnet18(weights=None)
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                c = m.num_features
                m.running_mean.copy_(torch.randn(c, generator=gen) * 0.1)
                m.running_var.copy_(torch.rand(c, generator=gen) + 0.5)
                m.weight.copy_(torch.rand(c, generator=gen) + 0.5)
                m.bias.copy_(torch.randn(c, generator=gen) * 0.1)
    model.eval()
    # re-centre the classifier on the calibration images' pooled features
    pooled = []
    hook = model.avgpool.register_forward_hook(lambda _m, _i, out: pooled.append(out.flatten(1)))
    with torch.no_grad():
        for i in range(0, calib.shape[0], 8):
            model(torch.from_numpy(calib[i : i + 8]))
        hook.remove()
        mean = torch.cat(pooled).mean(0)
        model.fc.bias.sub_(model.fc.weight @ mean)
    return model


def make_images(images_u8):
    """uint8 [N,28,28] -> float32 [N,3,224,224], ImageNet-normalized."""
    x = torch.from_numpy(images_u8.astype(np.float32) / np.float32(255.0))[:, None]
    x = F.interpolate(x, size=(224, 224), mode="bilinear", align_corners=False)
    x = x.repeat(1, 3, 1, 1)
    mean = torch.tensor(IMAGENET_MEAN, dtype=torch.float32).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD, dtype=torch.float32).view(1, 3, 1, 1)
    return np.ascontiguousarray(((x - mean) / std).numpy(), dtype=np.float32)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data-dir", default=DEFAULT_DATA_DIR, help="folder with the Fashion-MNIST IDX .gz files")
    ap.add_argument("--out", default=DEFAULT_OUT, help="output folder (default: bench/models)")
    ap.add_argument("--skip-ort-check", action="store_true", help="do not compare with onnxruntime-node")
    args = ap.parse_args()

    def log(msg):
        print(msg, flush=True)

    import onnx

    torch.set_num_threads(2)
    os.makedirs(args.out, exist_ok=True)

    images = read_idx(os.path.join(args.data_dir, "t10k-images-idx3-ubyte.gz"))
    calib = make_images(images[:N_CALIB])
    evalx = make_images(images[N_CALIB : N_CALIB + N_EVAL])

    model = build_model(calib)
    with torch.no_grad():
        logits = model(torch.from_numpy(evalx)).numpy()
    preds = [int(p) for p in logits.argmax(1)]

    model_path = os.path.join(args.out, "resnet18.onnx")
    torch.onnx.export(
        model,
        torch.zeros(1, 3, 224, 224),
        model_path,
        opset_version=OPSET,
        input_names=["input"],
        output_names=["logits"],
        dynamic_axes={"input": {0: "N"}, "logits": {0: "N"}},
    )
    m = onnx.load(model_path)
    onnx.checker.check_model(m, full_check=True)
    counts = {}
    for node in m.graph.node:
        counts[node.op_type] = counts.get(node.op_type, 0) + 1
    counts = dict(sorted(counts.items()))

    np.save(os.path.join(args.out, "resnet18_calib.npy"), calib)
    np.save(os.path.join(args.out, "resnet18_eval.npy"), evalx)

    ort = None
    if not args.skip_ort_check:
        ort_logits = run_ort(model_path, evalx, log)
        if ort_logits is not None:
            diff = float(np.abs(ort_logits - logits).max())
            scale = float(np.abs(logits).max())
            agree = float((ort_logits.argmax(1) == logits.argmax(1)).mean())
            log(f"onnxruntime vs torch: max abs logit diff {diff:.3g} (max |logit| {scale:.3g}), top-1 agreement {agree:.4f}")
            if not diff <= 1e-4 * max(1.0, scale):
                raise SystemExit(f"ONNX model disagrees with torch: max abs diff {diff}")
            ort = {"max_abs_logit_diff_vs_torch": float(f"{diff:.3g}"), "top1_agreement": agree}

    top2 = np.sort(logits, axis=1)[:, -2:]
    report = {
        "model": "torchvision resnet18(weights=None), torch.manual_seed(0); BN stats/affine random "
        "(generator seed 1); fc.bias re-centred on the calib images' pooled features",
        "eval_file": "resnet18_eval.npy",
        "eval_images": f"Fashion-MNIST t10k images {N_CALIB}..{N_CALIB + N_EVAL - 1}",
        "calib_images": f"Fashion-MNIST t10k images 0..{N_CALIB - 1}",
        "predictions": preds,
        "distinct_predictions": len(set(preds)),
        "min_top1_top2_logit_margin": float(f"{float((top2[:, 1] - top2[:, 0]).min()):.4g}"),
        "onnxruntime": ort,
        "onnx_op_counts": counts,
        "versions": {"torch": torch.__version__, "torchvision": torchvision.__version__, "opset": OPSET},
    }
    with open(os.path.join(args.out, "resnet18_torch.json"), "w") as f:
        json.dump(report, f, indent=2)
        f.write("\n")

    log(f"wrote {args.out}:")
    for name in ("resnet18.onnx", "resnet18_calib.npy", "resnet18_eval.npy", "resnet18_torch.json"):
        log(f"  {name:20s} {os.path.getsize(os.path.join(args.out, name)):>10d} bytes")
    log(f"ONNX ops: {', '.join(f'{k} {v}' for k, v in counts.items())}")
    log(f"{len(set(preds))} distinct predicted classes on {N_EVAL} eval images; logits range "
        f"[{logits.min():.3g}, {logits.max():.3g}]")


if __name__ == "__main__":
    sys.exit(main())
