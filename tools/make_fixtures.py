#!/usr/bin/python3
"""Make the Fashion-MNIST test fixtures for edgeq.

Trains (deterministically, on CPU) a small residual CNN with BatchNorm on
Fashion-MNIST, exports it to ONNX (opset 13, BatchNormalization nodes kept so
edgeq's BN-folding pass has something to fold), and writes calibration / test
tensors as .npy plus PyTorch's own eager-mode post-training static quantization
result of the same network, as a reference point for edgeq's int8 accuracy.

Needs torch (1.13), onnx and numpy; Debian's python3-torch works:

    /usr/bin/python3 tools/make_fixtures.py [--data-dir DIR] [--out DIR]

If `node` and the repo's node_modules/onnxruntime-node are present, the
exported model is run in onnxruntime and compared with torch (max abs logit
difference must stay below 1e-4); --skip-ort-check turns that off.

Outputs (in --out, default test/fixtures/fmnist under the repo root):
  model.onnx        fp32 model, input `input` [N,1,28,28], output `logits` [N,10]
  calib.npy         float32 [500,1,28,28], 50 train images per class (fixed seed)
  test.npy          float32 [1000,1,28,28], the first 1000 t10k images
  test_labels.npy   int64 [1000]
  torch_ptq.json    fp32 top-1 and PyTorch eager PTQ int8 top-1 per engine
Input normalization: x = (pixel / 255 - 0.2860) / 0.3530.
"""

import argparse
import copy
import gzip
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT_DATA_DIR = "/usr/share/datasets/fashion-mnist"
DEFAULT_OUT = os.path.join(REPO_ROOT, "test", "fixtures", "fmnist")

MEAN = 0.2860
STD = 0.3530
SEED = 20240601
CALIB_SEED = 7
EPOCHS = 3
BATCH = 128
LR = 5e-3
PCT_START = 0.2
N_CALIB_PER_CLASS = 50
N_TEST = 1000
OPSET = 13


# ----------------------------------------------------------------------------
# data


def read_idx(path):
    with gzip.open(path, "rb") as f:
        data = f.read()
    magic = int.from_bytes(data[0:4], "big")
    ndim = magic & 0xFF
    dtype_code = (magic >> 8) & 0xFF
    if dtype_code != 0x08:
        raise ValueError(f"{path}: expected unsigned byte IDX data, got type 0x{dtype_code:02x}")
    dims = [int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim)]
    arr = np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim)
    return arr.reshape(dims)


def normalize(images_u8):
    """uint8 [N,28,28] -> float32 [N,1,28,28], (pixel/255 - MEAN) / STD."""
    x = images_u8.astype(np.float32) / np.float32(255.0)
    x = (x - np.float32(MEAN)) / np.float32(STD)
    return np.ascontiguousarray(x[:, None, :, :], dtype=np.float32)


def load_split(data_dir, prefix):
    images = read_idx(os.path.join(data_dir, f"{prefix}-images-idx3-ubyte.gz"))
    labels = read_idx(os.path.join(data_dir, f"{prefix}-labels-idx1-ubyte.gz"))
    if images.shape[0] != labels.shape[0] or images.shape[1:] != (28, 28):
        raise ValueError(f"{data_dir}: unexpected shapes {images.shape} / {labels.shape}")
    return images, labels.astype(np.int64)


# ----------------------------------------------------------------------------
# model
#
# One class serves both the float model (trained and exported to ONNX) and the
# quantizable copy for PyTorch eager PTQ. With quantizable=True it adds
# QuantStub/DeQuantStub and does the residual add+ReLU through FloatFunctional;
# none of those carry parameters, so the same state_dict loads into both.


