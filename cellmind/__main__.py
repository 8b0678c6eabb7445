import sys

from cellmind.cli import main

sys.exit(main())
