"""`python -m appliance.cli`: the `herald` command, run from a source tree."""

import sys

from appliance.cli import main

sys.exit(main())
