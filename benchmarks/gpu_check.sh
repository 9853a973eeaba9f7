#!/usr/bin/env bash
# One prepared GPU check, under 8 minutes (its steps' time limits: 110 + 60 + 100 + 180 s, after about 20 s of installing), for a machine whose Python has JAX and PyTorch with CUDA but
# no TensorFlow and no internet (the device tool's nvidia-h100-x1 / nvidia-h200 images):
#   1. installs keras, librosa, soundfile and the other missing packages from wheels in .whl/;
#   2. runs benchmarks/training.py with the JAX backend (then torch) in float32 and mixed precision:
#      clips/s, GFLOP/s and the ratio to the GPU's own matrix-multiply rate; then benchmarks/memory.py
#      --method device: the peak device memory of the report's step (seed, whole clips, batch 32), of
#      batch 8 and of 32 clips as 4 accumulated micro-batches of 8, float32 and mixed precision, one
#      fresh process each (JAX peak_bytes_in_use, torch max_memory_allocated);
#   3. generates the demo dataset there, extracts its features and trains the demo run end to end on
#      the GPU (whole clips and chunked, JAX backend), printing clips/s, accuracy and a prediction,
#      and checks that TensorFlow was never imported.
# Every step has its own time limit, so the script always ends and prints what it measured.
#
# Prepare the wheels here, once (Python 3.12 x86-64, the device image's; about 5 MB; .whl/ is ignored by git):
#   python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#     --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
#     --platform manylinux2014_x86_64 -d .whl keras==3.15.1 namex==0.1.0 optree==0.20.0 librosa==0.11.0 \
#     soundfile==0.14.0 soxr==1.1.0 audioread==3.1.0 pooch==1.9.0 decorator==5.3.1 cffi==2.1.1 \
#     pycparser==3.12 platformdirs==4.14.8
# (the image already has numpy, scipy, pandas, scikit-learn, matplotlib, seaborn, tqdm, numba, joblib,
# lazy-loader, msgpack, absl-py, rich, h5py, ml-dtypes, packaging, threadpoolctl, jax and torch).
# Run it with the device tool: run(command="bash benchmarks/gpu_check.sh", carry=[".whl"], timeout_s=480).
# Locally, for a dry run of the logic on a CPU (e.g. in a venv with jax but without tensorflow):
#   QUICK=1 PYTHON=/path/to/venv/bin/python bash benchmarks/gpu_check.sh

set -uo pipefail
cd "$(dirname "$0")/.."
export PYTHONUNBUFFERED=1 TF_CPP_MIN_LOG_LEVEL=3
PYTHON=${PYTHON:-python3}
WORK=${WORK:-/tmp/genre-gpu-check}
if [ -n "${QUICK:-}" ]; then  # a CPU dry run: tiny workloads, same steps
    MODELS=${MODELS:-demo-chunked}; STEPS=${STEPS:-1}; ROUNDS=${ROUNDS:-1}; EPOCHS=${EPOCHS:-1}
    BACKENDS=${BACKENDS:-jax}; CLIPS=${CLIPS:-10}; MEMORY_CONFIGS=${MEMORY_CONFIGS:-demo-full-b32}
else
    MODELS=${MODELS:-seed-full seed-chunked demo-full}; STEPS=${STEPS:-10}; ROUNDS=${ROUNDS:-2}
    EPOCHS=${EPOCHS:-20}; BACKENDS=${BACKENDS:-jax torch}; CLIPS=${CLIPS:-60}
    MEMORY_CONFIGS=${MEMORY_CONFIGS:-seed-full-b32 seed-full-b32-acc4 seed-full-b8}
fi
MEMORY_BACKENDS=${MEMORY_BACKENDS:-jax}  # MEMORY_BACKENDS="jax torch" adds torch's peaks (90 s more)
mkdir -p "$WORK"
step() { echo; echo "== $(date +%T) $*"; }

