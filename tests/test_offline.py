"""No network unless asked: tiling, training with the default loggers (CSV + W&B in its
automatic offline mode) and explain open no outside connection, and a hub backbone fails or
falls back at once when the Hugging Face hub does not answer.

Each check runs in a fresh interpreter whose audit hook (PEP 578) records and refuses every
non-loopback ``socket.getaddrinfo``/``connect``/``sendto``: the machine looks air-gapped
whatever the network of the machine running the tests, nothing is sent, and the hook cannot
leak into other tests. wandb's service process (``wandb-core``, Go) is out of the hook's
reach; the test checks the flag that keeps it off the network instead (measured with
``strace -f``: without it, one DNS look-up of api.forge.coreweave.com per run).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from conftest import CONF, MASK_DOWNSAMPLE, PATCH, PROJECT

TESTS = Path(__file__).resolve().parent

#: Prepended to each child script: the audit hook, and ``report(**results)`` printing one JSON line.
AUDIT = r'''
import errno, ipaddress, json, os, socket, sys

STAGE = "start"
ATTEMPTS, SPAWNED = [], []
LOCAL_NAMES = {"", "localhost", socket.gethostname()}  # the own host name resolves from /etc/hosts


def _local(host):
    if isinstance(host, (bytes, bytearray)):
        host = host.decode()
    if host is None or host in LOCAL_NAMES:
        return True
    try:
        return ipaddress.ip_address(host.split("%")[0]).is_loopback
    except ValueError:
        return False


def _audit(event, args):
    if event == "subprocess.Popen":
        SPAWNED.append([str(a) for a in (args[1] if args[1] is not None else [args[0]])])
        return
    if event == "socket.getaddrinfo":
        host, port, refused = args[0], args[1], socket.gaierror(socket.EAI_NONAME, "network cut by the audit")
    elif event in ("socket.connect", "socket.sendto") and isinstance(args[1], tuple):  # not a Unix socket
        (host, port), refused = args[1][:2], OSError(errno.ENETUNREACH, "network cut by the audit")
    else:
        return
    if not _local(host):
        ATTEMPTS.append(f"{STAGE}: {event} {host}:{port}")
        raise refused


sys.addaudithook(_audit)


def report(**results):
    print("AUDIT " + json.dumps({"attempts": ATTEMPTS, "spawned": SPAWNED, **results}), flush=True)
'''

PIPELINE = AUDIT + r'''
from pathlib import Path

import conftest  # its test defaults (hub offline, W&B disabled, no update check) are undone here
for key in ("HF_HUB_OFFLINE", "WANDB_MODE", "NO_ALBUMENTATIONS_UPDATE"):
    os.environ.pop(key, None)
from hydra import compose, initialize_config_dir
from hydra.core.hydra_config import HydraConfig
from omegaconf import open_dict

root = Path(sys.argv[1])
data = conftest.make_dataset(root / "data")
tiles = root / "tiles"

STAGE = "tiling"
from vistumor.tasks.tiling import tile
tile(conftest.compose_train(root, data.root, tiles_dir=tiles))

STAGE = "training"
from vistumor.tasks.training import train
train(conftest.compose_train(root, data.root, "logger=default", tiles_dir=tiles))

STAGE = "explain"
from vistumor.tasks.explaining import explain
with initialize_config_dir(config_dir=sys.argv[2], version_base="1.3"):
    cfg = compose("explain", overrides=sys.argv[3:], return_hydra_config=True)
HydraConfig.instance().set_config(cfg)
with open_dict(cfg):
    cfg.paths.output_dir = str(root / "explain")
summary = explain(cfg)
report(explained=summary["candidates"])
'''

HUB = AUDIT + r'''
import time

from vistumor.errors import ConfigError
from vistumor.model.backbones import create_backbone

STAGE = "fallback=random"
start = time.perf_counter()
_, weights = create_backbone("resnet18", pretrained=True, weights_fallback="random")
seconds = {"random": time.perf_counter() - start}
STAGE = "fallback=error"
start = time.perf_counter()
try:
    create_backbone("resnet18", pretrained=True, weights_fallback="error")
    message = None
except ConfigError as err:
    message = str(err)
seconds["error"] = time.perf_counter() - start
report(weights=weights, message=message, seconds=seconds)
'''

SELF_CHECK = AUDIT + r'''
STAGE = "self-check"
outcomes = {}
probe = socket.socket()
probe.settimeout(1)
try:
    probe.connect(("10.255.255.1", 9))  # non-routable: without the hook this would time out
    outcomes["connect"] = "connected"
except OSError as err:
    outcomes["connect"] = type(err).__name__
try:
    socket.getaddrinfo("example.org", 443)
    outcomes["lookup"] = "resolved"
except OSError as err:
    outcomes["lookup"] = type(err).__name__
with socket.create_server(("127.0.0.1", 0)) as server:  # loopback stays open
    socket.create_connection(server.getsockname(), timeout=1).close()
    outcomes["loopback"] = "connected"
report(outcomes=outcomes)
'''

#: what says "online", where caches and W&B keys live: none of the caller's applies to the child
SCRUBBED_PREFIXES = ("WANDB_", "HF_", "HUGGINGFACE_")
PROXIES = ("http_proxy", "https_proxy", "all_proxy", "no_proxy")
SCRUBBED = {
    "TRANSFORMERS_OFFLINE", "NO_ALBUMENTATIONS_UPDATE", "NETRC",
    "XDG_CACHE_HOME", "XDG_CONFIG_HOME", "TORCH_HOME",
    *PROXIES, *(name.upper() for name in PROXIES),
}


def run_audited(script: str, tmp_path: Path, *args: str, timeout: float = 240) -> dict:
    """Run ``script`` in a fresh interpreter with an empty HOME, no W&B key or mode, no HF
    offline flag; returns its report (attempts, spawned commands, results)."""
    home = tmp_path / "home"
    home.mkdir(exist_ok=True)
    env = {k: v for k, v in os.environ.items()
           if k not in SCRUBBED and not k.startswith(SCRUBBED_PREFIXES)}
    env.update(HOME=str(home), PYTHONPATH=os.pathsep.join(filter(None, [str(TESTS), env.get("PYTHONPATH")])))
    done = subprocess.run([sys.executable, "-c", script, *args], cwd=PROJECT, env=env, capture_output=True,
                          text=True, timeout=timeout)
    lines = [line for line in done.stdout.splitlines() if line.startswith("AUDIT ")]
    assert done.returncode == 0 and lines, f"child failed ({done.returncode}):\n{done.stderr[-4000:]}"
    return json.loads(lines[-1].removeprefix("AUDIT "))


def test_the_audit_catches_and_refuses_outside_connections(tmp_path):
    report = run_audited(SELF_CHECK, tmp_path, timeout=60)
    assert report["attempts"] == [
        "self-check: socket.connect 10.255.255.1:9", "self-check: socket.getaddrinfo example.org:443",
    ]
    assert report["outcomes"] == {"connect": "OSError", "lookup": "gaierror", "loopback": "connected"}


def test_tiling_training_and_explain_open_no_outside_connection(tmp_path):
    root = tmp_path / "work"
    explain = [
        "data=camelyon16", "data.generate=null", f"tiling.grid.patch_size={PATCH}",
        f"tiling.tissue.downsample={MASK_DOWNSAMPLE}", "tiling.run.workers=1", "tiling.run.progress=false",
        f"paths.root_dir={root}", f"data.root={root / 'data'}", "device=cpu",
        f"ckpt_path={root / 'run' / 'checkpoints' / 'last.ckpt'}",
    ]
    report = run_audited(PIPELINE, tmp_path, str(root), str(CONF), *explain)
    assert report["attempts"] == [], f"outside connections attempted: {report['attempts']}"
    assert report["explained"] > 0
    # W&B really ran, offline (no key), its service started without error reporting/telemetry
    assert list((root / "run" / "wandb").glob("offline-run-*")), "no offline W&B run was written"
    core = [cmd for cmd in report["spawned"] if Path(cmd[0]).name.startswith("wandb-core")]
    assert core and all("--no-observability" in cmd for cmd in core), core


def test_hub_backbone_offline_falls_back_or_fails_at_once(tmp_path):
    """Without a cache or a hub, huggingface_hub alone retried each file 5 times: ~46 s and 12
    warnings per backbone. Now: one probe of the hub per process, then the local cache only."""
    report = run_audited(HUB, tmp_path, timeout=180)
    assert all(seconds < 10 for seconds in report["seconds"].values()), report["seconds"]
    assert report["weights"] == "random (hub unavailable)"
    message = report["message"]
    assert message and "unreachable" in message and "model.weights_path" in message and "online" in message
    # the probe, once for the process: nothing else looked for the hub
    probe = "fallback=random: socket.getaddrinfo huggingface.co:443"
    assert report["attempts"] == [probe], report["attempts"]


def test_offline_wandb_turns_its_error_reporting_off_unless_told(monkeypatch):
    from vistumor.runs import tracking

    monkeypatch.setenv("WANDB_ERROR_REPORTING", "unset")  # recorded, so the test leaves no trace
    monkeypatch.delenv("WANDB_ERROR_REPORTING")
    tracking.quiet_offline("online")
    assert "WANDB_ERROR_REPORTING" not in os.environ
    tracking.quiet_offline("offline")
    assert os.environ["WANDB_ERROR_REPORTING"] == "false"
    monkeypatch.setenv("WANDB_ERROR_REPORTING", "true")  # the user's own choice wins
    tracking.quiet_offline("offline")
    assert os.environ["WANDB_ERROR_REPORTING"] == "true"
