import sys

from hkservice.main import main

sys.exit(main())
