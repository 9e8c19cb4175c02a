#!/usr/bin/python3
"""PyTorch side of the edgeq benchmark: eager-mode int8 PTQ of the two Fashion-MNIST fixtures.

For each fixture network

  "fixture CNN"                test/fixtures/fmnist/model.onnx            (Net, tools/make_fixtures.py)
  "fixture MobileNetV2-style"  test/fixtures/fmnist-mobilenet/model.onnx  (MobileNet, tools/make_mobilenet_fixture.py)

the PyTorch float module is rebuilt from the fixture script's class and its weights
are loaded from the committed ONNX file (initializer names are the state_dict
keys; shapes and BatchNormalization epsilons are checked), so torch quantizes
exactly the weights edgeq quantizes. The load is verified by requiring the torch
fp32 top-1 on test/fixtures/fmnist/test.npy to equal the fp32_top1 recorded in
the fixture's torch_ptq.json and, when node and node_modules/onnxruntime-node are
present, torch logits to match onnxruntime's within 1e-4.

Then, per quantized engine in torch.backends.quantized.supported_engines (except
'none') and per qconfig

  minmax         activations MinMaxObserver(quint8), weights MinMaxObserver(qint8, per_tensor_symmetric)
  histogram_pc   activations HistogramObserver(quint8), weights PerChannelMinMaxObserver(qint8,
                 per_channel_symmetric)  (= get_default_qconfig('onednn') in torch 1.13)

it runs PyTorch eager post-training static quantization: the module's own fuse()
(fuse_modules conv+bn(+relu)), prepare, calibrate on the 500 images of
test/fixtures/fmnist/calib.npy, convert. A combination that fails is recorded as
{"error": "..."}.

Measured: top-1 on the 1000 test images, agreement of int8 and fp32 top-1,
batch-1 latency at 1 thread (eager module, torch.no_grad, 20 warm-up calls, then
200 single-image calls timed one by one with time.perf_counter; median and p90),
model size (bytes of torch.jit.save of torch.jit.trace of the module) and
conversion time (prepare + calibrate + convert wall time, 1 thread).

Also recorded, as context for the eager latencies: the same modules as frozen
TorchScript (fp32: torch.jit.optimize_for_inference, which folds BN and uses
oneDNN convs; int8: torch.jit.freeze), timed the same way. At batch 1 torch 1.13
eager runs small fp32 3x3 convs through im2col + libblas GEMM rather than oneDNN,
so with Debian's reference BLAS the eager fp32 number is far slower than what
torch can do; the JSON lists the BLAS libraries that were loaded.

Run from anywhere (paths are relative to the repo root):

    /usr/bin/python3 tools/torch_bench.py --out bench/torch.json

`npm run bench` calls it when torch is present. Needs Debian's python3-torch
(1.13), python3-onnx and python3-numpy. Progress goes to stderr; the JSON to --out.
"""

import argparse
import io
import json
import os
import platform
import sys
import time

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TOOLS_DIR = os.path.join(REPO_ROOT, "tools")
DATA_DIR = os.path.join(REPO_ROOT, "test", "fixtures", "fmnist")
DEFAULT_OUT = os.path.join(REPO_ROOT, "bench", "torch.json")

WARMUP = 20
RUNS = 200
CALIB_BATCH = 100
EVAL_BATCH = 500
ORT_TOL = 1e-4

try:
    import torch
except (ImportError, OSError) as e:
    sys.exit(f"torch_bench.py: PyTorch is not importable ({e}); install Debian's python3-torch")
try:
    import numpy as np
    import onnx
    from onnx import numpy_helper
except (ImportError, OSError) as e:
    sys.exit(f"torch_bench.py: {e}; install Debian's python3-numpy and python3-onnx")

sys.path.insert(0, TOOLS_DIR)
import make_fixtures as mf  # noqa: E402
import make_mobilenet_fixture as mm  # noqa: E402

NETWORKS = [
    ("fixture CNN", os.path.join("test", "fixtures", "fmnist"), mf.Net),
    ("fixture MobileNetV2-style", os.path.join("test", "fixtures", "fmnist-mobilenet"), mm.MobileNet),
]


def log(msg):
    print(msg, file=sys.stderr, flush=True)


def cpu_model():
    try:
        with open("/proc/cpuinfo") as f:
            fields = dict(
                (k.strip(), v.strip()) for k, _, v in (line.partition(":") for line in f) if k.strip()
            )
        for key in ("model name", "Model", "Hardware", "cpu model"):
            if fields.get(key):
                return fields[key]
    except OSError:
        pass
    return platform.processor() or platform.machine()


# ----------------------------------------------------------------------------
# weights from the committed ONNX file


