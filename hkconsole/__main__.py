import sys

from hkconsole.cli import main

sys.exit(main())
