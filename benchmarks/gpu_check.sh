#!/usr/bin/env bash
# The GPU check, for a machine that has one: a FedAvg run and a 4-trial sweep with
# runtime.device=cuda, each beside the same on the CPU; prints the device the parties used
# (the run's fedsweep.device tag, what the workers reported, not what was asked)
# and the throughput. Run from a clone after `pip install -e .` (with a CUDA build of torch):
#
#   bash benchmarks/gpu_check.sh
set -euo pipefail
cd "$(dirname "$0")/.."
export RAY_AUTH_MODE=token RAY_AUTH_TOKEN_PATH="${RAY_AUTH_TOKEN_PATH:-$(mktemp)}"
[ -s "$RAY_AUTH_TOKEN_PATH" ] || python -c "import secrets; print(secrets.token_hex(32))" > "$RAY_AUTH_TOKEN_PATH"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
python - <<'PY'
import torch
print(f"torch {torch.__version__}, cuda available: {torch.cuda.is_available()}",
      f"({torch.cuda.get_device_name(0)})" if torch.cuda.is_available() else "")
PY
rounds=40
for device in cpu cuda; do
  out=$(python -m orchestrator.cli run configs/cnn_digits_iid.yaml "trainer.rounds=$rounds" \
        "runtime.device=$device" runtime.gpus_per_worker=$([ $device = cuda ] && echo 0.25 || echo 0) \
        "tracking.uri=sqlite:///$work/mlflow.db" tracking.log_model=false --quiet --json | tail -n 1)
  python - "$device" "$rounds" "$out" "$work" <<'PY'
import json, sys
from mlflow.tracking import MlflowClient
device, rounds, out, work = sys.argv[1], int(sys.argv[2]), json.loads(sys.argv[3]), sys.argv[4]
m = out["metrics"]
used = MlflowClient(f"sqlite:///{work}/mlflow.db").get_run(out["run_id"]).data.tags["fedsweep.device"]
print(f"run   requested={device:4s} rounds/s={rounds / m['wall_time_s']:7.2f}  "
      f"test_accuracy={m['test_accuracy']:.4f}  used: {used}")
PY
done
cat > "$work/space.yaml" <<'YAML'
objective: [test_accuracy]
params:
  trainer.lr: {type: float, low: 0.01, high: 0.3, log: true}
sampler: {name: random, seed: 0}
YAML
for device in cpu cuda; do
  start=$(date +%s.%N)
  python -m orchestrator.cli sweep configs/cnn_digits_iid.yaml --space "$work/space.yaml" \
    --trials 4 --study "gpu-check-$device" "runtime.device=$device" trainer.rounds=10 \
    sweep.gpus_per_trial=$([ $device = cuda ] && echo 0.25 || echo 0) \
    "tracking.uri=sqlite:///$work/mlflow.db" --quiet --json > "$work/sweep-$device.json"
  end=$(date +%s.%N)
  python - "$device" "$start" "$end" "$work/sweep-$device.json" "$work" <<'PY'
import json, sys
from mlflow.tracking import MlflowClient
device, start, end, path, work = sys.argv[1], float(sys.argv[2]), float(sys.argv[3]), sys.argv[4], sys.argv[5]
out = json.loads(open(path).read().strip().splitlines()[-1])
client = MlflowClient(f"sqlite:///{work}/mlflow.db")
trials = client.search_runs(
    [client.get_run(out["parent_run_id"]).info.experiment_id],
    f"tags.mlflow.parentRunId = '{out['parent_run_id']}'",
)
used = sorted({r.data.tags.get("fedsweep.device", "?") for r in trials})
print(f"sweep requested={device:4s} trials={out['n_complete']} wall={end - start:6.1f} s "
      f"trials/min={60 * out['n_complete'] / (end - start):6.1f}  used: {'; '.join(used)}")
PY
done
