import sys

from nicemu.cli import main

sys.exit(main())
