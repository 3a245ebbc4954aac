#!/usr/bin/env bash
# rewarm's SGLang preset calls made by hand against a stock SGLang server from this kit (no rewarm):
# start, a greedy completion, release + resume alone, a completion, release + resume +
# update_weights_from_disk, a completion. Shows which resume sequence gives the weights back.
#   preset_calls.sh MODEL_DIR LOG        (the kit unpacked at /opt/sgsite, as README.md says)
set -u
model=${1:?usage: preset_calls.sh MODEL_DIR LOG} log=${2:?usage: preset_calls.sh MODEL_DIR LOG}
export PYTHONPATH=/opt/sgsite HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 PYTHONUNBUFFERED=1
export LD_LIBRARY_PATH=$(python3 -c 'import glob, os, nvidia; print(":".join(sorted({os.path.dirname(p) for d in nvidia.__path__ for p in glob.glob(d + "/**/libcudart.so.13", recursive=True)})))')
python3 -m sglang.launch_server --model-path "$model" --enable-memory-saver --attention-backend triton \
  --sampling-backend pytorch --host 127.0.0.1 --port 30000 > "$log" 2>&1 &
server=$!
trap 'kill $server 2>/dev/null; wait' EXIT
MODEL=$model python3 - <<'PY'
import json, os, time, urllib.error, urllib.request
BASE = "http://127.0.0.1:30000"

def call(path, body=None, method="POST", timeout=120):
    req = urllib.request.Request(BASE + path, data=None if body is None else json.dumps(body).encode(),
                                 method=method, headers={"content-type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, r.read().decode()[:300]
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()[:300]
    except OSError as e:
        return None, repr(e)

start = time.time()
while time.time() - start < 600 and call("/health", method="GET", timeout=2)[0] != 200:
    time.sleep(0.5)
print("healthy after", round(time.time() - start, 1), "s")
completion = {"model": os.environ["MODEL"], "prompt": "The fastest way to start", "max_tokens": 12, "temperature": 0}
print("before", *call("/v1/completions", completion))
for path, body in [("/release_memory_occupation", {}), ("/resume_memory_occupation", {}),
                   ("/v1/completions", completion), ("/release_memory_occupation", {}),
                   ("/resume_memory_occupation", {}), ("/update_weights_from_disk", {"model_path": os.environ["MODEL"]}),
                   ("/v1/completions", completion)]:
    t = time.time()
    status, answer = call(path, body)
    print(path, status, round(time.time() - t, 2), "s", answer[:200])
PY
