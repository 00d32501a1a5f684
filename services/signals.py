"""Stopping cleanly on SIGINT/SIGTERM, for the bot and the standalone simulator."""

from __future__ import annotations

import asyncio
import signal
import sys
import threading


def stop_on_signals(stop: asyncio.Event) -> bool:
    """Set ``stop`` on SIGINT or SIGTERM. Returns False where the loop cannot take signal handlers: on Windows,
    and off the main thread (Ctrl-C then ends the program the default way)."""
    if sys.platform == "win32" or threading.current_thread() is not threading.main_thread():
        return False
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    return True
