import sys

from hpd_encode.cli import main

sys.exit(main())
