"""Where the data-quality gates' files are.

No settings here: the bands (``dq_*``) and the generated folders (``data_docs_dir``, ``gx_dir``)
are on :class:`lambdarec.config.Settings`. This module imports neither GX nor pandas.
"""

from __future__ import annotations

from lambdarec.config import REPO_ROOT

#: The versioned GX project: great_expectations.yml, expectations/, validation_definitions/,
#: checkpoints/. Everything GX generates goes under the state dir instead (``settings.gx_dir``).
GX_DIR = REPO_ROOT / "great_expectations"
