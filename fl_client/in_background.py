"""One call in a thread, its result awaited later (the ClientApp sums its masks while the worker trains)."""
from __future__ import annotations


def in_background(fn, *args):
    """Run ``fn(*args)`` in a thread; the returned callable waits for its result
    (None if it raised: the caller then does the work itself and reports the error)."""
    import threading
    box: list = [None]

    def run():
        try:
            box[0] = fn(*args)
        except Exception:  # noqa: BLE001 - mask() redoes the step and raises it properly
            box[0] = None
    t = threading.Thread(target=run, name="fedvox-prepare-mask", daemon=True)
    t.start()

    def result():
        t.join()
        return box[0]
    return result
