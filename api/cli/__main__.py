"""`python -m api.cli ...`: the crwatch command line."""
import sys

from api.cli.main import main

sys.exit(main())