def conv_bn(cin, cout, k, stride):
    return (
        nn.Conv2d(cin, cout, k, stride=stride, padding=k // 2, bias=False),
        nn.BatchNorm2d(cout),
    )


class ResBlock(nn.Module):
    """conv3x3+BN+ReLU, conv3x3+BN, + shortcut (identity or 1x1 conv+BN), ReLU."""

    def __init__(self, cin, cout, stride, quantizable):
        super().__init__()
        self.conv1, self.bn1 = conv_bn(cin, cout, 3, stride)
        self.relu1 = nn.ReLU()
        self.conv2, self.bn2 = conv_bn(cout, cout, 3, 1)
        if stride != 1 or cin != cout:
            self.sc_conv, self.sc_bn = conv_bn(cin, cout, 1, stride)
        else:
            self.sc_conv, self.sc_bn = None, None
        self.quantizable = quantizable
        if quantizable:
            self.add_relu = nn.quantized.FloatFunctional()
        else:
            self.relu2 = nn.ReLU()

    def forward(self, x):
        out = self.relu1(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        identity = x if self.sc_conv is None else self.sc_bn(self.sc_conv(x))
        if self.quantizable:
            return self.add_relu.add_relu(out, identity)
        return self.relu2(out + identity)

    def fuse_groups(self):
        groups = [["conv1", "bn1", "relu1"], ["conv2", "bn2"]]
        if self.sc_conv is not None:
            groups.append(["sc_conv", "sc_bn"])
        return groups


class Net(nn.Module):
    def __init__(self, quantizable=False):
        super().__init__()
        self.quantizable = quantizable
        if quantizable:
            self.quant = torch.ao.quantization.QuantStub()
            self.dequant = torch.ao.quantization.DeQuantStub()
        self.stem_conv, self.stem_bn = conv_bn(1, 16, 3, 1)
        self.stem_relu = nn.ReLU()
        self.block1 = ResBlock(16, 16, 1, quantizable)  # 28x28
        self.block2 = ResBlock(16, 64, 2, quantizable)  # -> 14x14
        self.pool = nn.MaxPool2d(2)  # -> 7x7
        self.block3 = ResBlock(64, 64, 1, quantizable)
        self.gap = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten()
        self.fc = nn.Linear(64, 10)

    def forward(self, x):
        if self.quantizable:
            x = self.quant(x)
        x = self.stem_relu(self.stem_bn(self.stem_conv(x)))
        x = self.block1(x)
        x = self.block2(x)
        x = self.pool(x)
        x = self.block3(x)
        x = self.fc(self.flatten(self.gap(x)))
        if self.quantizable:
            x = self.dequant(x)
        return x

    def fuse(self):
        torch.ao.quantization.fuse_modules(self, [["stem_conv", "stem_bn", "stem_relu"]], inplace=True)
        for name in ("block1", "block2", "block3"):
            block = getattr(self, name)
            torch.ao.quantization.fuse_modules(block, block.fuse_groups(), inplace=True)


# ----------------------------------------------------------------------------
# train / eval


def train(model, x_train, y_train, log, seed=SEED, epochs=EPOCHS, batch=BATCH, lr=LR, pct_start=PCT_START):
    """Adam with a one-cycle schedule; shared by every fixture script (each passes its constants)."""
    gen = torch.Generator().manual_seed(seed + 1)
    n = x_train.shape[0]
    steps_per_epoch = (n + batch - 1) // batch
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    sched = torch.optim.lr_scheduler.OneCycleLR(
        opt, max_lr=lr, epochs=epochs, steps_per_epoch=steps_per_epoch, pct_start=pct_start
    )
    # channels_last is ~25% faster for these small convs on CPU (oneDNN)
    model.to(memory_format=torch.channels_last)
    for epoch in range(epochs):
        model.train()
        perm = torch.randperm(n, generator=gen)
        t0 = time.time()
        total_loss = 0.0
        correct = 0
        for i in range(steps_per_epoch):
            idx = perm[i * batch : (i + 1) * batch]
            xb = x_train[idx].contiguous(memory_format=torch.channels_last)
            yb = y_train[idx]
            logits = model(xb)
            loss = F.cross_entropy(logits, yb)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            total_loss += loss.item() * idx.numel()
            correct += (logits.argmax(1) == yb).sum().item()
        log(
            f"epoch {epoch + 1}/{epochs}: loss {total_loss / n:.4f}, "
            f"train acc {correct / n:.4f}, {time.time() - t0:.1f}s"
        )
    model.to(memory_format=torch.contiguous_format)


@torch.no_grad()
def predict(model, x, batch=500):
    model.eval()
    return torch.cat([model(x[i : i + batch]) for i in range(0, x.shape[0], batch)])


def top1(logits, labels):
    return float((logits.argmax(1) == labels).float().mean().item())


# ----------------------------------------------------------------------------
# ONNX


def inline_identity_initializers(m):
    """Replace `Identity(initializer)` nodes by a copy of the initializer.

    The exporter de-duplicates initializers with equal values and puts an
    Identity node in the graph for the second one. Here that happens to
    block2.bn2.bias and block2.sc_bn.bias: both start at 0 and, being summed
    before the ReLU, get the same gradient at every step, so they stay equal.
    The fixture is meant to be a plain Conv/BN/Relu/Add graph, so the Identity
    is undone. Returns True if the graph changed.
    """
    import onnx

    inits = {t.name: t for t in m.graph.initializer}
    keep = []
    changed = False
    for node in m.graph.node:
        if node.op_type == "Identity" and node.input[0] in inits:
            t = onnx.TensorProto()
            t.CopyFrom(inits[node.input[0]])
            t.name = node.output[0]
            m.graph.initializer.append(t)
            changed = True
        else:
            keep.append(node)
    if changed:
        del m.graph.node[:]
        m.graph.node.extend(keep)
    return changed


def export_onnx(model, path):
    import onnx

    model.eval()
    dummy = torch.zeros(2, 1, 28, 28)
    # PRESERVE + eval(): the graph is exported in inference mode, but without the
    # eval-mode peephole that folds BatchNormalization into Conv.
    torch.onnx.export(
        model,
        dummy,
        path,
        opset_version=OPSET,
        input_names=["input"],
        output_names=["logits"],
        dynamic_axes={"input": {0: "N"}, "logits": {0: "N"}},
        training=torch.onnx.TrainingMode.PRESERVE,
        do_constant_folding=False,
    )
    m = onnx.load(path)
    if inline_identity_initializers(m):
        onnx.save(m, path)
    onnx.checker.check_model(m, full_check=True)
    counts = {}
    for node in m.graph.node:
        counts[node.op_type] = counts.get(node.op_type, 0) + 1
    if counts.get("BatchNormalization", 0) == 0:
        raise RuntimeError("exported ONNX graph has no BatchNormalization nodes")
    for node in m.graph.node:
        if node.op_type == "BatchNormalization" and len(node.output) != 1:
            raise RuntimeError("BatchNormalization exported in training mode (extra outputs)")
    ins = [(i.name, [d.dim_param or d.dim_value for d in i.type.tensor_type.shape.dim]) for i in m.graph.input]
    outs = [(o.name, [d.dim_param or d.dim_value for d in o.type.tensor_type.shape.dim]) for o in m.graph.output]
    if ins != [("input", ["N", 1, 28, 28])] or outs != [("logits", ["N", 10])]:
        raise RuntimeError(f"unexpected graph signature: inputs {ins}, outputs {outs}")
    return dict(sorted(counts.items()))


ORT_RUN_JS = r"""
const fs = require('node:fs');
const ort = require(process.argv[1]);
const [modelPath, inPath, shape, outPath] = process.argv.slice(2);
(async () => {
  const buf = fs.readFileSync(inPath);
  const data = new Float32Array(buf.buffer, buf.byteOffset, buf.byteLength / 4);
  const session = await ort.InferenceSession.create(modelPath, {
    intraOpNumThreads: 2, interOpNumThreads: 1,
  });
  const dims = shape.split(',').map(Number);
  const out = await session.run({ [session.inputNames[0]]: new ort.Tensor('float32', data, dims) });
  const y = out[session.outputNames[0]];
  fs.writeFileSync(outPath, Buffer.from(y.data.buffer, y.data.byteOffset, y.data.byteLength));
  fs.writeFileSync(outPath + '.json', JSON.stringify(y.dims));
})().catch((e) => { console.error(e); process.exit(1); });
"""


def run_ort(model_path, x, log):
    """Run a one-input, one-output float32 ONNX model in the repo's onnxruntime-node.

    Returns the output as a numpy array, or None when node or
    node_modules/onnxruntime-node is not available.
    """
    node = shutil.which("node")
    ort_pkg = os.path.join(REPO_ROOT, "node_modules", "onnxruntime-node")
    if node is None or not os.path.isdir(ort_pkg):
        log("onnxruntime check skipped: node or node_modules/onnxruntime-node not found")
        return None
    with tempfile.TemporaryDirectory() as tmp:
        in_path = os.path.join(tmp, "in.f32")
        out_path = os.path.join(tmp, "out.f32")
        np.ascontiguousarray(x, dtype="<f4").tofile(in_path)
        shape = ",".join(str(d) for d in x.shape)
        subprocess.run(
            [node, "-e", ORT_RUN_JS, ort_pkg, os.path.abspath(model_path), in_path, shape, out_path],
            check=True,
            cwd=REPO_ROOT,
        )
        with open(out_path + ".json") as f:
            dims = json.load(f)
        return np.fromfile(out_path, dtype="<f4").reshape(dims)


# ----------------------------------------------------------------------------
# PyTorch eager post-training static quantization


def describe_observer(obs):
    return (
        f"{type(obs).__name__}(dtype={obs.dtype}, qscheme={obs.qscheme}, "
        f"reduce_range={obs.reduce_range}, quant_min={obs.quant_min}, quant_max={obs.quant_max})"
    )


def torch_ptq(float_model, engine, calib, test_x, test_y, fp32_pred):
    torch.backends.quantized.engine = engine
    qmodel = Net(quantizable=True)
    qmodel.load_state_dict(copy.deepcopy(float_model.state_dict()), strict=True)
    qmodel.eval()
    qmodel.fuse()
    qmodel.qconfig = torch.ao.quantization.get_default_qconfig(engine)
    torch.ao.quantization.prepare(qmodel, inplace=True)
    with torch.no_grad():
        for i in range(0, calib.shape[0], 100):
            qmodel(calib[i : i + 100])
    torch.ao.quantization.convert(qmodel, inplace=True)
    logits = predict(qmodel, test_x)
    pred = logits.argmax(1)
    qc = torch.ao.quantization.get_default_qconfig(engine)
    return {
        "top1": round(top1(logits, test_y), 4),
        "agreement_with_fp32": round(float((pred == fp32_pred).float().mean().item()), 4),
        "qconfig": {
            "activation": describe_observer(qc.activation()),
            "weight": describe_observer(qc.weight()),
        },
    }


# ----------------------------------------------------------------------------


def deterministic(seed):
    """Two threads, fixed seeds, deterministic kernels: fixture scripts give the same bytes on every run."""
    torch.set_num_threads(2)
    torch.manual_seed(seed)
    np.random.seed(seed)
    torch.use_deterministic_algorithms(True)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data-dir", default=DEFAULT_DATA_DIR, help="folder with the Fashion-MNIST IDX .gz files")
    ap.add_argument("--out", default=DEFAULT_OUT, help="output folder (default: test/fixtures/fmnist)")
    ap.add_argument("--skip-ort-check", action="store_true", help="do not compare with onnxruntime-node")
    args = ap.parse_args()

    def log(msg):
        print(msg, flush=True)

    deterministic(SEED)
    os.makedirs(args.out, exist_ok=True)

    train_u8, train_y = load_split(args.data_dir, "train")
    test_u8, test_y = load_split(args.data_dir, "t10k")
    x_train = torch.from_numpy(normalize(train_u8))
    y_train = torch.from_numpy(train_y)

    # calibration: 50 train images per class, fixed-seed choice, in a fixed shuffled order
    rng = np.random.default_rng(CALIB_SEED)
    calib_idx = np.concatenate(
        [rng.choice(np.flatnonzero(train_y == c), N_CALIB_PER_CLASS, replace=False) for c in range(10)]
    )
    calib_idx = calib_idx[rng.permutation(calib_idx.size)]
    calib_np = normalize(train_u8[calib_idx])
    test_np = normalize(test_u8[:N_TEST])
    test_labels_np = test_y[:N_TEST].astype(np.int64)

    model = Net()
    t0 = time.time()
    torch.set_flush_denormal(True)  # denormals slow CPU training a lot; eval runs without
    train(model, x_train, y_train, log)
    torch.set_flush_denormal(False)
    train_seconds = time.time() - t0
    model.eval()

    test_x = torch.from_numpy(test_np)
    test_t = torch.from_numpy(test_labels_np)
    calib_x = torch.from_numpy(calib_np)
    fp32_logits = predict(model, test_x)
    fp32_pred = fp32_logits.argmax(1)
    fp32_top1 = top1(fp32_logits, test_t)
    full_test_top1 = top1(predict(model, torch.from_numpy(normalize(test_u8))), torch.from_numpy(test_y))
    log(f"fp32 top-1: {fp32_top1:.4f} on the first {N_TEST} test images, {full_test_top1:.4f} on all 10000")

    model_path = os.path.join(args.out, "model.onnx")
    op_counts = export_onnx(model, model_path)
    np.save(os.path.join(args.out, "calib.npy"), calib_np)
    np.save(os.path.join(args.out, "test.npy"), test_np)
    np.save(os.path.join(args.out, "test_labels.npy"), test_labels_np)

    ort_result = None
    if not args.skip_ort_check:
        ort_logits = run_ort(model_path, test_np, log)
        if ort_logits is not None:
            diff = float(np.abs(ort_logits - fp32_logits.numpy()).max())
            ort_top1 = float((ort_logits.argmax(1) == test_labels_np).mean())
            log(f"onnxruntime vs torch on {N_TEST} test images: max abs logit diff {diff:.3g}, ORT top-1 {ort_top1:.4f}")
            if not diff < 1e-4:
                raise SystemExit(f"ONNX model disagrees with torch: max abs diff {diff} >= 1e-4")
            ort_result = {"max_abs_logit_diff_vs_torch": float(f"{diff:.3g}"), "fp32_top1": round(ort_top1, 4)}

    engines = [e for e in ("qnnpack", "onednn", "x86", "fbgemm") if e in torch.backends.quantized.supported_engines]
    ptq = {}
    for engine in engines:
        ptq[engine] = torch_ptq(model, engine, calib_x, test_x, test_t, fp32_pred)
        log(f"torch PTQ [{engine}]: int8 top-1 {ptq[engine]['top1']:.4f}, agreement with fp32 {ptq[engine]['agreement_with_fp32']:.4f}")

    report = {
        "dataset": "Fashion-MNIST",
        "normalization": {"mean": MEAN, "std": STD, "formula": "(pixel/255 - mean) / std"},
        "test_images": f"first {N_TEST} of t10k",
        "calib_images": f"{N_CALIB_PER_CLASS * 10} train images, {N_CALIB_PER_CLASS} per class (numpy default_rng({CALIB_SEED}))",
        "fp32_top1": round(fp32_top1, 4),
        "fp32_top1_full_t10k": round(full_test_top1, 4),
        "onnxruntime": ort_result,
        "torch_ptq": {
            "method": "eager mode: fuse_modules conv+bn(+relu) -> prepare -> calibrate on calib.npy -> convert; "
            "residual add+relu via FloatFunctional.add_relu; default qconfig per engine",
            "engines": ptq,
        },
        "onnx_op_counts": op_counts,
        "training": {
            "epochs": EPOCHS,
            "batch": BATCH,
            "optimizer": f"Adam, OneCycleLR max_lr={LR} pct_start={PCT_START}",
            "seed": SEED,
            "threads": 2,
        },
        "versions": {"torch": torch.__version__, "opset": OPSET},
    }
    with open(os.path.join(args.out, "torch_ptq.json"), "w") as f:
        json.dump(report, f, indent=2)
        f.write("\n")

    log("")
    log(f"wrote {args.out}:")
    for name in ("model.onnx", "calib.npy", "test.npy", "test_labels.npy", "torch_ptq.json"):
        log(f"  {name:16s} {os.path.getsize(os.path.join(args.out, name)):>9d} bytes")
    log(f"ONNX ops: {', '.join(f'{k} {v}' for k, v in op_counts.items())}")
    log(f"training {train_seconds:.0f}s; fp32 top-1 {fp32_top1:.4f}; "
        + "; ".join(f"{e} int8 {r['top1']:.4f}" for e, r in ptq.items()))


if __name__ == "__main__":
    sys.exit(main())
