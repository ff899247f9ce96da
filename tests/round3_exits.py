"""A reward module that calls sys.exit(5) while being imported (``tests.round3_exits:anything``)."""

import sys

sys.exit(5)
