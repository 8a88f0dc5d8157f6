"""Probes that watch the app while a storm runs, and the registry of the patches they need.

``loop`` measures event-loop lag and names the app code that blocked the loop; ``pools``
samples the app's thread pools; ``contention`` and ``noise`` measure the machine (CPU taken
by others, how late short sleeps wake); ``patches`` is the one registry every process-wide
patch goes through; the plain data they produce lives in ``_model.probes``, importable without
the probes. Nothing is imported here.
"""
