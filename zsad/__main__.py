import sys

from zsad.cli import main

sys.exit(main())
