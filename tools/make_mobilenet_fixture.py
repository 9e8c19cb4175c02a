#!/usr/bin/python3
"""Make the Fashion-MNIST MobileNetV2-style fixture for edgeq.

A second fixture next to test/fixtures/fmnist (tools/make_fixtures.py): a small
MobileNetV2-style network (inverted residual blocks: 1x1 expand + BN + ReLU6,
3x3 depthwise + BN + ReLU6, 1x1 project + BN, residual Add when the shapes
match), trained deterministically on CPU on Fashion-MNIST and exported to ONNX
opset 13 with the BatchNormalization nodes kept. Depthwise convs have few
weights per output channel and very different ranges between channels, the
classic case where per-tensor int8 weights lose accuracy, so this model is
meant to show the difference between per-tensor and per-channel weights and
between calibration methods.

The calibration and test images are the ones of test/fixtures/fmnist (same
selection, same normalization); the script recomputes them, checks that they
are identical to the .npy files there and does not write copies.

    /usr/bin/python3 tools/make_mobilenet_fixture.py [--data-dir DIR] [--out DIR]

Outputs (in --out, default test/fixtures/fmnist-mobilenet under the repo root):
  model.onnx        fp32 model, input `input` [N,1,28,28], output `logits` [N,10]
  torch_ptq.json    fp32 top-1 on ../fmnist/test.npy, onnxruntime check, PyTorch
                    eager PTQ int8 top-1 per engine, op counts, data file hashes
"""

import argparse
import copy
import hashlib
import json
import os
import sys
import time

import numpy as np
import torch
import torch.nn as nn

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import make_fixtures as mf  # noqa: E402
from make_fixtures import (  # noqa: E402
    DEFAULT_DATA_DIR,
    REPO_ROOT,
    conv_bn,
    describe_observer,
    export_onnx,
    load_split,
    normalize,
    predict,
    run_ort,
    top1,
)

DATA_DIR_REL = os.path.join("test", "fixtures", "fmnist")  # calib.npy, test.npy, test_labels.npy
DEFAULT_OUT = os.path.join(REPO_ROOT, "test", "fixtures", "fmnist-mobilenet")

SEED = 20240602
EPOCHS = 2
BATCH = 128
LR = 5e-3
PCT_START = 0.2
EXPAND = 4
# (cin, cout, stride) per inverted residual block; residual Add where stride 1 and cin == cout
BLOCKS = [(16, 16, 1), (16, 24, 2), (24, 24, 1), (24, 32, 2), (32, 32, 1)]
HEAD = 64


# ----------------------------------------------------------------------------
# model (one class for the float model and the quantizable copy, as in make_fixtures.Net)


def relu6(act, x, quantizable):
    # torch 1.13 bug: with the qnnpack engine, quantized ReLU6 (qnnpack clamp) on a channels_last
    # tensor, which is what qnnpack's quantized conv returns, gives scrambled values (the result
    # collapses to 10% top-1). On NCHW-contiguous input it is correct, so the quantizable copy
    # makes the input contiguous first; numerically a no-op.
    return act(x.contiguous() if quantizable else x)


class InvertedResidual(nn.Module):
    def __init__(self, cin, cout, stride, expand, quantizable):
        super().__init__()
        hidden = cin * expand
        self.expand_conv, self.expand_bn = conv_bn(cin, hidden, 1, 1)
        self.expand_act = nn.ReLU6()
        self.dw_conv = nn.Conv2d(hidden, hidden, 3, stride=stride, padding=1, groups=hidden, bias=False)
        self.dw_bn = nn.BatchNorm2d(hidden)
        self.dw_act = nn.ReLU6()
        self.project_conv, self.project_bn = conv_bn(hidden, cout, 1, 1)
        self.residual = stride == 1 and cin == cout
        self.quantizable = quantizable
        if quantizable and self.residual:
            self.skip_add = nn.quantized.FloatFunctional()

    def forward(self, x):
        q = self.quantizable
        out = relu6(self.expand_act, self.expand_bn(self.expand_conv(x)), q)
        out = relu6(self.dw_act, self.dw_bn(self.dw_conv(out)), q)
        out = self.project_bn(self.project_conv(out))
        if not self.residual:
            return out
        return self.skip_add.add(out, x) if self.quantizable else out + x

    def fuse_groups(self):
        # eager-mode fusion knows conv+bn(+ReLU) but not ReLU6: ReLU6 stays a separate module
        return [["expand_conv", "expand_bn"], ["dw_conv", "dw_bn"], ["project_conv", "project_bn"]]


