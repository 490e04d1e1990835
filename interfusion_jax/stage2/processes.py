"""The processes of a multi-host sweep and the coordination they need.

``Processes`` is this process's index and count plus four callables (barrier,
gather, post, posted); ``initialize_distributed`` starts ``jax.distributed``
when asked or when the cluster environment says so and returns them.

This is the one module that touches a private jax API: the coordination
service's client (``jax._src.distributed.global_state.client``), whose
barrier and key-value store let a process that finished hours early wait for
the others; jax has no public handle on it.
"""
from __future__ import annotations

import dataclasses
import json
from typing import Any, Callable

import jax
from jax._src import distributed as jax_distributed   # see the module docstring

BARRIER_TIMEOUT_S = 14 * 24 * 3600.0   # how long a finished process waits for the others


class DistributedSetupError(ValueError):
  """``jax.distributed`` could not be started as asked (one line, names the flags)."""


@dataclasses.dataclass(frozen=True)
class Processes:
  """This process's place in the sweep and the coordination it needs.

  barrier(name): every process waits until all arrive; gather(obj) -> the
  JSON-able ``obj`` of every process, in process order. post(name, obj)
  publishes this process's latest JSON-able ``obj`` under ``name`` without
  waiting; posted(name) -> {process index: its latest obj} of the processes
  that have posted one (no waiting; this process's own included).
  """
  index: int = 0
  count: int = 1
  barrier: Callable[[str], None] = lambda name: None
  gather: Callable[[Any], list] = lambda obj: [obj]
  post: Callable[[str, Any], None] = lambda name, obj: None
  posted: Callable[[str], dict] = lambda name: {}


def jax_processes(timeout_s: float = BARRIER_TIMEOUT_S) -> Processes:
  """``Processes`` of an initialised ``jax.distributed``: its coordination service.

  The barrier and the gather go through the coordination service's barrier
  and key-value store, not through device collectives: a process that
  finishes hours before the others waits there (``timeout_s``), where a
  device collective (gloo on CPU) would give up after its own short
  rendezvous timeout.
  """
  client = jax_distributed.global_state.client
  if client is None:
    raise DistributedSetupError("jax.distributed is not initialised; call initialize_distributed first.")
  ms = int(timeout_s * 1000)
  index, count = jax.process_index(), jax.process_count()

  def barrier(name: str) -> None:
    client.wait_at_barrier(name, ms)

  def gather(obj):
    client.key_value_set(f"interfusion_sweep_gather/{index}", json.dumps(obj))
    barrier("interfusion_sweep_gather")
    return [json.loads(client.blocking_key_value_get(f"interfusion_sweep_gather/{i}", ms))
            for i in range(count)]

  def post(name: str, obj) -> None:
    client.key_value_set(f"interfusion_sweep_{name}/{index}", json.dumps(obj),
                         allow_overwrite=True)

  def posted(name: str) -> dict:
    return {int(k.rsplit("/", 1)[-1]): json.loads(v)
            for k, v in client.key_value_dir_get(f"interfusion_sweep_{name}/")}

  return Processes(index, count, barrier, gather, post, posted)


def initialize_distributed(coordinator_address: str | None = None,
                           num_processes: int | None = None,
                           process_id: int | None = None) -> Processes:
  """``jax.distributed.initialize`` when asked or needed; this process's ``Processes``.

  With no arguments and one process (no cluster environment), nothing is
  initialised. On Cloud TPU, SLURM and the like, ``jax.distributed`` reads
  the environment. On CPU the collectives go through gloo.
  """
  if num_processes == 1 and not coordinator_address:
    return Processes()
  kwargs = {k: v for k, v in dict(coordinator_address=coordinator_address or None,
                                  num_processes=num_processes,
                                  process_id=process_id).items() if v is not None}
  jax.config.update("jax_cpu_collectives_implementation", "gloo")   # CPU only; else unused
  try:
    jax.distributed.initialize(**kwargs)
  except (ValueError, RuntimeError) as e:
    if kwargs:
      raise DistributedSetupError(f"jax.distributed.initialize({', '.join(f'{k}={v!r}' for k, v in kwargs.items())}) "
                       f"failed: {str(e).splitlines()[0]}; check --coordinator_address, "
                       "--num_processes and --process_id.") from e
    return Processes()    # no cluster environment: a single process
  return jax_processes() if jax.process_count() > 1 else Processes()