def load_onnx_weights(module, onnx_path):
    """Copy the ONNX initializers into module's state_dict (names match; shapes and BN eps checked)."""
    m = onnx.load(onnx_path)
    inits = {t.name: numpy_helper.to_array(t) for t in m.graph.initializer}
    state = module.state_dict()
    new_state, used = {}, set()
    for key, tensor in state.items():
        if key.endswith("num_batches_tracked"):  # training-only counter, not exported
            new_state[key] = tensor
            continue
        if key not in inits:
            raise SystemExit(f"{onnx_path}: no initializer named {key!r}; the module does not match the ONNX graph")
        arr = inits[key]
        if tuple(arr.shape) != tuple(tensor.shape):
            raise SystemExit(f"{onnx_path}: {key} has shape {list(arr.shape)}, module expects {list(tensor.shape)}")
        new_state[key] = torch.from_numpy(np.array(arr, dtype=np.float32))
        used.add(key)
    unused = sorted(set(inits) - used)
    if unused:
        raise SystemExit(f"{onnx_path}: initializers not mapped to the module: {unused}")
    module.load_state_dict(new_state, strict=True)

    # BatchNormalization epsilon must be the module's (momentum is irrelevant in eval)
    bns = {name: mod for name, mod in module.named_modules() if isinstance(mod, torch.nn.BatchNorm2d)}
    n_bn = 0
    for node in m.graph.node:
        if node.op_type != "BatchNormalization":
            continue
        n_bn += 1
        eps = next((a.f for a in node.attribute if a.name == "epsilon"), 1e-5)
        name = node.input[1].rsplit(".", 1)[0]
        if name not in bns or abs(bns[name].eps - eps) > 1e-9:
            raise SystemExit(f"{onnx_path}: BatchNormalization {name} epsilon {eps} does not match the module")
    if n_bn != len(bns):
        raise SystemExit(f"{onnx_path}: {n_bn} BatchNormalization nodes, module has {len(bns)} BatchNorm2d")
    module.eval()
    return len(used)


# ----------------------------------------------------------------------------
# measurements


@torch.no_grad()
def predict(model, x):
    model.eval()
    return torch.cat([model(x[i : i + EVAL_BATCH]) for i in range(0, x.shape[0], EVAL_BATCH)])


@torch.no_grad()
def latency(model, images):
    """20 warm-up calls, then one timed call per image in `images` (batch 1); returns (p50_ms, p90_ms)."""
    model.eval()
    for i in range(WARMUP):
        model(images[i % len(images)])
    times = np.empty(len(images))
    for i, x in enumerate(images):
        t0 = time.perf_counter()
        model(x)
        times[i] = time.perf_counter() - t0
    return round(float(np.median(times)) * 1e3, 4), round(float(np.percentile(times, 90)) * 1e3, 4)


def trace(model, example):
    with torch.no_grad():
        return torch.jit.trace(model.eval(), example)


def jit_size(traced):
    """Bytes of torch.jit.save(traced)."""
    buf = io.BytesIO()
    torch.jit.save(traced, buf)
    return buf.getbuffer().nbytes


@torch.no_grad()
def max_diff_batch1(a, b, images):
    return float(max((a(x) - b(x)).abs().max() for x in images))


def blas_libraries():
    """BLAS/LAPACK/oneDNN shared objects this process has loaded (torch's fp32 GEMM speed depends on them)."""
    libs = set()
    try:
        with open("/proc/self/maps") as f:
            for line in f:
                path = line.split()[-1]
                name = os.path.basename(path)
                if path.startswith("/") and any(k in name for k in ("blas", "lapack", "mkl", "dnnl", "blis")):
                    libs.add(os.path.realpath(path))
    except OSError:
        pass
    return sorted(libs)


def state_dict_size(model):
    buf = io.BytesIO()
    torch.save(model.state_dict(), buf)
    return buf.getbuffer().nbytes


def top1(logits, labels):
    return round(float((logits.argmax(1) == labels).float().mean().item()), 4)


# ----------------------------------------------------------------------------
# eager PTQ


def qconfigs():
    Q = torch.ao.quantization
    return {
        "minmax": Q.QConfig(
            activation=Q.MinMaxObserver.with_args(dtype=torch.quint8),
            weight=Q.MinMaxObserver.with_args(dtype=torch.qint8, qscheme=torch.per_tensor_symmetric),
        ),
        "histogram_pc": Q.QConfig(
            activation=Q.HistogramObserver.with_args(dtype=torch.quint8, reduce_range=False),
            weight=Q.PerChannelMinMaxObserver.with_args(dtype=torch.qint8, qscheme=torch.per_channel_symmetric),
        ),
    }


def describe_qconfig(qc):
    return f"activation={mf.describe_observer(qc.activation())}; weight={mf.describe_observer(qc.weight())}"


