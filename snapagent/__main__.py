import sys

from snapagent.cli.main import main

sys.exit(main())