if compgen -G ".whl/*.whl" > /dev/null; then
    step "installing $(ls .whl/*.whl | wc -l) wheels from .whl/ into $WORK/site"
    "$PYTHON" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --target "$WORK/site" .whl/*.whl || exit 1
    export PYTHONPATH="$WORK/site${PYTHONPATH:+:$PYTHONPATH}"
fi
command -v nvidia-smi > /dev/null && nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
"$PYTHON" - <<'EOF' || exit 1
import importlib.util, platform
print("python", platform.python_version(), {name: bool(importlib.util.find_spec(name))
      for name in ("jax", "torch", "tensorflow", "keras", "librosa", "soundfile", "sklearn", "seaborn")})
import genre_utils  # noqa: F401  (imports no Keras, no TensorFlow)
EOF

# the demo dataset, synthesized in the background while the GPU benchmarks run (CPU-bound, one core)
step "demo dataset: $CLIPS clips per genre, in the background"
DEMO="$WORK/demo-$CLIPS"
( timeout 300 "$PYTHON" -c "
import sys; sys.path.insert(0, '.')
import genre_utils as gu
gu.make_demo_dataset('$DEMO', gu.get_config('demo'), clips_per_genre=$CLIPS, progress=False)
" > "$WORK/demo.log" 2>&1; echo "exit $?" >> "$WORK/demo.log" ) &
demo_pid=$!

for backend in $BACKENDS; do
    limit=110; [ "$backend" = jax ] || limit=60  # seconds; what does not fit is cut, the rest printed
    step "training benchmark, KERAS_BACKEND=$backend: $MODELS, float32 and mixed precision (at most $limit s)"
    KERAS_BACKEND=$backend timeout $limit "$PYTHON" benchmarks/training.py --models $MODELS --steps "$STEPS" \
        --rounds "$ROUNDS" --precision float32 mixed 2>&1 | grep -v -i "warning"
    echo "(exit ${PIPESTATUS[0]}; 124 = stopped at its time limit)"
done

# each configuration in its own process, so that its peak is its own; rows print as they finish, and
# what does not fit the time limit is cut
for backend in $MEMORY_BACKENDS; do
    limit=100; [ "$backend" = jax ] || limit=90  # seconds
    step "peak device memory, KERAS_BACKEND=$backend: $MEMORY_CONFIGS, float32 and mixed precision (at most $limit s)"
    KERAS_BACKEND=$backend timeout $limit "$PYTHON" benchmarks/memory.py --method device --configs $MEMORY_CONFIGS \
        --precision float32 mixed --timeout 90 2>&1 | grep -v -i "warning"
    echo "(exit ${PIPESTATUS[0]}; 124 = stopped at its time limit)"
done

step "waiting for the demo dataset"
wait "$demo_pid"; cat "$WORK/demo.log"

step "demo run end to end on the GPU, KERAS_BACKEND=jax, $EPOCHS epochs"
# a script file, not stdin: the feature-extraction workers ('spawn') re-import the main script
cat > "$WORK/demo_run.py" <<'EOF'
import os
import sys
import time
from pathlib import Path

import genre_utils as gu


def main():
    keras = gu.import_keras()
    work = Path(os.environ["WORK"])
    cfg = gu.get_config("demo", os.environ["DEMO"], cache_dir=work / "cache", runs_dir=work / "runs",
                        epochs=int(os.environ["EPOCHS"]))
    print(gu.describe_devices())
    tracks = gu.load_tracks(cfg.data_root)
    start = time.perf_counter()
    features = gu.extract_features(tracks, cfg)
    seconds = time.perf_counter() - start
    print(f"features of {len(tracks)} clips in {seconds:.1f} s ({len(tracks) / seconds:.0f} clips/s, "
          f"{os.cpu_count()} cores)")
    n_train = len(features.rows("training"))
    for mode in gu.TRAIN_MODES:
        run_cfg = cfg.replace(train_mode=mode)
        keras.utils.set_random_seed(cfg.seed)
        start = time.perf_counter()
        history = gu.train(gu.build_model(run_cfg), features, run_cfg, cfg.runs_dir / f"demo-{mode}", verbose=0)
        total = time.perf_counter() - start
        later = history["epoch_seconds"].iloc[1:].median() if len(history) > 1 else history["epoch_seconds"].iloc[0]
        model, run_cfg, _ = gu.load_run(cfg.runs_dir / f"demo-{mode}")
        test = gu.evaluate(model, features, run_cfg, "test")
        print(f"{mode:>8}: {len(history)} epochs of {n_train} clips in {total:.1f} s "
              f"({n_train * len(history) / total:.0f} clips/s with start-up and validation; "
              f"{n_train / later:.0f} clips/s an epoch after the first), best val_accuracy "
              f"{history['val_accuracy'].max():.3f}, test accuracy {test.accuracy:.3f}", flush=True)
    song = tracks[tracks["split"] == "test"]["path"].iloc[0]
    windows = gu.predict_file(song, model, run_cfg)
    print(f"predict_file {Path(song).name}: {windows.mean().idxmax()} ({windows.mean().max():.0%})")
    assert "tensorflow" not in sys.modules, "the JAX path imported TensorFlow"
    print("TensorFlow imported: no")


if __name__ == "__main__":
    main()
EOF
KERAS_BACKEND=jax DEMO="$DEMO" WORK="$WORK" EPOCHS="$EPOCHS" PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" \
    timeout 180 "$PYTHON" "$WORK/demo_run.py"
echo "(exit $?)"
step "done"
