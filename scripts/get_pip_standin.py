"""Stand-in for the pip bootstrap script (get-pip.py) that ansible-test downloads from a host this
machine cannot reach. Like get-pip.py it takes pip-install arguments: it installs Python's bundled pip
with ensurepip, then lets that pip install what ansible-test asked for from the package index.
ansible-test hides pip's config files (PIP_CONFIG_FILE=/dev/null), so trust the system's CA store."""

import ensurepip
import ssl
import subprocess
import sys

ensurepip.bootstrap(upgrade=True)
args = [a for a in sys.argv[1:] if a not in ("--no-setuptools", "--no-wheel")]
paths = ssl.get_default_verify_paths()
cafile = paths.cafile or paths.openssl_cafile
sys.exit(subprocess.call([sys.executable, "-m", "pip", "install", "-q", "--cert", cafile] + args))
