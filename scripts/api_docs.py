"""Regenerate docs/api.md from the docstrings of every public name (logic: nicemu/api_docs.py).

    python scripts/api_docs.py
"""

from pathlib import Path

from nicemu.api_docs import write

if __name__ == "__main__":
    print(write(Path(__file__).resolve().parents[1]))
