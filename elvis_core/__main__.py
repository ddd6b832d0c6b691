import sys

from elvis_core.cli import main

sys.exit(main())
