#!/usr/bin/env bash
# Submits the speed-layer job to the Flink session cluster unless it already runs there, so
# `docker compose up -d` can be repeated without a second copy of the job. The job resumes from
# its newest checkpoint under the shared state volume (speed_layer.py --restore auto).
set -euo pipefail

JOBMANAGER="${FLINK_JOBMANAGER:-flink-jobmanager:8081}"
JOB_NAME="lambdarec-speed-layer"

running=$(/opt/venv/bin/python - "$JOBMANAGER" "$JOB_NAME" <<'PY'
import json, sys, urllib.request
jobs = json.load(urllib.request.urlopen(f"http://{sys.argv[1]}/jobs/overview", timeout=10))["jobs"]
print(sum(j["name"] == sys.argv[2] and j["state"] in ("RUNNING", "CREATED", "RESTARTING") for j in jobs))
PY
)
if [ "$running" != "0" ]; then
  echo "$JOB_NAME already runs on $JOBMANAGER; nothing to submit"
  exit 0
fi

# Connector and UDF jars are in the image's /opt/flink/lib (--jars ''); endpoints and folders come
# from the LAMBDAREC_* variables the container gets.
exec /opt/flink/bin/flink run --jobmanager "$JOBMANAGER" --detached \
  --python /opt/lambdarec/include/flink/speed_layer.py \
  --jars '' --detached --parallelism "${FLINK_PARALLELISM:-2}" "$@"
