#!/usr/bin/env bash
# The README's walk-through, "From a folder of good images to a running line", as one script:
#
#   bash scripts/walkthrough.sh GOOD_DIR CAMERA [WORK_DIR]
#
# GOOD_DIR: a folder of good images of the part (nothing else needed: no defect samples, no MVTec layout).
# CAMERA:   what edge-run reads: a device index (0 = /dev/video0), a video file, an rtsp:// URL, or a
#           folder of images of the line (made into a test video with edge-video first).
# WORK_DIR: where runs/, bundles/ and edge.toml go (default: walkthrough-out).
#
# Each step is the README's command, echoed before it runs. The broker is a mosquitto on this machine
# (MQTT_PORT, default 1883); the last step runs edge-run for RUN_FRAMES scored frames (default 20; a video
# file also ends it), prints the results mosquitto_sub received and saves the anomalous frames as pictures.
# TRAIN_ARGS adds edge-train options (tests make the model tiny).
set -euo pipefail

if [ $# -lt 2 ]; then
    echo "usage: bash scripts/walkthrough.sh GOOD_DIR CAMERA [WORK_DIR]" >&2
    exit 2
fi
GOOD=$1
CAMERA=$2
WORK=${3:-walkthrough-out}
MQTT_PORT=${MQTT_PORT:-1883}
RUN_FRAMES=${RUN_FRAMES:-20}
read -r -a TRAIN_EXTRA <<<"${TRAIN_ARGS:-}"

step() { printf '\n== %s\n' "$*"; }
run() {
    printf '$ %s\n' "$*"
    "$@"
}

mkdir -p "$WORK"
cd "$WORK"

step "1. train on the good images (10 % held out for the threshold)"
run edge-train --model gtrans --data "$GOOD" --out runs/line1 "${TRAIN_EXTRA[@]}"

step "2. how well it finds defects, with defects pasted onto the held-out good images"
run edge-eval runs/line1/checkpoint.pt --pasted

step "3. export the bundle: FP32 + INT8, threshold from the held-out good images, signed with your key"
[ -f keys/line1.key ] || run edge-keygen --out keys/line1
run edge-export runs/line1/checkpoint.pt --out bundles/line1 --int8 --sign-key keys/line1.key

if [ -d "$CAMERA" ]; then
    step "3b. a test video from the folder of line images"
    run edge-video "$CAMERA" line.avi
    CAMERA=line.avi
fi

step "4. a first configuration for this machine's broker and the camera, trusting only your key"
rm -f edge.toml
run edge-run --init-config edge.toml --bundle bundles/line1 --source "$CAMERA" --trusted-key keys/line1.pub
export EDGE_MQTT__PORT=$MQTT_PORT # the broker's port, when it is not 1883 (environment beats the file)
run edge-run --config edge.toml --check-config >/dev/null

step "5. run it, and watch the results arrive over MQTT"
results=$(mktemp)
mosquitto_sub -p "$MQTT_PORT" -t 'edge-anomaly/+/cam0/result' -C "$RUN_FRAMES" -W 120 >"$results" &
sub=$!
sleep 1 # subscribed before the first result
run edge-run --config edge.toml --max-frames "$RUN_FRAMES" --log-level WARNING --save-overlays overlays
wait "$sub" || true
received=$(wc -l <"$results")
echo "results received over MQTT: $received"
head -n 3 "$results"
"${PYTHON:-python3}" - "$results" <<'EOF'
import json, sys
rows = [json.loads(line) for line in open(sys.argv[1]) if line.strip()]
flagged = [r["frame_id"] for r in rows if r["anomalous"]]
print(f"anomalous frames: {flagged} (threshold {rows[0]['threshold']:.2f}, normalised)" if rows else "no results")
EOF
rm -f "$results"
echo "overlays of the anomalous frames: $(find overlays -name '*.jpg' 2>/dev/null | wc -l) in $WORK/overlays"
[ "$received" -ge 1 ]