class MobileNet(nn.Module):
    def __init__(self, quantizable=False):
        super().__init__()
        self.quantizable = quantizable
        if quantizable:
            self.quant = torch.ao.quantization.QuantStub()
            self.dequant = torch.ao.quantization.DeQuantStub()
        self.stem_conv, self.stem_bn = conv_bn(1, BLOCKS[0][0], 3, 1)
        self.stem_act = nn.ReLU6()
        self.blocks = nn.Sequential(*[InvertedResidual(ci, co, s, EXPAND, quantizable) for ci, co, s in BLOCKS])
        self.head_conv, self.head_bn = conv_bn(BLOCKS[-1][1], HEAD, 1, 1)
        self.head_act = nn.ReLU6()
        self.gap = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten()
        self.fc = nn.Linear(HEAD, 10)

    def forward(self, x):
        if self.quantizable:
            x = self.quant(x)
        x = relu6(self.stem_act, self.stem_bn(self.stem_conv(x)), self.quantizable)
        x = self.blocks(x)
        x = relu6(self.head_act, self.head_bn(self.head_conv(x)), self.quantizable)
        x = self.fc(self.flatten(self.gap(x)))
        if self.quantizable:
            x = self.dequant(x)
        return x

    def fuse(self):
        fuse = torch.ao.quantization.fuse_modules
        fuse(self, [["stem_conv", "stem_bn"], ["head_conv", "head_bn"]], inplace=True)
        for block in self.blocks:
            fuse(block, block.fuse_groups(), inplace=True)


# ----------------------------------------------------------------------------
# train (make_fixtures.train reads its module's EPOCHS/LR; this one uses ours)


# ----------------------------------------------------------------------------
# PyTorch eager PTQ (make_fixtures.torch_ptq builds its own Net)


def torch_ptq(float_model, engine, calib, test_x, test_y, fp32_pred, qc=None):
    torch.backends.quantized.engine = engine
    qmodel = MobileNet(quantizable=True)
    qmodel.load_state_dict(copy.deepcopy(float_model.state_dict()), strict=True)
    qmodel.eval()
    qmodel.fuse()
    qc = qc or torch.ao.quantization.get_default_qconfig(engine)
    qmodel.qconfig = qc
    torch.ao.quantization.prepare(qmodel, inplace=True)
    with torch.no_grad():
        for i in range(0, calib.shape[0], 100):
            qmodel(calib[i : i + 100])
    torch.ao.quantization.convert(qmodel, inplace=True)
    logits = predict(qmodel, test_x)
    return {
        "top1": round(top1(logits, test_y), 4),
        "agreement_with_fp32": round(float((logits.argmax(1) == fp32_pred).float().mean().item()), 4),
        "qconfig": {"activation": describe_observer(qc.activation()), "weight": describe_observer(qc.weight())},
    }


# ----------------------------------------------------------------------------
# data: the calib/test images of test/fixtures/fmnist, recomputed and compared


def shared_data(data_dir, train_u8, train_y, test_u8, test_y):
    """Load ../fmnist's .npy files and check they are what make_fixtures.main would make from data_dir."""
    rng = np.random.default_rng(mf.CALIB_SEED)  # same selection as make_fixtures.main
    calib_idx = np.concatenate(
        [rng.choice(np.flatnonzero(train_y == c), mf.N_CALIB_PER_CLASS, replace=False) for c in range(10)]
    )
    calib_idx = calib_idx[rng.permutation(calib_idx.size)]
    expected = {
        "calib.npy": normalize(train_u8[calib_idx]),
        "test.npy": normalize(test_u8[: mf.N_TEST]),
        "test_labels.npy": test_y[: mf.N_TEST].astype(np.int64),
    }
    out, files = {}, {}
    for name, want in expected.items():
        path = os.path.join(REPO_ROOT, DATA_DIR_REL, name)
        got = np.load(path)
        if got.dtype != want.dtype or got.shape != want.shape or not np.array_equal(got, want):
            raise SystemExit(f"{path} differs from the images recomputed from {data_dir}: re-run tools/make_fixtures.py")
        with open(path, "rb") as f:
            sha = hashlib.sha256(f.read()).hexdigest()
        files[name] = {"path": f"{DATA_DIR_REL}/{name}", "shape": list(got.shape), "dtype": str(got.dtype), "sha256": sha}
        out[name] = got
    with open(os.path.join(REPO_ROOT, DATA_DIR_REL, "torch_ptq.json")) as f:
        norm = json.load(f)["normalization"]
    if (norm["mean"], norm["std"]) != (mf.MEAN, mf.STD):
        raise SystemExit(f"{DATA_DIR_REL}/torch_ptq.json normalization {norm} is not mean {mf.MEAN} std {mf.STD}")
    return out, files


