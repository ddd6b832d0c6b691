import sys

from elvis_viewer.app import main

sys.exit(main())  # main() leaves via os._exit when run as a program