def quantize(cls, float_model, engine, qc, calib):
    """Eager PTQ; returns (quantized module, prepare+calibrate+convert seconds)."""
    torch.backends.quantized.engine = engine
    qmodel = cls(quantizable=True)
    qmodel.load_state_dict(float_model.state_dict(), strict=True)
    qmodel.eval()
    qmodel.fuse()
    qmodel.qconfig = qc
    t0 = time.perf_counter()
    torch.ao.quantization.prepare(qmodel, inplace=True)
    with torch.no_grad():
        for i in range(0, calib.shape[0], CALIB_BATCH):
            qmodel(calib[i : i + CALIB_BATCH])
    torch.ao.quantization.convert(qmodel, inplace=True)
    return qmodel, time.perf_counter() - t0


# ----------------------------------------------------------------------------


def bench_network(label, fixture_rel, cls, engines, data, ort_check):
    calib, test_x, test_y, images = data
    onnx_path = os.path.join(REPO_ROOT, fixture_rel, "model.onnx")
    with open(os.path.join(REPO_ROOT, fixture_rel, "torch_ptq.json")) as f:
        recorded = json.load(f)

    log(f"[{label}] loading weights from {fixture_rel}/model.onnx")
    model = cls()
    n_init = load_onnx_weights(model, onnx_path)
    fp32_logits = predict(model, test_x)
    fp32_pred = fp32_logits.argmax(1)
    fp32_top1 = top1(fp32_logits, test_y)
    if fp32_top1 != recorded["fp32_top1"]:
        raise SystemExit(
            f"[{label}] torch fp32 top-1 {fp32_top1} != fp32_top1 {recorded['fp32_top1']} recorded in "
            f"{fixture_rel}/torch_ptq.json: the ONNX weights were not loaded correctly"
        )
    check = {"initializers_loaded": n_init, "fp32_top1_matches_fixture": True}
    if ort_check:
        ort_logits = mf.run_ort(onnx_path, test_x.numpy(), log)
        if ort_logits is not None:
            diff = float(np.abs(ort_logits - fp32_logits.numpy()).max())
            same = float((ort_logits.argmax(1) == fp32_pred.numpy()).mean())
            if not diff < ORT_TOL:
                raise SystemExit(f"[{label}] torch vs onnxruntime max abs logit diff {diff:.3g} >= {ORT_TOL}")
            check["onnxruntime_max_abs_logit_diff"] = float(f"{diff:.3g}")
            check["onnxruntime_top1_agreement"] = same
    log(f"[{label}] fp32 top-1 {fp32_top1:.4f} (fixture records {recorded['fp32_top1']}); {check}")

    p50, p90 = latency(model, images)
    fp32 = {
        "top1": fp32_top1,
        "p50_ms": p50,
        "p90_ms": p90,
        "size_bytes": jit_size(trace(model, images[0])),
        "state_dict_bytes": state_dict_size(model),
        "onnx_bytes": os.path.getsize(onnx_path),
    }
    log(f"[{label}] fp32: p50 {p50:.3f} ms, p90 {p90:.3f} ms, {fp32['size_bytes']} bytes")
    # The eager numbers above are what the brief asks for, but at batch 1 torch 1.13 sends small 3x3
    # convs to its native im2col+GEMM path (aten::_slow_conv2d_forward) instead of oneDNN, and that
    # GEMM is whatever libblas.so.3 is (Debian's default: reference BLAS). A frozen, oneDNN-optimized
    # TorchScript module shows what torch's fp32 can do on this CPU.
    try:
        with torch.no_grad():
            opt = torch.jit.optimize_for_inference(torch.jit.freeze(trace(model, images[0])))
        p50, p90 = latency(opt, images)
        fp32["jit_optimized"] = {
            "p50_ms": p50,
            "p90_ms": p90,
            "max_abs_logit_diff_vs_eager": float(f"{max_diff_batch1(opt, model, images):.3g}"),
        }
        log(f"[{label}] fp32 jit optimize_for_inference: p50 {p50:.3f} ms, p90 {p90:.3f} ms")
    except Exception as e:
        fp32["jit_optimized"] = {"error": f"{type(e).__name__}: {e}".splitlines()[0]}

    int8 = []
    for engine in engines:
        for qname, qc in qconfigs().items():
            entry = {"engine": engine, "qconfig": qname, "observers": describe_qconfig(qc)}
            try:
                qmodel, convert_s = quantize(cls, model, engine, qc, calib)
                logits = predict(qmodel, test_x)
                p50, p90 = latency(qmodel, images)
                traced = trace(qmodel, images[0])
                entry.update(
                    {
                        "top1": top1(logits, test_y),
                        "agreement": round(float((logits.argmax(1) == fp32_pred).float().mean().item()), 4),
                        "p50_ms": p50,
                        "p90_ms": p90,
                        "size_bytes": jit_size(traced),
                        "state_dict_bytes": state_dict_size(qmodel),
                        "convert_s": round(convert_s, 3),
                    }
                )
                try:  # same module without Python's per-module call overhead
                    frozen = torch.jit.freeze(traced)
                    jp50, jp90 = latency(frozen, images)
                    entry["jit_frozen"] = {
                        "p50_ms": jp50,
                        "p90_ms": jp90,
                        "max_abs_logit_diff_vs_eager": float(f"{max_diff_batch1(frozen, qmodel, images):.3g}"),
                    }
                except Exception as e:
                    entry["jit_frozen"] = {"error": f"{type(e).__name__}: {e}".splitlines()[0]}
                log(
                    f"[{label}] {engine}/{qname}: top-1 {entry['top1']:.4f}, agreement {entry['agreement']:.4f}, "
                    f"p50 {p50:.3f} ms, p90 {p90:.3f} ms, {entry['size_bytes']} bytes, convert {convert_s:.2f}s"
                )
            except Exception as e:  # a combination the engine does not support: record, go on
                msg = f"{type(e).__name__}: {str(e).strip().splitlines()[0] if str(e).strip() else ''}"
                entry["error"] = msg
                log(f"[{label}] {engine}/{qname}: FAILED {msg}")
            int8.append(entry)
    return {"onnx": f"{fixture_rel}/model.onnx", "weights_check": check, "fp32": fp32, "int8": int8}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=DEFAULT_OUT, help="output JSON (default: bench/torch.json under the repo root)")
    ap.add_argument("--skip-ort-check", action="store_true", help="do not compare torch logits with onnxruntime-node")
    args = ap.parse_args()

    t_start = time.perf_counter()
    mf.deterministic(mf.SEED)  # seeds, deterministic kernels (sets 2 threads; overridden below)
    torch.set_num_threads(1)
    engines = [e for e in torch.backends.quantized.supported_engines if e != "none"]
    log(f"torch {torch.__version__}, engines {engines}, 1 thread")

    calib = torch.from_numpy(np.load(os.path.join(DATA_DIR, "calib.npy")))
    test_x = torch.from_numpy(np.load(os.path.join(DATA_DIR, "test.npy")))
    test_y = torch.from_numpy(np.load(os.path.join(DATA_DIR, "test_labels.npy")))
    images = [test_x[i : i + 1].clone() for i in range(RUNS)]
    data = (calib, test_x, test_y, images)

    networks = {}
    for label, fixture_rel, cls in NETWORKS:
        networks[label] = bench_network(label, fixture_rel, cls, engines, data, not args.skip_ort_check)

    report = {
        "torch": torch.__version__,
        "engines": engines,
        "cpu": cpu_model(),
        "threads": 1,
        "latency_method": (
            f"eager module, torch.no_grad(), torch.set_num_threads(1), batch 1; {WARMUP} warm-up calls, then "
            f"{RUNS} calls (test images 0..{RUNS - 1}) each timed with time.perf_counter; p50 = median, p90 = 90th percentile"
        ),
        "size_method": (
            "size_bytes: bytes of torch.jit.save(torch.jit.trace(model, 1x1x28x28)); "
            "state_dict_bytes: bytes of torch.save(model.state_dict())"
        ),
        "jit_method": (
            "extra, not eager: fp32.jit_optimized = torch.jit.optimize_for_inference(torch.jit.freeze("
            "torch.jit.trace(model))) (BN folded, oneDNN convs); int8[].jit_frozen = torch.jit.freeze("
            "torch.jit.trace(qmodel)); latency measured the same way as the eager numbers"
        ),
        "blas": blas_libraries(),
        "convert_method": (
            f"convert_s: wall time of prepare + calibration ({calib.shape[0]} images of "
            f"test/fixtures/fmnist/calib.npy, batches of {CALIB_BATCH}) + convert at 1 thread; "
            "fusion (the module's fuse(): fuse_modules conv+bn(+relu)) is done before and not timed"
        ),
        "accuracy_data": f"top1 on the {test_x.shape[0]} images of test/fixtures/fmnist/test.npy; "
        "agreement = fraction of test images where int8 and fp32 argmax agree",
        "weights": "loaded from the committed ONNX files (initializer name = state_dict key), "
        "checked against each fixture's recorded fp32_top1 and, if available, onnxruntime-node logits",
        "qconfigs": {name: describe_qconfig(qc) for name, qc in qconfigs().items()},
        "networks": networks,
        "elapsed_s": None,
    }
    report["elapsed_s"] = round(time.perf_counter() - t_start, 1)
    out = os.path.abspath(args.out)
    os.makedirs(os.path.dirname(out), exist_ok=True)
    with open(out, "w") as f:
        json.dump(report, f, indent=2)
        f.write("\n")
    log(f"wrote {out} in {report['elapsed_s']}s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
