"""The live instrument: EMG from Bela (or its emulator) in, viola out. Introduced in 06_live_demo.

Submodules are imported by name (``from mlmlmlm.live.emulator import BelaEmulator``); importing
this package loads nothing else.
"""
