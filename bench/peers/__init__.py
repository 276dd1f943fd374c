"""The side-by-side benchmark of mtcache against the caches a Python team would
use instead (``bench/peers.py`` is the command).

- :mod:`.common`: the plan, values, keys, latency quantiles
- :mod:`.registry`: the peers, how each is configured, what each cannot do
- :mod:`.adapters`, :mod:`.adapters_async`: one small wrapper per peer
- :mod:`.worker`, :mod:`.loops`: what runs in each worker process
- :mod:`.pool`: the eight spawned workers; :mod:`.runner`: W1-W4 from the parent's side
- :mod:`.crosshost`: W5; :mod:`.procmem`: RSS/PSS from ``/proc``
- :mod:`.report`, :mod:`.charts`, :mod:`.cli`: the outputs and the command
"""
