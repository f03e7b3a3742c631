"""The rendezvous store of a one-node run listens on 127.0.0.1 only.

torch's ``env://`` rendezvous (what Lightning's DDP and FSDP strategies use) makes rank 0 host a ``TCPStore`` at
``MASTER_ADDR:MASTER_PORT``. In torch 2.14 its server listens on **every interface** whatever ``MASTER_ADDR`` says
(``host_name`` is only where clients connect; both the libuv and the classic backend bind ``::``, dual-stack): on
a shared machine anyone who can reach the port can talk to the store the ranks trust. ``TCPStore`` accepts an
already-listening socket (``master_listen_fd``), so for a run on one node (``trainer.num_nodes == 1``: every rank
is on this machine) rank 0 binds ``127.0.0.1:MASTER_PORT`` itself, hands the socket to the store, and every rank
initialises the process group with that store, connecting to 127.0.0.1 (:func:`init_process_group_on_loopback`,
called by :class:`lmm.training.strategies` DDP / FSDP strategies before Lightning's own initialisation, which then
finds the group initialised).

Left to torch (documented in docs/paper_scale.md): several nodes (the store must be reachable from the other nodes:
it listens on every interface — restrict ``MASTER_PORT`` to the cluster's network with a firewall), ``torchrun``
(its elastic agent hosts the store, ``TORCHELASTIC_USE_AGENT_STORE``), DeepSpeed (``deepspeed.init_distributed``
starts its own), and ``LMM_DIST_STORE=torch`` (torch's store, e.g. for ranks in separate network namespaces)."""

from __future__ import annotations

import atexit
import logging
import os
import socket
from datetime import timedelta

import torch

log = logging.getLogger(__name__)

LOOPBACK = "127.0.0.1"


def loopback_store_applies(num_nodes: int) -> bool:
    """Whether this launch may host its store on 127.0.0.1: one node, no elastic agent hosting it, not opted out."""
    return (int(num_nodes) == 1 and os.environ.get("TORCHELASTIC_USE_AGENT_STORE") != "True"
            and os.environ.get("LMM_DIST_STORE", "loopback") != "torch")


def loopback_store(port: int, rank: int, world_size: int, timeout: timedelta) -> torch.distributed.TCPStore:
    """Rank 0: a ``TCPStore`` server on a socket bound to ``127.0.0.1:port``; other ranks: a client of it."""
    from torch.distributed import TCPStore

    if rank != 0:
        return TCPStore(LOOPBACK, port, world_size, False, timeout)
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((LOOPBACK, port))
        sock.listen(max(128, 2 * world_size))
    except OSError as e:
        sock.close()
        raise OSError(f"cannot listen on {LOOPBACK}:{port} for the process group's store (MASTER_PORT): {e}") from e
    # the store owns the socket from here (detach: Python will not close it)
    return TCPStore(LOOPBACK, port, world_size, True, timeout, wait_for_workers=False,
                    master_listen_fd=sock.detach(), use_libuv=True)


def init_process_group_on_loopback(strategy) -> bool:
    """Initialise the default process group of a Lightning DDP / ModelParallel ``strategy`` with a store on
    127.0.0.1 when :func:`loopback_store_applies`; False (Lightning initialises it as usual) otherwise."""
    dist = torch.distributed
    if not dist.is_available() or dist.is_initialized() or not loopback_store_applies(strategy.num_nodes):
        return False
    strategy.set_world_ranks()
    env = strategy.cluster_environment
    rank, world, port = strategy.global_rank, strategy.world_size, int(env.main_port)
    backend = strategy._get_process_group_backend()
    os.environ["MASTER_ADDR"], os.environ["MASTER_PORT"] = LOOPBACK, str(port)
    store = loopback_store(port, rank, world, strategy._timeout)
    device = strategy.root_device
    kwargs = {"device_id": device} if device.type != "cpu" else {}
    dist.init_process_group(backend, store=store, rank=rank, world_size=world, timeout=strategy._timeout, **kwargs)
    if backend == "nccl":  # as Lightning does: torch warns about a process group not destroyed at exit
        atexit.register(lambda: dist.is_initialized() and dist.destroy_process_group())
    log.info("process group %s: rank %d of %d, store on %s:%d (this node only)", backend, rank, world, LOOPBACK, port)
    return True
