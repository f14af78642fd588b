"""Child processes started by the tests get the same network guard as the pytest process."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import guard

guard.install(log_to_file=True)
