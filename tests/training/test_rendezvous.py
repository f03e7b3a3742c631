"""A one-node run's process-group store listens on 127.0.0.1 only: two real ranks (gloo, CPU) set up by our DDP and
FSDP strategies, rank 0 reading the kernel's table of listening sockets (/proc/net/tcp, /proc/net/tcp6)."""

import json
import os
import socket
import subprocess
import sys
import textwrap

import pytest
from conftest import REPO

RANK = textwrap.dedent('''
    import json, os, sys, torch
    import torch.distributed as dist
    from lightning.fabric.accelerators import CPUAccelerator
    from lightning.fabric.plugins.environments import LightningEnvironment
    from lmm.training.strategies import build_strategy

    def listening(port):
        found = []
        for table in ("/proc/net/tcp", "/proc/net/tcp6"):
            for line in open(table).read().splitlines()[1:]:
                f = line.split()
                addr, p = f[1].rsplit(":", 1)
                if int(p, 16) == port and f[3] == "0A":  # 0A: LISTEN
                    found.append(addr)
        return found

    out = {}
    for name, port in (("ddp", int(sys.argv[1])), ("fsdp", int(sys.argv[2]))):
        os.environ["MASTER_PORT"] = str(port)
        strategy = build_strategy(name, None, 1)
        strategy.cluster_environment = LightningEnvironment()
        strategy.parallel_devices = [torch.device("cpu")] * 2
        strategy.accelerator = CPUAccelerator()
        strategy.num_nodes = 1
        strategy.setup_distributed() if name == "ddp" else strategy._setup_distributed()
        t = torch.ones(1) * (dist.get_rank() + 1)
        dist.all_reduce(t)
        dist.barrier()
        out[name] = {"sum": t.item(), "listening": listening(port) if dist.get_rank() == 0 else None}
        dist.barrier()
        dist.destroy_process_group()
    print("RESULT " + json.dumps(out), flush=True)
''')


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.skipif(not os.path.exists("/proc/net/tcp"), reason="reads Linux's /proc/net/tcp")
def test_the_store_of_a_one_node_run_listens_on_loopback_only(tmp_path):
    script = tmp_path / "rank.py"
    script.write_text(RANK)
    ports = [str(free_port()), str(free_port())]
    env = {**os.environ, "MASTER_ADDR": "127.0.0.1", "WORLD_SIZE": "2", "NODE_RANK": "0"}
    env.pop("LMM_DIST_STORE", None)
    procs = [subprocess.Popen([sys.executable, str(script), *ports], cwd=REPO, env={**env, "LOCAL_RANK": str(r)},
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for r in (0, 1)]
    try:
        outs = [p.communicate(timeout=90)[0] for p in procs]
    finally:
        for p in procs:
            p.kill()
    assert all(p.returncode == 0 for p in procs), outs[0][-3000:] + outs[1][-3000:]
    result = json.loads(next(line for line in outs[0].splitlines() if line.startswith("RESULT "))[7:])
    for name in ("ddp", "fsdp"):
        assert result[name]["sum"] == 3.0  # the group works
        # 0100007F: 127.0.0.1 — never 00000000 (0.0.0.0) or the IPv6 any address (::)
        assert result[name]["listening"] == ["0100007F"], (name, result[name])