def check_clips(model_path):
    """Every Clip must be ReLU6: min 0 and max 6 from Constant nodes. Returns the number of Clips."""
    import onnx
    from onnx import numpy_helper

    m = onnx.load(model_path)
    consts = {n.output[0]: numpy_helper.to_array(n.attribute[0].t) for n in m.graph.node if n.op_type == "Constant"}
    consts.update({t.name: numpy_helper.to_array(t) for t in m.graph.initializer})
    clips = [n for n in m.graph.node if n.op_type == "Clip"]
    for n in clips:
        bounds = [float(consts[i]) if i in consts else None for i in n.input[1:3]]
        if bounds != [0.0, 6.0]:
            raise RuntimeError(f"Clip {n.name} has bounds {bounds}, expected [0.0, 6.0]")
    return len(clips)


# ----------------------------------------------------------------------------


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data-dir", default=DEFAULT_DATA_DIR, help="folder with the Fashion-MNIST IDX .gz files")
    ap.add_argument("--out", default=DEFAULT_OUT, help="output folder (default: test/fixtures/fmnist-mobilenet)")
    ap.add_argument("--skip-ort-check", action="store_true", help="do not compare with onnxruntime-node")
    args = ap.parse_args()

    def log(msg):
        print(msg, flush=True)

    mf.deterministic(SEED)
    os.makedirs(args.out, exist_ok=True)

    train_u8, train_y = load_split(args.data_dir, "train")
    test_u8, test_y = load_split(args.data_dir, "t10k")
    data, data_files = shared_data(args.data_dir, train_u8, train_y, test_u8, test_y)
    log(f"calib/test images: identical to {DATA_DIR_REL}/*.npy")

    model = MobileNet()
    n_params = sum(p.numel() for p in model.parameters())
    log(f"{n_params} parameters")
    t0 = time.time()
    torch.set_flush_denormal(True)
    mf.train(model, torch.from_numpy(normalize(train_u8)), torch.from_numpy(train_y), log, seed=SEED, epochs=EPOCHS, batch=BATCH, lr=LR, pct_start=PCT_START)
    torch.set_flush_denormal(False)
    train_seconds = time.time() - t0
    model.eval()

    test_x = torch.from_numpy(data["test.npy"])
    test_t = torch.from_numpy(data["test_labels.npy"])
    calib_x = torch.from_numpy(data["calib.npy"])
    fp32_logits = predict(model, test_x)
    fp32_pred = fp32_logits.argmax(1)
    fp32_top1 = top1(fp32_logits, test_t)
    full_top1 = top1(predict(model, torch.from_numpy(normalize(test_u8))), torch.from_numpy(test_y))
    log(f"fp32 top-1: {fp32_top1:.4f} on the first {mf.N_TEST} test images, {full_top1:.4f} on all 10000")

    model_path = os.path.join(args.out, "model.onnx")
    op_counts = export_onnx(model, model_path)
    n_clips = check_clips(model_path)
    log(f"{n_clips} Clip nodes, all Clip(min 0, max 6)")

    ort_result = None
    if not args.skip_ort_check:
        ort_logits = run_ort(model_path, data["test.npy"], log)
        if ort_logits is not None:
            diff = float(np.abs(ort_logits - fp32_logits.numpy()).max())
            ort_top1 = float((ort_logits.argmax(1) == data["test_labels.npy"]).mean())
            log(f"onnxruntime vs torch: max abs logit diff {diff:.3g}, ORT top-1 {ort_top1:.4f}")
            if not diff < 1e-4:
                raise SystemExit(f"ONNX model disagrees with torch: max abs diff {diff} >= 1e-4")
            ort_result = {"max_abs_logit_diff_vs_torch": float(f"{diff:.3g}"), "fp32_top1": round(ort_top1, 4)}

    engines = [e for e in ("qnnpack", "onednn", "x86", "fbgemm") if e in torch.backends.quantized.supported_engines]
    ptq = {}
    for engine in engines:
        ptq[engine] = torch_ptq(model, engine, calib_x, test_x, test_t, fp32_pred)
        log(f"torch PTQ [{engine}]: int8 top-1 {ptq[engine]['top1']:.4f}, agreement {ptq[engine]['agreement_with_fp32']:.4f}")
    # onednn's kernels with qnnpack's qconfig (per-tensor weights): the weight granularity
    # alone, without the difference between the two engines' kernels
    variants = {}
    if "onednn" in engines:
        qc = torch.ao.quantization.QConfig(
            activation=torch.ao.quantization.get_default_qconfig("onednn").activation,
            weight=torch.ao.quantization.MinMaxObserver.with_args(dtype=torch.qint8, qscheme=torch.per_tensor_symmetric),
        )
        r = variants["onednn_per_tensor_weights"] = torch_ptq(model, "onednn", calib_x, test_x, test_t, fp32_pred, qc)
        log(f"torch PTQ [onednn, per-tensor weights]: int8 top-1 {r['top1']:.4f}, agreement {r['agreement_with_fp32']:.4f}")

    report = {
        "dataset": "Fashion-MNIST",
        "data_files": data_files,
        "normalization": {"mean": mf.MEAN, "std": mf.STD, "formula": "(pixel/255 - mean) / std"},
        "test_images": f"first {mf.N_TEST} of t10k ({DATA_DIR_REL}/test.npy)",
        "calib_images": f"{DATA_DIR_REL}/calib.npy: {mf.N_CALIB_PER_CLASS * 10} train images, "
        f"{mf.N_CALIB_PER_CLASS} per class (numpy default_rng({mf.CALIB_SEED}))",
        "fp32_top1": round(fp32_top1, 4),
        "fp32_top1_full_t10k": round(full_top1, 4),
        "onnxruntime": ort_result,
        "torch_ptq": {
            "method": "eager mode: fuse_modules conv+bn (ReLU6 not fusible, stays nn.ReLU6 -> quantized ReLU6) -> "
            "prepare -> calibrate on calib.npy -> convert; residual add via FloatFunctional.add; "
            "default qconfig per engine; the quantizable copy makes ReLU6 inputs contiguous "
            "(torch 1.13 qnnpack quantized ReLU6 is wrong on channels_last tensors)",
            "engines": ptq,
            "variants": variants,
        },
        "onnx_op_counts": op_counts,
        "parameters": n_params,
        "network": {"stem": f"Conv3x3(1->{BLOCKS[0][0]})+BN+ReLU6", "expand": EXPAND,
                    "blocks_cin_cout_stride": BLOCKS, "head": f"Conv1x1({BLOCKS[-1][1]}->{HEAD})+BN+ReLU6, GAP, Linear({HEAD}->10)"},
        "training": {
            "epochs": EPOCHS,
            "batch": BATCH,
            "optimizer": f"Adam, OneCycleLR max_lr={LR} pct_start={PCT_START}",
            "seed": SEED,
            "threads": 2,
        },
        "versions": {"torch": torch.__version__, "opset": mf.OPSET},
    }
    with open(os.path.join(args.out, "torch_ptq.json"), "w") as f:
        json.dump(report, f, indent=2)
        f.write("\n")

    log("")
    log(f"wrote {args.out}:")
    for name in ("model.onnx", "torch_ptq.json"):
        log(f"  {name:16s} {os.path.getsize(os.path.join(args.out, name)):>9d} bytes")
    log(f"ONNX ops: {', '.join(f'{k} {v}' for k, v in op_counts.items())}")
    log(f"training {train_seconds:.0f}s; fp32 top-1 {fp32_top1:.4f}; "
        + "; ".join(f"{e} int8 {r['top1']:.4f}" for e, r in ptq.items()))


if __name__ == "__main__":
    sys.exit(main())
