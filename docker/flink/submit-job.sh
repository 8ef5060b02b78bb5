#!/usr/bin/env bash
# Submits one of the project's Flink jobs (FLINK_JOB: speed_layer, the default, or attribution)
# to the Flink session cluster unless it already runs there, so `docker compose up -d` can be
# repeated without a second copy of the job. The job resumes from its newest checkpoint under the
# shared state volume (--restore auto).
set -euo pipefail

JOBMANAGER="${FLINK_JOBMANAGER:-flink-jobmanager:8081}"
case "${FLINK_JOB:-speed_layer}" in
  speed_layer) JOB_FILE=speed_layer.py; JOB_NAME="lambdarec-speed-layer" ;;
  attribution) JOB_FILE=attribution.py; JOB_NAME="lambdarec-attribution" ;;
  *) echo "FLINK_JOB=${FLINK_JOB} is not a job of this image; use speed_layer or attribution" >&2; exit 2 ;;
esac

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
  --python "/opt/lambdarec/include/flink/$JOB_FILE" \
  --jars '' --detached --parallelism "${FLINK_PARALLELISM:-2}" "$@"
