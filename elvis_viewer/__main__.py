import sys

from elvis_viewer.app import main

sys.exit(main())
