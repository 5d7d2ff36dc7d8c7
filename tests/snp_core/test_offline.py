"""Pretrained weights offline: cached ones load from the cache, missing ones fail at once with the usual message.

Offline is made real, not simulated: the hub endpoint is a local port nothing
listens on, and the hub and torch caches are fresh folders, so neither this
machine's cache nor a network (CI may have one) can change the outcome.
"""

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

SCRIPT = r"""
import json, sys, torch, timm
from safetensors.torch import save_file
from snp_core import errors, models

out = {}
try:
    models.create("deit_tiny_patch16_224", "pretrained")
except errors.PlanError as exc:
    out["missing"] = str(exc)

# a hub cache entry as huggingface_hub lays it out, holding known (seeded random) weights
torch.manual_seed(123)
reference = timm.create_model("deit_tiny_patch16_224").state_dict()
snapshot = sys.argv[1] + "/hub/models--timm--deit_tiny_patch16_224.fb_in1k/snapshots/" + "0" * 40
import os
os.makedirs(snapshot)
save_file({k: v.contiguous() for k, v in reference.items()}, snapshot + "/model.safetensors")
os.makedirs(sys.argv[1] + "/hub/models--timm--deit_tiny_patch16_224.fb_in1k/refs")
open(sys.argv[1] + "/hub/models--timm--deit_tiny_patch16_224.fb_in1k/refs/main", "w").write("0" * 40)
loaded = models.create("deit_tiny_patch16_224", "pretrained").state_dict()
out["cached_equal"] = all(torch.equal(loaded[k], v) for k, v in reference.items())
print(json.dumps(out))
"""


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]  # closed again when this returns: connecting is refused


def test_offline_pretrained_fails_fast_or_loads_from_the_cache(tmp_path):
    port = _closed_port()
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HOME": str(tmp_path / "hf"), "TORCH_HOME": str(tmp_path / "t"),
           "HF_ENDPOINT": f"https://127.0.0.1:{port}"}
    env.pop("HF_HUB_OFFLINE", None)
    r = subprocess.run([sys.executable, "-c", SCRIPT, str(tmp_path / "hf")], env=env, capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    out = json.loads(r.stdout.strip().splitlines()[-1])
    # the message says why at once (one refused connection), instead of the hub client's minute of retries
    assert out["missing"].startswith("cannot download pretrained weights for 'deit_tiny_patch16_224' (offline? "
                                     f"cannot reach 127.0.0.1:{port}: ")
    assert "not in the local cache either" in out["missing"] and "--weights random" in out["missing"]
    assert "Retrying" not in r.stderr
    assert out["cached_equal"] is True
