import sys

# Checked before anything else is imported: the config reader needs tomllib (Python 3.11+), and an older
# Python would otherwise end in an ImportError traceback on every command.
if sys.version_info < (3, 11):
    sys.stderr.write("error: snp-bench needs Python 3.11 or newer (its config reader uses tomllib); this is "
                     f"Python {sys.version.split()[0]} at {sys.executable}\n")
    raise SystemExit(2)

from .cli import main  # noqa: E402 - after the version check, on purpose

raise SystemExit(main())
